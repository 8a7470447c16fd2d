"""Breaking review, round 17 (issue #14: the SET CONSTRAINTS rounds after the verifying read, per-table write counts).
Each test failed on aa4f042. Fixed: DISCARD TEMP runs after all user code of a step (and in every round), so a
temporary type made by a trigger cannot stand in for the snapshot's. Not fixed, told: the TRUNCATE-and-refill of 1
still commits its deferred work (the rounds cannot see it); a database with deferrable triggers now has its schema
read again after COMMIT, and the run stops naming the committed step and what differs (it can no longer roll back).

1. A round compares per-table pg_stat_xact_all_tables counts. A TRUNCATE of a table created in the same transaction
   truncates it in place (no pg_class row written) and zeroes that table's transaction counts; inserting as many rows
   again restores them exactly. The deferred trigger that runs in the first round re-defers, truncates q2 (created by
   the migration, no pending events) and inserts one row into it, queueing a deferred event on q2: the round's counts
   are unchanged, the rounds stop, and COMMIT runs the queued event: it creates public.evil, which the snapshot lacks.
2. DISCARD TEMP runs before the ledger row and SET CONSTRAINTS: a trigger fired after it (in a round here) creates a
   temporary table ON COMMIT DROP and adds a permanent column of its row type. pg_temp is searched first, so the read
   prints that type as the snapshot's `tt`; COMMIT drops the temporary table with CASCADE, and the column with it.
3. As 2 with no deferrable trigger at all (single read): a plain trigger on the ledger, fired by the engine's row.
4. As 3 in a no-transaction step's final transaction.
In every middle-step case the run then stops at 0010, telling 0010's catalog as not matching its snapshot (0009 did it);
verify does report the missing column afterwards.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from components.engine import runner
from components.engine.connection import ConnectionSettings
from components.engine.engine import Engine
from components.engine.errors import MigrationError
from tests.integration.test_hostile_migrations import _relations, _swap, _write
from tests.integration.test_hostile_rounds import AT_EACH_PLACE, apply_swapped
from tests.integration.test_scoped_verify import BASE
from tests.integration.test_wishlist_items_migration import ledger_rows

# q1 id 1 (the migration's row): fired at the engine's SET CONSTRAINTS before the read: re-defers, queues q1 id 2.
# q1 id 2: fired in the first round after the read: re-defers, TRUNCATE q2 (ins 1 -> 0), INSERT q2 id 3 (ins 0 -> 1),
#   which queues a deferred event on q2. Per-table counts: q1 2 -> 2, q2 1 -> 1: "no work ran".
# q2 id 3: fired at COMMIT: CREATE TABLE public.evil.
_TRUNCATE_REFILL_IN_A_ROUND = """
CREATE TABLE migration_ledger.q1 (id int);
CREATE TABLE migration_ledger.q2 (id int);
INSERT INTO migration_ledger.q2 VALUES (0);
CREATE FUNCTION migration_ledger.t() RETURNS trigger LANGUAGE plpgsql AS $f$
BEGIN
  IF NEW.id = 1 THEN
    SET CONSTRAINTS ALL DEFERRED;
    INSERT INTO migration_ledger.q1 VALUES (2);
  ELSIF NEW.id = 2 THEN
    SET CONSTRAINTS ALL DEFERRED;
    TRUNCATE migration_ledger.q2;
    INSERT INTO migration_ledger.q2 VALUES (3);
  ELSE
    CREATE TABLE public.evil (id int);
  END IF;
  RETURN NULL;
END $f$;
CREATE CONSTRAINT TRIGGER t AFTER INSERT ON migration_ledger.q1 DEFERRABLE INITIALLY DEFERRED
  FOR EACH ROW WHEN (NEW.id > 0) EXECUTE FUNCTION migration_ledger.t();
CREATE CONSTRAINT TRIGGER t AFTER INSERT ON migration_ledger.q2 DEFERRABLE INITIALLY DEFERRED
  FOR EACH ROW WHEN (NEW.id > 0) EXECUTE FUNCTION migration_ledger.t();
INSERT INTO migration_ledger.q1 VALUES (1);
"""


@AT_EACH_PLACE
def test_a_round_that_truncates_and_refills_a_new_table_hides_work_queued_for_commit(
    scoped_from: int,
    target: str | None,
    fresh_db: ConnectionSettings,
    set_copy: Path,
    admin: ConnectionSettings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(runner, "SCOPED_FROM", scoped_from)
    message = apply_swapped(fresh_db, set_copy, admin, BASE["0009"], BASE["0009"] + _TRUNCATE_REFILL_IN_A_ROUND, target)
    # Not rolled back (see the docstring): what must hold is that the run says so, of the right step, and stops.
    assert "evil" in _relations(fresh_db)
    assert (
        message.startswith("0009")
        and "committed" in message
        and "evil" in message
        and "cannot be undone" in message
        and "records the version as applied" in message
    ), message
    assert [r[0] for r in ledger_rows(fresh_db)] == ["0007", "0008", "0009"]


# 2. DISCARD TEMP runs before the read, but a deferred trigger that runs in a round after it can create temporary
#    objects again. The round's trigger creates pg_temp.tt (ON COMMIT DROP) and adds b.x of its row type. The round
#    wrote catalog rows, so the engine reads the schema again, whole: pg_temp is searched first, so the temporary
#    row type prints as `tt`, like the snapshot's public.tt. At COMMIT the temporary table is dropped with CASCADE,
#    taking b.x with it: 0009 is recorded as verified while b lacks the snapshot's column x.
_HONEST_TT = "CREATE TYPE tt AS (a int);\nCREATE TABLE b (id int PRIMARY KEY, x tt);\n"
_TEMP_TYPE_IN_A_ROUND = """
CREATE TYPE tt AS (a int);
CREATE TABLE b (id int PRIMARY KEY);
CREATE TABLE migration_ledger.q (id int);
CREATE FUNCTION migration_ledger.t() RETURNS trigger LANGUAGE plpgsql AS $f$
BEGIN
  IF NEW.id = 1 THEN
    SET CONSTRAINTS ALL DEFERRED;
    INSERT INTO migration_ledger.q VALUES (2);
  ELSE
    CREATE TEMP TABLE tt (a int) ON COMMIT DROP;
    ALTER TABLE public.b ADD COLUMN x pg_temp.tt;
  END IF;
  RETURN NULL;
