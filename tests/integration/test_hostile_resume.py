"""Found by a context-free breaking review of round 8 (issue #14): resumed no-transaction migrations (the settings
their completed part made, a file whose header was removed, an interrupted REINDEX CONCURRENTLY), a password in a
drifted definition reaching stack state, and the CLI's account of an interrupted rollback. Each test failed on the code
it was written against."""

from __future__ import annotations

from pathlib import Path

import pytest

from components.engine import migset
from components.engine.connection import ConnectionSettings
from components.engine.engine import Engine
from components.engine.errors import IncompleteMigration, MigrationError
from components.engine.options import RunOptions
from components.engine.snapshot import generate
from tests.integration.test_wishlist_items_migration import ledger_rows, q


def _with(admin: ConnectionSettings, set_copy: Path, files: dict[str, str]) -> migset.MigrationSet:
    for name, text in files.items():
        (set_copy / name).write_text(text)
    generate(admin, set_copy)
    return migset.load(set_copy)


# -- 1. REINDEX CONCURRENTLY interrupted leaves <name>_ccnew invalid. The failure message promises the resume "first
# drops the invalid index concurrently, then builds it again"; it does not (_already_done handles create/drop only),
# and the resume ends in IncompleteMigration with the leftover invalid index as unexpected. (An unnamed CREATE INDEX
# CONCURRENTLY, the other case, is refused at load: held.)

OPS = {
    "reindex": ("REINDEX INDEX CONCURRENTLY idx_wishlist_user_id", "idx_wishlist_user_id_ccnew"),
}


@pytest.mark.parametrize("op", sorted(OPS))
def test_an_interrupted_concurrent_index_operation_resumes_to_the_snapshot(
    op: str, fresh_db: ConnectionSettings, set_copy: Path, admin: ConnectionSettings
) -> None:
    statement, leftover = OPS[op]
    mset = _with(admin, set_copy, {"0008_index.sql": f"-- migrate:no-transaction\n{statement};\n"})
    Engine(fresh_db, mset).apply("0007")
    with fresh_db.connect() as conn:
        conn.execute("INSERT INTO wishlist_items (user_id, title, store) SELECT 'u' || g, 't', 'LEGO' FROM generate_series(1, 1000) g")
    writer = fresh_db.connect(autocommit=False)  # an open writer: the build waits for it, past statement_timeout
    writer.execute("INSERT INTO wishlist_items (user_id, title, store) VALUES ('w', 'writer', 'LEGO')")
    try:
        with pytest.raises(IncompleteMigration) as err:
            Engine(fresh_db, mset, RunOptions(statement_timeout_ms=1500)).apply()
    finally:
        writer.commit()
        writer.close()
    first = str(err.value)
    assert f"invalid index public.{leftover}" in first
    assert "first drops the invalid _ccnew/_ccold copies concurrently, then reindexes again" in first  # the promise
    Engine(fresh_db, mset).apply()  # the resume the message promises
    assert [r[0] for r in ledger_rows(fresh_db)] == ["0007", "0008"]
    assert Engine(fresh_db, mset).verify().ok


# -- 2. A session SET in a no-transaction file holds for the statements after it in one run, but not after a resume:
# the resumed statements run under the engine's search_path and act on another schema's table of the same name.

ARCHIVE = "CREATE SCHEMA archive;\nCREATE TABLE archive.wishlist_items (id int);\n"
PURGE = "-- migrate:no-transaction\nSET search_path TO archive;\nTRUNCATE wishlist_items;\n"


def test_a_resume_runs_the_rest_of_the_file_under_the_settings_its_first_part_set(
    fresh_db: ConnectionSettings, set_copy: Path, admin: ConnectionSettings
) -> None:
    mset = _with(admin, set_copy, {"0008_archive.sql": ARCHIVE, "0009_purge_archive.sql": PURGE})
    Engine(fresh_db, mset).apply("0008")
    with fresh_db.connect() as conn:
        conn.execute("INSERT INTO wishlist_items (user_id, title, store) VALUES ('u', 'kept', 'LEGO')")
        conn.execute("INSERT INTO archive.wishlist_items VALUES (1)")
    holder = fresh_db.connect(autocommit=False)  # a reader of the archive: TRUNCATE waits past lock_timeout once
    holder.execute("SELECT * FROM archive.wishlist_items")
    try:
        with pytest.raises(IncompleteMigration) as err:
            Engine(fresh_db, mset, RunOptions(lock_timeout_ms=200, ddl_retries=0)).apply()
    finally:
        holder.rollback()
        holder.close()
    assert "statements 1-1 of 2 completed" in str(err.value)
    Engine(fresh_db, mset).apply()  # resumes at statement 2
    assert q(fresh_db, "SELECT count(*) FROM public.wishlist_items") == [(1,)], "the live table was truncated instead"
    assert q(fresh_db, "SELECT count(*) FROM archive.wishlist_items") == [(0,)], "the archive was not purged"


# -- 3. An interrupted no-transaction file edited into a transactional one: the "resume" runs every statement again.

BUMP_THEN_CIC = (
    "-- migrate:no-transaction\n"
    "UPDATE wishlist_items SET sort_order = sort_order + 1;\n"
    "CREATE UNIQUE INDEX CONCURRENTLY idx_one_title ON wishlist_items (title);\n"
)
BUMP_THEN_INDEX = "UPDATE wishlist_items SET sort_order = sort_order + 1;\nCREATE UNIQUE INDEX idx_one_title ON wishlist_items (title);\n"


