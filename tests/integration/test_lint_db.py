"""Lint against a real database: only tables with rows count; prod refuses unless acknowledged."""

from __future__ import annotations

from pathlib import Path

import pytest

from components.engine import migset
from components.engine.connection import ConnectionSettings
from components.engine.engine import Engine
from components.engine.errors import LintRefused
from components.engine.options import RunOptions
from components.engine.snapshot import generate
from tests.integration.test_wishlist_items_migration import ledger_rows


def _setup(db: ConnectionSettings, admin: ConnectionSettings, set_copy: Path, sql: str, rows: bool) -> None:
    Engine(db, migset.load(set_copy)).apply()
    if rows:
        with db.connect() as conn:
            conn.execute("INSERT INTO wishlist_items (user_id, title, store) VALUES ('u', 't', 'LEGO')")
    (set_copy / "0008_index_title.sql").write_text(sql)
    generate(admin, set_copy)


def test_plain_index_on_a_table_with_rows_is_refused_in_strict_mode(
    fresh_db: ConnectionSettings, admin: ConnectionSettings, set_copy: Path
) -> None:
    _setup(fresh_db, admin, set_copy, "CREATE INDEX idx_title ON wishlist_items (title);\n", rows=True)
    plan = Engine(fresh_db, migset.load(set_copy)).plan("0008")
    assert [f.rule for f in plan.findings] == ["require-concurrent-index-creation"]
    with pytest.raises(LintRefused, match="require-concurrent-index-creation"):
        Engine(fresh_db, migset.load(set_copy), RunOptions(strict_lint=True)).apply()
    assert [r[0] for r in ledger_rows(fresh_db)] == ["0007"]
    # Outside prod it is a warning, and the apply goes ahead.
    assert [r["version"] for r in Engine(fresh_db, migset.load(set_copy)).apply().ran] == ["0008"]


def test_acknowledged_finding_is_applied_in_strict_mode(fresh_db: ConnectionSettings, admin: ConnectionSettings, set_copy: Path) -> None:
    _setup(
        fresh_db,
        admin,
        set_copy,
        "-- migrate:allow index-without-concurrently\nCREATE INDEX idx_title ON wishlist_items (title);\n",
        rows=True,
    )
    assert [r["version"] for r in Engine(fresh_db, migset.load(set_copy), RunOptions(strict_lint=True)).apply().ran] == ["0008"]


def test_empty_table_is_not_flagged(fresh_db: ConnectionSettings, admin: ConnectionSettings, set_copy: Path) -> None:
    _setup(fresh_db, admin, set_copy, "CREATE INDEX idx_title ON wishlist_items (title);\n", rows=False)
    assert Engine(fresh_db, migset.load(set_copy)).plan("0008").findings == ()
    assert [r["version"] for r in Engine(fresh_db, migset.load(set_copy), RunOptions(strict_lint=True)).apply().ran] == ["0008"]


def test_concurrent_index_in_a_non_transactional_file(fresh_db: ConnectionSettings, admin: ConnectionSettings, set_copy: Path) -> None:
    _setup(
        fresh_db, admin, set_copy, "-- migrate:no-transaction\nCREATE INDEX CONCURRENTLY idx_title ON wishlist_items (title);\n", rows=True
    )
    engine = Engine(fresh_db, migset.load(set_copy), RunOptions(strict_lint=True))
    assert engine.plan("0008").findings == ()
    assert [r["version"] for r in engine.apply().ran] == ["0008"]
    assert engine.verify().ok
    assert [r[0] for r in ledger_rows(fresh_db)] == ["0007", "0008"]


@pytest.mark.parametrize(
    ("sql", "rows", "rules"),
    [
        ("ALTER TABLE wishlist_items ALTER COLUMN title TYPE varchar(500);\n", True, ["changing-column-type"]),  # text -> varchar: rewrite
        ("ALTER TABLE wishlist_items ALTER COLUMN set_number SET NOT NULL;\n", True, ["adding-not-nullable-field"]),
        ("ALTER TABLE wishlist_items ALTER COLUMN set_number SET NOT NULL;\n", False, []),
        ("ALTER TABLE wishlist_items ADD COLUMN seen timestamptz DEFAULT clock_timestamp();\n", True, ["adding-field-with-default"]),
        ("ALTER TABLE wishlist_items ADD COLUMN seen timestamptz DEFAULT now();\n", True, []),
        ("ALTER TABLE wishlist_items ADD CONSTRAINT pos CHECK (piece_count > 0) NOT VALID;\n", True, []),
    ],
)
def test_lint_reads_the_trace_and_the_live_size(
    fresh_db: ConnectionSettings, admin: ConnectionSettings, set_copy: Path, sql: str, rows: bool, rules: list[str]
) -> None:
    _setup(fresh_db, admin, set_copy, sql, rows=rows)
    assert [f.rule for f in Engine(fresh_db, migset.load(set_copy)).plan("0008").findings] == rules


def test_widening_a_varchar_is_not_flagged(fresh_db: ConnectionSettings, admin: ConnectionSettings, set_copy: Path) -> None:
    """Text-based linters flag every type change; the trace shows this one neither rewrites nor scans."""
    (set_copy / "0008_code.sql").write_text("ALTER TABLE wishlist_items ADD COLUMN code varchar(10) DEFAULT 'x';\n")
    generate(admin, set_copy)
    Engine(fresh_db, migset.load(set_copy)).apply()
    with fresh_db.connect() as conn:
        conn.execute("INSERT INTO wishlist_items (user_id, title, store) VALUES ('u', 't', 'LEGO')")
    (set_copy / "0009_widen.sql").write_text("ALTER TABLE wishlist_items ALTER COLUMN code TYPE varchar(50);\n")
    generate(admin, set_copy)
    assert Engine(fresh_db, migset.load(set_copy)).plan("0009").findings == ()


@pytest.mark.parametrize(
    ("sql", "rule"),
    [
        # A CREATE that creates nothing (the table exists) does not exempt the table (breaking review, round 3).
        (
            "CREATE TABLE IF NOT EXISTS wishlist_items (id int);\nCREATE INDEX idx_title ON wishlist_items (title);\n",
            "require-concurrent-index-creation",
        ),
        # The data of the dropped table is gone, whatever is created under its name afterwards.
        (
            "DROP TABLE wishlist_items CASCADE;\nCREATE TABLE wishlist_items (id int);\n",
            "ban-drop-table",
        ),
        # A rewrite hidden in a function called by a SELECT is still measured, and flagged.
        (
            "CREATE FUNCTION widen() RETURNS void LANGUAGE plpgsql AS $$ BEGIN "
            "ALTER TABLE wishlist_items ALTER COLUMN priority TYPE bigint; END $$;\nSELECT widen();\n",
            "table-rewrite",
        ),
    ],
)
def test_evasions_found_by_a_breaking_review_are_flagged(
    fresh_db: ConnectionSettings, admin: ConnectionSettings, set_copy: Path, sql: str, rule: str
) -> None:
    _setup(fresh_db, admin, set_copy, sql, rows=True)
    plan = Engine(fresh_db, migset.load(set_copy)).plan("0008")
    assert rule in [f.rule for f in plan.findings], plan.findings
    with pytest.raises(LintRefused):
        Engine(fresh_db, migset.load(set_copy), RunOptions(strict_lint=True)).apply()
    assert [r[0] for r in ledger_rows(fresh_db)] == ["0007"]
