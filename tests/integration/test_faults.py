"""Faults injected into real applies: killed backends, killed appliers, restarts, failing statements, races.

Each fault runs REPEAT times per injection point (WISHLIST_SOAK=1: SOAK_REPEAT). Outcomes are tallied into the
reliability report (docs/reliability.md) by tests/integration/reliability.py.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from components.engine import migset
from components.engine.connection import ConnectionSettings
from components.engine.engine import Engine
from components.engine.errors import IncompleteMigration, MigrationError, StatementFailed
from components.engine.snapshot import generate
from devtools import localpg
from tests.conftest import APP_SET
from tests.integration.reliability import record
from tests.integration.test_engine_safety import cli_process
from tests.integration.test_wishlist_items_migration import ledger_rows, q

SOAK = os.environ.get("WISHLIST_SOAK") == "1"
REPEAT = 10 if SOAK else 2
POINTS = (1, 2, 3)
SLOW = (
    "CREATE TABLE fault_a (id int);\nSELECT pg_sleep(0.801);\n"
    "CREATE TABLE fault_b (id int);\nSELECT pg_sleep(0.802);\n"
    "CREATE INDEX idx_fault_b ON fault_b (id);\nSELECT pg_sleep(0.803);\n"
)


@pytest.fixture(scope="module")
def slow_set(admin: ConnectionSettings, tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("slow") / "app"
    shutil.copytree(APP_SET, target)
    (target / "0008_slow.sql").write_text(SLOW)
    (target / "0008_slow.down.sql").write_text("DROP TABLE fault_b;\nDROP TABLE fault_a;\n")
    generate(admin, target)
    return target


def _wait_for(db: ConnectionSettings, query_text: str, timeout: float = 20.0) -> int:
    """pid of the applier backend once it runs `query_text`."""
    deadline = time.monotonic() + timeout
    with db.connect() as watcher:
        while time.monotonic() < deadline:
            row = watcher.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND query = %s AND state = 'active'", (query_text,)
            ).fetchone()
            if row:
                return int(row[0])
            time.sleep(0.02)
    raise AssertionError(f"the applier never ran {query_text!r}")


def _assert_unchanged_and_recoverable(db: ConnectionSettings, mset: migset.MigrationSet, fault: str) -> None:
    """Schema and ledger exactly as before 0008, no advisory lock left, and the next run completes."""
    assert q(db, "SELECT to_regclass('fault_a'), to_regclass('fault_b')") == [(None, None)], fault
    assert [r[0] for r in ledger_rows(db)] == ["0007"], fault
    deadline = time.monotonic() + 10
    while q(db, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'") != [(0,)]:
        assert time.monotonic() < deadline, f"{fault}: advisory lock still held"
        time.sleep(0.05)
    assert Engine(db, mset).verify().ok, fault
    assert [r["version"] for r in Engine(db, mset).apply().ran] == ["0008"], fault
    assert Engine(db, mset).verify().ok


def _fresh(admin: ConnectionSettings, mset: migset.MigrationSet) -> ConnectionSettings:
    from psycopg import sql

    name = f"f_{secrets.token_hex(4)}"
    with admin.connect() as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    db = admin.with_database(name)
    Engine(db, mset).apply("0007")
    return db


@pytest.mark.parametrize("point", POINTS)
def test_backend_terminated_mid_migration(admin: ConnectionSettings, slow_set: Path, point: int) -> None:
    mset = migset.load(slow_set)
    for _ in range(REPEAT):
        db = _fresh(admin, mset)
        errors: list[BaseException] = []
        thread = threading.Thread(target=_catch, args=(errors, Engine(db, mset).apply))
        thread.start()
        pid = _wait_for(db, f"SELECT pg_sleep(0.80{point})")
        with db.connect() as killer:
            killer.execute("SELECT pg_terminate_backend(%s)", (pid,))
        thread.join(30)
        assert len(errors) == 1 and isinstance(errors[0], StatementFailed), errors
        assert "connection" in str(errors[0]) and (db.password or "!") not in str(errors[0])
        _assert_unchanged_and_recoverable(db, mset, f"terminate at point {point}")
        record("backend terminated (pg_terminate_backend) mid-migration", f"point {point}", survived=True)


@pytest.mark.parametrize("point", POINTS)
def test_applier_killed_with_sigkill(admin: ConnectionSettings, slow_set: Path, point: int) -> None:
    mset = migset.load(slow_set)
    for _ in range(REPEAT):
        db = _fresh(admin, mset)
        proc = cli_process(db, "apply", "--quiet", set_dir=slow_set)
        pid = _wait_for(db, f"SELECT pg_sleep(0.80{point})")
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        deadline = time.monotonic() + 15  # the server notices the dead client (client_connection_check_interval)
        while q(db, "SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (pid,)) != [(0,)]:
            assert time.monotonic() < deadline, "the dead applier's backend lingers"
            time.sleep(0.05)
        _assert_unchanged_and_recoverable(db, mset, f"SIGKILL at point {point}")
        record("applier process killed (SIGKILL) mid-migration", f"point {point}", survived=True)


@pytest.fixture
def own_cluster() -> Iterator[localpg.Cluster]:
    with localpg.temp_cluster("wishlist-restart-pg-") as cluster:
        yield cluster


def test_server_restarted_during_apply(own_cluster: localpg.Cluster, slow_set: Path) -> None:
    db = ConnectionSettings(
        port=own_cluster.port,
        dbname="wishlist",
        user=localpg.ADMIN_USER,
        password=own_cluster.admin_password,
        sslmode="disable",
        connect_timeout=5,
    )
    mset = migset.load(slow_set)
    for i in range(REPEAT):
        if i:
            Engine(db, mset).rollback("0007")
        else:
            Engine(db, mset).apply("0007")
        errors: list[BaseException] = []
        thread = threading.Thread(target=_catch, args=(errors, Engine(db, mset).apply))
        thread.start()
        _wait_for(db, f"SELECT pg_sleep(0.80{1 + i % 3})")
        own_cluster.stop("fast")
        own_cluster.start()
        thread.join(30)
        assert len(errors) == 1 and isinstance(errors[0], MigrationError), errors
        assert "connection" in str(errors[0]) or "terminat" in str(errors[0])
        _assert_unchanged_and_recoverable(db, mset, "restart")
        record("server restarted (pg_ctl restart -m fast) during apply", f"point {1 + i % 3}", survived=True)


def test_failure_in_the_last_statement_leaves_nothing(admin: ConnectionSettings, set_copy: Path) -> None:
    (set_copy / "0008_bad_end.sql").write_text("CREATE TABLE fault_a (id int);\nCREATE INDEX idx_a ON fault_a (id);\nSELECT 1 / 0;\n")
    # meta/ cannot be generated from a failing file: write the journal by hand as a developer might have.
    good = "CREATE TABLE fault_a (id int);\nCREATE INDEX idx_a ON fault_a (id);\n"
    (set_copy / "0008_bad_end.sql").write_text(good)
    generate(admin, set_copy)
    (set_copy / "0008_bad_end.sql").write_text(good + "SELECT 1 / 0;\n")
    journal = set_copy / "meta/_journal.json"
    journal.write_text(
        journal.read_text().replace(migset.sha256_hex(good.encode()), migset.sha256_hex((good + "SELECT 1 / 0;\n").encode()))
    )
    mset = migset.load(set_copy)
    db = _fresh(admin, mset)
    with pytest.raises(StatementFailed, match=r"statement 3/3 \(line 3\).*division by zero.*ledger is unchanged"):
        Engine(db, mset).apply()
    assert q(db, "SELECT to_regclass('fault_a'), to_regclass('idx_a')") == [(None, None)]
    assert [r[0] for r in ledger_rows(db)] == ["0007"]
    record("migration failing in its last statement", "statement 3 of 3", survived=True)


def test_non_transactional_failure_is_honest_and_apply_resumes(admin: ConnectionSettings, set_copy: Path) -> None:
    text = "-- migrate:no-transaction\nCREATE UNIQUE INDEX CONCURRENTLY idx_one_item_per_user ON wishlist_items (user_id);\n"
    (set_copy / "0008_unique_user.sql").write_text(text)
    generate(admin, set_copy)
    mset = migset.load(set_copy)
    db = _fresh(admin, mset)
    with db.connect() as conn:
        conn.execute("INSERT INTO wishlist_items (user_id, title, store) VALUES ('u', 'a', 'LEGO'), ('u', 'b', 'LEGO')")
    with pytest.raises(IncompleteMigration) as err:
        Engine(db, mset).apply()
    message = str(err.value)
    # True of the database when it prints: nothing rolled back, the invalid index named, and how apply resumes.
    assert "rolled back" not in message.replace("nothing was rolled back", "")
    assert "could not create unique index" in message and "no statement before it had completed" in message
    assert "invalid index public.idx_one_item_per_user" in message and "resumes at statement 1" in message
    assert q(db, "SELECT indisvalid FROM pg_index WHERE indexrelid = 'idx_one_item_per_user'::regclass") == [(False,)]
    assert q(db, "SELECT status, statements_done FROM migration_ledger.applied WHERE version = '0008'") == [("started", 0)]
    # The cause fixed, apply resumes with no hand-written SQL: it drops the invalid index concurrently and builds it again.
    with db.connect() as conn:
        conn.execute("DELETE FROM wishlist_items WHERE title = 'b'")
    assert [r["version"] for r in Engine(db, mset).apply().ran] == ["0008"]
    assert q(db, "SELECT indisvalid FROM pg_index WHERE indexrelid = 'idx_one_item_per_user'::regclass") == [(True,)]
    assert Engine(db, mset).verify().ok
    record("non-transactional migration failing (invalid index left)", "honest error; apply resumed and rebuilt it", survived=True)


def test_eight_concurrent_applier_processes(admin: ConnectionSettings, slow_set: Path) -> None:
    mset = migset.load(slow_set)
    for run in range(REPEAT):
        db = _fresh(admin, mset)
        timeout = "500" if run % 2 else "30000"  # odd runs: most appliers give up with a clear lock-timeout error
        procs = [cli_process(db, "apply", "--quiet", "--lock-timeout", timeout, set_dir=slow_set) for _ in range(8)]
        results = [(p.wait(60), *p.communicate()) for p in procs]
        applied = [r for r in results if r[0] == 0 and r[1].startswith("applied 0008")]
        idle = [r for r in results if r[0] == 0 and r[1].startswith("nothing to apply")]
        timed_out = [r for r in results if r[0] == 1 and "holds the lock" in r[2]]
        assert len(applied) == 1 and len(applied) + len(idle) + len(timed_out) == 8, results
        assert q(db, "SELECT version, count(*) FROM migration_ledger.applied GROUP BY version ORDER BY 1") == [("0007", 1), ("0008", 1)]
        assert Engine(db, mset).verify().ok
        record(
            "8 concurrent applier processes",
            f"lock timeout {timeout} ms: 1 applied, {len(idle)} found nothing, {len(timed_out)} timed out",
            survived=True,
        )


def _catch(errors: list[BaseException], fn: Any) -> None:
    try:
        fn()
    except BaseException as exc:
        errors.append(exc)


@pytest.mark.parametrize("where", ["timeouts", "ledger row"])
def test_a_failure_of_the_engines_own_query_in_a_step_says_when_and_rolls_back(
    where: str, fresh_db: ConnectionSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The step's pipeline holds the engine's queries around the migration's statements: a failure there must say
    whether any statement had run, and nothing may be committed."""
    from components.engine import runner

    if where == "timeouts":
        monkeypatch.setattr(runner, "timeouts_query", lambda options, local: ("SELECT 1 / 0 AS w", ()))
        expected = "before its first statement ran"
    else:
        real = runner.Ledger.record_statement

        def bad_status(self: Any, **row: Any) -> Any:  # the ledger's CHECK (status IN ('applied', 'started')) refuses it
            return real(self, **{**row, "status": "sideways"})

        monkeypatch.setattr(runner.Ledger, "record_statement", bad_status)
        expected = "after every statement ran"
    with pytest.raises(StatementFailed, match=expected) as failure:
        Engine(fresh_db, migset.load(APP_SET)).apply()
    assert "rolled back, the ledger is unchanged" in str(failure.value)
    with fresh_db.connect() as conn:
        assert conn.execute("SELECT to_regclass('wishlist_items'), to_regtype('wishlist_store')").fetchone() == (None, None)
        assert conn.execute("SELECT count(*) FROM migration_ledger.applied").fetchone() == (0,)
