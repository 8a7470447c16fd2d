"""Lint rules on the parse tree and the measured trace (pure, no database)."""

from __future__ import annotations

import pytest

from components.engine.lint import RULES, lint
from components.engine.migset import Migration
from components.engine.sqltext import header_markers, split_statements
from components.engine.trace import Lock, StatementTrace, Trace


def mig(sql: str, version: str = "0008", trace: list[StatementTrace] | None = None) -> Migration:
    t = None if trace is None else Trace(version, "c", tuple(trace))
    return Migration(version, "x", f"{version}_x.sql", sql, "c", None, None, None, header_markers(sql), trace=t)


@pytest.mark.parametrize(
    ("sql", "rule"),
    [
        ("CREATE INDEX idx_t ON wishlist_items (title);", "require-concurrent-index-creation"),
        ("CREATE UNIQUE INDEX IF NOT EXISTS idx_t ON public.wishlist_items (title);", "require-concurrent-index-creation"),
        ("DROP INDEX idx_t;", "require-concurrent-index-deletion"),
        ("ALTER TABLE wishlist_items ADD COLUMN theme text NOT NULL;", "adding-not-nullable-field"),
        ("ALTER TABLE wishlist_items ALTER COLUMN title SET NOT NULL;", "adding-not-nullable-field"),
        ("ALTER TABLE wishlist_items ADD COLUMN seen timestamptz DEFAULT clock_timestamp();", "adding-field-with-default"),
        ("ALTER TABLE wishlist_items ADD COLUMN n bigserial;", "adding-serial-primary-key-field"),
        ("ALTER TABLE wishlist_items ADD PRIMARY KEY (id);", "adding-serial-primary-key-field"),
        ("ALTER TABLE wishlist_items ADD CONSTRAINT c CHECK (priority > 0);", "constraint-missing-not-valid"),
        ("ALTER TABLE wishlist_items ADD CONSTRAINT f FOREIGN KEY (user_id) REFERENCES users (id);", "adding-foreign-key-constraint"),
        ("ALTER TABLE wishlist_items ADD CONSTRAINT u UNIQUE (title);", "disallowed-unique-constraint"),
        ("ALTER TABLE wishlist_items ALTER COLUMN price TYPE numeric(10,2) USING price::numeric;", "changing-column-type"),
        ("ALTER TABLE wishlist_items ALTER price SET DATA TYPE numeric;", "changing-column-type"),
        ("ALTER TABLE wishlist_items RENAME COLUMN notes TO note;", "renaming-column"),
        ("ALTER TABLE wishlist_items RENAME TO wishes;", "renaming-table"),
        ("DROP TABLE wishlist_items;", "ban-drop-table"),
        ("ALTER TABLE wishlist_items DROP COLUMN notes;", "ban-drop-column"),
        ("CREATE INDEX CONCURRENTLY idx_t ON wishlist_items (title);", "ban-concurrent-index-creation-in-transaction"),
        ("ALTER DOMAIN price ADD CONSTRAINT p CHECK (VALUE > 0);", "ban-alter-domain-with-add-constraint"),
        ("CREATE DOMAIN price AS int CHECK (VALUE > 0);", "ban-create-domain-with-constraint"),
        ("CLUSTER wishlist_items USING idx_t;", "cluster"),
        ("REINDEX TABLE wishlist_items;", "reindex-without-concurrently"),
        ("-- migrate:no-transaction\nVACUUM FULL wishlist_items;", "vacuum-full"),
        ("LOCK TABLE wishlist_items;", "lock-table"),
        ("TRUNCATE wishlist_items;", "truncate"),
        (
            "ALTER TYPE wishlist_store ADD VALUE 'Amazon';\nUPDATE wishlist_items SET store = 'Amazon' WHERE false;",
            "enum-add-value-in-transaction",
        ),
    ],
)
def test_dangerous_statements_are_flagged_with_a_recipe(sql: str, rule: str) -> None:
    findings = lint(mig(sql))
    assert [f.rule for f in findings] == [rule]
    assert not findings[0].acknowledged
    assert f"safe: {RULES[rule][1]}" in findings[0].describe()


@pytest.mark.parametrize(
    "sql",
    [
        "-- migrate:no-transaction\nCREATE INDEX CONCURRENTLY idx_t ON wishlist_items (title);",
        "-- migrate:no-transaction\nDROP INDEX CONCURRENTLY idx_t;",
        "ALTER TABLE wishlist_items ADD COLUMN theme text NOT NULL DEFAULT 'none';",
        "ALTER TABLE wishlist_items ADD COLUMN seen timestamptz DEFAULT now();",
        "ALTER TABLE wishlist_items ADD COLUMN theme text;",
        "ALTER TABLE wishlist_items DROP CONSTRAINT priority_range_check;",
        "ALTER TABLE wishlist_items ADD CONSTRAINT c CHECK (priority > 0) NOT VALID;",
        "ALTER TABLE wishlist_items ADD CONSTRAINT u UNIQUE USING INDEX idx_u;",
        "CREATE TABLE t (id int NOT NULL);\nCREATE INDEX idx_t ON t (id);\nALTER TABLE t ADD COLUMN c int NOT NULL;",
        "ALTER TYPE wishlist_store ADD VALUE 'Amazon';",
        "-- migrate:no-transaction\nALTER TYPE wishlist_store ADD VALUE 'Amazon';\nUPDATE wishlist_items SET store = 'Amazon' WHERE false;",
        "-- migrate:no-transaction\nREINDEX TABLE CONCURRENTLY wishlist_items;",
        "UPDATE wishlist_items SET priority = 0;",
    ],
)
def test_safe_statements_and_new_tables_are_not_flagged(sql: str) -> None:
    assert lint(mig(sql)) == []


