"""Bad input: each gets a clear error naming the problem and the fix, changes nothing, and leaks no password."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from psycopg import sql

from components.engine import migset
from components.engine.connection import ConnectionSettings
from components.engine.engine import Engine
from components.engine.errors import ConnectFailed, MigrationError, NotWritable, SetError, TransactionControl, UnknownVersion
from components.engine.options import RunOptions
from components.engine.snapshot import generate
from devtools import localpg
from tests.conftest import REPO
from tests.dbs import drop_database
from tests.integration.reliability import record
from tests.integration.test_engine_safety import cli_process
from tests.integration.test_wishlist_items_migration import ledger_rows, q


def _refused(db: ConnectionSettings, what: str, exc_type: type[MigrationError], fn: Callable[[], Any], match: str) -> MigrationError:
    before = (ledger_rows(db), q(db, "SELECT count(*) FROM pg_class WHERE relnamespace = 'public'::regnamespace"))
    with pytest.raises(exc_type, match=match) as err:
        fn()
    assert "Fix:" in str(err.value), str(err.value)
    assert (ledger_rows(db), q(db, "SELECT count(*) FROM pg_class WHERE relnamespace = 'public'::regnamespace")) == before
    if db.password:
        assert db.password not in str(err.value)
    record(f"bad input: {what}", f"{type(err.value).__name__}: {err.value.problem[:90]}", survived=True)
    return err.value


def _journal(set_copy: Path) -> dict[str, Any]:
    return dict(json.loads((set_copy / "meta/_journal.json").read_text()))


def _write_journal(set_copy: Path, data: dict[str, Any]) -> None:
    (set_copy / "meta/_journal.json").write_text(json.dumps(data))


def test_missing_down_file_when_rollback_is_asked(fresh_db: ConnectionSettings, set_copy: Path) -> None:
    Engine(fresh_db, migset.load(set_copy)).apply()
    (set_copy / "0007_wishlist_items.down.sql").unlink()
    data = _journal(set_copy)
    data["entries"][0]["down"] = None
    _write_journal(set_copy, data)
    _refused(
        fresh_db,
        "missing down file on rollback",
        SetError,
        lambda: Engine(fresh_db, migset.load(set_copy)).rollback("0"),
        r"needs .*0007_wishlist_items\.down\.sql, which does not exist",
    )
    assert q(fresh_db, "SELECT to_regclass('wishlist_items') IS NOT NULL") == [(True,)]


@pytest.mark.parametrize(
    ("what", "mutate", "match"),
    [
        ("malformed journal (not JSON)", lambda s: (s / "meta/_journal.json").write_text("{oops"), r"_journal\.json is not valid JSON"),
        ("malformed journal (no entries)", lambda s: _write_journal(s, {"format": 1, "schema": "public"}), "'entries' is not a list"),
        (
            "edited snapshot",
            lambda s: (s / "meta/0007_snapshot.json").write_text('{"version": "0007"}'),
            r"0007_snapshot\.json was changed after the journal was written",
        ),
        (
            "journal with a duplicate version",
            lambda s: _write_journal(s, {**_journal(s), "entries": _journal(s)["entries"] * 2}),
            "lists version 0007 twice",
        ),
        (
            "journal out of order",
            lambda s: _write_journal(
                s, {**_journal(s), "entries": [{**_journal(s)["entries"][0], "version": "0009"}, _journal(s)["entries"][0]]}
            ),
            "after a higher version",
        ),
    ],
)
def test_malformed_set_is_refused(
    fresh_db: ConnectionSettings, set_copy: Path, what: str, mutate: Callable[[Path], Any], match: str
) -> None:
    mutate(set_copy)
    _refused(fresh_db, what, SetError, lambda: Engine(fresh_db, migset.load(set_copy)).apply(), match)


def test_unknown_target_version(fresh_db: ConnectionSettings, set_copy: Path) -> None:
    _refused(
        fresh_db,
        "unknown target version",
        UnknownVersion,
        lambda: Engine(fresh_db, migset.load(set_copy)).apply("0042"),
        r"version '0042' is not in the migration set .*known: 0007",
    )


@pytest.mark.parametrize(
    ("dsn", "match"),
    [
        ("host=127.0.0.1 port=notaport", "invalid port 'notaport'"),
        ("postgresql://u:s3cret-in-dsn@127.0.0.1:5432/db?sslmode=bogus", 'invalid sslmode value: "bogus"'),
        ("this is not a dsn", "invalid DSN"),
    ],
)
def test_invalid_dsn(dsn: str, match: str) -> None:
    with pytest.raises(ConnectFailed, match=match) as err:
        ConnectionSettings.from_dsn(dsn, env={}).connect()
    assert "s3cret-in-dsn" not in str(err.value) and "Fix:" in str(err.value)
    record("bad input: invalid DSN", f"{dsn[:40]!r}: {err.value.problem[:70]}", survived=True)


def test_wrong_password(fresh_db: ConnectionSettings, set_copy: Path) -> None:
    bad = replace(fresh_db, password="Wr0ng-Passw0rd-zz")
    with pytest.raises(ConnectFailed, match="password authentication failed") as err:
        Engine(bad, migset.load(set_copy)).apply()
    assert "Wr0ng-Passw0rd-zz" not in str(err.value)
    record("bad input: wrong password", err.value.problem[:90], survived=True)


@pytest.fixture
def silent_listener() -> Iterator[int]:
    """A listener of our own on loopback that accepts connections and never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield int(server.getsockname()[1])
    stop.set()
    thread.join(2)
    for s in held:
        s.close()
    server.close()