def test_a_resume_after_the_no_transaction_header_was_removed_does_not_repeat_completed_statements(
    fresh_db: ConnectionSettings, set_copy: Path, admin: ConnectionSettings
) -> None:
    mset = _with(admin, set_copy, {"0008_bump.sql": BUMP_THEN_CIC})
    Engine(fresh_db, mset).apply("0007")
    with fresh_db.connect() as conn:
        conn.execute("INSERT INTO wishlist_items (user_id, title, store) VALUES ('u', 'a', 'LEGO'), ('v', 'a', 'LEGO')")
    with pytest.raises(IncompleteMigration) as err:
        Engine(fresh_db, mset).apply()
    assert "statements 1-1 of 2 completed and stay committed" in str(err.value)
    assert q(fresh_db, "SELECT sort_order FROM wishlist_items ORDER BY user_id") == [(1,), (1,)]
    with fresh_db.connect() as conn:  # the operator fixes the rows and the file (a plain index on a table this small)
        conn.execute("DROP INDEX idx_one_title")
        conn.execute("UPDATE wishlist_items SET title = 'b' WHERE user_id = 'v'")
    mset = _with(admin, set_copy, {"0008_bump.sql": BUMP_THEN_INDEX})
    try:
        Engine(fresh_db, mset).apply()
    except MigrationError:
        pass  # refusing the edited file is fine; running statement 1 again is not
    assert q(fresh_db, "SELECT sort_order FROM wishlist_items ORDER BY user_id") == [(1,), (1,)], "statement 1 ran twice"


# -- 4. The provider: a password in a hand-made object's definition reaches the state (drift output) and the error
# Pulumi prints, unmasked (the CLI and the provider's log mask the same text).

SECRET_FN = "CREATE VIEW legacy_source AS SELECT 'host=10.0.0.9 user=etl password=Hunter2-secret dbname=legacy'::text AS dsn"


def test_the_provider_never_puts_a_password_from_drift_in_state_or_errors(fresh_db: ConnectionSettings, set_copy: Path) -> None:
    from components.schema_migration import SchemaMigrationProvider
    from tests.integration.test_provider import props_for

    provider = SchemaMigrationProvider()
    props = props_for(fresh_db, set_copy)
    created = provider.create(props)
    with fresh_db.connect() as conn:
        conn.execute(SECRET_FN)
    read = provider.read(created.id, created.outs)  # pulumi refresh: the outputs are written to the state
    assert read.outs["drift"], "the drift was not reported"
    with pytest.raises(Exception) as err:
        provider.update(created.id, read.outs, props)  # pulumi up: refuses the drift
    leaks = [where for where, text in (("refreshed state", str(read.outs)), ("error", str(err.value))) if "Hunter2-secret" in text]
    assert leaks == [], f"a password in: {leaks}"


# -- 5. The CLI after an interrupted no-transaction rollback: `apply --to` the version below names a state that is not.

THEME = "ALTER TABLE wishlist_items ADD COLUMN theme text;\nCREATE TABLE themes (name text PRIMARY KEY);\n"
THEME_DOWN = "-- migrate:no-transaction\nDROP TABLE themes;\nALTER TABLE wishlist_items DROP COLUMN theme;\n"


def test_the_cli_tells_an_interrupted_rollback_truly(fresh_db: ConnectionSettings, set_copy: Path, admin: ConnectionSettings) -> None:
    import os
    import subprocess
    import sys

    from tests.conftest import REPO

    mset = _with(admin, set_copy, {"0008_theme.sql": THEME, "0008_theme.down.sql": THEME_DOWN})
    Engine(fresh_db, mset).apply()
    holder = fresh_db.connect(autocommit=False)  # statement 2 of the down file waits past lock_timeout once
    holder.execute("SELECT * FROM wishlist_items")
    try:
        with pytest.raises(IncompleteMigration):
            Engine(fresh_db, mset, RunOptions(lock_timeout_ms=200, ddl_retries=0)).rollback("0007")
    finally:
        holder.rollback()
        holder.close()
    dsn = f"host={fresh_db.host} port={fresh_db.port} dbname={fresh_db.dbname} user={fresh_db.user} sslmode=disable"
    proc = subprocess.run(
        [sys.executable, "-m", "components.migrate", "apply", "--to", "0007", "--dsn", dsn, "--set", str(set_copy)],
        cwd=REPO,
        env={**os.environ, "PGPASSWORD": fresh_db.password or ""},
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1, proc.stderr
    assert "below the applied version 0007" not in proc.stderr, proc.stderr  # 0007 is the target itself


def test_an_interrupted_version_whose_file_is_gone_is_told_as_interrupted_not_applied(
    fresh_db: ConnectionSettings, set_copy: Path, admin: ConnectionSettings
) -> None:
    """Noted by round 8: the ledger row of an interrupted no-transaction version says `started`; with its file deleted,
    the refusal said the version "is applied"."""
    two = "-- migrate:no-transaction\nCREATE TABLE t1 (id int);\nALTER TABLE wishlist_items ADD CONSTRAINT never CHECK (false);\n"
    mset = _with(admin, set_copy, {"0008_two.sql": two})  # the scratch database has no rows: it applies there
    Engine(fresh_db, mset).apply("0007")
    with fresh_db.connect() as conn:
        conn.execute("INSERT INTO wishlist_items (user_id, title, store) VALUES ('u', 'a row', 'LEGO')")
    with pytest.raises(IncompleteMigration, match="statements 1-1 of 2 completed"):
        Engine(fresh_db, mset).apply()
    (set_copy / "0008_two.sql").unlink()
    generate(admin, set_copy)
    with pytest.raises(MigrationError) as failure:
        Engine(fresh_db, migset.load(set_copy)).apply()
    message = str(failure.value)
    assert "0008" in message and "interrupted" in message and "is applied" not in message, message
