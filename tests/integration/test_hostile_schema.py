"""Found by a context-free breaking review of round 4 (issue #14): a trigger on the ledger, a temporary domain
shadowing a type of the engine's read, an object hidden in an extension, and schema changes the catalog model did not
print. Each test failed on the code before its fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from components.engine import runner
from components.engine.connection import ConnectionSettings
from components.engine.engine import Engine
from components.engine.errors import MigrationError
from tests.integration.test_hostile_migrations import _relations
from tests.integration.test_scoped_verify import BASE, _set
from tests.integration.test_wishlist_items_migration import ledger_rows

# A trigger on the engine's own ledger table (outside the verified schema: no snapshot lists it). The engine inserts
# the ledger row after its verifying read, in the same transaction: the trigger's DDL commits unverified.
_LEDGER_TRIGGER = """
CREATE FUNCTION migration_ledger.after_record() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.version = '0010' THEN EXECUTE 'CREATE TABLE public.evil (id int)'; END IF;
  RETURN NEW;
END $$;
CREATE TRIGGER after_record AFTER INSERT ON migration_ledger.applied FOR EACH ROW EXECUTE FUNCTION migration_ledger.after_record();
"""


@pytest.mark.parametrize("scoped", [False, True])
def test_ddl_from_a_trigger_on_the_ledger_is_committed_unverified(
    scoped: bool, fresh_db: ConnectionSettings, set_copy: Path, admin: ConnectionSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runner, "SCOPED_FROM", 0 if scoped else 10**9)
    mset = _set(set_copy, admin, BASE["0009"] + _LEDGER_TRIGGER)
    try:
        Engine(fresh_db, mset).apply()
    except MigrationError as exc:
        assert "rolled back" not in str(exc) or "evil" not in _relations(fresh_db)
        return
    # apply said every step was verified against its snapshot; the schema it committed is not 0010's snapshot
    assert "evil" not in _relations(fresh_db), f"apply succeeded, ledger {ledger_rows(fresh_db)}, yet public.evil exists"


# A trusted extension (CREATE on the database suffices, the caller owns the extension) adopts a table the migration
# made: the catalog read leaves extension members out, so the table is invisible to apply's read and to verify.
_ADOPTED_BY_EXTENSION = """
CREATE EXTENSION pgcrypto;
CREATE TABLE evil (id int);
ALTER EXTENSION pgcrypto ADD TABLE evil;
"""


@pytest.mark.parametrize("scoped", [False, True])
def test_a_table_made_an_extension_member_is_invisible_to_apply_and_verify(
    scoped: bool, fresh_db: ConnectionSettings, set_copy: Path, admin: ConnectionSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runner, "SCOPED_FROM", 0 if scoped else 10**9)
    mset = _set(set_copy, admin, BASE["0009"] + _ADOPTED_BY_EXTENSION)
    try:
        Engine(fresh_db, mset).apply()
    except MigrationError as exc:
        assert "0009" in str(exc) and "rolled back" in str(exc)
        assert "evil" not in _relations(fresh_db)
        return
    assert "evil" in _relations(fresh_db)  # committed
    report = Engine(fresh_db, mset).verify()
    assert not report.ok, "apply committed 0009 with table public.evil and pgcrypto's functions in public; verify says no drift"


# pg_temp is searched before pg_catalog for type names (never for functions or operators). The engine's queries name
# their types unqualified (::text, ::regclass, ::json, ::xid, ::oid), and a prepared statement is analysed again under
# the current search_path once the session's temporary schema exists. A domain pg_temp.regclass whose CHECK calls the
# migration's function turns the `::regclass` of the verifying read into a call of that function, after the guard: it
# adds a table while the read runs (the read's snapshot does not see it), and the table commits with the step.
_TEMP_TEXT_DOMAIN = """
CREATE FUNCTION pg_temp.sneak(v pg_catalog.text) RETURNS boolean LANGUAGE plpgsql AS $f$
BEGIN
  IF pg_catalog.to_regclass('public.d') IS NOT NULL THEN  -- only while 0010, the last step, is being verified
    EXECUTE 'CREATE TABLE IF NOT EXISTS public.evil (id int)';
  END IF;
  RETURN true;
END $f$;
CREATE DOMAIN pg_temp.regclass AS pg_catalog.regclass CHECK (pg_temp.sneak(VALUE::pg_catalog.text));
"""


@pytest.mark.parametrize("scoped", [False, True])
def test_a_temporary_domain_shadowing_regclass_runs_the_migrations_code_inside_the_verifying_read(
    scoped: bool, fresh_db: ConnectionSettings, set_copy: Path, admin: ConnectionSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runner, "SCOPED_FROM", 0 if scoped else 10**9)
    mset = _set(set_copy, admin, BASE["0009"] + _TEMP_TEXT_DOMAIN)
    try:
        Engine(fresh_db, mset).apply()
    except MigrationError as exc:
        assert "rolled back" not in str(exc) or "evil" not in _relations(fresh_db)
        return
    assert "evil" not in _relations(fresh_db), f"apply verified every step, ledger {ledger_rows(fresh_db)}, yet public.evil exists"


# Drift the catalog model does not print: verify says the schema matches its snapshot.
UNSEEN_DRIFT = {
    "column collation": 'ALTER TABLE a ALTER COLUMN note TYPE text COLLATE "C"',
    "function return type": "DROP FUNCTION f(); CREATE FUNCTION f() RETURNS bigint LANGUAGE sql AS 'SELECT 1'",
    "function made SECURITY DEFINER": "ALTER FUNCTION f() SECURITY DEFINER",
    "table made UNLOGGED": "ALTER TABLE e SET UNLOGGED",
    "row level security enabled": "ALTER TABLE a ENABLE ROW LEVEL SECURITY",
    "trigger added": "CREATE SCHEMA elsewhere; CREATE FUNCTION elsewhere.t() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NULL; END $$;"
    " CREATE TRIGGER swallow BEFORE INSERT ON a FOR EACH ROW EXECUTE FUNCTION elsewhere.t()",  # every insert into a is dropped
    "composite type added": "CREATE TYPE pair AS (x int, y int)",
    "domain constraint changed": "CREATE DOMAIN positive AS int CHECK (VALUE > 0)",
}


@pytest.mark.parametrize("case", sorted(UNSEEN_DRIFT))
def test_verify_reports_drift_the_model_does_not_print(
    case: str, fresh_db: ConnectionSettings, set_copy: Path, admin: ConnectionSettings
) -> None:
    mset = _set(set_copy, admin)
    Engine(fresh_db, mset).apply()
    with fresh_db.connect(search_path="public") as conn:
        conn.execute(UNSEEN_DRIFT[case])
    assert not Engine(fresh_db, mset).verify().ok, f"{case}: verify reports no drift"


@pytest.mark.parametrize("case", sorted(UNSEEN_DRIFT))
def test_a_middle_step_that_also_makes_such_a_change_is_rolled_back(
    case: str, fresh_db: ConnectionSettings, set_copy: Path, admin: ConnectionSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same changes made by a migration beyond its snapshot, verified by the scoped read (what the step wrote)."""
    monkeypatch.setattr(runner, "SCOPED_FROM", 0)
    mset = _set(set_copy, admin, BASE["0009"] + UNSEEN_DRIFT[case] + ";\n")
    with pytest.raises(MigrationError) as failure:
        Engine(fresh_db, mset).apply()
    message = str(failure.value)
    assert "0009" in message and "rolled back" in message, message
    assert [r[0] for r in ledger_rows(fresh_db)] == ["0007", "0008"]
