"""Found by a context-free breaking review of round 5 (issue #14): work that runs at COMMIT after the verifying read
(ON COMMIT DROP cascading, deferred triggers that defer again), a COMMIT-time failure told as something else, a
no-transaction step's ledger row after its read, and schema changes the model still did not print (BEGIN ATOMIC
bodies, rules, inheritance, partitions, argument defaults, view options, PUBLIC grants, replica identity, aggregates).
Each test failed on the code it was written against."""

from __future__ import annotations

from pathlib import Path

import pytest

from components.engine import runner
from components.engine.connection import ConnectionSettings
from components.engine.engine import Engine
from components.engine.errors import MigrationError
from tests.integration.test_hostile_migrations import _swap, _write
from tests.integration.test_scoped_verify import BASE
from tests.integration.test_wishlist_items_migration import ledger_rows


def _functions(settings: ConnectionSettings) -> set[str]:
    with settings.connect() as conn:
        rows = conn.execute("SELECT proname FROM pg_proc WHERE pronamespace = 'public'::regnamespace").fetchall()
    return {str(r[0]) for r in rows}


def _relations(settings: ConnectionSettings) -> set[str]:
    with settings.connect() as conn:
        rows = conn.execute("SELECT relname FROM pg_class WHERE relnamespace = 'public'::regnamespace").fetchall()
    return {str(r[0]) for r in rows}


# -- 1. Work done at COMMIT, after the verifying read: ON COMMIT DROP of a temporary table drops with CASCADE.
#
# 0008 (honest) makes a function g with a parameter default and a view that calls it. The tampered 0009 gives g's
# parameter a default that depends on a temporary table created ON COMMIT DROP. Parameter defaults do not print (nor
# does the dependency), so the verifying read sees g and v exactly as the snapshot has them; then COMMIT runs the
# temporary table's ON COMMIT DROP, which deletes with CASCADE: g and the view v go with it, after the read, committed.

_G = "CREATE FUNCTION g(x int DEFAULT 1) RETURNS int LANGUAGE sql IMMUTABLE AS 'SELECT x';\nCREATE VIEW v AS SELECT g(id) AS gid FROM a;\n"
_DROPPED_AT_COMMIT = (
    "CREATE TEMP TABLE doomed (i int) ON COMMIT DROP;\n"
    "CREATE OR REPLACE FUNCTION g(x int DEFAULT (NULL::pg_temp.doomed).i) RETURNS int LANGUAGE sql IMMUTABLE AS 'SELECT x';\n"
)


