"""Found by a context-free breaking review of round 12 (issue #14): the resume's replay and refusal of the completed
part's session settings (a multi-line UPDATE in a DO block, a function body calling set_config, dynamic SQL setting
search_path, set_config arguments with side effects), a DO block that COMMITs run twice, and a transaction-level lock
on the migration key passing the lock check. Each test failed on the code it was written against."""

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


ARCHIVE = "CREATE SCHEMA archive;\nCREATE TABLE archive.wishlist_items (id int);\n"


def _interrupt_at_archive(fresh_db: ConnectionSettings, mset: migset.MigrationSet, done: int, total: int) -> None:
    """Run apply while a reader holds archive.wishlist_items: the statement touching it waits past lock_timeout, so
    the no-transaction file is interrupted after `done` statements."""
    holder = fresh_db.connect(autocommit=False)
    holder.execute("SELECT * FROM archive.wishlist_items")
    try:
        try:
            Engine(fresh_db, mset, RunOptions(lock_timeout_ms=200, ddl_retries=0)).apply()
        except IncompleteMigration as err:
            assert f"statements 1-{done} of {total} completed" in str(err), str(err)
        else:
            raise AssertionError("the first run was expected to be interrupted")
    finally:
        holder.rollback()
        holder.close()


# -- 1. may_set_session: false refusal of an honest DO block. _PLPGSQL_SET is compiled with re.MULTILINE, so `^`
# matches at every line start: an UPDATE written over several lines (`UPDATE t\n   SET col = ...`) reads as a
# PL/pgSQL SET statement. A resume after such a completed DO block is refused ("may have changed session settings").

MULTILINE_UPDATE = (
    "-- migrate:no-transaction\n"
    "DO $$\nBEGIN\n  UPDATE wishlist_items\n     SET sort_order = sort_order\n   WHERE true;\nEND $$;\n"
    "TRUNCATE archive.wishlist_items;\n"
)


def test_a_resume_after_a_do_block_with_a_multiline_update_is_not_refused(
    fresh_db: ConnectionSettings, set_copy: Path, admin: ConnectionSettings
) -> None:
    mset = _with(admin, set_copy, {"0008_archive.sql": ARCHIVE, "0009_touch.sql": MULTILINE_UPDATE})
    Engine(fresh_db, mset).apply("0008")
    _interrupt_at_archive(fresh_db, mset, 1, 2)
    Engine(fresh_db, mset).apply()  # resume at statement 2: nothing in statement 1 set the session
    assert [r[0] for r in ledger_rows(fresh_db)][-1] == "0009"


# -- 2. may_set_session: false refusal of an honest CREATE FUNCTION. For any statement but a DO block, the mere text
# `set_config(` anywhere (here: a function body that sets a per-transaction tenant, the usual RLS helper) refuses the
# resume, although creating the function changes no session setting.

TENANT_HELPER = (
    "-- migrate:no-transaction\n"
    "CREATE FUNCTION set_tenant(t text) RETURNS text LANGUAGE sql AS $$ SELECT pg_catalog.set_config('app.tenant', t, true) $$;\n"
    "TRUNCATE archive.wishlist_items;\n"
)


def test_a_resume_after_creating_a_function_that_calls_set_config_is_not_refused(
    fresh_db: ConnectionSettings, set_copy: Path, admin: ConnectionSettings
) -> None:
    mset = _with(admin, set_copy, {"0008_archive.sql": ARCHIVE, "0009_tenant.sql": TENANT_HELPER})
    Engine(fresh_db, mset).apply("0008")
    _interrupt_at_archive(fresh_db, mset, 1, 2)
    Engine(fresh_db, mset).apply()
    assert [r[0] for r in ledger_rows(fresh_db)][-1] == "0009"


# -- 3. may_set_session: missed case. A DO block that sets the session through dynamic SQL (EXECUTE 'SET ...') is
# neither replayed nor refused: _PLPGSQL_SET wants SET at the start of a PL/pgSQL statement, and here it follows a
# quote. The resume runs the rest under the engine's search_path: TRUNCATE empties the live table, not archive's.

DYNAMIC_SET = "-- migrate:no-transaction\nDO $$ BEGIN EXECUTE 'SET search_path TO archive'; END $$;\nTRUNCATE wishlist_items;\n"


def test_a_resume_does_not_miss_a_search_path_set_by_dynamic_sql_in_a_do_block(
    fresh_db: ConnectionSettings, set_copy: Path, admin: ConnectionSettings
) -> None:
    mset = _with(admin, set_copy, {"0008_archive.sql": ARCHIVE, "0009_purge_archive.sql": DYNAMIC_SET})
    Engine(fresh_db, mset).apply("0008")
    with fresh_db.connect() as conn:
        conn.execute("INSERT INTO public.wishlist_items (user_id, title, store) VALUES ('u', 'kept', 'LEGO')")
        conn.execute("INSERT INTO archive.wishlist_items VALUES (1)")
    _interrupt_at_archive(fresh_db, mset, 1, 2)
    try:
        Engine(fresh_db, mset).apply()
    except MigrationError:
        pass  # refusing is fine; truncating the live table is not
    assert q(fresh_db, "SELECT count(*) FROM public.wishlist_items") == [(1,)], "the live table was truncated instead"


