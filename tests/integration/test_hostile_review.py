"""Found by a context-free breaking review of round 11 (issue #14), reading the diff 83e9630..HEAD: the resume path of
no-transaction files (replayed SETs, the leftover index dropped before the resume), statements PostgreSQL refuses in a
transaction block that needs_autocommit does not know, and session state a migration reaches on the engine's
connection (the migration lock). Each test failed on the code it was written against."""

from __future__ import annotations

from pathlib import Path

import psycopg

from components.engine import migset
from components.engine.connection import ConnectionSettings
from components.engine.engine import Engine
from components.engine.errors import IncompleteMigration, MigrationError
from components.engine.guards import advisory_key
from components.engine.options import RunOptions
from components.engine.snapshot import generate
from tests.integration.test_wishlist_items_migration import ledger_rows, q


def _with(admin: ConnectionSettings, set_copy: Path, files: dict[str, str]) -> migset.MigrationSet:
    for name, text in files.items():
        (set_copy / name).write_text(text)
    generate(admin, set_copy)
    return migset.load(set_copy)


# -- 1. needs_autocommit knows DETACH CONCURRENTLY and REINDEX SCHEMA/SYSTEM/DATABASE; snapshot falls back to running
# outside a block for ANY statement refused in one (ActiveSqlTransaction). A bare CLUSTER (re-cluster every table
# clustered before) is refused in a block too: snapshot accepts the file, apply fails at it.

RECLUSTER = (
    "CLUSTER wishlist_items USING idx_wishlist_user_id;\n",
    "-- migrate:no-transaction\nCLUSTER;\n",
)


def test_a_bare_cluster_in_a_no_transaction_file_applies_as_snapshot_ran_it(
    fresh_db: ConnectionSettings, set_copy: Path, admin: ConnectionSettings
) -> None:
    mset = _with(admin, set_copy, {"0008_mark_clustered.sql": RECLUSTER[0], "0009_recluster.sql": RECLUSTER[1]})  # snapshot: fine
    Engine(fresh_db, mset).apply()  # apply: "CLUSTER cannot run inside a transaction block", statement 1 of 0009
    assert [r[0] for r in ledger_rows(fresh_db)] == ["0007", "0008", "0009"]


# -- 2. A resume replays the SET statements of the completed part, then set_timeouts() puts the engine's
# statement_timeout (and lock_timeout) back over them: the rest runs under other limits than the same file run in one go.

PATIENT = (
    "-- migrate:no-transaction\n"
    "SET statement_timeout = '60s';\n"
    "UPDATE wishlist_items SET sort_order = sort_order WHERE pg_catalog.pg_sleep(1.5) IS NOT NULL;\n"
)


def test_a_resume_keeps_the_statement_timeout_its_completed_part_set(
    fresh_db: ConnectionSettings, set_copy: Path, admin: ConnectionSettings
) -> None:
    mset = _with(admin, set_copy, {"0008_patient.sql": PATIENT})
    Engine(fresh_db, mset).apply("0007")
    with fresh_db.connect() as conn:
        conn.execute("INSERT INTO wishlist_items (user_id, title, store) VALUES ('u', 't', 'LEGO')")
    options = RunOptions(statement_timeout_ms=1000, lock_timeout_ms=200, ddl_retries=0)
    holder = fresh_db.connect(autocommit=False)  # statement 2 waits past lock_timeout once: interrupted after statement 1
    holder.execute("LOCK TABLE wishlist_items IN SHARE MODE")
    try:
        try:
            Engine(fresh_db, mset, options).apply()
        except IncompleteMigration as err:
            assert "statements 1-1 of 2 completed" in str(err)
    finally:
        holder.rollback()
        holder.close()
    # Run in one go (no holder), statement 2 runs under the file's 60 s and succeeds; the resume must do the same.
    Engine(fresh_db, mset, options).apply()
    assert [r[0] for r in ledger_rows(fresh_db)] == ["0007", "0008"]


# -- 3. The same replay knows only VariableSetStmt: a session setting made with set_config(..., false) in the completed
# part is not made again, and the rest runs on another schema's table (round 8's case, written as a function call).

