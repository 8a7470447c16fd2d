"""Breaking review, round 14 (issue #14, the prepared-statement check moved before the verifying read). Each test
failed on the code it was written against; the fix refuses cursors WITH HOLD left open (apply and snapshot), closes
any at the start of a step, checks that no name the engine prepares under is taken, and checks at a step's start after
any step that prepared a statement.

User code that runs at COMMIT without any deferrable trigger: a cursor declared WITH HOLD in a migration is run to its
end when the transaction commits (PostgreSQL persists a holdable portal at pre-commit), so a function it calls runs
after the verifying read, after the check of the engine's prepared statements and after USER_DEFERRABLE_TRIGGERS said
"no user code at COMMIT". Any non-superuser can declare one. What it does commits with the step.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from components.engine import migset, runner
from components.engine.connection import ConnectionSettings
from components.engine.engine import Engine
from components.engine.errors import MigrationError, StatementFailed
from components.engine.snapshot import generate
from tests.integration.test_hostile_migrations import _relations
from tests.integration.test_scoped_verify import BASE, _set
from tests.integration.test_wishlist_items_migration import ledger_rows

# A function (in the ledger schema, which the honest read does not see) that changes the migration schema, called only
# when the step's transaction commits: the holdable cursor's query runs to its end at COMMIT.
_AT_COMMIT_DDL = """
CREATE FUNCTION migration_ledger.at_commit() RETURNS int LANGUAGE plpgsql AS $f$
BEGIN
  CREATE TABLE public.evil (id int);
  RETURN 1;
END $f$;
DECLARE late CURSOR WITH HOLD FOR SELECT migration_ledger.at_commit();
"""


@pytest.mark.parametrize("scoped_from", [0, 10**9], ids=["scoped read", "whole read"])
def test_a_holdable_cursor_changes_the_schema_at_commit_after_the_read(
    scoped_from: int, fresh_db: ConnectionSettings, set_copy: Path, admin: ConnectionSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """0009 commits with table public.evil, which its snapshot does not have; the run then fails at 0010 and blames 0010
    (the catalog 'after the migration' of 0010 does not match), while 0009 stays recorded as verified."""
    monkeypatch.setattr(runner, "SCOPED_FROM", scoped_from)
    mset = _set(set_copy, admin, BASE["0009"] + _AT_COMMIT_DDL)
    with pytest.raises(MigrationError) as failure:
        Engine(fresh_db, mset).apply()
    message = str(failure.value)
    assert [r[0] for r in ledger_rows(fresh_db)] == ["0007", "0008"], message
    assert "evil" not in _relations(fresh_db), message
    assert "0009" in message and "rolled back" in message and "late" in message and "WITH HOLD" in message, message


def test_a_holdable_cursor_as_the_last_step_commits_drift_and_the_run_succeeds(
    fresh_db: ConnectionSettings, set_copy: Path, admin: ConnectionSettings
) -> None:
    """The same as the run's last step (its whole read and all): apply reports success, the ledger records 0009 as
    verified, and the schema holds a table the snapshot does not."""
    mset = _set(set_copy, admin, BASE["0009"] + _AT_COMMIT_DDL)
    try:
        Engine(fresh_db, mset).apply(target="0009")
    except MigrationError:
        pass  # refusing is the right outcome
    assert "evil" not in _relations(fresh_db) or "0009" not in [r[0] for r in ledger_rows(fresh_db)]


def _set_many(set_copy: Path, admin: ConnectionSettings, files: dict[str, str]) -> migset.MigrationSet:
    """The set with snapshots from BASE; then each version in `files` gets that text (journal patched)."""
    for version, text in BASE.items():
        (set_copy / f"{version}_step.sql").write_text(text)
    generate(admin, set_copy)
    journal_path = set_copy / "meta/_journal.json"
    journal = json.loads(journal_path.read_text())
    for version, text in files.items():
        path = set_copy / f"{version}_step.sql"
        path.write_text(text)
        for entry in journal["entries"]:
            if entry["version"] == version:
                entry["up"]["sha256"] = migset.sha256_hex(path.read_bytes())
    journal_path.write_text(json.dumps(journal, indent=2, sort_keys=True) + "\n")
    return migset.load(set_copy)


# At 0008's COMMIT (after its verifying read and its guard, with no deferrable trigger anywhere, so the engine marks the
# connection clean and sends no check at 0009's start): wishlist_timeouts is replaced by the engine's own text, except
# that its write counts are taken after a DROP TABLE public.e that it runs first. 0008's own schema is its snapshot's.
_SWAP_TIMEOUTS_AT_COMMIT = """
CREATE FUNCTION migration_ledger.dropper() RETURNS int LANGUAGE plpgsql AS $f$
BEGIN DROP TABLE IF EXISTS public.e; RETURN 1; END $f$;
CREATE FUNCTION migration_ledger.swap() RETURNS int LANGUAGE plpgsql AS $f$
DECLARE q text;
BEGIN
  SELECT regexp_replace(statement, '^PREPARE \\S+ AS ', '') INTO q FROM pg_prepared_statements WHERE name = 'wishlist_timeouts';
  IF q IS NULL THEN RAISE EXCEPTION 'the engine did not prepare wishlist_timeouts before 0008 committed'; END IF;
  q := regexp_replace(q, 'w FROM \\(SELECT ', 'w FROM (SELECT CASE WHEN migration_ledger.dropper() = 1 THEN ');
  q := regexp_replace(q, ' AS w\\) x', ' END AS w) x');
  EXECUTE 'DEALLOCATE wishlist_timeouts';
  EXECUTE 'PREPARE wishlist_timeouts AS ' || q;
  RETURN 1;
