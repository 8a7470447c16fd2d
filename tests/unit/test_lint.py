"""Lint rules on migration text (pure, no database)."""

from __future__ import annotations

import pytest

from components.engine.lint import lint
from components.engine.migset import Migration
from components.engine.sqltext import header_markers, split_statements


def mig(sql: str, version: str = "0008") -> Migration:
    return Migration(version, "x", f"{version}_x.sql", sql, "c", None, None, None, header_markers(sql))


@pytest.mark.parametrize(
    ("sql", "rule"),
    [
        ("CREATE INDEX idx_t ON wishlist_items (title);", "index-without-concurrently"),
        ("CREATE UNIQUE INDEX IF NOT EXISTS idx_t ON public.wishlist_items (title);", "index-without-concurrently"),
        ("ALTER TABLE wishlist_items ADD COLUMN theme text NOT NULL;", "add-column-not-null-without-default"),
        ("ALTER TABLE wishlist_items ALTER COLUMN price TYPE numeric(10,2) USING price::numeric;", "column-type-change"),
        ("ALTER TABLE wishlist_items ALTER price SET DATA TYPE numeric;", "column-type-change"),
        ("DROP TABLE wishlist_items;", "drop-table"),
        ("ALTER TABLE wishlist_items DROP COLUMN notes;", "drop-column"),
        (
            "ALTER TYPE wishlist_store ADD VALUE 'Amazon';\nUPDATE wishlist_items SET store = 'Amazon' WHERE false;",
            "enum-add-value-in-transaction",
        ),
    ],
)
def test_dangerous_statements_are_flagged(sql: str, rule: str) -> None:
    findings = lint(mig(sql))
    assert [f.rule for f in findings] == [rule]
    assert not findings[0].acknowledged


@pytest.mark.parametrize(
    "sql",
    [
        "CREATE INDEX CONCURRENTLY idx_t ON wishlist_items (title);",
        "ALTER TABLE wishlist_items ADD COLUMN theme text NOT NULL DEFAULT 'none';",
        "ALTER TABLE wishlist_items ADD COLUMN theme text;",
        "ALTER TABLE wishlist_items DROP CONSTRAINT priority_range_check;",
        "CREATE TABLE t (id int NOT NULL);\nCREATE INDEX idx_t ON t (id);\nALTER TABLE t ADD COLUMN c int NOT NULL;",
        "ALTER TYPE wishlist_store ADD VALUE 'Amazon';",
        "-- migrate:no-transaction\nALTER TYPE wishlist_store ADD VALUE 'Amazon';\nUPDATE wishlist_items SET store = 'Amazon' WHERE false;",
    ],
)
def test_safe_statements_and_new_tables_are_not_flagged(sql: str) -> None:
    assert lint(mig(sql)) == []


def test_the_story_migration_is_clean() -> None:
    from tests.conftest import APP_SET

    text = (APP_SET / "0007_wishlist_items.sql").read_text()
    assert len(split_statements(text)) == 8
    assert lint(mig(text, "0007")) == []


def test_an_acknowledged_rule_is_kept_but_marked() -> None:
    findings = lint(mig("-- migrate:allow index-without-concurrently\nCREATE INDEX idx_t ON wishlist_items (title);"))
    assert [(f.rule, f.acknowledged) for f in findings] == [("index-without-concurrently", True)]
