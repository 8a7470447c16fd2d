"""Impact of pending statements: the measured trace against live table sizes (pure, no database)."""

from __future__ import annotations

from components.engine.impact import TableSize, assess, human_bytes, mode_name
from components.engine.migset import Migration
from components.engine.sqltext import header_markers
from components.engine.trace import Lock, StatementTrace, Trace

BIG = TableSize(rows=12_000_000, total_bytes=int(2.1 * 1024**3), heap_bytes=int(1.5 * 1024**3))


def mig(sql: str, statements: list[StatementTrace], version: str = "0008") -> Migration:
    trace = Trace(version, "sha", tuple(statements))
    return Migration(version, "x", f"{version}_x.sql", sql, "sha", None, None, None, header_markers(sql), trace=trace)


def test_mode_names_and_sizes_read_like_the_docs() -> None:
    assert mode_name("AccessExclusiveLock") == "ACCESS EXCLUSIVE"
    assert mode_name("ShareUpdateExclusiveLock") == "SHARE UPDATE EXCLUSIVE"
    assert human_bytes(int(2.1 * 1024**3)) == "2.1 GB" and human_bytes(8192) == "8.0 kB" and human_bytes(10) == "10 bytes"


def test_a_rewrite_of_a_big_table_grows_with_its_size_and_blocks_reads_and_writes() -> None:
    sql = "ALTER TABLE items ALTER COLUMN price TYPE bigint;"
    (imp,) = assess(
        [mig(sql, [StatementTrace(1, "AlterTableStmt", (Lock("items", "table", "AccessExclusiveLock"),), ("items",))])], {"items": BIG}
    )
    assert (imp.table, imp.mode, imp.blocks, imp.rewrite, imp.duration) == (
        "items",
        "AccessExclusiveLock",
        "reads, writes",
        True,
        "grows with 2.1 GB",
    )
    assert imp.describe() == (
        "0008 line 1: ACCESS EXCLUSIVE on items (blocks reads, writes); rewrites; ~12,000,000 rows, 2.1 GB; grows with 2.1 GB: "
        + sql.rstrip(";")
    )


def test_a_plain_index_blocks_writes_for_a_time_that_grows_and_a_constant_default_is_instant() -> None:
    sql = "CREATE INDEX idx ON items (title);\nALTER TABLE items ADD COLUMN theme text DEFAULT 'x';"
    index = StatementTrace(
        1,
        "IndexStmt",
        (Lock("idx", "index", "AccessExclusiveLock"), Lock("items", "table", "ShareLock")),
        scans=("items",),
        created=("idx",),
    )
    column = StatementTrace(2, "AlterTableStmt", (Lock("items", "table", "AccessExclusiveLock"),))
    first, second = assess([mig(sql, [index, column])], {"items": BIG})
    assert (first.mode, first.blocks, first.scan, first.duration) == ("ShareLock", "writes", True, "grows with 2.1 GB")
    assert (second.mode, second.duration) == ("AccessExclusiveLock", "instant")


def test_a_lock_taken_earlier_in_the_transaction_is_still_held() -> None:
    sql = "ALTER TABLE items ADD COLUMN a int;\nUPDATE items SET a = 1;"
    first = StatementTrace(1, "AlterTableStmt", (Lock("items", "table", "AccessExclusiveLock"),))
    update = StatementTrace(2, "UpdateStmt", (), scans=("items",))
    _, imp = assess([mig(sql, [first, update])], {"items": BIG})
    assert (imp.table, imp.mode, imp.blocks, imp.duration) == ("items", "AccessExclusiveLock", "reads, writes", "grows with 2.1 GB")


def test_new_and_empty_tables_are_instant() -> None:
    sql = "CREATE TABLE t (id int);\nCREATE INDEX i ON t (id);\nCREATE INDEX j ON empty (id);"
    create = StatementTrace(1, "CreateStmt", (Lock("t", "table", "AccessExclusiveLock"),), created=("t",))
    index_new = StatementTrace(2, "IndexStmt", (Lock("t", "table", "ShareLock"),), scans=("t",), created=("i",))
    index_empty = StatementTrace(3, "IndexStmt", (Lock("empty", "table", "ShareLock"),), scans=("empty",), created=("j",))
    a, b, c = assess([mig(sql, [create, index_new, index_empty])], {"empty": TableSize(0, 8192, 0)})
    assert (a.new_table, a.duration, b.new_table, b.duration) == (True, "instant", True, "instant")
    assert c.duration == "instant (empty table)" and "~0 rows, 8.0 kB" in c.describe()


def test_without_a_trace_the_impact_says_unknown() -> None:
    m = Migration("0008", "x", "0008_x.sql", "SELECT 1;", "sha", None, None, None, {})
    (imp,) = assess([m], {})
    assert imp.duration == "unknown (no trace)" and not imp.measured


def test_a_weaker_statement_after_a_strong_one_says_where_the_lock_comes_from() -> None:
    sql = "ALTER TABLE items ADD COLUMN a int;\nCREATE INDEX idx ON items (a);"
    first = StatementTrace(1, "AlterTableStmt", (Lock("items", "table", "AccessExclusiveLock"),))
    index = StatementTrace(
        2, "IndexStmt", (Lock("items", "table", "ShareLock"), Lock("idx", "index", "AccessExclusiveLock")), scans=("items",)
    )
    _, imp = assess([mig(sql, [first, index])], {"items": BIG})
    assert (imp.mode, imp.own_mode, imp.held_since) == ("AccessExclusiveLock", "ShareLock", 1)
    assert "ACCESS EXCLUSIVE on items (held since line 1) (blocks reads, writes)" in imp.describe()