ARCHIVE = "CREATE SCHEMA archive;\nCREATE TABLE archive.wishlist_items (id int);\n"
PURGE = "-- migrate:no-transaction\nSELECT pg_catalog.set_config('search_path', 'archive', false);\nTRUNCATE wishlist_items;\n"


def test_a_resume_makes_again_a_session_setting_its_completed_part_made_with_set_config(
    fresh_db: ConnectionSettings, set_copy: Path, admin: ConnectionSettings
) -> None:
    mset = _with(admin, set_copy, {"0008_archive.sql": ARCHIVE, "0009_purge_archive.sql": PURGE})
    Engine(fresh_db, mset).apply("0008")
    with fresh_db.connect() as conn:
        conn.execute("INSERT INTO wishlist_items (user_id, title, store) VALUES ('u', 'kept', 'LEGO')")
        conn.execute("INSERT INTO archive.wishlist_items VALUES (1)")
    holder = fresh_db.connect(autocommit=False)
    holder.execute("SELECT * FROM archive.wishlist_items")
    try:
        try:
            Engine(fresh_db, mset, RunOptions(lock_timeout_ms=200, ddl_retries=0)).apply()
        except IncompleteMigration as err:
            assert "statements 1-1 of 2 completed" in str(err)
    finally:
        holder.rollback()
        holder.close()
    try:
        Engine(fresh_db, mset).apply()  # resumes at statement 2
    except MigrationError:
        pass  # refusing is fine; truncating the live table is not
    assert q(fresh_db, "SELECT count(*) FROM public.wishlist_items") == [(1,)], "the live table was truncated instead"


# -- 4. On resume, the invalid index an interrupted CREATE INDEX CONCURRENTLY left is dropped in _already_done, whose
# queries are not wrapped as _Failed: a DROP INDEX CONCURRENTLY that waits past lock_timeout escapes as a raw psycopg
# error, which Engine.connect() turns into "it came from a ledger, lock or catalog query, outside any migration step",
# without the account of what completed (statements 1-1 stay committed, the invalid index is still there).

BUMP_THEN_CIC = (
    "-- migrate:no-transaction\n"
    "UPDATE wishlist_items SET sort_order = sort_order;\n"
    "CREATE INDEX CONCURRENTLY idx_items_title ON wishlist_items (title);\n"
)


def test_a_resume_blocked_while_dropping_the_leftover_index_is_told_as_an_interrupted_migration(
    fresh_db: ConnectionSettings, set_copy: Path, admin: ConnectionSettings
) -> None:
    mset = _with(admin, set_copy, {"0008_cic.sql": BUMP_THEN_CIC})
    Engine(fresh_db, mset).apply("0007")
    with fresh_db.connect() as conn:
        conn.execute("INSERT INTO wishlist_items (user_id, title, store) SELECT 'u' || g, 't', 'LEGO' FROM generate_series(1, 100) g")
    writer = fresh_db.connect(autocommit=False)  # an open writer: the build waits for it, past statement_timeout
    writer.execute("INSERT INTO wishlist_items (user_id, title, store) VALUES ('w', 'writer', 'LEGO')")
    try:
        try:
            Engine(fresh_db, mset, RunOptions(statement_timeout_ms=1500)).apply()
        except IncompleteMigration as err:
            assert "invalid index public.idx_items_title" in str(err)
    finally:
        writer.commit()
        writer.close()
    holder = fresh_db.connect(autocommit=False)  # the resume's DROP INDEX CONCURRENTLY waits for this lock
    holder.execute("LOCK TABLE wishlist_items IN SHARE MODE")
    try:
        try:
            Engine(fresh_db, mset, RunOptions(lock_timeout_ms=200, ddl_retries=0, statement_timeout_ms=3000)).apply()
            raised: MigrationError | None = None
        except MigrationError as exc:
            raised = exc
    finally:
        holder.rollback()
        holder.close()
    assert raised is not None
    assert isinstance(raised, IncompleteMigration), f"{type(raised).__name__}: {raised}"
    assert "outside any migration step" not in str(raised), str(raised)


# -- 5. The migration lock is a session advisory lock on the connection the migrations run on. A migration that
# releases its own advisory locks (pg_advisory_unlock_all(), a backfill's cleanup; not undone by a rollback) releases
# the engine's too: the rest of the run goes on without it, and a second apply can start the same versions.

