"""Breaking review, round 16 (issue #14: the SET CONSTRAINTS rounds after the verifying read, the no-transaction final
transaction's rounds). Each test failed on 52249a6; fixed by pinning the print settings, checking cursors and the lock in every round, counting
writes per table (NULL with track_counts off: refused), and telling failures in a round as the step's own.

1. The settings the read prints under are pinned (RESET_PRINT_SETTINGS) before the first read only. When a round of
   SET CONSTRAINTS ALL IMMEDIATE finds that deferred work ran, the whole schema is read again, but a deferred trigger
   that ran in that round may have changed a setting the read prints under (SET LOCAL search_path): the re-read then
   prints another schema's type as the snapshot's own, the step is verified and committed with a column of the wrong
   type. Any table owner can do it (no superuser).
2. A round's "no row written" test is a sum of pg_stat_xact_all_tables counts, which TRUNCATE lowers: a round's
   trigger runs DDL and balances the sum exactly; the first read stands and the DDL commits.
3. As 1, in a no-transaction step's final transaction.
4. A deferred check failing in a no-transaction step's final transaction is told as "outside any migration step",
   without saying 0009's statements stay committed.
5. With track_counts off, every round reads NULL = NULL: round 15's re-deferring trigger commits its DDL again.
6. A deferred trigger (at the engine's SET CONSTRAINTS or in a round) releases the migration lock after its last check:
   the last step commits without it, apply reports success.
7. A deferred check failing in a round of a step in a transaction is told as the engine's own query failing.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from components.engine import runner
from components.engine.connection import ConnectionSettings
from components.engine.engine import Engine
from components.engine.errors import MigrationError
from devtools import localpg
from tests.integration.test_hostile_migrations import _swap, _write
from tests.integration.test_scoped_verify import BASE
from tests.integration.test_wishlist_items_migration import ledger_rows

_HONEST_0009 = "CREATE TYPE mood AS ENUM ('ok');\nCREATE TABLE b (id int PRIMARY KEY, m mood);\n"

# b.m gets evil.mood (another enum) instead of public.mood. Pinned, the read prints `evil.mood`; the deferred trigger
# that runs in the first round after the read writes a row (so the engine reads again, whole) and says SET LOCAL
# search_path = evil, public: the re-read prints `mood`, as the snapshot does.
_SEARCH_PATH_IN_A_ROUND = """
CREATE TYPE mood AS ENUM ('ok');
CREATE SCHEMA evil;
CREATE TYPE evil.mood AS ENUM ('pwned', 'other');
CREATE TABLE b (id int PRIMARY KEY, m evil.mood);
CREATE TABLE migration_ledger.q (id int);
CREATE TABLE migration_ledger.w (id int);
CREATE FUNCTION migration_ledger.t() RETURNS trigger LANGUAGE plpgsql AS $f$
BEGIN
  IF NEW.id = 1 THEN
    SET CONSTRAINTS ALL DEFERRED;
    INSERT INTO migration_ledger.q VALUES (2);
  ELSE
    PERFORM pg_catalog.set_config('search_path', 'evil, public', true);
    INSERT INTO migration_ledger.w VALUES (1);
  END IF;
  RETURN NULL;
END $f$;
CREATE CONSTRAINT TRIGGER t AFTER INSERT ON migration_ledger.q DEFERRABLE INITIALLY DEFERRED
  FOR EACH ROW EXECUTE FUNCTION migration_ledger.t();
