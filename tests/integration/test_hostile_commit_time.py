"""Breaking review, round 15 (issue #14: the prepared-statement check before the read, cursors WITH HOLD refused).
Each test failed on the code it was written against (ddf2f83); the fixes: any deferrable trigger (internal ones too)
sends the step through the SET CONSTRAINTS rounds, the no-transaction final transaction runs them too, a step whose
queries went unprepared leaves the connection to be checked at the next step's start, cursor names are quoted
identifiers.

1. User code at COMMIT with no *user* deferrable trigger: a DEFERRABLE exclusion constraint is enforced by an internal
   trigger (pg_trigger.tgisinternal), which USER_DEFERRABLE_TRIGGERS ignores, yet its recheck evaluates the index
   expression, a user function. Called at SET CONSTRAINTS ALL IMMEDIATE, it re-defers (SET CONSTRAINTS ALL DEFERRED) and
   queues another recheck, which runs at COMMIT, after the verifying read: it creates a table the snapshot lacks. The
   engine never runs its rounds (_deferred_work_ran) because the flag said "no user code at COMMIT". Any owner of a
   table can do this (no superuser).
2. The final transaction of a no-transaction step fires SET CONSTRAINTS ALL IMMEDIATE once and never loops: a
   deferrable constraint trigger on the ledger (fired by the engine's own row) that re-defers itself runs its work at
   COMMIT, after the read; the step is recorded as applied.
3. A step sending its queries unprepared (it has a DEALLOCATE) is not checked before its read and resync() looks only at
   names the engine used so far: it can take wishlist_verifiable (first used at the last, whole read), leave the
   connection "clean", and the next, honest step is told "a statement of the migration replaced ... rolled back".
4. The cursor names in the refusal are cut at the first double quote: a cursor named a"b is reported as `a`, and any
   cursor sorted after it is not named at all.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from components.engine import runner
from components.engine.connection import ConnectionSettings
from components.engine.engine import Engine
from components.engine.errors import MigrationError
from tests.integration.test_hostile_migrations import _relations, _swap, _write
from tests.integration.test_scoped_verify import BASE, _set
from tests.integration.test_wishlist_items_migration import ledger_rows

# In the ledger schema (the honest read does not see it). The exclusion constraint's recheck (an internal deferrable
# trigger) evaluates migration_ledger.key(), which calls hook(): armed, it re-defers and queues one more recheck; at
# that recheck (COMMIT) it empties x (so the recheck passes) and creates public.evil.
_EXCLUSION_AT_COMMIT = """
CREATE FUNCTION migration_ledger.hook() RETURNS void LANGUAGE plpgsql VOLATILE AS $f$
BEGIN
  IF current_setting('wl.state', true) = 'arm' THEN
    PERFORM set_config('wl.state', 'busy', false);
    SET CONSTRAINTS ALL DEFERRED;
    DELETE FROM migration_ledger.x;
    INSERT INTO migration_ledger.x VALUES (2);
    INSERT INTO migration_ledger.x VALUES (2);
    PERFORM set_config('wl.state', 'fire', false);
  ELSIF current_setting('wl.state', true) = 'fire' THEN
    PERFORM set_config('wl.state', 'done', false);
    DELETE FROM migration_ledger.x;
    CREATE TABLE public.evil (id int);
  END IF;
END $f$;
CREATE FUNCTION migration_ledger.key(v int) RETURNS int LANGUAGE plpgsql IMMUTABLE AS $f$
BEGIN PERFORM migration_ledger.hook(); RETURN v; END $f$;
CREATE TABLE migration_ledger.x (id int, EXCLUDE USING btree ((migration_ledger.key(id)) WITH =) DEFERRABLE INITIALLY DEFERRED);
INSERT INTO migration_ledger.x VALUES (1);
INSERT INTO migration_ledger.x VALUES (1);
SELECT pg_catalog.set_config('wl.state', 'arm', false);
"""


@pytest.mark.parametrize("scoped_from", [0, 10**9], ids=["scoped read", "whole read"])
def test_an_internal_deferrable_trigger_runs_user_code_at_commit_after_the_read(
    scoped_from: int, fresh_db: ConnectionSettings, set_copy: Path, admin: ConnectionSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runner, "SCOPED_FROM", scoped_from)
    mset = _set(set_copy, admin, BASE["0009"] + _EXCLUSION_AT_COMMIT)
    message = ""
    try:
        Engine(fresh_db, mset).apply()  # 0009 a middle step; 0010 honest
    except MigrationError as exc:
        message = str(exc)
    versions = [r[0] for r in ledger_rows(fresh_db)]
    # 0009 recorded as verified with a table its snapshot does not have (the run then stops at 0010, blaming 0010)
    assert not ("0009" in versions and "evil" in _relations(fresh_db)), (versions, sorted(_relations(fresh_db)), message)


# The engine's final ledger row of a no-transaction step fires `redefer` (deferred); SET CONSTRAINTS ALL IMMEDIATE runs it
# once; it defers again and queues `late` on q, which only COMMIT runs: after the read.
_NO_TX_HONEST = "-- migrate:no-transaction\n" + BASE["0009"]
_NO_TX_REDEFER = (
    _NO_TX_HONEST
    + """