UNLOCKS = "SELECT pg_catalog.pg_advisory_unlock_all();\nALTER TABLE wishlist_items ADD COLUMN batch int;\n"
NEXT = "ALTER TABLE wishlist_items ADD COLUMN note text;\n"


def test_a_migration_cannot_release_the_migration_lock_for_the_rest_of_the_run(
    fresh_db: ConnectionSettings, set_copy: Path, admin: ConnectionSettings
) -> None:
    mset = _with(admin, set_copy, {"0008_backfill.sql": UNLOCKS, "0009_note.sql": NEXT})
    Engine(fresh_db, mset).apply("0007")
    key = advisory_key(mset.name)
    probes: list[bool] = []

    def progress(message: str) -> None:
        if message.startswith("0009") and "statement(s)" in message and not probes:
            # while the run is about to apply 0009: may another applier take the lock?
            with fresh_db.connect() as other:
                got = bool(other.execute("SELECT pg_catalog.pg_try_advisory_lock(%s)", (key,)).fetchone()[0])
                if got:
                    other.execute("SELECT pg_catalog.pg_advisory_unlock(%s)", (key,))
            probes.append(got)

    try:
        Engine(fresh_db, mset, progress=progress).apply()
    except MigrationError:
        return  # refusing the migration (or stopping the run) is fine
    except psycopg.Error:
        return
    assert probes, "the probe did not run"
    assert probes == [False], "another session took the migration lock while the run was applying 0009"


def test_control_the_patient_file_run_in_one_go_passes_under_the_same_options(
    fresh_db: ConnectionSettings, set_copy: Path, admin: ConnectionSettings
) -> None:
    """Not a break: the baseline test 2 compares with (the file's own SET statement_timeout holds in one run)."""
    mset = _with(admin, set_copy, {"0008_patient.sql": PATIENT})
    Engine(fresh_db, mset).apply("0007")
    with fresh_db.connect() as conn:
        conn.execute("INSERT INTO wishlist_items (user_id, title, store) VALUES ('u', 't', 'LEGO')")
    Engine(fresh_db, mset, RunOptions(statement_timeout_ms=1000, lock_timeout_ms=200, ddl_retries=0)).apply()
    assert [r[0] for r in ledger_rows(fresh_db)] == ["0007", "0008"]


# -- 6. The DO/CALL fallback (round 10): a DO block that COMMITs is run again outside a block by _execute_one, which
# retries a DDL lock timeout "(the statement did nothing)". A block that committed a batch before it waited past
# lock_timeout did something: the retry runs the committed batch a second time, and the progress line says
# "nothing of it was done".

LOG = "CREATE TABLE batch_log (n int);\n"
BATCHES = (
    "-- migrate:no-transaction\n"
    "DO $$ BEGIN INSERT INTO batch_log VALUES (1); COMMIT; UPDATE wishlist_items SET sort_order = sort_order; END $$;\n"
)


def test_a_self_committing_do_block_is_not_retried_as_if_it_had_done_nothing(
    fresh_db: ConnectionSettings, set_copy: Path, admin: ConnectionSettings
) -> None:
    mset = _with(admin, set_copy, {"0008_log.sql": LOG, "0009_batches.sql": BATCHES})
    Engine(fresh_db, mset).apply("0008")
    holder = fresh_db.connect(autocommit=False)  # the block's UPDATE waits past lock_timeout once
    holder.execute("LOCK TABLE wishlist_items IN SHARE MODE")
    said: list[str] = []

    def progress(message: str) -> None:
        if "retry" in message and not holder.closed:
            said.append(message)
            holder.rollback()
            holder.close()

    try:
        Engine(fresh_db, mset, RunOptions(lock_timeout_ms=200, ddl_retries=1), progress=progress).apply()
    except MigrationError:
        pass
    finally:
        if not holder.closed:
            holder.rollback()
            holder.close()
    batches = q(fresh_db, "SELECT count(*) FROM batch_log")[0][0]
    assert batches == 1, f"the committed batch ran {batches} times; the engine said: {said}"
