"""Breaking review, round 18 (issue #14: DISCARD TEMP after all user code, the read after COMMIT with deferrable
triggers). Each test fails on 3689ea4.

1. With any deferrable constraint in the database (an ordinary DEFERRABLE FK), the read after COMMIT blames every
   difference on "a deferred trigger that deferred itself again": another session's ALTER TABLE right after the step's
   COMMIT is reported as deferred work the step ran at COMMIT, with a fix (remove SET CONSTRAINTS ... DEFERRED from
   trigger functions, roll the step back) that does not apply: no trigger exists, the step was honest.
2. A no-transaction step's final transaction has the SET CONSTRAINTS rounds but no read after COMMIT: round 17's
   TRUNCATE-and-refill, fired by a deferrable trigger on the ledger's final row, commits public.evil, which the
   snapshot lacks; the version is recorded applied and apply says nothing.
(Honest deferrable FKs/unique constraints with SET CONSTRAINTS ALL DEFERRED, temp scratch tables, ON COMMIT DROP /
DELETE ROWS, in one run, one run per version, scoped and whole, and temp scratch in a no-transaction file with replay,
were tried and held.)Both failed on 3689ea4; fixed: the message after COMMIT names both possible authors (deferred work at COMMIT, another
session) and its fix says how to tell them apart; a no-transaction step's schema is read again after its final
COMMIT too.
"""

from __future__ import annotations

import pytest

from components.engine import runner
from components.engine.engine import Engine
from components.engine.errors import MigrationError
from tests.integration.test_hostile_migrations import _swap, _write
from tests.integration.test_scoped_verify import BASE

# An ordinary schema with deferrable constraints (DEFERRABLE INITIALLY DEFERRED FK, deferrable unique), changed over
# several honest steps, using deferral the way bulk loads do.
DEFERRABLE = {
    "0008": BASE["0008"] + "CREATE TABLE parent (id int PRIMARY KEY, code text UNIQUE DEFERRABLE INITIALLY IMMEDIATE);\n"
    "CREATE TABLE child (id int PRIMARY KEY, parent_id int REFERENCES parent (id) DEFERRABLE INITIALLY DEFERRED);\n",
    "0009": BASE["0009"] + "SET CONSTRAINTS ALL DEFERRED;\n"
    "INSERT INTO child VALUES (1, 10);\nINSERT INTO parent VALUES (10, 'a'), (11, 'b');\n"
    "UPDATE parent SET code = CASE code WHEN 'a' THEN 'b' ELSE 'a' END;\n"
    "CREATE TEMP TABLE scratch AS SELECT id, code FROM parent;\n"
    "INSERT INTO b SELECT id, code FROM scratch;\n"
    "CREATE TEMP TABLE s2 (id int) ON COMMIT DROP;\nINSERT INTO s2 SELECT id FROM parent;\n"
    "CREATE TEMP TABLE s3 (id int) ON COMMIT DELETE ROWS;\nINSERT INTO s3 SELECT id FROM s2;\n",
    "0010": BASE["0010"] + "ALTER TABLE child ADD COLUMN note text;\nCREATE INDEX child_parent ON child (parent_id);\n",
}


def test_concurrent_ddl_right_after_commit_is_not_blamed_on_a_trigger(fresh_db, set_copy, admin, monkeypatch) -> None:
    """Another session changes the schema right after 0009's COMMIT. The database has only an ordinary deferrable FK."""
    monkeypatch.setattr(runner, "SCOPED_FROM", 10**9)
    mset = _write(set_copy, admin, DEFERRABLE)
    original = runner.StepRunner._settle
    done = []

    def settle(self, run, committed):
        original(self, run, committed)
        if committed and run.step.migration.version == "0009" and not done:
            done.append(1)
            with fresh_db.connect() as other:
                other.execute("ALTER TABLE public.e ADD COLUMN added_by_app int")

    monkeypatch.setattr(runner.StepRunner, "_settle", settle)
    with pytest.raises(MigrationError) as failure:
        Engine(fresh_db, mset).apply()
    message = str(failure.value)
    # what happened: the ledger records 0009, and the schema differs (a comment another session wrote)
    assert "0009" in message
    # the message must be true of the database: it may not claim a trigger did it (there is none); it names both
    # possible authors, and the committed step
    assert "Deferred work ran at COMMIT" not in message and "another session" in message and "committed" in message, message


# The final transaction of a no-transaction step runs the SET CONSTRAINTS rounds but has no read after COMMIT (round 17
# added it to the transactional path only). The final ledger row fires a deferrable constraint trigger on the ledger:
#   at the engine's SET CONSTRAINTS (before the read): re-defers, TRUNCATE q2 (new relfilenode: later TRUNCATEs of it in
#   this transaction are in place), refills q2 with (0), queues q1 (2);
#   in round 1: q1 (2) re-defers, TRUNCATE q2 in place (its counts zeroed, no catalog row written), INSERT q2 (3),
#   queued: per-table counts unchanged, "no work ran";
#   at COMMIT: q2 (3) creates public.evil, which 0009's snapshot lacks. 0009 is recorded applied, nothing said.
_NO_TX_TRUNCATE_REFILL = """-- migrate:no-transaction
CREATE TABLE b (id int PRIMARY KEY, note text);
CREATE TABLE migration_ledger.q1 (id int);
CREATE TABLE migration_ledger.q2 (id int);
CREATE FUNCTION migration_ledger.t() RETURNS trigger LANGUAGE plpgsql AS $f$
BEGIN
  IF TG_TABLE_NAME = 'applied' THEN
    SET CONSTRAINTS ALL DEFERRED;
    TRUNCATE migration_ledger.q2;
    INSERT INTO migration_ledger.q2 VALUES (0);
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
CREATE CONSTRAINT TRIGGER t AFTER INSERT OR UPDATE ON migration_ledger.applied DEFERRABLE INITIALLY DEFERRED
  FOR EACH ROW WHEN (NEW.status = 'applied' AND NEW.version = '0009') EXECUTE FUNCTION migration_ledger.t();
"""


def test_no_transaction_final_transaction_commits_hidden_deferred_work_silently(fresh_db, set_copy, admin) -> None:
    _write(set_copy, admin, {"0008": BASE["0008"], "0009": "-- migrate:no-transaction\n" + BASE["0009"]})
    mset = _swap(set_copy, "0009", _NO_TX_TRUNCATE_REFILL)
    message = ""
    try:
        Engine(fresh_db, mset).apply("0009")
    except MigrationError as exc:
        message = str(exc)
    with fresh_db.connect() as conn:
        applied = [r[0] for r in conn.execute("SELECT version FROM migration_ledger.applied WHERE status = 'applied' ORDER BY 1")]
        evil = conn.execute("SELECT to_regclass('public.evil') IS NOT NULL").fetchone()[0]
    # the schema differs from 0009's snapshot (public.evil): the run must not end recording 0009 as verified, silently
    assert not (evil and "0009" in applied and not message), (applied, evil, message)