CREATE TABLE migration_ledger.q (id int);
CREATE FUNCTION migration_ledger.late() RETURNS trigger LANGUAGE plpgsql AS $f$
BEGIN CREATE TABLE public.evil (id int); RETURN NULL; END $f$;
CREATE CONSTRAINT TRIGGER late AFTER INSERT ON migration_ledger.q DEFERRABLE INITIALLY DEFERRED
  FOR EACH ROW EXECUTE FUNCTION migration_ledger.late();
CREATE FUNCTION migration_ledger.redefer() RETURNS trigger LANGUAGE plpgsql AS $f$
BEGIN SET CONSTRAINTS ALL DEFERRED; INSERT INTO migration_ledger.q VALUES (1); RETURN NULL; END $f$;
CREATE CONSTRAINT TRIGGER redefer AFTER INSERT OR UPDATE ON migration_ledger.applied DEFERRABLE INITIALLY DEFERRED
  FOR EACH ROW WHEN (NEW.status = 'applied' AND NEW.version = '0009') EXECUTE FUNCTION migration_ledger.redefer();
"""
)


def test_a_no_transaction_step_commits_work_a_re_deferring_ledger_trigger_queued_after_the_read(
    fresh_db: ConnectionSettings, set_copy: Path, admin: ConnectionSettings
) -> None:
    # snapshots made from the honest no-transaction 0009, then the hostile one swapped in (journal hash patched)
    _write(set_copy, admin, {**BASE, "0009": _NO_TX_HONEST})
    mset = _swap(set_copy, "0009", _NO_TX_REDEFER)
    message = ""
    try:
        Engine(fresh_db, mset).apply(target="0009")
    except MigrationError as exc:
        message = str(exc)
    versions = [r[0] for r in ledger_rows(fresh_db)]
    assert not ("0009" in versions and "evil" in _relations(fresh_db)), (versions, sorted(_relations(fresh_db)), message)


def test_a_name_taken_by_an_unprepared_step_is_blamed_on_the_next_honest_step(
    fresh_db: ConnectionSettings, set_copy: Path, admin: ConnectionSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runner, "SCOPED_FROM", 0)  # middle steps: wishlist_scoped; wishlist_verifiable only at 0010
    taker = "PREPARE mine AS SELECT 1;\nDEALLOCATE mine;\nPREPARE wishlist_verifiable(text) AS SELECT '{}'::json;\n"
    mset = _set(set_copy, admin, BASE["0009"] + taker)
    with pytest.raises(MigrationError) as failure:
        Engine(fresh_db, mset).apply()
    message = str(failure.value)
    # 0010 is BASE's honest CREATE TABLE d; 0009 (committed) took the name
    assert not (message.startswith("0010") and "a statement of the migration" in message), message


def test_the_refusal_names_every_held_cursor(fresh_db: ConnectionSettings, set_copy: Path, admin: ConnectionSettings) -> None:
    mset = _set(
        set_copy, admin, BASE["0009"] + 'DECLARE "a""b" CURSOR WITH HOLD FOR SELECT 1;\nDECLARE zz CURSOR WITH HOLD FOR SELECT 1;\n'
    )
    with pytest.raises(MigrationError) as failure:
        Engine(fresh_db, mset).apply()
    message = str(failure.value)
    assert '"a""b"' in message and "zz" in message, message  # as CLOSE takes them: quoted identifiers
