"""The lock trace `snapshot` measures on its throwaway database: locks, rewrites and validation scans per statement."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from components.engine import migset
from components.engine.connection import ConnectionSettings
from components.engine.errors import ChecksumMismatch, SetError
from components.engine.snapshot import generate, replay
from components.engine.trace import Lock, StatementTrace
from tests.conftest import REPO

BASE = "CREATE TABLE items (id bigint PRIMARY KEY, title text, price int);\n"


def traced(admin: ConnectionSettings, tmp_path: Path, sql: str) -> StatementTrace:
    """The trace of the single statement of migration 0002, applied after a base table."""
    set_dir = tmp_path / "set"
    set_dir.mkdir()
    (set_dir / "0001_base.sql").write_text(BASE)
    (set_dir / "0002_change.sql").write_text(sql)
    generate(admin, set_dir)
    trace = migset.load(set_dir).get("0002").trace
    assert trace is not None and trace.measured
    (stmt,) = trace.statements
    return stmt


def modes(stmt: StatementTrace, relation: str = "items") -> set[str]:
    return {lk.mode for lk in stmt.locks if lk.relation == relation}


def test_plain_create_index_takes_share_lock_and_scans(admin: ConnectionSettings, tmp_path: Path) -> None:
    stmt = traced(admin, tmp_path, "CREATE INDEX idx_title ON items (title);\n")
    assert modes(stmt) == {"ShareLock"}
    assert stmt.rewrites == () and stmt.scans == ("items",) and stmt.created == ("idx_title",)
    assert Lock("idx_title", "index", "AccessExclusiveLock") in stmt.locks


def test_add_column_with_volatile_default_rewrites_under_access_exclusive(admin: ConnectionSettings, tmp_path: Path) -> None:
    stmt = traced(admin, tmp_path, "ALTER TABLE items ADD COLUMN seen_at timestamptz DEFAULT clock_timestamp();\n")
    assert "AccessExclusiveLock" in modes(stmt)
    assert stmt.rewrites == ("items",)


def test_add_column_with_constant_default_is_instant(admin: ConnectionSettings, tmp_path: Path) -> None:
    stmt = traced(admin, tmp_path, "ALTER TABLE items ADD COLUMN theme text NOT NULL DEFAULT 'none';\n")
    assert modes(stmt) == {"AccessExclusiveLock"}
    assert stmt.rewrites == () and stmt.scans == ()


def test_alter_column_type_rewrites(admin: ConnectionSettings, tmp_path: Path) -> None:
    stmt = traced(admin, tmp_path, "ALTER TABLE items ALTER COLUMN price TYPE bigint;\n")
    assert "AccessExclusiveLock" in modes(stmt) and stmt.rewrites == ("items",)


def test_widening_a_varchar_neither_rewrites_nor_scans(admin: ConnectionSettings, tmp_path: Path) -> None:
    set_dir = tmp_path / "set"
    set_dir.mkdir()
    (set_dir / "0001_base.sql").write_text("CREATE TABLE items (id int, title varchar(10));\n")
    (set_dir / "0002_widen.sql").write_text("ALTER TABLE items ALTER COLUMN title TYPE varchar(50);\n")
    generate(admin, set_dir)
    trace = migset.load(set_dir).get("0002").trace
    assert trace is not None
    assert trace.statements[0].rewrites == () and trace.statements[0].scans == ()


def test_set_not_null_scans_without_rewriting(admin: ConnectionSettings, tmp_path: Path) -> None:
    stmt = traced(admin, tmp_path, "ALTER TABLE items ALTER COLUMN title SET NOT NULL;\n")
    assert modes(stmt) == {"AccessExclusiveLock"}
    assert stmt.rewrites == () and stmt.scans == ("items",)


def test_check_not_valid_does_not_scan_but_validate_does(admin: ConnectionSettings, tmp_path: Path) -> None:
    set_dir = tmp_path / "set"
    set_dir.mkdir()
    (set_dir / "0001_base.sql").write_text(BASE)
    (set_dir / "0002_check.sql").write_text(
        "ALTER TABLE items ADD CONSTRAINT price_positive CHECK (price > 0) NOT VALID;\n"
        "ALTER TABLE items VALIDATE CONSTRAINT price_positive;\n"
    )
    generate(admin, set_dir)
    trace = migset.load(set_dir).get("0002").trace
    assert trace is not None
    added, validated = trace.statements
    assert added.scans == () and modes(added) == {"AccessExclusiveLock"}
    assert validated.scans == ("items",) and modes(validated) == {"ShareUpdateExclusiveLock"}


def test_create_index_concurrently_takes_share_update_exclusive(admin: ConnectionSettings, tmp_path: Path) -> None:
    stmt = traced(admin, tmp_path, "-- migrate:no-transaction\nCREATE INDEX CONCURRENTLY idx_title ON items (title);\n")
    assert modes(stmt) == {"ShareUpdateExclusiveLock"} and stmt.measured  # seen while the build waited for a snapshot
    assert stmt.rewrites == () and "idx_title" in stmt.created


def test_the_trace_is_covered_by_the_journal(admin: ConnectionSettings, set_copy: Path) -> None:
    generate(admin, set_copy)
    trace_file = set_copy / "meta" / "0007_trace.json"
    journal = json.loads((set_copy / "meta" / "_journal.json").read_text())
    assert journal["entries"][0]["trace"]["file"] == "0007_trace.json"
    assert migset.load(set_copy).get("0007").trace is not None
    assert replay(admin, migset.load(set_copy)) == []

    data = json.loads(trace_file.read_text())
    data["statements"][0]["locks"] = []
    trace_file.write_text(json.dumps(data))
    with pytest.raises(ChecksumMismatch, match=r"0007_trace\.json was changed after the journal"):
        migset.load(set_copy)

    trace_file.unlink()
    with pytest.raises(SetError, match=r"0007_trace\.json is missing"):
        migset.load(set_copy)


def test_an_unmeasured_trace_is_stale_for_check(admin: ConnectionSettings, set_copy: Path) -> None:
    snapshots = {"0007": json.loads((set_copy / "meta" / "0007_snapshot.json").read_text())["catalog"]}
    migset.write_meta(set_copy, "public", snapshots)  # no traces: written unmeasured
    assert replay(admin, migset.load(set_copy)) == ["0007"]
    assert migset.stale_traces(migset.load(set_copy)) == ["0007: its lock trace was never measured"]
    proc = subprocess.run(
        [sys.executable, "-m", "components.migrate", "check", "--offline", "--set", str(set_copy)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1 and "lock trace in meta/ does not describe the files" in proc.stderr, proc.stderr


def test_a_trace_measured_on_other_bytes_is_stale(admin: ConnectionSettings, set_copy: Path) -> None:
    (set_copy / "0008_idx.sql").write_text("CREATE INDEX idx_notes ON wishlist_items (notes);\n")
    generate(admin, set_copy)
    edited = "CREATE INDEX idx_notes ON wishlist_items (title);\n"
    journal = set_copy / "meta" / "_journal.json"
    old = migset.sha256_hex((set_copy / "0008_idx.sql").read_bytes())
    (set_copy / "0008_idx.sql").write_text(edited)
    journal.write_text(journal.read_text().replace(old, migset.sha256_hex(edited.encode())))
    (problem,) = migset.stale_traces(migset.load(set_copy))
    assert problem.startswith("0008: its lock trace was measured on other bytes")
