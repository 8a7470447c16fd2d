"""Permissions, read-only sessions, locking, tampering and drift, against a real PostgreSQL."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from components.engine import migset
from components.engine.connection import ConnectionSettings
from components.engine.engine import Engine
from components.engine.errors import (
    ChecksumMismatch,
    DriftDetected,
    LockTimeout,
    NotWritable,
    OutOfOrder,
    PermissionMissing,
    SetError,
    VerifyFailed,
)
from components.engine.guards import advisory_key
from components.engine.snapshot import generate
from tests.conftest import APP_SET, REPO
from tests.integration.test_wishlist_items_migration import engine_for, ledger_rows, q


def _schema_is_untouched(db: ConnectionSettings) -> None:
    assert q(db, "SELECT to_regtype('wishlist_store'), to_regclass('wishlist_items'), to_regnamespace('migration_ledger')") == [
        (None, None, None)
    ]


def _role(db: ConnectionSettings, *grants: str) -> ConnectionSettings:
    name, password = f"r_{secrets.token_hex(4)}", secrets.token_hex(12)
    with db.connect() as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(name), sql.Literal(password)))
        for grant in grants:
            conn.execute(sql.SQL(grant).format(role=sql.Identifier(name), db=sql.Identifier(db.dbname)))
    return replace(db, user=name, password=password)


def test_missing_permissions_fail_before_any_write(fresh_db: ConnectionSettings) -> None:
    weak = _role(fresh_db, "GRANT CONNECT ON DATABASE {db} TO {role}")
    with pytest.raises(PermissionMissing) as err:
        engine_for(weak).apply()
    text = str(err.value)
    # Each privilege is named on its own (PUBLIC keeps USAGE on public, so only CREATE is missing).
    assert f"role {weak.user}" in text and "CREATE on schema public" in text and "CREATE on database" in text
    assert "GRANT CREATE ON SCHEMA public" in text and "USAGE" not in text.partition("Fix:")[0].split("on schema public")[0][-20:]
    _schema_is_untouched(fresh_db)


def test_role_with_schema_create_but_no_database_create_is_told_about_the_ledger(fresh_db: ConnectionSettings) -> None:
    role = _role(fresh_db, "GRANT CREATE, USAGE ON SCHEMA public TO {role}")
    with pytest.raises(PermissionMissing, match="create the ledger schema migration_ledger"):
        engine_for(role).apply()
    _schema_is_untouched(fresh_db)


def test_read_only_connection_fails_before_any_write(fresh_db: ConnectionSettings) -> None:
    with fresh_db.connect() as conn:
        conn.execute(sql.SQL("ALTER DATABASE {} SET default_transaction_read_only = on").format(sql.Identifier(fresh_db.dbname)))
    with pytest.raises(NotWritable, match="read-only"):
        engine_for(fresh_db).apply()
    with fresh_db.connect() as conn:
        conn.execute("SET default_transaction_read_only = off")
        assert conn.execute("SELECT to_regtype('wishlist_store'), to_regnamespace('migration_ledger')").fetchone() == (None, None)


def test_lock_held_elsewhere_times_out_clearly(fresh_db: ConnectionSettings) -> None:
    with fresh_db.connect() as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (advisory_key("app"),))
        with pytest.raises(LockTimeout, match=r"is held by pid \d+ \(application_name 'wishlist-migrate'.*connected since"):
            engine_for(fresh_db, lock_wait_ms=300).apply()
    assert q(fresh_db, "SELECT to_regtype('wishlist_store')") == [(None,)]
    assert q(fresh_db, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'") == [(0,)]


def cli_process(db: ConnectionSettings, *args: str, set_dir: Path = APP_SET) -> subprocess.Popen[str]:
    env = {**os.environ, "PGPASSWORD": db.password or ""}
    dsn = f"host={db.host} port={db.port} dbname={db.dbname} user={db.user} sslmode=disable"
    return subprocess.Popen(
        [sys.executable, "-m", "components.migrate", *args, "--dsn", dsn, "--set", str(set_dir)],
        cwd=REPO,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def test_two_concurrent_appliers_one_applies_the_other_finds_nothing(fresh_db: ConnectionSettings) -> None:
    # Hold the lock so that both processes are surely waiting at once, then let them go.
    with fresh_db.connect() as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (advisory_key("app"),))
        procs = [cli_process(fresh_db, "apply", "--quiet") for _ in range(2)]
        with fresh_db.connect() as watcher:
            # Waiters poll pg_try_advisory_lock from the client: none waits inside a statement.
            for _ in range(200):
                waiting = watcher.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE query LIKE %s AND pid <> pg_backend_pid()", ("%pg_try_advisory_lock%",)
                ).fetchone()
                if waiting and waiting[0] == 2:
                    break
                watcher.execute("SELECT pg_sleep(0.05)")
            assert waiting == (2,)
            assert watcher.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted").fetchone() == (0,)
    outs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    stdout = sorted(o[0] for o in outs)
    assert stdout[0].startswith("applied 0007") and stdout[1].startswith("nothing to apply"), stdout
    assert [r[0] for r in ledger_rows(fresh_db)] == ["0007"]
    assert engine_for(fresh_db).verify().ok


def test_tampered_applied_file_is_refused(fresh_db: ConnectionSettings, set_copy: Path) -> None:
    Engine(fresh_db, migset.load(set_copy)).apply()
    up = set_copy / "0007_wishlist_items.sql"
    up.write_text(up.read_text().replace("'Other'", "'Other', 'Amazon'"))
    # Without a new journal the set itself is refused...
    with pytest.raises(ChecksumMismatch, match=r"0007_wishlist_items\.sql was changed after the journal"):
        migset.load(set_copy)
    # ...and with a regenerated journal the ledger still catches it, naming the file.
    generate(fresh_db, set_copy)
    with pytest.raises(ChecksumMismatch, match=r"0007_wishlist_items\.sql was edited after it was applied"):
        Engine(fresh_db, migset.load(set_copy)).apply()
    assert enum_count(fresh_db) == 5


def enum_count(db: ConnectionSettings) -> int:
    return int(q(db, "SELECT count(*) FROM pg_enum WHERE enumtypid = 'wishlist_store'::regtype")[0][0])


def _add_migration(set_copy: Path, db: ConnectionSettings, version: str, up: str, down: str | None = None) -> None:
    (set_copy / f"{version}_next.sql").write_text(up)
    if down is not None:
        (set_copy / f"{version}_next.down.sql").write_text(down)
    generate(db, set_copy)


def test_next_migration_applies_in_order_and_rolls_back(fresh_db: ConnectionSettings, set_copy: Path, admin: ConnectionSettings) -> None:
    Engine(fresh_db, migset.load(set_copy)).apply()
    _add_migration(
        set_copy, admin, "0008", "ALTER TABLE wishlist_items ADD COLUMN theme text;\n", "ALTER TABLE wishlist_items DROP COLUMN theme;\n"
    )
    engine = Engine(fresh_db, migset.load(set_copy))
    assert engine.plan(engine.mset.latest).pending == ["0008"]
    result = engine.apply()
    assert [r["version"] for r in result.ran] == ["0008"] and engine.verify().ok
    engine.rollback("0007")
    assert q(fresh_db, "SELECT count(*) FROM information_schema.columns WHERE table_name = 'wishlist_items' AND column_name = 'theme'") == [
        (0,)
    ]
    assert [r[0] for r in ledger_rows(fresh_db)] == ["0007"] and engine.verify().ok


def test_out_of_order_file_is_refused(fresh_db: ConnectionSettings, set_copy: Path, admin: ConnectionSettings) -> None:
    _add_migration(set_copy, admin, "0009", "CREATE TABLE later (id int);\n")
    Engine(fresh_db, migset.load(set_copy)).apply()
    _add_migration(set_copy, admin, "0008", "CREATE TABLE earlier (id int);\n")
    with pytest.raises(OutOfOrder, match=r"renumber it above 0009"):
        Engine(fresh_db, migset.load(set_copy)).apply()


def test_verify_failure_rolls_the_migration_back(fresh_db: ConnectionSettings, set_copy: Path, admin: ConnectionSettings) -> None:
    Engine(fresh_db, migset.load(set_copy)).apply()
    _add_migration(set_copy, admin, "0008", "CREATE INDEX idx_notes ON wishlist_items (notes);\n")
    # The file changes after its snapshot was taken, and the journal is patched to match: only verify can notice.
    path = set_copy / "0008_next.sql"
    path.write_text("CREATE INDEX idx_notes ON wishlist_items (title);\n")
    journal = set_copy / "meta/_journal.json"
    journal.write_text(journal.read_text().replace(_journal_sha(set_copy, "0008"), migset.sha256_hex(path.read_bytes())))
    with pytest.raises(VerifyFailed, match="index idx_notes differs"):
        Engine(fresh_db, migset.load(set_copy)).apply()
    assert [r[0] for r in ledger_rows(fresh_db)] == ["0007"]
    assert q(fresh_db, "SELECT to_regclass('idx_notes')") == [(None,)]


def _journal_sha(set_dir: Path, version: str) -> str:
    import json

    entries = json.loads((set_dir / "meta/_journal.json").read_text())["entries"]
    return str(next(e for e in entries if e["version"] == version)["up"]["sha256"])


def test_drift_is_reported_object_by_object_and_blocks_apply(
    fresh_db: ConnectionSettings, set_copy: Path, admin: ConnectionSettings
) -> None:
    engine_for(fresh_db).apply()
    with fresh_db.connect() as conn:
        conn.execute("DROP INDEX idx_wishlist_user_priority")
        conn.execute("CREATE INDEX idx_by_hand ON wishlist_items (title)")
    report = engine_for(fresh_db).verify()
    assert [(d.key, d.change) for d in report.differences] == [
        ("index:idx_by_hand", "unexpected"),
        ("index:idx_wishlist_user_priority", "missing"),
    ]
    _add_migration(set_copy, admin, "0008", "ALTER TABLE wishlist_items ADD COLUMN theme text;\n")
    with pytest.raises(DriftDetected, match="idx_wishlist_user_priority is missing"):
        Engine(fresh_db, migset.load(set_copy)).apply()
    assert [r[0] for r in ledger_rows(fresh_db)] == ["0007"]


def test_set_errors_name_the_problem(set_copy: Path) -> None:
    (set_copy / "meta/0007_snapshot.json").unlink()
    with pytest.raises(SetError, match=r"0007_snapshot\.json is missing"):
        migset.load(set_copy)
    (set_copy / "0010_Bad-Name.sql").write_text("select 1;")
    with pytest.raises(SetError, match=r"is not named NNNN_name\.sql"):
        migset.load(set_copy)


def test_wrong_password_error_masks_the_password(fresh_db: ConnectionSettings) -> None:
    from components.engine.errors import ConnectFailed

    bad = replace(fresh_db, password="Sup3r-secret-pw")
    with pytest.raises(ConnectFailed) as err:
        engine_for(bad).plan("0007")
    assert "password authentication failed" in str(err.value) and "Sup3r-secret-pw" not in str(err.value)
    assert "Sup3r-secret-pw" not in repr(bad)


def test_cli_round_trip_and_exit_codes(fresh_db: ConnectionSettings) -> None:
    def run(*args: str) -> tuple[int, str, str]:
        proc = cli_process(fresh_db, *args)
        out, err = proc.communicate(timeout=60)
        return proc.returncode, out, err

    assert run("check")[0] == 0
    code, out, _ = run("plan")
    assert code == 0 and "CREATE TABLE wishlist_items" in out
    assert run("apply", "--quiet")[0] == 0
    code, out, _ = run("status")
    assert code == 0 and "0007" in out and "ok" in out
    assert run("verify")[0] == 0
    with fresh_db.connect() as conn:
        conn.execute("DROP INDEX idx_wishlist_user_priority")
    code, out, _ = run("drift")
    assert code == 3 and "idx_wishlist_user_priority is missing" in out
    code, _, err = run("apply")
    assert code == 1 and err.startswith("error: ") and err.count("\n") == 1
    assert run("rollback", "--to", "0", "--quiet")[0] == 0
    code, _, err = run("rollback")
    assert code == 2 and "--to" in err  # a usage error: argparse names the missing option
    with pytest.raises(psycopg.errors.UndefinedTable):
        q(fresh_db, "SELECT 1 FROM wishlist_items")