END $f$;
DECLARE late CURSOR WITH HOLD FOR SELECT migration_ledger.swap();
"""

# A statement kind that sends the rest of the step's queries unprepared (runner.DROP_PREPARED): no check before the read.
_DIRECT = "PREPARE mine AS SELECT 1;\nDEALLOCATE mine;\n"


def test_a_replaced_timeouts_statement_is_executed_unchecked_and_its_counts_hide_a_drop(
    fresh_db: ConnectionSettings, set_copy: Path, admin: ConnectionSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """0009's step EXECUTEs the replaced wishlist_timeouts (no check at its start: the connection was 'clean'), which drops
    table e and reports the write counts after the drop; the scoped proof trusts them, so 0009 commits (ledger: verified)
    without table e, which its snapshot has. Before the last commit the check at every step's start refused this."""
    monkeypatch.setattr(runner, "SCOPED_FROM", 0)  # 0009, a middle step, is proven by the scoped read
    mset = _set_many(set_copy, admin, {"0008": BASE["0008"] + _SWAP_TIMEOUTS_AT_COMMIT, "0009": BASE["0009"] + _DIRECT})
    message = ""
    try:
        Engine(fresh_db, mset).apply()
    except MigrationError as exc:
        message = str(exc)
    versions = [r[0] for r in ledger_rows(fresh_db)]
    assert not ("0009" in versions and "e" not in _relations(fresh_db)), (versions, sorted(_relations(fresh_db)), message)


def test_a_statement_replaced_at_the_previous_commit_is_blamed_on_the_next_migration(
    fresh_db: ConnectionSettings, set_copy: Path, admin: ConnectionSettings
) -> None:
    """0008 would replace wishlist_timeouts at its COMMIT (its cursor WITH HOLD); 0009 is BASE's honest file. The message
    said 'a statement of the migration [0009] replaced' it. Now 0008 itself is refused for its cursor, naming it."""
    mset = _set_many(set_copy, admin, {"0008": BASE["0008"] + _SWAP_TIMEOUTS_AT_COMMIT})
    with pytest.raises(MigrationError) as failure:
        Engine(fresh_db, mset).apply()
    message = str(failure.value)
    assert message.startswith("0008") and "late" in message and "rolled back" in message, message
    assert "a statement of the migration replaced" not in message, message
    assert [r[0] for r in ledger_rows(fresh_db)] == ["0007"]


