"""Production safety rules against real databases: promotion gate, adoption (by hand, drizzle-kit), owner guard."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from psycopg import sql

from components.engine import migset
from components.engine.adopt import adopt
from components.engine.connection import ConnectionSettings
from components.engine.engine import Engine
from components.engine.errors import PromotionBlocked, VerifyFailed, WrongDatabase
from components.engine.options import RunOptions
from components.engine.planner import Gate
from tests.conftest import APP_SET
from tests.dbs import drop_database
from tests.integration.test_wishlist_items_migration import ledger_rows, q

UP_SQL = (APP_SET / "0007_wishlist_items.sql").read_text()


@pytest.fixture
def second_db(admin: ConnectionSettings) -> ConnectionSettings:
    name = "stand_in_prod"
    drop_database(admin, name)
    with admin.connect() as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return admin.with_database(name)


def test_promotion_gate_blocks_until_staging_has_the_version(fresh_db: ConnectionSettings, second_db: ConnectionSettings) -> None:
    staging, prod = fresh_db, second_db
    mset = migset.load(APP_SET)
    staging_engine = Engine(staging, mset, RunOptions(stack="wishlist-infra/staging"))
    # Staging has nothing yet: prod is refused, naming the stack to apply first, and nothing is written.
    blocked = Gate("staging", {})
    assert blocked.split(Engine(prod, mset).plan(mset.latest).steps) == ([], ["0007_wishlist_items"])
    with pytest.raises(PromotionBlocked, match=r"0007_wishlist_items not yet applied .* in stack 'staging'.*pulumi up --stack staging"):
        Engine(prod, mset, RunOptions(stack="wishlist-infra/prod"), gate=blocked).apply()
    assert ledger_rows(prod) == []
    # A checksum that differs from the file is refused too.
    with pytest.raises(PromotionBlocked):
        Engine(prod, mset, gate=Gate("staging", {"0007": "0" * 64})).apply()
    # After staging applies it, its ledger clears prod.
    staging_engine.apply()
    cleared = Gate("staging", {v: c for v, c in ledger_rows(staging)})
    assert [r["version"] for r in Engine(prod, mset, RunOptions(stack="wishlist-infra/prod"), gate=cleared).apply().ran] == ["0007"]


def test_owner_guard_refuses_staging_settings_aimed_at_prod(fresh_db: ConnectionSettings) -> None:
    mset = migset.load(APP_SET)
    Engine(fresh_db, mset, RunOptions(stack="wishlist-infra/prod")).apply()
    with pytest.raises(WrongDatabase, match="owned by stack 'wishlist-infra/prod', but this is stack 'wishlist-infra/staging'"):
        Engine(fresh_db, mset, RunOptions(stack="wishlist-infra/staging")).plan(mset.latest)
    assert q(fresh_db, "SELECT stack FROM migration_ledger.owner") == [("wishlist-infra/prod",)]


def test_adopt_a_hand_made_schema(fresh_db: ConnectionSettings) -> None:
    with fresh_db.connect() as conn:
        conn.execute(UP_SQL.encode())
    engine = Engine(fresh_db, migset.load(APP_SET), RunOptions(stack="wishlist-infra/dev"))
    result = adopt(engine, "0007")
    assert [r["version"] for r in result.ran] == ["0007"]
    assert [r[0] for r in ledger_rows(fresh_db)] == ["0007"] and engine.verify().ok
    assert engine.apply().ran == []


def test_adopt_refuses_a_schema_that_differs_and_records_nothing(fresh_db: ConnectionSettings) -> None:
    with fresh_db.connect() as conn:
        conn.execute(UP_SQL.replace("CREATE INDEX idx_wishlist_user_priority ON wishlist_items(user_id, priority);", "").encode())
    with pytest.raises(VerifyFailed, match="index idx_wishlist_user_priority is missing"):
        adopt(Engine(fresh_db, migset.load(APP_SET)), "0007")
    assert ledger_rows(fresh_db) == []


def _drizzle(tmp_path: Path, db: ConnectionSettings, record_hash: str | None = None) -> Path:
    folder = tmp_path / "drizzle"
    (folder / "meta").mkdir(parents=True)
    (folder / "0007_wishlist.sql").write_text(UP_SQL)
    (folder / "meta/_journal.json").write_text(
        json.dumps(
            {
                "version": "7",
                "dialect": "postgresql",
                "entries": [{"idx": 7, "version": "7", "when": 1769590000000, "tag": "0007_wishlist"}],
            }
        )
    )
    digest = record_hash or hashlib.sha256(UP_SQL.encode()).hexdigest()
    with db.connect() as conn:
        conn.execute(UP_SQL.encode())
        conn.execute("CREATE SCHEMA drizzle")
        conn.execute("CREATE TABLE drizzle.__drizzle_migrations (id serial PRIMARY KEY, hash text NOT NULL, created_at bigint)")
        conn.execute("INSERT INTO drizzle.__drizzle_migrations (hash, created_at) VALUES (%s, 1769590000000)", (digest,))
    return folder


def test_adopt_a_drizzle_database_with_matching_hashes(fresh_db: ConnectionSettings, tmp_path: Path) -> None:
    folder = _drizzle(tmp_path, fresh_db)
    assert [r["version"] for r in adopt(Engine(fresh_db, migset.load(APP_SET)), "0007", folder).ran] == ["0007"]


def test_adopt_a_drizzle_database_with_an_edited_file_is_refused(fresh_db: ConnectionSettings, tmp_path: Path) -> None:
    folder = _drizzle(tmp_path, fresh_db, record_hash="ab" * 32)
    with pytest.raises(VerifyFailed, match=r"recorded hash abababababab matches no file.*0007_wishlist\.sql is not recorded"):
        adopt(Engine(fresh_db, migset.load(APP_SET)), "0007", folder)
    assert ledger_rows(fresh_db) == []
