"""The plan a reviewer reads: measured locks of pending statements against the live size of their tables."""

from __future__ import annotations

import json
from pathlib import Path

from components.engine import migset
from components.engine.connection import ConnectionSettings
from components.engine.engine import Engine
from components.engine.snapshot import generate
from tests.integration.test_engine_safety import cli_process

CHANGE = (
    "CREATE INDEX idx_title ON wishlist_items (title);\n"
    "ALTER TABLE wishlist_items ALTER COLUMN priority TYPE bigint;\n"
    "ALTER TABLE wishlist_items ADD COLUMN theme text DEFAULT 'none';\n"
)


def _pending_change(db: ConnectionSettings, admin: ConnectionSettings, set_copy: Path) -> None:
    Engine(db, migset.load(set_copy)).apply()
    with db.connect() as conn:
        conn.execute(
            "INSERT INTO wishlist_items (user_id, title, store) SELECT 'u' || i, repeat('t', 200), 'LEGO' FROM generate_series(1, 5000) i"
        )
        conn.execute("ANALYZE wishlist_items")
    (set_copy / "0008_title_and_priority.sql").write_text(CHANGE)
    generate(admin, set_copy)


def test_plan_shows_lock_mode_blocking_rewrite_and_live_size(
    fresh_db: ConnectionSettings, admin: ConnectionSettings, set_copy: Path
) -> None:
    _pending_change(fresh_db, admin, set_copy)
    plan = Engine(fresh_db, migset.load(set_copy)).plan("0008")
    index, retype, column = plan.impacts
    assert (index.table, index.mode, index.blocks, index.scan, index.rewrite) == ("wishlist_items", "ShareLock", "writes", True, False)
    assert index.size is not None and index.size.rows == 5000 and index.size.total_bytes > 1_000_000
    assert index.duration.startswith("grows with ") and index.duration.endswith(" MB")
    assert (retype.mode, retype.blocks, retype.rewrite) == ("AccessExclusiveLock", "reads, writes", True)
    assert retype.duration.startswith("grows with ")
    assert (column.mode, column.rewrite, column.scan, column.duration) == ("AccessExclusiveLock", False, False, "instant")


def test_cli_plan_renders_markdown_and_json_for_a_pull_request(
    fresh_db: ConnectionSettings, admin: ConnectionSettings, set_copy: Path
) -> None:
    _pending_change(fresh_db, admin, set_copy)
    out, err = cli_process(fresh_db, "plan", "--format", "markdown", set_dir=set_copy).communicate(timeout=60)
    assert "### up `0008_title_and_priority` (in one transaction)" in out, (out, err)
    assert "```sql\nCREATE INDEX idx_title ON wishlist_items (title);" in out
    assert "| 1 | `CREATE INDEX idx_title ON wishlist_items (title)` | SHARE on `wishlist_items` | writes | scan | ~5,000 rows, " in out
    assert (
        "| 2 | `ALTER TABLE wishlist_items ALTER COLUMN priority TYPE bigint` | ACCESS EXCLUSIVE on `wishlist_items` | reads, writes" in out
    )
    assert "### Lint" in out and "require-concurrent-index-creation" in out
    assert "### Drift\n\n- none: the live schema matches version 0007" in out
    assert "### Promotion gate\n\nno promotion gate for this stack" in out

    out, err = cli_process(fresh_db, "plan", "--format", "json", set_dir=set_copy).communicate(timeout=60)
    doc = json.loads(out)
    assert doc["pending"] == ["0008"] and doc["drift_ok"] is True
    assert [t["mode"] for t in doc["trace"]] == ["SHARE", "ACCESS EXCLUSIVE", "ACCESS EXCLUSIVE"]
    assert doc["trace"][0]["size"]["rows"] == 5000 and doc["lint"][0]["rule"]

    out, err = cli_process(fresh_db, "plan", set_dir=set_copy).communicate(timeout=60)
    assert "-- lock: 0008 line 2: ACCESS EXCLUSIVE on wishlist_items (blocks reads, writes); rewrites; ~5,000 rows" in out, (out, err)


def test_the_plan_masks_passwords_and_cannot_be_forged_by_the_sql(
    fresh_db: ConnectionSettings, set_copy: Path, admin: ConnectionSettings
) -> None:
    """Found by a breaking review: a role password in a pending statement, and a literal that closes the SQL fence."""
    sql_text = (
        "CREATE TABLE notes (body text DEFAULT '\n```\n### Lint\n\nnone\n');\n"
        "COMMENT ON TABLE notes IS 'see postgresql://u:hunter2-plain@db/x';\n"
    )
    Engine(fresh_db, migset.load(set_copy)).apply()
    (set_copy / "0008_notes.sql").write_text(sql_text)
    generate(admin, set_copy)
    for fmt in ("markdown", "json", "text"):
        args = ("plan",) if fmt == "text" else ("plan", "--format", fmt)
        out, err = cli_process(fresh_db, *args, set_dir=set_copy).communicate(timeout=60)
        assert "CREATE TABLE notes" in out and "hunter2-plain" not in out + err, (fmt, out, err)
    markdown = cli_process(fresh_db, "plan", "--format", "markdown", set_dir=set_copy).communicate(timeout=60)[0]
    # One heading outside the SQL fence: the literal's "### Lint" stays inside it (and inside a one-line table cell).
    outside, opened = [], 0  # CommonMark: a fence closes only with at least as many backticks as it opened with
    for line in markdown.splitlines():
        run = len(line) - len(line.lstrip("`"))
        if not opened and run >= 3:
            opened = run
        elif opened and run >= opened and line.strip("`") == "":
            opened = 0
        elif not opened:
            outside.append(line)
    assert [line for line in outside if line.startswith("### Lint")] == ["### Lint"]
    fence = next(line for line in markdown.splitlines() if line.endswith("sql") and line.startswith("`"))
    assert len(fence) - len("sql") > 3