INSERT INTO migration_ledger.q VALUES (1);
"""


# Where a tampered 0009 runs: a middle step proven by the scoped read or by the whole read, or the run's last step.
AT_EACH_PLACE = pytest.mark.parametrize(
    ("scoped_from", "target"),
    [(0, None), (10**9, None), (10**9, "0009")],
    ids=["middle step, scoped read", "middle step, whole read", "last step"],
)


def apply_swapped(
    fresh_db: ConnectionSettings, set_copy: Path, admin: ConnectionSettings, honest: str, hostile: str, target: str | None
) -> str:
    """Snapshots with `honest` as 0009, then 0009 swapped for `hostile` (journal patched), applied up to `target`: the
    error message, '' when apply succeeded."""
    _write(set_copy, admin, {**BASE, "0009": honest})
    mset = _swap(set_copy, "0009", hostile)
    try:
        Engine(fresh_db, mset).apply(target)
    except MigrationError as exc:
        return str(exc)
    return ""


def _type_of_b_m(settings: ConnectionSettings) -> str | None:
    with settings.connect() as conn:
        row = conn.execute(
            "SELECT atttypid::regtype::text FROM pg_attribute WHERE attrelid = to_regclass('public.b') AND attname = 'm'"
        ).fetchone()
    return None if row is None else str(row[0])


@AT_EACH_PLACE
def test_a_setting_changed_by_a_deferred_trigger_in_a_round_prints_into_the_re_read(
    scoped_from: int,
    target: str | None,
    fresh_db: ConnectionSettings,
    set_copy: Path,
    admin: ConnectionSettings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(runner, "SCOPED_FROM", scoped_from)
    message = apply_swapped(fresh_db, set_copy, admin, _HONEST_0009, _SEARCH_PATH_IN_A_ROUND, target)
    versions = [r[0] for r in ledger_rows(fresh_db)]
    committed = _type_of_b_m(fresh_db)
    # 0009 recorded as verified while b.m is evil.mood, not the snapshot's mood
    assert not ("0009" in versions and committed == "evil.mood"), (versions, committed, message)


# 2. A round counts as "no work" when the sum of pg_stat_xact_all_tables' n_tup_ins + n_tup_upd + n_tup_del is the same
#    before and after it. TRUNCATE of a table created in the transaction truncates it in place (no catalog row) and
#    zeroes that table's counts for the transaction: the sum goes down. The deferred trigger that runs in the first
#    round creates public.evil (catalog rows: the sum goes up), truncates a table the migration filled, then inserts
#    exactly as many rows as make the sum what it was: the round "wrote no row", the first read stands, and COMMIT
#    commits a table the snapshot does not have. Any table owner can do it.
_BALANCED_ROUND = """
CREATE TABLE migration_ledger.big (id int);
INSERT INTO migration_ledger.big SELECT pg_catalog.generate_series(1, 5000);
CREATE TABLE migration_ledger.filler (id int);
CREATE TABLE migration_ledger.q (id int);
CREATE FUNCTION migration_ledger.written() RETURNS bigint LANGUAGE sql AS
  $f$ SELECT pg_catalog.sum(n_tup_ins + n_tup_upd + n_tup_del)::bigint FROM pg_catalog.pg_stat_xact_all_tables $f$;
CREATE FUNCTION migration_ledger.t() RETURNS trigger LANGUAGE plpgsql AS $f$
DECLARE s0 bigint; s1 bigint;
BEGIN
  IF NEW.id = 1 THEN
    SET CONSTRAINTS ALL DEFERRED;
    INSERT INTO migration_ledger.q VALUES (2);
  ELSE
    s0 := migration_ledger.written();
    CREATE TABLE public.evil (id int);
    TRUNCATE migration_ledger.big;
    s1 := migration_ledger.written();
    INSERT INTO migration_ledger.filler SELECT pg_catalog.generate_series(1, s0 - s1);
  END IF;
  RETURN NULL;
END $f$;
CREATE CONSTRAINT TRIGGER t AFTER INSERT ON migration_ledger.q DEFERRABLE INITIALLY DEFERRED
  FOR EACH ROW EXECUTE FUNCTION migration_ledger.t();
INSERT INTO migration_ledger.q VALUES (1);
"""


def _relations(settings: ConnectionSettings) -> set[str]:
    with settings.connect() as conn:
        rows = conn.execute("SELECT relname FROM pg_class WHERE relnamespace = 'public'::regnamespace AND relkind = 'r'").fetchall()
    return {str(r[0]) for r in rows}


@AT_EACH_PLACE
def test_a_round_that_truncates_to_balance_the_row_counts_hides_ddl_run_after_the_read(
    scoped_from: int,
    target: str | None,
    fresh_db: ConnectionSettings,
    set_copy: Path,
    admin: ConnectionSettings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(runner, "SCOPED_FROM", scoped_from)
    message = apply_swapped(fresh_db, set_copy, admin, BASE["0009"], BASE["0009"] + _BALANCED_ROUND, target)
    versions = [r[0] for r in ledger_rows(fresh_db)]
    assert not ("0009" in versions and "evil" in _relations(fresh_db)), (versions, sorted(_relations(fresh_db)), message)


# 3. The same in a no-transaction step's final transaction (the ledger row, then the rounds, then the read): the
#    engine's own final ledger row fires a deferred trigger on the ledger that re-defers and queues the one that changes
#    search_path in the first round; the whole re-read prints evil.mood as mood, and the step is recorded as applied.
_NO_TX_HONEST = "-- migrate:no-transaction\n" + _HONEST_0009
_NO_TX_SEARCH_PATH = (
    "-- migrate:no-transaction\n"
    + _SEARCH_PATH_IN_A_ROUND.replace("INSERT INTO migration_ledger.q VALUES (1);\n", "")
    + """
