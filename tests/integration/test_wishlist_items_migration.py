"""WISH-2007 acceptance criteria and test plan, against a real PostgreSQL."""

from __future__ import annotations

import json
from typing import Any

import psycopg
import pytest

from components.engine import migset
from components.engine.connection import ConnectionSettings
from components.engine.engine import Engine
from components.engine.options import RunOptions
from tests.conftest import APP_SET

# WISH-2000 / WISH-2007 spec, written out here independently of the snapshot (AC 3, 14).
EXPECTED_COLUMNS = [
    ("id", "uuid", "NO", "gen_random_uuid()"),
    ("user_id", "text", "NO", None),
    ("title", "text", "NO", None),
    ("store", "USER-DEFINED", "NO", None),
    ("set_number", "text", "YES", None),
    ("source_url", "text", "YES", None),
    ("image_url", "text", "YES", None),
    ("price", "text", "YES", None),
    ("currency", "USER-DEFINED", "YES", "'USD'::wishlist_currency"),
    ("piece_count", "integer", "YES", None),
    ("release_date", "timestamp without time zone", "YES", None),
    ("tags", "jsonb", "YES", "'[]'::jsonb"),
    ("priority", "integer", "YES", "0"),
    ("notes", "text", "YES", None),
    ("sort_order", "integer", "NO", "0"),
    ("created_at", "timestamp without time zone", "NO", "now()"),
    ("updated_at", "timestamp without time zone", "NO", "now()"),
    ("created_by", "text", "YES", None),
    ("updated_by", "text", "YES", None),
]
EXPECTED_INDEXES = {
    "idx_wishlist_user_id",
    "idx_wishlist_user_sort",
    "idx_wishlist_user_store",
    "idx_wishlist_user_priority",
    "idx_wishlist_user_store_priority",
}
STORE_LABELS = ["LEGO", "Barweer", "Cata", "BrickLink", "Other"]
CURRENCY_LABELS = ["USD", "EUR", "GBP", "CAD", "AUD"]


def engine_for(db: ConnectionSettings, **kw: Any) -> Engine:
    return Engine(db, migset.load(APP_SET), RunOptions(**kw))


def q(db: ConnectionSettings, query: str, params: Any = None) -> list[tuple[Any, ...]]:
    with db.connect() as conn:
        return conn.execute(query, params).fetchall()


def ledger_rows(db: ConnectionSettings) -> list[tuple[Any, ...]]:
    try:
        return q(db, "SELECT version, checksum FROM migration_ledger.applied ORDER BY version")
    except psycopg.errors.UndefinedTable:
        return []


def enum_labels(db: ConnectionSettings, name: str) -> list[str]:
    return [r[0] for r in q(db, "SELECT enumlabel FROM pg_enum WHERE enumtypid = to_regtype(%s) ORDER BY enumsortorder", (name,))]


def test_fresh_apply_creates_the_story_schema(fresh_db: ConnectionSettings) -> None:
    result = engine_for(fresh_db).apply()
    assert [r["version"] for r in result.ran] == ["0007"]

    # The story's manual verification queries, verbatim where they are plain SQL.
    assert q(fresh_db, "SELECT table_name FROM information_schema.tables WHERE table_name = 'wishlist_items'") == [("wishlist_items",)]
    cols = q(
        fresh_db,
        "SELECT column_name, data_type, is_nullable, column_default FROM information_schema.columns"
        " WHERE table_name = 'wishlist_items' ORDER BY ordinal_position",
    )
    assert cols == EXPECTED_COLUMNS
    udt = dict(q(fresh_db, "SELECT column_name, udt_name FROM information_schema.columns WHERE table_name = 'wishlist_items'"))
    assert (udt["store"], udt["currency"]) == ("wishlist_store", "wishlist_currency")
    indexes = {r[0] for r in q(fresh_db, "SELECT indexname FROM pg_indexes WHERE tablename = 'wishlist_items'")}
    assert indexes == EXPECTED_INDEXES | {"wishlist_items_pkey"}
    assert enum_labels(fresh_db, "wishlist_store") == STORE_LABELS
    assert enum_labels(fresh_db, "wishlist_currency") == CURRENCY_LABELS
    constraints = dict(
        q(fresh_db, "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = 'wishlist_items'::regclass")
    )
    assert constraints["priority_range_check"] == "CHECK (((priority >= 0) AND (priority <= 5)))"

    with fresh_db.connect() as conn:
        conn.execute("INSERT INTO wishlist_items (user_id, title, store, priority) VALUES ('u1', 'Millennium Falcon', 'LEGO', 5)")
        with pytest.raises(psycopg.errors.CheckViolation, match="priority_range_check"):
            conn.execute("INSERT INTO wishlist_items (user_id, title, store, priority) VALUES ('u1', 'X-Wing', 'LEGO', 10)")
        row = conn.execute("SELECT currency, tags, sort_order, priority FROM wishlist_items").fetchone()
    assert row == ("USD", [], 0, 5)
    assert [r[0] for r in ledger_rows(fresh_db)] == ["0007"]
    assert engine_for(fresh_db).verify().ok