def test_server_that_never_answers_is_bounded_by_connect_timeout(silent_listener: int, set_copy: Path) -> None:
    settings = ConnectionSettings(port=silent_listener, dbname="x", user="x", password="n0t-sent-anyway", connect_timeout=2)
    started = time.monotonic()
    with pytest.raises(ConnectFailed, match="cannot connect") as err:
        Engine(settings, migset.load(set_copy)).plan("0007")
    elapsed = time.monotonic() - started
    assert elapsed < 15, elapsed  # bounded by connect_timeout (libpq may try twice), not hanging
    record("bad input: server accepts and never answers", f"ConnectFailed after {elapsed:.1f} s (connect_timeout 2 s)", survived=True)
    assert "n0t-sent-anyway" not in str(err.value)


def test_hot_standby_is_refused_before_any_write(pg_cluster: localpg.Cluster, admin: ConnectionSettings, set_copy: Path) -> None:
    """A real streaming replica made with pg_basebackup; migrations must go to the primary."""
    pg_cluster.superuser_psql("SELECT 1")  # the primary is up
    drop_database(admin, "standby_src")
    with admin.connect() as conn:
        conn.execute("CREATE DATABASE standby_src")
    replica_root = Path(tempfile.mkdtemp(prefix="wishlist-replica-"))  # reachable by the postgres user
    replica = localpg.Cluster(replica_root, localpg.free_port(), pg_cluster.admin_password)
    localpg.base_backup(pg_cluster, replica)
    replica.start()
    try:
        standby = replace(admin, port=replica.port, dbname="standby_src")
        assert q(standby, "SELECT pg_is_in_recovery()") == [(True,)]
        with pytest.raises(NotWritable, match="hot standby") as err:
            Engine(standby, migset.load(set_copy)).apply()
        assert "Fix:" in str(err.value) and "primary" in str(err.value)
        assert q(admin.with_database("standby_src"), "SELECT to_regnamespace('migration_ledger'), to_regtype('wishlist_store')") == [
            (None, None)
        ]
        record("bad input: hot standby (pg_basebackup streaming replica)", err.value.problem[:90], survived=True)
    finally:
        replica.destroy()


def test_identifiers_with_quotes_and_sql_are_quoted_not_executed(fresh_db: ConnectionSettings, set_copy: Path) -> None:
    nasty = 'ledger"; DROP TABLE canary_s.canary; --'
    with fresh_db.connect() as conn:
        conn.execute("CREATE SCHEMA canary_s; CREATE TABLE canary_s.canary (id int)")
    engine = Engine(fresh_db, migset.load(set_copy), RunOptions(ledger_schema=nasty, stack="o'brien\"; DROP TABLE canary_s.canary; --"))
    engine.apply()
    assert q(
        fresh_db, "SELECT to_regclass('canary_s.canary') IS NOT NULL, (SELECT count(*) FROM pg_namespace WHERE nspname = %s)", (nasty,)
    ) == [(True, 1)]
    with fresh_db.connect() as conn:
        owner = conn.execute(sql.SQL("SELECT stack FROM {}.owner").format(sql.Identifier(nasty))).fetchone()
    assert owner == ("o'brien\"; DROP TABLE canary_s.canary; --",)
    assert engine.verify().ok
    record(
        "bad input: identifiers and values with quotes, semicolons and SQL", "quoted as identifiers / passed as parameters", survived=True
    )


