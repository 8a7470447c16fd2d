"""The migration protocol under contention and failure (issue #10): each test tries to break one guarantee."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from components.engine import migset
from components.engine.connection import ConnectionSettings
from components.engine.engine import Engine
from components.engine.errors import ChecksumMismatch, IncompleteMigration, LockTimeout, PermissionMissing, SetError, StatementFailed
from components.engine.options import RunOptions
from components.engine.snapshot import generate
from tests.conftest import REPO
from tests.integration.test_engine_safety import _role, cli_process
from tests.integration.test_wishlist_items_migration import ledger_rows, q

CIC = "-- migrate:no-transaction\nCREATE INDEX CONCURRENTLY idx_wishlist_title ON wishlist_items (title);\n"


def _with(admin: ConnectionSettings, set_copy: Path, files: dict[str, str]) -> migset.MigrationSet:
    for name, text in files.items():
        (set_copy / name).write_text(text)
    generate(admin, set_copy)
    return migset.load(set_copy)


def _rows(db: ConnectionSettings, n: int) -> None:
    with db.connect() as conn:
        conn.execute(
            "INSERT INTO wishlist_items (user_id, title, store) SELECT 'u' || g, 'set ' || g, 'LEGO' FROM generate_series(1, %s) g", (n,)
        )


def test_a_waiting_applier_does_not_deadlock_create_index_concurrently(
    fresh_db: ConnectionSettings, set_copy: Path, admin: ConnectionSettings
) -> None:
    mset = _with(admin, set_copy, {"0008_title_index.sql": CIC})
    Engine(fresh_db, mset).apply("0007")
    _rows(fresh_db, 2000)
    # A writer keeps a transaction open on the table for 3 s: the build must wait for it.
    writer = fresh_db.connect(autocommit=False)
    writer.execute("INSERT INTO wishlist_items (user_id, title, store) VALUES ('w', 'writer', 'LEGO')")
    first = cli_process(fresh_db, "apply", set_dir=set_copy)
    for _ in range(100):  # until the first applier's build is waiting on the writer's snapshot
        if q(fresh_db, "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'CREATE INDEX CONCURRENTLY%%'")[0][0]:
            break
        time.sleep(0.05)
    second = cli_process(fresh_db, "apply", set_dir=set_copy)
    time.sleep(3)
    writer.commit()
    writer.close()
    outs = [p.communicate(timeout=120) for p in (first, second)]
    assert [p.returncode for p in (first, second)] == [0, 0], outs
    assert "deadlock" not in "".join(o[1] for o in outs)
    assert q(fresh_db, "SELECT indisvalid FROM pg_index WHERE indexrelid = 'idx_wishlist_title'::regclass") == [(True,)]
    assert [r[0] for r in ledger_rows(fresh_db)] == ["0007", "0008"]


def test_a_frozen_lock_holder_is_named_when_the_waiter_gives_up(
    fresh_db: ConnectionSettings, set_copy: Path, admin: ConnectionSettings
) -> None:
    mset = _with(admin, set_copy, {"0008_slow.sql": "-- migrate:no-transaction\nSELECT pg_sleep(8);\n"})
    Engine(fresh_db, mset).apply("0007")
    holder = cli_process(fresh_db, "apply", set_dir=set_copy)  # a real applier, holding the lock mid-migration
    for _ in range(100):
        if q(fresh_db, "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(8)%%'")[0][0]:
            break
        time.sleep(0.05)
    os.kill(holder.pid, signal.SIGSTOP)  # frozen: it will not release the lock
    try:
        started = time.monotonic()
        with pytest.raises(LockTimeout) as err:
            Engine(fresh_db, mset, RunOptions(lock_wait_ms=800)).apply()
        assert time.monotonic() - started < 5
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.communicate()
    text = str(err.value)
    assert "application_name 'wishlist-migrate'" in text and "connected since" in text and "pg_sleep(8)" in text
    assert "Nothing was written" in text


def _stopped_at_the_second_of_two_indexes(
    db: ConnectionSettings, set_copy: Path, admin: ConnectionSettings
) -> tuple[migset.MigrationSet, str]:
    """0008 builds two indexes outside a transaction; duplicate rows make the second (unique) one fail."""
    text = (
        "-- migrate:no-transaction\n"
        "CREATE INDEX CONCURRENTLY idx_wishlist_title ON wishlist_items (title);\n"
        "CREATE UNIQUE INDEX CONCURRENTLY idx_one_per_user ON wishlist_items (user_id);\n"
    )
    mset = _with(admin, set_copy, {"0008_two_indexes.sql": text})
    Engine(db, mset).apply("0007")
    with db.connect() as conn:
        conn.execute("INSERT INTO wishlist_items (user_id, title, store) VALUES ('u', 'a', 'LEGO'), ('u', 'b', 'LEGO')")
    with pytest.raises(IncompleteMigration) as err:
        Engine(db, mset).apply()
    return mset, str(err.value)


def test_a_multi_statement_run_outside_a_transaction_reports_what_completed_and_resumes(
    fresh_db: ConnectionSettings, set_copy: Path, admin: ConnectionSettings
) -> None:
    mset, message = _stopped_at_the_second_of_two_indexes(fresh_db, set_copy, admin)
    assert "statements 1-1 of 2 completed and stay committed" in message and "statement 2 (line 3)" in message
    assert "nothing was rolled back" in message and "invalid index public.idx_one_per_user" in message
    status = subprocess.run(
        [sys.executable, "-m", "components.migrate", "status", "--set", str(set_copy), "--dsn", _dsn(fresh_db)],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "PGPASSWORD": fresh_db.password or ""},
        check=True,
    ).stdout
    assert "interrupted: 0008_two_indexes (up, outside a transaction) stopped after statement 1/2" in status
    first_oid = q(fresh_db, "SELECT 'idx_wishlist_title'::regclass::oid")
    with fresh_db.connect() as conn:
        conn.execute("DELETE FROM wishlist_items WHERE title = 'b'")
    assert [r["version"] for r in Engine(fresh_db, mset).apply().ran] == ["0008"]
    assert q(fresh_db, "SELECT 'idx_wishlist_title'::regclass::oid") == first_oid  # statement 1 was not run again
    assert Engine(fresh_db, mset).verify().ok


def _dsn(db: ConnectionSettings) -> str:
    return f"host={db.host} port={db.port} dbname={db.dbname} user={db.user} sslmode=disable"


def test_an_edited_prefix_of_an_interrupted_file_is_refused(
    fresh_db: ConnectionSettings, set_copy: Path, admin: ConnectionSettings
) -> None:
    _stopped_at_the_second_of_two_indexes(fresh_db, set_copy, admin)
    text = (set_copy / "0008_two_indexes.sql").read_text()
    edited = _with(admin, set_copy, {"0008_two_indexes.sql": text.replace("(title)", "(title, store)")})
    with pytest.raises(IncompleteMigration, match="first 1 statement\\(s\\) changed since then"):
        Engine(fresh_db, edited).apply()


def test_down_files_honour_no_transaction(fresh_db: ConnectionSettings, set_copy: Path, admin: ConnectionSettings) -> None:
    down = "-- migrate:no-transaction\nDROP INDEX CONCURRENTLY idx_wishlist_title;\n"
    mset = _with(admin, set_copy, {"0008_title_index.sql": CIC, "0008_title_index.down.sql": down})
    Engine(fresh_db, mset).apply()
    assert [r["version"] for r in Engine(fresh_db, mset).rollback("0007").ran] == ["0008"]
    assert q(fresh_db, "SELECT to_regclass('idx_wishlist_title')") == [(None,)]
    assert [r[0] for r in ledger_rows(fresh_db)] == ["0007"]


def test_ddl_waits_are_short_retried_and_app_queries_do_not_queue(
    fresh_db: ConnectionSettings, set_copy: Path, admin: ConnectionSettings
) -> None:
    mset = _with(admin, set_copy, {"0008_theme.sql": "ALTER TABLE wishlist_items ADD COLUMN theme text;\n"})
    Engine(fresh_db, mset).apply("0007")
    reader = fresh_db.connect(autocommit=False)
    reader.execute("SELECT count(*) FROM wishlist_items")  # a long reader holds ACCESS SHARE for 2.5 s
    threading.Timer(2.5, reader.rollback).start()
    progress: list[str] = []
    options = RunOptions(lock_timeout_ms=300, ddl_retries=10)
    result: list[object] = []
    worker = threading.Thread(target=lambda: result.append(Engine(fresh_db, mset, options, progress=progress.append).apply()))
    worker.start()
    time.sleep(0.1)
    delays = []
    with fresh_db.connect() as app:
        for _ in range(8):  # app queries issued while the ALTER waits
            t0 = time.monotonic()
            app.execute("SELECT count(*) FROM wishlist_items")
            delays.append(time.monotonic() - t0)
            time.sleep(0.1)
    worker.join(60)
    reader.close()
    assert result and [r[0] for r in ledger_rows(fresh_db)] == ["0007", "0008"]
    retries = [p for p in progress if "retry" in p]
    assert retries and "blocked by pid" in retries[0], progress
    assert max(delays) < 0.3 + 0.5, delays  # at most the DDL timeout plus a margin


def test_ddl_timeouts_exhausted_name_the_blocker_and_roll_back(
    fresh_db: ConnectionSettings, set_copy: Path, admin: ConnectionSettings
) -> None:
    mset = _with(admin, set_copy, {"0008_theme.sql": "ALTER TABLE wishlist_items ADD COLUMN theme text;\n"})
    Engine(fresh_db, mset).apply("0007")
    with fresh_db.connect(autocommit=False) as reader:
        reader.execute("SET application_name = 'long-report'")
        reader.execute("SELECT count(*) FROM wishlist_items")
        with pytest.raises(StatementFailed) as err:
            Engine(fresh_db, mset, RunOptions(lock_timeout_ms=100, ddl_retries=1)).apply()
    text = str(err.value)
    assert "rolled back" in text and "blocked by pid" in text and "long-report" in text and "SELECT count(*) FROM wishlist_items" in text
    assert [r[0] for r in ledger_rows(fresh_db)] == ["0007"]


def test_an_edited_snapshot_is_refused_and_apply_enforces_the_previewed_fingerprint(set_copy: Path, fresh_db: ConnectionSettings) -> None:
    path = set_copy / "meta" / "0007_snapshot.json"
    snap = json.loads(path.read_text())
    snap["catalog"].pop(next(k for k in snap["catalog"] if k.startswith("index:")))
    path.write_text(json.dumps(snap, indent=2, sort_keys=True) + "\n")
    with pytest.raises(ChecksumMismatch, match=r"0007_snapshot\.json was changed after the journal was written"):
        migset.load(set_copy)
    mset = migset.load(REPO / "migrations" / "app")
    with pytest.raises(ChecksumMismatch, match="meta/ changed since the preview"):
        Engine(fresh_db, mset).migrate_to("0007", expected_fingerprint="sha256:" + "0" * 64)
    assert q(fresh_db, "SELECT to_regtype('wishlist_store')") == [(None,)]


def test_preflight_names_each_missing_privilege(fresh_db: ConnectionSettings, set_copy: Path) -> None:
    Engine(fresh_db, migset.load(set_copy)).apply()
    Engine(fresh_db, migset.load(set_copy)).rollback("0")
    weak = _role(
        fresh_db,
        "GRANT CREATE, USAGE ON SCHEMA public TO {role}",
        "GRANT USAGE, CREATE ON SCHEMA migration_ledger TO {role}",
        "GRANT SELECT ON ALL TABLES IN SCHEMA migration_ledger TO {role}",
    )
    with pytest.raises(PermissionMissing) as err:
        Engine(weak, migset.load(set_copy)).apply()
    text = str(err.value)
    assert "INSERT, UPDATE, DELETE on table migration_ledger.applied" in text and "Nothing was written" in text
    assert q(fresh_db, "SELECT to_regtype('wishlist_store')") == [(None,)]


def test_a_renamed_set_directory_keeps_its_identity(fresh_db: ConnectionSettings, set_copy: Path, tmp_path: Path) -> None:
    Engine(fresh_db, migset.load(set_copy)).apply()
    renamed = tmp_path / "wishlist"
    set_copy.rename(renamed)
    assert [r["version"] for r in Engine(fresh_db, migset.load(renamed)).apply().ran] == []  # the journal names the set
    journal = renamed / "meta" / "_journal.json"
    journal.write_text(journal.read_text().replace('"set": "app"', '"set": "wishlist"'))
    with pytest.raises(SetError, match=r"set 'app' there has applied 0007 with exactly this set's checksums: the set was renamed"):
        Engine(fresh_db, migset.load(renamed)).apply()
    assert [r[0] for r in ledger_rows(fresh_db)] == ["0007"]


def test_a_schema_name_with_a_space_and_capitals_reaches_search_path_intact(fresh_db: ConnectionSettings) -> None:
    with fresh_db.connect() as conn:
        conn.execute('CREATE SCHEMA "Wish List"')
    with fresh_db.connect(search_path="Wish List") as conn:
        assert conn.execute("SELECT current_schema()").fetchone() == ("Wish List",)


def test_a_kill_between_a_statement_and_its_progress_cannot_leave_the_ledger_behind(
    fresh_db: ConnectionSettings, set_copy: Path, admin: ConnectionSettings
) -> None:
    text = "-- migrate:no-transaction\nALTER TABLE wishlist_items ADD COLUMN extra int;\nCREATE INDEX CONCURRENTLY idx_extra ON wishlist_items (extra);\n"
    mset = _with(admin, set_copy, {"0008_extra.sql": text})
    Engine(fresh_db, mset).apply("0007")
    code = (
        "import os, signal, sys\n"
        "from components.engine import ledger\n"
        "real = ledger.Ledger.progress\n"
        "def progress(self, conn, version, done, digest):\n"
        "    real(self, conn, version, done, digest)\n"
        "    if done == 1: os.kill(os.getpid(), signal.SIGKILL)\n"
        "ledger.Ledger.progress = progress\n"
        "from components import migrate\n"
        "sys.exit(migrate.main(sys.argv[1:]))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, "apply", "--set", str(set_copy), "--dsn", _dsn(fresh_db)],
        cwd=REPO,
        env={**os.environ, "PGPASSWORD": fresh_db.password or ""},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == -signal.SIGKILL
    # Killed before statement 1 and its progress committed together: neither happened, and the ledger says so.
    assert q(fresh_db, "SELECT status, statements_done FROM migration_ledger.applied WHERE version = '0008'") == [("started", 0)]
    assert q(fresh_db, "SELECT count(*) FROM pg_attribute WHERE attrelid = 'wishlist_items'::regclass AND attname = 'extra'") == [(0,)]
    assert [r["version"] for r in Engine(fresh_db, mset).apply().ran] == ["0008"]
    assert Engine(fresh_db, mset).verify().ok