CREATE FUNCTION migration_ledger.redefer() RETURNS trigger LANGUAGE plpgsql AS $f$
BEGIN SET CONSTRAINTS ALL DEFERRED; INSERT INTO migration_ledger.q VALUES (2); RETURN NULL; END $f$;
CREATE CONSTRAINT TRIGGER redefer AFTER INSERT OR UPDATE ON migration_ledger.applied DEFERRABLE INITIALLY DEFERRED
  FOR EACH ROW WHEN (NEW.status = 'applied' AND NEW.version = '0009') EXECUTE FUNCTION migration_ledger.redefer();
"""
)


def test_a_no_transaction_step_re_read_prints_under_a_setting_a_round_changed(
    fresh_db: ConnectionSettings, set_copy: Path, admin: ConnectionSettings
) -> None:
    _write(set_copy, admin, {"0008": BASE["0008"], "0009": _NO_TX_HONEST})
    mset = _swap(set_copy, "0009", _NO_TX_SEARCH_PATH)
    message = ""
    try:
        Engine(fresh_db, mset).apply("0009")
    except MigrationError as exc:
        message = str(exc)
    # outside a transaction the statements commit one by one: what must not happen is 0009 recorded as applied
    with fresh_db.connect() as conn:
        applied = [r[0] for r in conn.execute("SELECT version FROM migration_ledger.applied WHERE status = 'applied' ORDER BY 1")]
    committed = _type_of_b_m(fresh_db)
    assert not ("0009" in applied and committed == "evil.mood"), (applied, committed, message)
    assert message.startswith("0009"), message


# 4. A deferred trigger that fails in a round of a no-transaction step's final transaction (or at its SET CONSTRAINTS):
#    the server's error leaves the runner untold, and the engine says it "came from a ledger, lock or catalog query,
#    outside any migration step". It came from 0009's own trigger; 0009's statements completed and stay committed, and
#    the message says neither (nor that apply again resumes after them).
_NO_TX_FAILS_IN_A_ROUND = (
    _NO_TX_HONEST
    + """
CREATE TABLE migration_ledger.q (id int);
CREATE FUNCTION migration_ledger.refuse() RETURNS trigger LANGUAGE plpgsql AS $f$
BEGIN RAISE EXCEPTION 'refused by a deferred check'; END $f$;
CREATE CONSTRAINT TRIGGER refuse AFTER INSERT ON migration_ledger.q DEFERRABLE INITIALLY DEFERRED
  FOR EACH ROW EXECUTE FUNCTION migration_ledger.refuse();
CREATE FUNCTION migration_ledger.redefer() RETURNS trigger LANGUAGE plpgsql AS $f$
BEGIN SET CONSTRAINTS ALL DEFERRED; INSERT INTO migration_ledger.q VALUES (2); RETURN NULL; END $f$;
CREATE CONSTRAINT TRIGGER redefer AFTER INSERT OR UPDATE ON migration_ledger.applied DEFERRABLE INITIALLY DEFERRED
  FOR EACH ROW WHEN (NEW.status = 'applied' AND NEW.version = '0009') EXECUTE FUNCTION migration_ledger.redefer();
"""
)


def test_a_no_transaction_step_whose_deferred_check_fails_in_a_round_is_told_as_outside_any_step(
    fresh_db: ConnectionSettings, set_copy: Path, admin: ConnectionSettings
) -> None:
    _write(set_copy, admin, {"0008": BASE["0008"], "0009": _NO_TX_HONEST})
    mset = _swap(set_copy, "0009", _NO_TX_FAILS_IN_A_ROUND)
    with pytest.raises(MigrationError) as failure:
        Engine(fresh_db, mset).apply("0009")
    message = str(failure.value)
    assert "b" in _relations(fresh_db)  # the statements did complete and stay committed
    assert "0009" in message and "stay committed" in message and "outside any migration step" not in message, message


# 5. track_counts off (a server or database setting; RDS parameter groups expose it): pg_stat_xact_all_tables then
#    counts nothing, the sum before and after every round is NULL = NULL, and every round "wrote no row". The scoped
#    proof knows (XACT_WRITES is NULL without track_counts: it falls back to the whole read), the rounds do not: round
#    15's re-deferring trigger creates public.evil in the first round, after the read, and 0009 is recorded as
#    verified. The migration itself needs no privilege beyond its tables; the setting is the operator's.
_REDEFER_CREATES_EVIL = """
CREATE TABLE migration_ledger.q (id int);
CREATE FUNCTION migration_ledger.t() RETURNS trigger LANGUAGE plpgsql AS $f$
BEGIN
  IF NEW.id = 1 THEN
    SET CONSTRAINTS ALL DEFERRED;
    INSERT INTO migration_ledger.q VALUES (2);
  ELSE
    CREATE TABLE public.evil (id int);
  END IF;
  RETURN NULL;
