"""Found by a context-free breaking review of round 6 (issue #14), false positives first: a database or operator with
another TimeZone or DateStyle, a no-transaction step inheriting the previous step's SET, default privileges granting
PUBLIC; then objects the model did not print (collations, operators, statistics, text search, column storage). Each
test failed on the code it was written against."""

from __future__ import annotations

from pathlib import Path

import pytest
from psycopg import sql

from components.engine.connection import ConnectionSettings
from components.engine.engine import Engine
from components.engine.errors import MigrationError
from tests.integration.test_hostile_migrations import _write
from tests.integration.test_scoped_verify import BASE
from tests.integration.test_wishlist_items_migration import ledger_rows

# An honest migration: a CHECK and a default on a timestamptz constant (a cut-over date). Both print through the
# type's output function, i.e. in the reading session's TimeZone.
_CUTOVER = (
    "CREATE TABLE events (id int PRIMARY KEY, at timestamptz NOT NULL DEFAULT '2024-01-01 00:00:00+00',\n"
    "  CONSTRAINT after_cutover CHECK (at >= '2024-01-01 00:00:00+00'));\n"
)


def _alter_database(settings: ConnectionSettings, setting: str, value: str) -> None:
    with settings.connect() as conn:
        conn.execute(
            sql.SQL("ALTER DATABASE {} SET {} = {}").format(sql.Identifier(settings.dbname), sql.Identifier(setting), sql.Literal(value))
        )


# -- 1. The target database has its own TimeZone (ALTER DATABASE ... SET timezone: common in production). The snapshot
# was generated on a scratch database with the server default. RESET_PRINT_SETTINGS resets to reset_val, which is the
# database's setting: every timestamptz constant in a default, CHECK, view, partition bound prints differently.


def test_an_honest_migration_applies_on_a_database_with_its_own_timezone(
    fresh_db: ConnectionSettings, set_copy: Path, admin: ConnectionSettings
) -> None:
    mset = _write(set_copy, admin, {"0008": BASE["0008"] + _CUTOVER})
    _alter_database(fresh_db, "TimeZone", "Asia/Tokyo")
    try:
        Engine(fresh_db, mset).apply()
    except MigrationError as exc:
        pytest.fail(f"an honest migration was refused on a database whose TimeZone is Asia/Tokyo: {str(exc)[:600]}")
    assert [r[0] for r in ledger_rows(fresh_db)][-1] == "0008"


# -- 2. The same from the operator's side: verify on an untouched database, from a shell where PGTZ is set (libpq sends
# it as a startup option, so it becomes the session's reset value).