def test_a_name_taken_by_an_earlier_migration_is_blamed_on_the_step_where_the_engine_first_needs_it(
    fresh_db: ConnectionSettings, set_copy: Path, admin: ConnectionSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """0008 (committed, verified) prepares wishlist_verifiable, which the engine has not prepared yet on this connection
    (the middle steps use the scoped read). At 0010, the engine's PREPARE meets it and the run stops with '0010: a
    statement of the migration prepared a statement under a name the engine uses ... rename the prepared statement in the
    migration': 0010 has none; 0008 did it."""
    monkeypatch.setattr(runner, "SCOPED_FROM", 0)
    mset = _set_many(set_copy, admin, {"0008": BASE["0008"] + "PREPARE wishlist_verifiable AS SELECT 1;\n"})
    with pytest.raises(MigrationError) as failure:
        Engine(fresh_db, mset).apply()
    message = str(failure.value)
    assert "0008" in message or not message.startswith("0010"), message


def test_snapshot_and_apply_disagree_on_a_migration_with_commit_time_ddl(
    fresh_db: ConnectionSettings, set_copy: Path, admin: ConnectionSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`snapshot` (no stored meta/) read 0009 after its COMMIT, so its snapshot held table evil; apply read before
    COMMIT, did not find it, and refused the file whose snapshot was just generated from it. Now both refuse the file,
    naming the cursor."""
    monkeypatch.setattr(runner, "SCOPED_FROM", 0)
    for version, text in BASE.items():
        extra = "CREATE SCHEMA aux;\n" + _AT_COMMIT_DDL.replace("migration_ledger.", "aux.") if version == "0009" else ""
        (set_copy / f"{version}_step.sql").write_text(text + extra)
    with pytest.raises(StatementFailed) as failure:
        generate(admin, set_copy)
    message = str(failure.value)
    assert "0009" in message and "late" in message and "WITH HOLD" in message, message


def test_a_trigger_on_the_ledger_that_declares_a_holdable_cursor_is_refused(
    fresh_db: ConnectionSettings, set_copy: Path, admin: ConnectionSettings
) -> None:
    """The engine's own ledger row fires it, after the migration's statements: the check runs after that too."""
    on_ledger = (
        _AT_COMMIT_DDL.split("DECLARE late")[0] + "CREATE FUNCTION migration_ledger.declare() RETURNS trigger LANGUAGE plpgsql AS\n"
        "  $f$ BEGIN EXECUTE 'DECLARE later CURSOR WITH HOLD FOR SELECT migration_ledger.at_commit()'; RETURN NULL; END $f$;\n"
        "CREATE TRIGGER declare AFTER INSERT ON migration_ledger.applied FOR EACH ROW EXECUTE FUNCTION migration_ledger.declare();\n"
    )
    mset = _set(set_copy, admin, BASE["0009"] + on_ledger)
    with pytest.raises(MigrationError) as failure:
        Engine(fresh_db, mset).apply()
    message = str(failure.value)
    assert message.startswith("0009") and "later" in message and "rolled back" in message, message
    assert [r[0] for r in ledger_rows(fresh_db)] == ["0007", "0008"]
    assert "evil" not in _relations(fresh_db)


def test_a_holdable_cursor_in_a_no_transaction_file_ran_at_its_own_commit_and_is_not_refused(
    fresh_db: ConnectionSettings, set_copy: Path, admin: ConnectionSettings
) -> None:
    """Outside a transaction each statement commits on its own: the cursor's query ran then, before the read, and the
    snapshot has what it did. An honest file; it applies, and the next step starts without the cursor."""
    files = dict(BASE)
    files["0009"] = (
        "-- migrate:no-transaction\n" + BASE["0009"] + "CREATE FUNCTION mark() RETURNS int LANGUAGE sql AS 'SELECT 1';\n"
        "DECLARE kept CURSOR WITH HOLD FOR SELECT mark();\n"
    )
    for version, text in files.items():
        (set_copy / f"{version}_step.sql").write_text(text)
    generate(admin, set_copy)
    result = Engine(fresh_db, migset.load(set_copy)).apply()
    assert [r["version"] for r in result.ran][-3:] == ["0008", "0009", "0010"]