END $f$;
CREATE CONSTRAINT TRIGGER t AFTER INSERT ON migration_ledger.q DEFERRABLE INITIALLY DEFERRED
  FOR EACH ROW EXECUTE FUNCTION migration_ledger.t();
INSERT INTO migration_ledger.q VALUES (1);
"""


def _columns_of_b(settings: ConnectionSettings) -> list[str]:
    with settings.connect() as conn:
        rows = conn.execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass('public.b') AND attnum > 0 AND NOT attisdropped ORDER BY attnum"
        ).fetchall()
    return [str(r[0]) for r in rows]


@AT_EACH_PLACE
def test_a_temporary_row_type_made_in_a_round_stands_in_for_the_snapshots_and_drops_at_commit(
    scoped_from: int,
    target: str | None,
    fresh_db: ConnectionSettings,
    set_copy: Path,
    admin: ConnectionSettings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(runner, "SCOPED_FROM", scoped_from)
    message = apply_swapped(fresh_db, set_copy, admin, _HONEST_TT, _TEMP_TYPE_IN_A_ROUND, target)
    versions = [r[0] for r in ledger_rows(fresh_db)]
    columns = _columns_of_b(fresh_db)
    assert not ("0009" in versions and "x" not in columns), (versions, columns, message)


# 3. The same without any deferrable trigger (the single-read path, no rounds): DISCARD TEMP runs before the engine's
#    ledger row, and a plain AFTER INSERT trigger on the ledger, fired by that row, runs after it: it creates pg_temp.tt
#    ON COMMIT DROP and b.x of its row type. The read prints `tt` (pg_temp is searched first); COMMIT drops the
#    temporary table and b.x with it. Any user who may create a trigger on the ledger table (the migration role).
_TEMP_TYPE_FROM_THE_LEDGER_ROW = """
CREATE TYPE tt AS (a int);
CREATE TABLE b (id int PRIMARY KEY);
CREATE FUNCTION migration_ledger.t() RETURNS trigger LANGUAGE plpgsql AS $f$
BEGIN
  CREATE TEMP TABLE tt (a int) ON COMMIT DROP;
  ALTER TABLE public.b ADD COLUMN x pg_temp.tt;
  RETURN NULL;
END $f$;
CREATE TRIGGER t AFTER INSERT ON migration_ledger.applied
  FOR EACH ROW WHEN (NEW.version = '0009') EXECUTE FUNCTION migration_ledger.t();
"""


@AT_EACH_PLACE
def test_a_temporary_row_type_made_by_a_ledger_trigger_after_discard_temp_drops_at_commit(
    scoped_from: int,
    target: str | None,
    fresh_db: ConnectionSettings,
    set_copy: Path,
    admin: ConnectionSettings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(runner, "SCOPED_FROM", scoped_from)
    message = apply_swapped(fresh_db, set_copy, admin, _HONEST_TT, _TEMP_TYPE_FROM_THE_LEDGER_ROW, target)
    versions = [r[0] for r in ledger_rows(fresh_db)]
    columns = _columns_of_b(fresh_db)
    assert not ("0009" in versions and "x" not in columns), (versions, columns, message)


# 4. As 3, in a no-transaction step's final transaction: DISCARD TEMP runs before the final ledger row, whose trigger
#    makes the temporary row type and b.x; the read prints `tt`, COMMIT drops b.x, 0009 is recorded as applied.
_NO_TX_HONEST_TT = "-- migrate:no-transaction\n" + _HONEST_TT
_NO_TX_TEMP_TYPE = "-- migrate:no-transaction\n" + _TEMP_TYPE_FROM_THE_LEDGER_ROW.replace(
    "CREATE TRIGGER t AFTER INSERT ON migration_ledger.applied\n  FOR EACH ROW WHEN (NEW.version = '0009')",
    "CREATE TRIGGER t AFTER INSERT OR UPDATE ON migration_ledger.applied\n"
    "  FOR EACH ROW WHEN (NEW.status = 'applied' AND NEW.version = '0009')",
)


def test_a_no_transaction_step_commits_without_a_column_a_temporary_type_stood_in_for(
    fresh_db: ConnectionSettings, set_copy: Path, admin: ConnectionSettings
) -> None:
    assert _NO_TX_TEMP_TYPE.count("NEW.status = 'applied'") == 1
    _write(set_copy, admin, {"0008": BASE["0008"], "0009": _NO_TX_HONEST_TT})
    mset = _swap(set_copy, "0009", _NO_TX_TEMP_TYPE)
    message = ""
    try:
        Engine(fresh_db, mset).apply("0009")
    except MigrationError as exc:
        message = str(exc)
    with fresh_db.connect() as conn:
        applied = [r[0] for r in conn.execute("SELECT version FROM migration_ledger.applied WHERE status = 'applied' ORDER BY 1")]
    columns = _columns_of_b(fresh_db)
    assert not ("0009" in applied and "x" not in columns), (applied, columns, message)