def test_second_apply_is_idempotent(fresh_db: ConnectionSettings) -> None:
    first = engine_for(fresh_db).apply()
    before = ledger_rows(fresh_db)
    second = engine_for(fresh_db).apply()
    assert second.ran == []
    assert second.fingerprint == first.fingerprint
    assert ledger_rows(fresh_db) == before


def test_rollback_drops_table_and_enums_then_apply_again(fresh_db: ConnectionSettings) -> None:
    engine_for(fresh_db).apply()
    result = engine_for(fresh_db).rollback("0")
    assert [r["version"] for r in result.ran] == ["0007"] and result.current is None
    assert q(fresh_db, "SELECT to_regclass('wishlist_items'), to_regtype('wishlist_store'), to_regtype('wishlist_currency')") == [
        (None, None, None)
    ]
    assert ledger_rows(fresh_db) == []
    again = engine_for(fresh_db).apply()
    assert [r["version"] for r in again.ran] == ["0007"]
    assert engine_for(fresh_db).verify().ok


def _plan_indexes(plan: dict[str, Any]) -> list[tuple[str, str | None]]:
    found = [(plan["Node Type"], plan.get("Index Name"))]
    for child in plan.get("Plans", []):
        found += _plan_indexes(child)
    return found


@pytest.mark.parametrize(
    "query",
    [
        "SELECT * FROM wishlist_items WHERE user_id = 'user-7' ORDER BY sort_order LIMIT 20",
        "SELECT * FROM wishlist_items WHERE user_id = 'user-7'",
        "SELECT * FROM wishlist_items WHERE user_id = 'user-7' AND store = 'LEGO'",
        "SELECT * FROM wishlist_items WHERE user_id = 'user-7' AND priority = 3",
        "SELECT * FROM wishlist_items WHERE user_id = 'user-7' AND store = 'Cata' AND priority = 2",
    ],
)
def test_user_scoped_queries_use_indexes_on_1000_rows(fresh_db: ConnectionSettings, query: str) -> None:
    engine_for(fresh_db).apply()
    with fresh_db.connect() as conn:
        conn.execute(
            "INSERT INTO wishlist_items (user_id, title, store, priority, sort_order)"
            " SELECT 'user-' || (i % 100), 'set ' || i, (ARRAY['LEGO','Barweer','Cata','BrickLink','Other'])[1 + i % 5]::wishlist_store,"
            " i % 6, i FROM generate_series(1, 1000) AS i"
        )
        conn.execute("ANALYZE wishlist_items")
        plan = conn.execute("EXPLAIN (FORMAT JSON) " + query).fetchone()[0][0]["Plan"]  # type: ignore[index]
    nodes = _plan_indexes(plan)
    assert not any(node == "Seq Scan" for node, _ in nodes), json.dumps(plan)
    used = {name for _, name in nodes if name}
    assert used and all(name.startswith("idx_wishlist_user") for name in used), used


def test_conflicting_schema_fails_and_leaves_nothing(fresh_db: ConnectionSettings) -> None:
    with fresh_db.connect() as conn:
        conn.execute("CREATE TABLE wishlist_items (id integer PRIMARY KEY, name text)")
    from components.engine.errors import StatementFailed

    with pytest.raises(StatementFailed) as err:
        engine_for(fresh_db).apply()
    assert "already exists" in str(err.value) and "42P07" in str(err.value) and "0007_wishlist_items" in str(err.value)
    assert q(fresh_db, "SELECT to_regtype('wishlist_store'), to_regtype('wishlist_currency')") == [(None, None)]
    assert ledger_rows(fresh_db) == []
    assert [
        r[0] for r in q(fresh_db, "SELECT column_name FROM information_schema.columns WHERE table_name = 'wishlist_items' ORDER BY 1")
    ] == ["id", "name"]