END $f$;
CREATE CONSTRAINT TRIGGER t AFTER INSERT ON migration_ledger.q DEFERRABLE INITIALLY DEFERRED
  FOR EACH ROW EXECUTE FUNCTION migration_ledger.t();
INSERT INTO migration_ledger.q VALUES (1);
"""


@pytest.mark.parametrize("scoped_from", [0, 10**9], ids=["scoped read", "whole read"])
def test_without_track_counts_every_round_looks_empty(
    scoped_from: int,
    fresh_db: ConnectionSettings,
    set_copy: Path,
    admin: ConnectionSettings,
    pg_cluster: localpg.Cluster,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(runner, "SCOPED_FROM", scoped_from)
    _write(set_copy, admin, BASE)
    mset = _swap(set_copy, "0009", BASE["0009"] + _REDEFER_CREATES_EVIL)
    pg_cluster.superuser_psql(f'ALTER DATABASE "{fresh_db.dbname}" SET track_counts = off')
    message = ""
    try:
        Engine(fresh_db, mset).apply("0009")
    except MigrationError as exc:
        message = str(exc)
    versions = [r[0] for r in ledger_rows(fresh_db)]
    assert not ("0009" in versions and "evil" in _relations(fresh_db)), (versions, sorted(_relations(fresh_db)), message)


# 6. A deferred trigger fired by the engine's SET CONSTRAINTS (or in a round) releases the migration lock: the lock is
#    checked after the statements, before the ledger row and the rounds, and never again before COMMIT. A statement
#    that does the same is refused ("the migration was rolled back"); from a deferred trigger, the last step of a run
#    commits without the lock and apply reports success (the unlock at the end of the run ignores that nothing was held).
_UNLOCK_AT_SET_CONSTRAINTS = """
CREATE TABLE migration_ledger.q (id int);
CREATE FUNCTION migration_ledger.unlock() RETURNS trigger LANGUAGE plpgsql AS $f$
BEGIN PERFORM pg_catalog.pg_advisory_unlock_all(); RETURN NULL; END $f$;
CREATE CONSTRAINT TRIGGER unlock AFTER INSERT ON migration_ledger.q DEFERRABLE INITIALLY DEFERRED
  FOR EACH ROW EXECUTE FUNCTION migration_ledger.unlock();
INSERT INTO migration_ledger.q VALUES (1);
"""


def test_a_deferred_trigger_that_releases_the_migration_lock_is_not_refused(
    fresh_db: ConnectionSettings, set_copy: Path, admin: ConnectionSettings
) -> None:
    _write(set_copy, admin, BASE)
    mset = _swap(set_copy, "0009", BASE["0009"] + _UNLOCK_AT_SET_CONSTRAINTS)
    with pytest.raises(MigrationError) as failure:
        Engine(fresh_db, mset).apply("0009")
    assert "lock" in str(failure.value)


# 7. A deferred check that fails in a round of a step in a transaction: rolled back (true), but told as "the engine's
#    own query in the step failed after every statement ran ... report this": it was the migration's deferred trigger
#    (the same failure at the SET CONSTRAINTS before the read is told as "a deferred constraint failed").
_FAILS_IN_A_ROUND = """
CREATE TABLE migration_ledger.q (id int);
CREATE FUNCTION migration_ledger.t() RETURNS trigger LANGUAGE plpgsql AS $f$
BEGIN
  IF NEW.id = 1 THEN
    SET CONSTRAINTS ALL DEFERRED;
    INSERT INTO migration_ledger.q VALUES (2);
  ELSE
    RAISE EXCEPTION 'refused by a deferred check';
  END IF;
  RETURN NULL;
END $f$;
CREATE CONSTRAINT TRIGGER t AFTER INSERT ON migration_ledger.q DEFERRABLE INITIALLY DEFERRED
  FOR EACH ROW EXECUTE FUNCTION migration_ledger.t();
INSERT INTO migration_ledger.q VALUES (1);
"""


def test_a_deferred_check_failing_in_a_round_is_blamed_on_the_engine(
    fresh_db: ConnectionSettings, set_copy: Path, admin: ConnectionSettings
) -> None:
    _write(set_copy, admin, BASE)
    mset = _swap(set_copy, "0009", BASE["0009"] + _FAILS_IN_A_ROUND)
    with pytest.raises(MigrationError) as failure:
        Engine(fresh_db, mset).apply("0009")
    message = str(failure.value)
    assert "0009" in message and "rolled back" in message and "refused by a deferred check" in message
    assert "engine's own query" not in message, message