@pytest.mark.parametrize("version", ["0009", "0010"])
@pytest.mark.parametrize("scoped", [False, True])
def test_on_commit_drop_cascades_to_verified_objects_after_the_read(
    scoped: bool, version: str, fresh_db: ConnectionSettings, set_copy: Path, admin: ConnectionSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """0009: a middle step (scoped read when `scoped`); 0010: the last step of the run (always the whole read)."""
    monkeypatch.setattr(runner, "SCOPED_FROM", 0 if scoped else 10**9)
    _write(set_copy, admin, {"0008": BASE["0008"] + _G, "0009": BASE["0009"], "0010": BASE["0010"]})
    mset = _swap(set_copy, version, BASE[version] + _DROPPED_AT_COMMIT)
    try:
        Engine(fresh_db, mset).apply()
        told = "apply succeeded"
    except MigrationError as exc:
        told = str(exc)
    recorded = [r[0] for r in ledger_rows(fresh_db)]
    # the tampered version is in the ledger as applied and verified: its snapshot lists g and v, the database has neither
    assert version not in recorded or "g" in _functions(fresh_db), (
        f"ledger {recorded} records {version} verified, but g() and view v were dropped at its COMMIT; apply said: {told[:300]}"
    )


# -- 2. A function with an SQL-standard body (BEGIN ATOMIC, PostgreSQL 14+): prosrc is empty, the body is in
# prosqlbody, so body_md5 is md5('') whatever the body says. A changed body is invisible to apply and to verify.

_ATOMIC = "CREATE FUNCTION price_cap() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 100; END;\n"
_ATOMIC_CHANGED = "CREATE OR REPLACE FUNCTION price_cap() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 0; END"


def test_verify_reports_a_changed_begin_atomic_function_body(
    fresh_db: ConnectionSettings, set_copy: Path, admin: ConnectionSettings
) -> None:
    mset = _write(set_copy, admin, {"0008": BASE["0008"] + _ATOMIC})
    Engine(fresh_db, mset).apply()
    with fresh_db.connect(search_path="public") as conn:
        conn.execute(_ATOMIC_CHANGED)
        assert conn.execute("SELECT price_cap()").fetchone() == (0,)
    assert not Engine(fresh_db, mset).verify().ok, "price_cap() now returns 0 instead of 100: verify reports no drift"


@pytest.mark.parametrize("scoped", [False, True])
def test_a_step_that_changes_a_begin_atomic_body_is_rolled_back(
    scoped: bool, fresh_db: ConnectionSettings, set_copy: Path, admin: ConnectionSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runner, "SCOPED_FROM", 0 if scoped else 10**9)
    _write(set_copy, admin, {"0008": BASE["0008"] + _ATOMIC, "0009": BASE["0009"], "0010": BASE["0010"]})
    mset = _swap(set_copy, "0009", BASE["0009"] + _ATOMIC_CHANGED + ";\n")
    with pytest.raises(MigrationError) as failure:
        Engine(fresh_db, mset).apply()
    assert "0009" in str(failure.value) and "rolled back" in str(failure.value)


# -- 3. A step outside a transaction: the ledger row is written after the verifying read, in its own transaction. A
# trigger on the ledger (the migrator owns it; round 4 fixed this for transactional steps only) then changes the schema
# after the read: apply reports the step verified, records the fingerprint of a schema the database no longer holds.

_LEDGER_TRIGGER_LATE = """
CREATE FUNCTION migration_ledger.late() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.version = '0010' AND NEW.status = 'applied' THEN EXECUTE 'CREATE TABLE IF NOT EXISTS public.evil (id int)'; END IF;
  RETURN NEW;
END $$;
CREATE TRIGGER late AFTER INSERT OR UPDATE ON migration_ledger.applied FOR EACH ROW EXECUTE FUNCTION migration_ledger.late();
"""


def test_a_ledger_trigger_after_the_read_of_a_step_outside_a_transaction(
    fresh_db: ConnectionSettings, set_copy: Path, admin: ConnectionSettings
) -> None:
    files = {
        "0008": BASE["0008"],
        "0009": BASE["0009"],
        "0010": "-- migrate:no-transaction\nCREATE INDEX CONCURRENTLY b_note ON b (note);\n",
    }
    _write(set_copy, admin, files)
    mset = _swap(set_copy, "0009", BASE["0009"] + _LEDGER_TRIGGER_LATE)
    try:
        result = Engine(fresh_db, mset).apply()
    except MigrationError:
        return  # told: fine, whatever it says (outside a transaction nothing is rolled back)
    assert "evil" not in _relations(fresh_db), (
        f"apply verified 0010 (fingerprint {result.ran[-1]['fingerprint'][:19]}), yet public.evil was created after its read"
    )


# -- 4. Drift the catalog model does not print (the whole read, verify): each changes what the schema does.

_MODEL_BASE = (
    BASE["0008"]
    + "CREATE VIEW av AS SELECT id, note FROM a;\n"
    + "CREATE FUNCTION h(x int DEFAULT 1) RETURNS int LANGUAGE sql IMMUTABLE AS 'SELECT x';\n"
    + "CREATE TABLE pt (k int) PARTITION BY RANGE (k);\n"
    + "CREATE TABLE pt1 PARTITION OF pt FOR VALUES FROM (0) TO (10);\n"
    + "CREATE AGGREGATE total(int) (SFUNC = int4pl, STYPE = int);\n"
)
UNPRINTED = {
    # every INSERT into a is silently discarded
    "rule added to a table": "CREATE RULE swallow AS ON INSERT TO a DO INSTEAD NOTHING",
    # SELECT ... FROM a now also returns e's rows
    "table made to inherit another": "ALTER TABLE e INHERIT a",
    # rows of pt with 0 <= k < 10 are no longer in pt; inserts of those keys fail
    "partition detached": "ALTER TABLE pt DETACH PARTITION pt1",
    # h() now returns 2
    "function parameter default changed": "CREATE OR REPLACE FUNCTION h(x int DEFAULT 2) RETURNS int LANGUAGE sql IMMUTABLE AS 'SELECT x'",
    # the view runs with the caller's privileges / rejects rows it would not show
    "view made security_invoker": "ALTER VIEW av SET (security_invoker = true)",
    "view given a check option": "ALTER VIEW av SET (check_option = local)",
    # privileges: anyone may now write the table
    "table granted to PUBLIC": "GRANT ALL ON a TO PUBLIC",
    # logical replication / CDC now ships whole rows (or nothing for UPDATE/DELETE with NOTHING)
    "replica identity changed": "ALTER TABLE a REPLICA IDENTITY FULL",
    # total() now subtracts (pg_aggregate is not printed: its body_md5 is md5('aggregate_dummy'))
    "aggregate's state function replaced": "CREATE OR REPLACE AGGREGATE total(int) (SFUNC = int4mi, STYPE = int)",
}


@pytest.mark.parametrize("case", sorted(UNPRINTED))
def test_verify_reports_drift_the_model_still_does_not_print(
    case: str, fresh_db: ConnectionSettings, set_copy: Path, admin: ConnectionSettings
) -> None:
    mset = _write(set_copy, admin, {"0008": _MODEL_BASE})
    Engine(fresh_db, mset).apply()
    with fresh_db.connect(search_path="public") as conn:
        conn.execute(UNPRINTED[case])
    assert not Engine(fresh_db, mset).verify().ok, f"{case}: verify reports no drift"


@pytest.mark.parametrize("case", sorted(UNPRINTED))
def test_a_middle_step_that_also_makes_such_a_change_is_rolled_back(
    case: str, fresh_db: ConnectionSettings, set_copy: Path, admin: ConnectionSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same changes made by a migration beyond its snapshot, verified by the scoped read."""
    monkeypatch.setattr(runner, "SCOPED_FROM", 0)
    _write(set_copy, admin, {"0008": _MODEL_BASE, "0009": BASE["0009"], "0010": BASE["0010"]})
    mset = _swap(set_copy, "0009", BASE["0009"] + UNPRINTED[case] + ";\n")
    with pytest.raises(MigrationError) as failure:
        Engine(fresh_db, mset).apply()
    assert "0009" in str(failure.value) and "rolled back" in str(failure.value), str(failure.value)
    assert [r[0] for r in ledger_rows(fresh_db)] == ["0007", "0008"]


# -- 5. SET CONSTRAINTS ALL IMMEDIATE before the read (round 4's fix) does not keep deferred work from COMMIT: the
# deferred trigger it fires may say SET CONSTRAINTS ALL DEFERRED again and queue another deferred event, which then
# runs at COMMIT, after the verifying read.

_REDEFER = (
    "CREATE TABLE q1 (i int);\nCREATE TABLE q2 (i int);\n"
    "CREATE FUNCTION t1() RETURNS trigger LANGUAGE plpgsql AS\n"
    "  $f$ BEGIN SET CONSTRAINTS ALL DEFERRED; INSERT INTO q2 VALUES (NEW.i); RETURN NULL; END $f$;\n"
    "CREATE FUNCTION t2() RETURNS trigger LANGUAGE plpgsql AS\n"
    "  $f$ BEGIN IF NEW.i = 1 THEN EXECUTE 'CREATE TABLE IF NOT EXISTS public.evil (id int)'; ELSE RAISE EXCEPTION 'late'; END IF;\n"
    "  RETURN NULL; END $f$;\n"
    "CREATE CONSTRAINT TRIGGER c1 AFTER INSERT ON q1 DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION t1();\n"
    "CREATE CONSTRAINT TRIGGER c2 AFTER INSERT ON q2 DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION t2();\n"
)


@pytest.mark.parametrize("scoped", [False, True])
def test_a_deferred_trigger_that_defers_again_changes_the_schema_at_commit(
    scoped: bool, fresh_db: ConnectionSettings, set_copy: Path, admin: ConnectionSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runner, "SCOPED_FROM", 0 if scoped else 10**9)
    _write(set_copy, admin, {"0008": BASE["0008"] + _REDEFER, "0009": BASE["0009"], "0010": BASE["0010"]})
    mset = _swap(set_copy, "0010", BASE["0010"] + "INSERT INTO q1 VALUES (1);\n")
    try:
        Engine(fresh_db, mset).apply()
        told = "apply succeeded"
    except MigrationError as exc:
        told = str(exc)
    recorded = [r[0] for r in ledger_rows(fresh_db)]
    assert "0010" not in recorded or "evil" not in _relations(fresh_db), (
        f"ledger {recorded} records 0010 verified, but its COMMIT created public.evil; apply said: {told[:300]}"
    )


def test_a_deferred_failure_at_commit_is_told_as_a_migration_error(
    fresh_db: ConnectionSettings, set_copy: Path, admin: ConnectionSettings
) -> None:
    """The re-deferred trigger raises at COMMIT: the step is rolled back; apply must say so, naming the version."""
    _write(set_copy, admin, {"0008": BASE["0008"] + _REDEFER, "0009": BASE["0009"], "0010": BASE["0010"]})
    mset = _swap(set_copy, "0009", BASE["0009"] + "INSERT INTO q1 VALUES (2);\n")
    with pytest.raises(Exception) as failure:
        Engine(fresh_db, mset).apply()
    assert isinstance(failure.value, MigrationError), f"{type(failure.value).__name__}: {failure.value}"
    assert "0009" in str(failure.value) and "rolled back" in str(failure.value)
    assert [r[0] for r in ledger_rows(fresh_db)] == ["0007", "0008"]


# -- 6. Sequence options (pg_sequence): the last part of a relation's definition the model did not print.

_SEQUENCE_BASE = BASE["0008"] + "CREATE SEQUENCE s;\nCREATE TABLE ids (id bigint GENERATED ALWAYS AS IDENTITY, note text);\n"
SEQUENCE_CHANGES = {
    "increment": "ALTER SEQUENCE s INCREMENT BY 10",
    "cycle": "ALTER SEQUENCE s CYCLE",
    "maxvalue": "ALTER SEQUENCE s MAXVALUE 100",
    "identity start": "ALTER TABLE ids ALTER COLUMN id RESTART WITH 1000",
    "identity increment": "ALTER TABLE ids ALTER COLUMN id SET INCREMENT BY 5",
}


@pytest.mark.parametrize("case", sorted(SEQUENCE_CHANGES))
def test_verify_reports_a_changed_sequence_option(
    case: str, fresh_db: ConnectionSettings, set_copy: Path, admin: ConnectionSettings
) -> None:
    mset = _write(set_copy, admin, {"0008": _SEQUENCE_BASE})
    Engine(fresh_db, mset).apply()
    assert Engine(fresh_db, mset).verify().ok
    with fresh_db.connect(search_path="public") as conn:
        conn.execute("SELECT nextval('s')")  # using a sequence is not drift
        conn.execute("INSERT INTO ids (note) VALUES ('x')")
    assert Engine(fresh_db, mset).verify().ok
    with fresh_db.connect(search_path="public") as conn:
        conn.execute(SEQUENCE_CHANGES[case])
    if case == "identity start":  # RESTART moves the current value only: not a definition, not drift
        assert Engine(fresh_db, mset).verify().ok
    else:
        assert not Engine(fresh_db, mset).verify().ok, f"{case}: verify reports no drift"


@pytest.mark.parametrize("case", sorted(set(SEQUENCE_CHANGES) - {"identity start"}))
def test_a_middle_step_that_also_changes_a_sequence_is_rolled_back(
    case: str, fresh_db: ConnectionSettings, set_copy: Path, admin: ConnectionSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runner, "SCOPED_FROM", 0)
    _write(set_copy, admin, {"0008": _SEQUENCE_BASE, "0009": BASE["0009"], "0010": BASE["0010"]})
    mset = _swap(set_copy, "0009", BASE["0009"] + SEQUENCE_CHANGES[case] + ";\n")
    with pytest.raises(MigrationError) as failure:
        Engine(fresh_db, mset).apply()
    assert "0009" in str(failure.value) and "rolled back" in str(failure.value), str(failure.value)
    assert [r[0] for r in ledger_rows(fresh_db)] == ["0007", "0008"]