# -- 4. The replay runs a completed `SELECT set_config(...)` again: _set_config_only checks only the top-level function
# name, not its arguments. An argument with a side effect (a function that writes a row, nextval) runs a second time.

BATCH = (
    "CREATE TABLE batch_log (id serial PRIMARY KEY, at timestamptz DEFAULT now());\n"
    "CREATE FUNCTION new_batch() RETURNS text LANGUAGE sql AS $$ INSERT INTO batch_log DEFAULT VALUES RETURNING id::text $$;\n"
)
TAGGED = "-- migrate:no-transaction\nSELECT pg_catalog.set_config('app.batch', new_batch(), false);\nTRUNCATE archive.wishlist_items;\n"


def test_a_resume_does_not_run_the_arguments_of_a_completed_set_config_again(
    fresh_db: ConnectionSettings, set_copy: Path, admin: ConnectionSettings
) -> None:
    mset = _with(admin, set_copy, {"0008_archive.sql": ARCHIVE + BATCH, "0009_tagged.sql": TAGGED})
    Engine(fresh_db, mset).apply("0008")
    _interrupt_at_archive(fresh_db, mset, 1, 2)
    assert q(fresh_db, "SELECT count(*) FROM batch_log") == [(1,)]
    try:
        Engine(fresh_db, mset).apply()
    except MigrationError:
        pass  # refusing is fine; writing a second batch row is not
    assert q(fresh_db, "SELECT count(*) FROM batch_log") == [(1,)], "statement 1's new_batch() ran a second time on resume"


# -- 5. The 2D000 fallback runs a self-committing DO block twice: first in a block (rolled back at its COMMIT), then on
# its own. What a rollback does not undo happens twice: here a session advisory lock the block takes and releases by its
# own key. The first attempt's lock survives the rollback, the second run's unlock releases only one level, and the
# engine's session keeps holding the application's lock for the rest of the run.

OWN_LOCK = (
    "-- migrate:no-transaction\n"
    "DO $$ BEGIN PERFORM pg_catalog.pg_advisory_lock(4242); UPDATE wishlist_items SET sort_order = sort_order; COMMIT;"
    " PERFORM pg_catalog.pg_advisory_unlock(4242); END $$;\n"
)
AFTER = "ALTER TABLE wishlist_items ADD COLUMN note text;\n"


def test_a_self_committing_do_block_that_takes_and_releases_its_own_advisory_lock_leaves_it_released(
    fresh_db: ConnectionSettings, set_copy: Path, admin: ConnectionSettings
) -> None:
    mset = _with(admin, set_copy, {"0008_batch.sql": OWN_LOCK, "0009_note.sql": AFTER})
    Engine(fresh_db, mset).apply("0007")
    probes: list[bool] = []

    def progress(message: str) -> None:
        if message.startswith("0009") and "statement(s)" in message and not probes:
            with fresh_db.connect() as other:  # the application's worker wants its lock 4242
                got = bool(other.execute("SELECT pg_catalog.pg_try_advisory_lock(4242)").fetchone()[0])
                if got:
                    other.execute("SELECT pg_catalog.pg_advisory_unlock(4242)")
            probes.append(got)

    Engine(fresh_db, mset, progress=progress).apply()
    assert probes == [True], "the engine's session still holds advisory lock 4242 that the migration released"


# -- 6. lock_held_check accepts any granted advisory lock on the key: a transaction-level one (pg_advisory_xact_lock)
# too, which COMMIT releases. A migration that releases the migration lock and takes the key back for its own
# transaction passes the check and commits; the run goes on without the lock, and the next step's check then blames
# that next migration ("a statement of the migration released the engine's migration lock ... remove the unlock from
# the migration"), which has no unlock, while the guilty one stays applied. (Hostile: the key must be known.)


def test_the_lock_check_is_not_satisfied_by_a_transaction_level_lock_on_the_key(
    fresh_db: ConnectionSettings, set_copy: Path, admin: ConnectionSettings
) -> None:
    key = advisory_key(migset.load(set_copy).name)
    unlocks = f"SELECT pg_catalog.pg_advisory_unlock_all();\nSELECT pg_catalog.pg_advisory_xact_lock({key});\n"
    mset = _with(admin, set_copy, {"0008_backfill.sql": unlocks, "0009_note.sql": AFTER})
    assert advisory_key(mset.name) == key
    Engine(fresh_db, mset).apply("0007")
    try:
        Engine(fresh_db, mset).apply()
    except (MigrationError, psycopg.Error) as err:
        assert "0009" not in str(err).split(":")[0], f"the next migration is blamed: {err}"
    assert [r[0] for r in ledger_rows(fresh_db)] == ["0007"], "0008 released the migration lock and was committed anyway"