def test_the_trace_clears_a_type_change_that_does_not_rewrite() -> None:
    """Widening a varchar is metadata only: the trace saw no rewrite and no scan, so it is not flagged (squawk does)."""
    sql = "ALTER TABLE items ALTER COLUMN title TYPE varchar(50);"
    widen = StatementTrace(1, "AlterTableStmt", (Lock("items", "table", "AccessExclusiveLock"),))
    assert lint(mig(sql, trace=[widen])) == []
    rewrite = StatementTrace(1, "AlterTableStmt", (Lock("items", "table", "AccessExclusiveLock"),), rewrites=("items",))
    assert [f.rule for f in lint(mig(sql, trace=[rewrite]))] == ["changing-column-type"]


def test_the_trace_decides_whether_a_default_rewrites() -> None:
    sql = "ALTER TABLE items ADD COLUMN code text DEFAULT md5('x');"
    lock = (Lock("items", "table", "AccessExclusiveLock"),)
    assert lint(mig(sql, trace=[StatementTrace(1, "AlterTableStmt", lock)])) == []
    assert [f.rule for f in lint(mig(sql, trace=[StatementTrace(1, "AlterTableStmt", lock, rewrites=("items",))]))] == [
        "adding-field-with-default"
    ]


def test_the_trace_finds_rewrites_and_scans_no_rule_names() -> None:
    sql = "ALTER TABLE items ADD COLUMN total int GENERATED ALWAYS AS (price * 2) STORED;"
    st = StatementTrace(1, "AlterTableStmt", (Lock("items", "table", "AccessExclusiveLock"),), rewrites=("items",))
    assert [(f.rule, f.table) for f in lint(mig(sql, trace=[st]))] == [("adding-field-with-default", "items")]
    sql = "ALTER TABLE items ADD CONSTRAINT ex EXCLUDE USING btree (id WITH =);"
    st = StatementTrace(1, "AlterTableStmt", (Lock("items", "table", "AccessExclusiveLock"),), scans=("items",))
    assert [(f.rule, f.table) for f in lint(mig(sql, trace=[st]))] == [("table-scan", "items")]


def test_a_whole_table_update_in_a_ddl_transaction_is_flagged() -> None:
    sql = "ALTER TABLE items ADD COLUMN a int;\nUPDATE items SET a = 1;"
    assert [f.rule for f in lint(mig(sql))] == ["update-in-ddl-transaction"]
    assert lint(mig("-- migrate:no-transaction\n" + sql)) == []


def test_tables_the_trace_saw_created_are_exempt() -> None:
    sql = "SELECT 1;\nCREATE INDEX idx ON made (id);"
    made = StatementTrace(1, "SelectStmt", created=("made",))
    idx = StatementTrace(2, "IndexStmt", (Lock("made", "table", "ShareLock"),), scans=("made",), created=("idx",))
    assert lint(mig(sql, trace=[made, idx])) == []


def test_the_story_migration_is_clean() -> None:
    from tests.conftest import APP_SET

    text = (APP_SET / "0007_wishlist_items.sql").read_text()
    assert len(split_statements(text)) == 8
    assert lint(mig(text, "0007")) == []


@pytest.mark.parametrize("marker", ["require-concurrent-index-creation", "index-without-concurrently"])
def test_an_acknowledged_rule_is_kept_but_marked_under_its_old_name_too(marker: str) -> None:
    findings = lint(mig(f"-- migrate:allow {marker}\nCREATE INDEX idx_t ON wishlist_items (title);"))
    assert [(f.rule, f.acknowledged) for f in findings] == [("require-concurrent-index-creation", True)]


def test_a_scan_under_a_lock_that_blocks_nothing_is_not_flagged() -> None:
    """VALIDATE CONSTRAINT reads every row under SHARE UPDATE EXCLUSIVE: reads and writes go on."""
    sql = "ALTER TABLE items VALIDATE CONSTRAINT c;"
    st = StatementTrace(1, "AlterTableStmt", (Lock("items", "table", "ShareUpdateExclusiveLock"),), scans=("items",))
    assert lint(mig(sql, trace=[st])) == []


def test_validate_in_the_same_transaction_as_the_add_scans_under_the_adds_lock() -> None:
    sql = "ALTER TABLE items ADD CONSTRAINT c CHECK (n > 0) NOT VALID;\nALTER TABLE items VALIDATE CONSTRAINT c;"
    add = StatementTrace(1, "AlterTableStmt", (Lock("items", "table", "AccessExclusiveLock"),))
    validate = StatementTrace(2, "AlterTableStmt", (Lock("items", "table", "ShareUpdateExclusiveLock"),), scans=("items",))
    assert [(f.rule, f.line) for f in lint(mig(sql, trace=[add, validate]))] == [("constraint-missing-not-valid", 2)]
    assert [(f.rule, f.line) for f in lint(mig(sql))] == [("constraint-missing-not-valid", 2)]
    assert lint(mig("-- migrate:no-transaction\n" + sql, trace=[add, validate])) == []