def test_verify_on_an_untouched_database_does_not_depend_on_the_operators_pgtz(
    fresh_db: ConnectionSettings, set_copy: Path, admin: ConnectionSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    mset = _write(set_copy, admin, {"0008": BASE["0008"] + _CUTOVER})
    Engine(fresh_db, mset).apply()
    assert Engine(fresh_db, mset).verify().ok
    monkeypatch.setenv("PGTZ", "America/New_York")
    report = Engine(fresh_db, mset).verify()
    assert report.ok, "verify reports drift on an untouched database when PGTZ is set: " + "; ".join(
        d.describe() for d in report.differences
    )


# -- 3. A migration that says SET LOCAL DateStyle (to load day-first dates) and is the first step of a run. The engine
# prepares its statements on the run's connection at their first use, inside that step's transaction, and reads the
# server's record of each (pg_prepared_statements.prepare_time, a timestamptz) before the read resets the print
# settings: psycopg cannot parse '25/11/2026 07:24:01 UTC'. PreparedStatements.settle() raises after the COMMIT, so the
# version is committed and recorded, while apply stops with "it came from a ledger, lock or catalog query, outside any
# migration step" and 0010 never runs.

_DAY_FIRST = "SET LOCAL DateStyle = 'SQL, DMY';\nCREATE TABLE b (id int PRIMARY KEY, note text, due date DEFAULT '31/12/2024');\n"


def test_a_migration_with_set_local_datestyle_applies_as_the_first_step_of_a_run(
    fresh_db: ConnectionSettings, set_copy: Path, admin: ConnectionSettings
) -> None:
    mset = _write(set_copy, admin, {"0008": BASE["0008"], "0009": _DAY_FIRST, "0010": BASE["0010"]})
    Engine(fresh_db, mset).apply("0008")
    try:
        Engine(fresh_db, mset).apply()
        told = None
    except MigrationError as exc:
        told = str(exc)
    recorded = [r[0] for r in ledger_rows(fresh_db)]
    assert told is None, f"apply refused an honest migration (ledger now {recorded}): {told[:500]}"
    assert recorded[-1] == "0010"


# -- 4. The same without any migration saying so: the operator's PGDATESTYLE (libpq sends it at connect; or ALTER
# DATABASE ... SET DateStyle). Every run's first step commits, then apply fails "outside any migration step".


def test_apply_works_when_the_session_datestyle_is_not_iso(
    fresh_db: ConnectionSettings, set_copy: Path, admin: ConnectionSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    mset = _write(set_copy, admin, {"0008": BASE["0008"]})
    monkeypatch.setenv("PGDATESTYLE", "SQL, DMY")
    try:
        Engine(fresh_db, mset).apply()
        told = None
    except Exception as exc:
        told = f"{type(exc).__name__}: {exc}"
    monkeypatch.delenv("PGDATESTYLE")
    recorded = [r[0] for r in ledger_rows(fresh_db)]
    assert told is None, f"apply failed under PGDATESTYLE='SQL, DMY' (ledger now {recorded}): {told[:500]}"


# -- 5. RESET_SESSION ("a migration's SET without LOCAL never reaches the next one") runs at the start of a step in a
# transaction only. A step outside a transaction (-- migrate:no-transaction) after one that said SET search_path runs
# its statements under that search_path: CREATE INDEX CONCURRENTLY b_note ON b lands on archive.b. snapshot (RESET_SESSION
# after every version) and a run that starts at 0010 put it on public.b; a single apply of 0009-0010 commits the index
# on the wrong table and stops with IncompleteMigration.

_SETS_SEARCH_PATH = (
    BASE["0009"] + "CREATE SCHEMA archive;\nCREATE TABLE archive.b (id int PRIMARY KEY, note text);\n"
    "SET search_path = archive, public;\nINSERT INTO b VALUES (1, 'archived');\n"
)
_CONCURRENT = "-- migrate:no-transaction\nCREATE INDEX CONCURRENTLY b_note ON b (note);\n"


@pytest.mark.parametrize("runs", ["one apply", "two applies"])
def test_a_no_transaction_step_does_not_inherit_the_previous_steps_search_path(
    runs: str, fresh_db: ConnectionSettings, set_copy: Path, admin: ConnectionSettings
) -> None:
    mset = _write(set_copy, admin, {"0008": BASE["0008"], "0009": _SETS_SEARCH_PATH, "0010": _CONCURRENT})
    assert "index:b_note" in mset.expected_catalog("0010")
    if runs == "two applies":
        Engine(fresh_db, mset).apply("0009")
    try:
        Engine(fresh_db, mset).apply()
        told = None
    except MigrationError as exc:
        told = str(exc)
    with fresh_db.connect() as conn:
        on = conn.execute("SELECT indrelid::regclass::text FROM pg_index WHERE indexrelid::regclass::text LIKE '%b_note'").fetchall()
    assert told is None, f"{runs}: an honest set failed; b_note was built on {on}: {told[:500]}"


# -- 6. Default privileges are per database: a target database where new tables are readable by PUBLIC (ALTER DEFAULT
# PRIVILEGES ... GRANT SELECT ON TABLES TO PUBLIC, set once by an operator) prints 'public_privileges' on every table an
# honest migration creates; the snapshot's scratch database has no such default. Apply refuses the honest migration.


def test_a_database_whose_default_privileges_grant_public_is_refused_before_anything_runs(
    fresh_db: ConnectionSettings, set_copy: Path, admin: ConnectionSettings
) -> None:
    """Every table a migration creates there would hold a PUBLIC grant its snapshot (made on a database without such
    defaults) does not: refused up front, saying why and how to fix it, rather than each honest migration being rolled
    back with advice to regenerate its snapshot. (The review asked for honest migrations to apply; this is what was
    chosen: the grant would be real, and silently not comparing PUBLIC grants hid drift in the next review.)"""
    mset = _write(set_copy, admin, {"0008": BASE["0008"]})
    Engine(fresh_db, mset).apply("0007")
    with fresh_db.connect() as conn:
        conn.execute("ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO PUBLIC")
    with pytest.raises(
        MigrationError, match=r"default privileges that change what PUBLIC gets .*\(r:SELECT; .*Nothing was written"
    ) as failure:
        Engine(fresh_db, mset).apply()
    assert "ALTER DEFAULT PRIVILEGES" in failure.value.fix
    assert [r[0] for r in ledger_rows(fresh_db)] == ["0007"]
    with fresh_db.connect() as conn:
        conn.execute("ALTER DEFAULT PRIVILEGES IN SCHEMA public REVOKE SELECT ON TABLES FROM PUBLIC")
    Engine(fresh_db, mset).apply()
    assert Engine(fresh_db, mset).verify().ok


# -- 7. Objects of the schema the model still does not print: drift in them is invisible to verify (and a migration
# that adds them where the snapshot has none is verified).

_UNPRINTED = {
    "collation": "CREATE COLLATION mycoll (provider = libc, locale = 'C')",
    "operator": "CREATE OPERATOR === (LEFTARG = int, RIGHTARG = int, FUNCTION = int4eq)",
    "extended statistics": "CREATE STATISTICS a_stats (dependencies) ON id, note FROM a",
    "text search configuration": "CREATE TEXT SEARCH CONFIGURATION mycfg (COPY = pg_catalog.simple)",
    "sequence options": "CREATE SEQUENCE s0; ALTER SEQUENCE s0 INCREMENT BY 10 MAXVALUE 1000 CYCLE",
    "column storage": "ALTER TABLE e ALTER COLUMN note SET STORAGE PLAIN",
}


@pytest.mark.parametrize("what", sorted(_UNPRINTED))
def test_verify_reports_drift_in_objects_the_model_does_not_print(
    what: str, fresh_db: ConnectionSettings, set_copy: Path, admin: ConnectionSettings
) -> None:
    base = BASE["0008"] + ("CREATE SEQUENCE s0;\n" if what == "sequence options" else "")
    mset = _write(set_copy, admin, {"0008": base})
    Engine(fresh_db, mset).apply()
    assert Engine(fresh_db, mset).verify().ok
    change = _UNPRINTED[what].replace("CREATE SEQUENCE s0; ", "")
    with fresh_db.connect(search_path="public") as conn:
        conn.execute(change)
    assert not Engine(fresh_db, mset).verify().ok, f"{what}: `{change}` on the applied schema: verify reports no drift"