@pytest.mark.parametrize("nasty", ["$wishlist$", "x$wishlist$; DROP TABLE canary_s.canary; --", "$wishlist_$'"])
def test_a_ledger_schema_name_cannot_close_the_quote_of_the_statement_that_creates_it(
    nasty: str, fresh_db: ConnectionSettings, set_copy: Path
) -> None:
    """The ledger is created by one statement whose DO block is dollar-quoted: the name is a literal inside it."""
    with fresh_db.connect() as conn:
        conn.execute("CREATE SCHEMA canary_s; CREATE TABLE canary_s.canary (id int)")
    engine = Engine(fresh_db, migset.load(set_copy), RunOptions(ledger_schema=nasty))
    engine.apply()
    assert q(
        fresh_db, "SELECT to_regclass('canary_s.canary') IS NOT NULL, (SELECT count(*) FROM pg_namespace WHERE nspname = %s)", (nasty,)
    ) == [(True, 1)]
    assert engine.verify().ok


def test_cli_errors_are_one_line_and_mask_passwords(fresh_db: ConnectionSettings) -> None:
    env = {**os.environ, "PGPASSWORD": ""}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "components.migrate",
            "plan",
            "--dsn",
            f"postgresql://{fresh_db.user}:Cl1-Secret-pw@127.0.0.1:{fresh_db.port}/{fresh_db.dbname}",
        ],
        cwd=REPO,
        env=env,
        text=True,
        capture_output=True,
        timeout=60,
    )
    assert proc.returncode == 1 and proc.stderr.startswith("error: cannot connect") and proc.stderr.count("\n") == 1
    assert "Cl1-Secret-pw" not in proc.stderr + proc.stdout
    record("bad input: wrong password through the CLI", "one-line error, password masked", survived=True)


def _add_by_hand(set_copy: Path, name: str, text: str) -> None:
    """A new migration whose journal entry and snapshot are written by hand (snapshot refuses such a file)."""
    (set_copy / name).write_text(text)
    version = name[:4]
    data = _journal(set_copy)
    snap = set_copy / f"meta/{version}_snapshot.json"
    shutil.copy(set_copy / "meta/0007_snapshot.json", snap)
    data["entries"].append(
        {
            "version": version,
            "name": name[5:-4],
            "up": {"file": name, "sha256": migset.sha256_hex(text.encode())},
            "down": None,
            "snapshot": {"file": snap.name, "sha256": migset.sha256_hex(snap.read_bytes())},
        }
    )
    _write_journal(set_copy, data)


def test_transaction_control_is_refused_before_anything_runs(fresh_db: ConnectionSettings, set_copy: Path) -> None:
    """A COMMIT between CREATE TABLE a and a statement failing on the data would leave `a` behind: refused at load."""
    Engine(fresh_db, migset.load(set_copy)).apply()
    with fresh_db.connect() as conn:
        conn.execute("INSERT INTO wishlist_items (user_id, title, store) VALUES ('u', 'a', 'LEGO'), ('u', 'b', 'LEGO')")
    _add_by_hand(
        set_copy, "0008_one_per_user.sql", "CREATE TABLE a (id int);\nCOMMIT;\nCREATE UNIQUE INDEX one ON wishlist_items (user_id);\n"
    )
    match = r"0008_one_per_user\.sql line 2: `COMMIT`"
    _refused(
        fresh_db,
        "COMMIT in a migration (plan)",
        TransactionControl,
        lambda: (e := Engine(fresh_db, migset.load(set_copy))).plan(e.mset.latest),
        match,
    )
    _refused(fresh_db, "COMMIT in a migration (apply)", TransactionControl, lambda: Engine(fresh_db, migset.load(set_copy)).apply(), match)
    proc = cli_process(fresh_db, "apply", set_dir=set_copy)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1 and err.startswith(f"error: {set_copy / '0008_one_per_user.sql'} line 2: `COMMIT`"), (out, err)
    assert err.count("\n") == 1
    assert q(fresh_db, "SELECT to_regclass('a')") == [(None,)]
    assert [r[0] for r in ledger_rows(fresh_db)] == ["0007"]


def test_snapshot_refuses_transaction_control_before_creating_anything(admin: ConnectionSettings, set_copy: Path) -> None:
    (set_copy / "0008_savepoint.sql").write_text("CREATE TABLE a (id int);\nSAVEPOINT s;\nCREATE TABLE b (id int);\n")
    journal = (set_copy / "meta/_journal.json").read_text()
    databases = q(admin, "SELECT datname FROM pg_database ORDER BY 1")
    with pytest.raises(TransactionControl, match=r"0008_savepoint\.sql line 2: `SAVEPOINT s`.*Fix:"):
        generate(admin, set_copy)
    assert q(admin, "SELECT datname FROM pg_database ORDER BY 1") == databases
    assert (set_copy / "meta/_journal.json").read_text() == journal and not (set_copy / "meta/0008_snapshot.json").exists()
    record("bad input: SAVEPOINT in a file given to snapshot", "refused before the scratch database was created", survived=True)
