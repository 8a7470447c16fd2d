"""How one step runs: in a transaction (retried after a DDL lock timeout), or outside one, statement by statement, resumable.

Every failure message says what is true of the database when it prints: rolled back only if it was.
"""

from __future__ import annotations

import functools
import getpass
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from psycopg import sql

from . import catalog as cat
from .connection import ConnectionSettings, mask_dsn
from .errors import ChecksumMismatch, IncompleteMigration, MigrationError, NotWritable, PermissionMissing, StatementFailed, VerifyFailed
from .guards import LOCK_RELEASED, lock_held_check, set_timeouts, timeouts_query, writes_of
from .ledger import APPLIED, STARTED, Ledger, LedgerState
from .options import RunOptions
from .pgerrors import STATE_FIXES, first_line, sqlstate
from .planner import Step, statements_digest
from .prepared import PreparedStatements, replaced_names
from .sqltext import Statement
from .statement_kinds import commits_itself, concurrent_index, may_set_session, needs_autocommit, relations, session_setting

if TYPE_CHECKING:
    import psycopg

LOCK_NOT_AVAILABLE = "55P03"
DUPLICATE_PREPARED = "42P05"
INVALID_TRANSACTION_TERMINATION = "2D000"
ACTIVE_SQL_TRANSACTION = "25001"
# Rounds of SET CONSTRAINTS ALL IMMEDIATE after the read before deferred triggers that re-defer themselves are refused.
DEFERRED_ROUNDS = 20
# Below this many catalog entries, reading the whole schema costs less than the scoped read (measured: bench section 4).
SCOPED_FROM = 250
# Statements that drop prepared statements, the engine's included.
DROP_PREPARED = frozenset({"DeallocateStmt", "DiscardStmt"})
# Statements PostgreSQL refuses inside a transaction block (besides CONCURRENTLY index operations).
OUTSIDE_ONLY = frozenset({"VacuumStmt", "CreatedbStmt", "DropdbStmt", "AlterSystemStmt", "CreateTableSpaceStmt", "DropTableSpaceStmt"})


@functools.cache
def whoami() -> str:
    try:
        user = getpass.getuser()
    except Exception:  # no passwd entry in some containers
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def snippet(stmt: Statement) -> str:
    """The statement on one line, passwords masked, cut to fit a message."""
    return mask_dsn(" ".join(stmt.text.split()))[:160]


class _Failed(Exception):
    """A statement failed; carries what the runner needs to tell the truth about it."""

    def __init__(self, exc: Exception, index: int, stmt: Statement, *, maybe_done: bool = False, commits_itself: bool = False) -> None:
        super().__init__(str(exc))
        self.exc, self.index, self.stmt, self.maybe_done, self.commits_itself = exc, index, stmt, maybe_done, commits_itself
        self.state = sqlstate(exc)

    @property
    def connection_lost(self) -> bool:
        import psycopg

        return self.maybe_done or (isinstance(self.exc, psycopg.OperationalError) and not self.state)


@dataclass(frozen=True)
class _StepRun:
    """One try of a step in a transaction and what it must leave (see StepRunner.run_step)."""

    step: Step
    label: str
    statements: list[Statement]
    expected_version: str | None
    expected: cat.Catalog
    expected_fingerprint: str
    full: bool
    delta: frozenset[str] | None
    order: list[str] | None


@dataclass
class StepRunner:
    """Runs steps on one connection that holds the migration lock."""

    conn: psycopg.Connection[Any]
    settings: ConnectionSettings
    schema: str
    ledger: Ledger
    options: RunOptions
    state: LedgerState
    progress: Callable[[str], None]
    sleep: Callable[[float], None] = time.sleep
    # The catalog last proven equal to the live schema (pre-check or previous step): a step then reads only what changed.
    verified: cat.Verified | None = None
    # The migration lock's key: checked after a step's statements (a migration can release it), when given.
    lock_key: int | None = None
    prepared: PreparedStatements = field(init=False)
    # Consecutive steps' catalogs differ by their delta: only the changed entries' JSON is made again at each step.
    _fingerprints: cat.RunningFingerprint = field(init=False, default_factory=cat.RunningFingerprint)
    # Whether the engine's prepared statements were checked (prepared.guard) since user code last ran on the connection.
    _clean: bool = field(init=False, default=False)
    _user_code_at_commit: bool = field(init=False, default=True)
    # The last step's queries went unprepared (a statement may deallocate the engine's): nothing was checked before its read.
    _unchecked: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        self.prepared = PreparedStatements(self.conn)

    def run(
        self,
        step: Step,
        expected_version: str | None,
        expected: cat.Catalog,
        expected_fingerprint: str,
        *,
        full: bool = False,
        delta: frozenset[str] | None = None,
        order: list[str] | None = None,
    ) -> dict[str, Any]:
        """Run one step verified against `expected`; `full` reads the whole schema (the last step of a run does);
        `delta` names the entries that differ between the snapshots before and after the step; `order` is `expected`'s
        keys, sorted."""
        m = step.migration
        label = f"{m.label} ({step.direction})"
        statements = step.statements()
        started = time.monotonic()
        where = "" if step.transactional else ", outside a transaction"
        self.progress(f"{label}: {len(statements)} statement(s){where}")
        if step.transactional:
            fingerprint = self._in_transaction(
                _StepRun(step, label, statements, expected_version, expected, expected_fingerprint, full, delta, order)
            )
        else:
            fingerprint = self._outside_transaction(step, label, statements, expected_version, expected, started)
        duration = int((time.monotonic() - started) * 1000)
        self.progress(f"{label}: done in {duration} ms, verified")
        return {"version": m.version, "name": m.name, "direction": step.direction, "duration_ms": duration, "fingerprint": fingerprint}

    # -- in a transaction

    def _in_transaction(self, run: _StepRun) -> str:
        import psycopg

        label, statements = run.label, run.statements
        for attempt in range(self.options.ddl_retries + 1):
            try:
                ok = committing = prepared_here = False
                try:
                    with self.conn.pipeline() as pipe, self.conn.transaction():
                        fingerprint, proven = self._attempt(pipe, run)
                        prepared_here = self.prepared.pending
                        committing = True
                    ok = True
                except psycopg.Error as exc:  # the engine's own (converted in _attempt) never gets here: the server's
                    raise self._unfinished(label, exc, committing=committing) from None
                finally:
                    self._settle(run, ok)
                # Checked right before the read, and since then only the engine's statements ran (with no user
                # deferrable trigger in the database, none runs at COMMIT; cursors WITH HOLD are refused): the next step
                # need not check at its start, unless a statement was prepared in this one (the check before the read
                # could not cover it: its record is read only now).
                self._clean = not self._user_code_at_commit and not prepared_here and not self._unchecked
                if self._user_code_at_commit:
                    self._read_after_commit(run.label, run.expected_version, run.expected, run.step.direction)
            except _Failed as failed:
                if failed.state == LOCK_NOT_AVAILABLE and attempt < self.options.ddl_retries:
                    self._wait_to_retry(attempt, label, failed.index, len(statements), failed.stmt, "rolled back")
                    continue
                raise self._rolled_back(failed, label, len(statements)) from None
            self.verified = proven
            return fingerprint
        raise AssertionError("unreachable")

    def _read_after_commit(self, label: str, expected_version: str | None, expected: cat.Catalog, direction: str) -> None:
        """With deferrable triggers in the database, deferred work can still run at COMMIT, after the read (a trigger
        that re-defers itself can hide it from the rounds' write counts): read the schema again once committed. It can
        no longer be rolled back: a difference stops the run and says so."""
        import psycopg

        ledger = "the ledger records the version as applied" if direction == "up" else "the ledger no longer lists the version"
        try:
            for query in cat.START_OVER:
                self.conn.execute(query)
            live, proven = cat.introspect_verifiable(self.conn, self.schema)
        except psycopg.Error as exc:
            self.verified = None
            raise StatementFailed(
                f"{label} was verified and committed ({ledger}); then the engine's read of the schema after COMMIT failed "
                f"({first_line(exc, self.settings)}), and the run stopped.",
                "run `verify`: it reads the schema whole; then run apply again.",
            ) from None
        differences = cat.compare(expected, live)
        if not differences:
            self.verified = proven
            return
        what = "; ".join(d.describe() for d in differences[:10]) + (f" (+{len(differences) - 10} more)" if len(differences) > 10 else "")
        self.verified = None
        raise VerifyFailed(
            f"{label} was verified and committed, but the schema read again after COMMIT does not match the snapshot of "
            f"{expected_version or 'the empty schema'}: {what}. Either deferred work ran at COMMIT, after the engine's "
            "last check (a deferred trigger that deferred itself again), or another session changed the schema since. It "
            f"cannot be undone by the engine: {ledger}, and the run stopped.",
            "run `verify` to list the differences and find their author: a change another session made is drift to resolve "
            "with it; one a deferred trigger made at COMMIT needs SET CONSTRAINTS ... DEFERRED removed from the trigger's "
            "function, and the schema repaired by hand to the snapshot (`verify` shows it), then run apply again.",
        )

    def _settle(self, run: _StepRun, committed: bool) -> None:
        """After a step's transaction: record the engine's statements prepared in it, and resync them if the step may
        have deallocated or replaced them. A failure here after COMMIT must not read as the step's own."""
        import psycopg

        try:
            complete = self.prepared.settle()
            dropping = any(st.kind in DROP_PREPARED for st in run.statements)
            if (dropping or not committed or not complete) and not (self.conn.closed or self.conn.broken):
                self.prepared.resync()  # the step may have deallocated or replaced the engine's statements
        except psycopg.Error as exc:
            if not committed:
                raise  # the step's own failure is being raised: this one is told by the caller's handler
            raise StatementFailed(
                f"{run.label} was verified and committed (the ledger records it); then the engine's check of its own prepared "
                f"statements failed ({first_line(exc, self.settings)}), and the run stopped before the next step.",
                "run apply again: it continues after this version on a new connection.",
            ) from None

    def _unfinished(self, label: str, exc: Exception, *, committing: bool) -> MigrationError:
        """A server error raised by the step's transaction itself: by COMMIT (`committing`), or by a read after the
        pipeline (the transaction is then rolled back on the way out)."""
        import psycopg

        if isinstance(exc, psycopg.OperationalError) and not sqlstate(exc):
            if not committing:
                return StatementFailed(
                    f"{label}: the connection was lost before COMMIT ({first_line(exc, self.settings)}): the server rolls back "
                    "an uncommitted transaction; nothing of this migration was committed, the ledger is unchanged.",
                    "check that the server is up, then run again.",
                )
            return StatementFailed(
                f"{label}: the connection failed while committing ({first_line(exc, self.settings)}): whether the migration "
                "committed is unknown until the ledger is read.",
                "run `python -m components.migrate status`: the version is applied if and only if the ledger lists it; run apply again.",
            )
        state = sqlstate(exc) or "?"
        if committing:  # a COMMIT that fails with the server's error rolls back
            return StatementFailed(
                f"{label}: COMMIT failed: {first_line(exc, self.settings)} [SQLSTATE {state}]: something that runs at COMMIT "
                "(a deferred constraint or trigger) refused it; the migration was rolled back, the ledger is unchanged.",
                STATE_FIXES.get(state, "fix what the deferred constraint or trigger refused, in the migration."),
            )
        return StatementFailed(
            f"{label}: the engine's own query in the step failed after every statement ran ({first_line(exc, self.settings)} "
            f"[SQLSTATE {state}]); the migration was rolled back, the ledger is unchanged.",
            "run apply again and report this with the error.",
        )

    def _attempt(self, pipe: psycopg.Pipeline, run: _StepRun) -> tuple[str, cat.Verified]:
        """One try of a step in its open transaction, in one round trip: BEGIN, the session reset and pin, the lock check,
        the guard (only when user code may have run since the last one), the timeouts, every statement, RESET ROLE, the
        ledger row, SET CONSTRAINTS ALL IMMEDIATE, the print settings, DISCARD TEMP, the held-cursor check, the lock
        check, the guard, the verifying read (the row is rolled back with the rest unless the read proves the snapshot);
        COMMIT in a second (docs/architecture.md, step 7)."""
        import psycopg

        step, label, statements, expected_version = run.step, run.label, run.statements, run.expected_version
        expected, expected_fingerprint, full, delta, order = run.expected, run.expected_fingerprint, run.full, run.delta, run.order
        t0 = time.monotonic()
        # Each migration starts from the engine's settings: RESET ALL goes back to what the session started with, which
        # PGTZ/PGCLIENTENCODING may have decided; the pin is for the session, so it also holds after COMMIT.
        for query in cat.START_OVER:
            self.conn.execute(query)
        if self.lock_key is not None:  # still held since the previous step committed (see below, after the statements)
            self.conn.execute(*lock_held_check(self.lock_key))
        # A statement that may deallocate the engine's prepared statements: this step's queries go unprepared.
        direct = self._unchecked = any(st.kind in DROP_PREPARED for st in statements)
        if not self._clean and not direct:  # user code ran on this connection since the last check: it may have replaced them
            self.prepared.guard()
        self._clean = self._user_code_at_commit = False
        timeouts = self._query("wishlist_timeouts", *timeouts_query(self.options, local=True), direct=direct)
        sent = [self.conn.cursor() for _ in statements]  # made first: an error may surface while the next one is sent
        scoped = self.verified is not None and not full and len(self.verified.catalog) >= SCOPED_FROM
        recorded = deferred = None
        try:
            for cursor, stmt in zip(sent, statements, strict=True):
                cursor.execute(stmt.text.encode(), prepare=False)
            self.conn.execute("RESET ROLE")  # the engine's own queries run as the connecting role
            # The ledger row, then what would otherwise run at COMMIT, go before the read: user code they run (a trigger
            # on the ledger, a deferred constraint trigger) changes what the read must see. The row rolls back with the
            # rest unless the read proves the snapshot.
            recorded = self._record(step, None, expected_fingerprint, prepared=not direct)
            deferred = self.conn.execute("SET CONSTRAINTS ALL IMMEDIATE")
            for query in cat.RESET_PRINT_SETTINGS:  # a migration's SET LOCAL DateStyle/search_path must not print into the read
                self.conn.execute(query)
            # Temporary objects end with the session or at COMMIT (ON COMMIT DROP), dropping what depends on them with
            # CASCADE, after the read: they end now, before it, after all user code of the step (a trigger fired by the
            # ledger row or SET CONSTRAINTS may make one). A migration's temporary objects never reach the next one,
            # and no pg_temp type can stand in for one the read names.
            self.conn.execute("DISCARD TEMP")
            self.conn.execute(cat.HELD_CURSORS)  # fails while a cursor would run user code at COMMIT, after the read
            if self.lock_key is not None:  # after all user code of the step (its statements, the triggers they fired)
                self.conn.execute(*lock_held_check(self.lock_key))
            if not direct:
                # After all user code of the step (its statements, the triggers the ledger row and SET CONSTRAINTS fired),
                # right before the read's EXECUTE: fails if any of it replaced one of the engine's statements. The ledger
                # row's EXECUTE before it is checked here too (a replaced one's work rolls back with the step).
                self.prepared.guard()
            if scoped:
                assert self.verified is not None
                # Its plan is made once per connection, often while the schema is still small: without this, lookups the
                # planner then found cheaper as scans stay scans while a long run grows the catalogs (measured at N=1,000).
                self.conn.execute("SELECT pg_catalog.set_config('enable_seqscan', 'off', true)")
                read = self._query("wishlist_scoped", *cat.scoped_query(self.schema, self.verified, expected, delta), direct=direct)
                self.conn.execute("RESET enable_seqscan")
            else:
                read = self._query("wishlist_verifiable", *cat.verifiable_query(self.schema), direct=direct)
            at_commit = self.conn.execute(cat.USER_DEFERRABLE_TRIGGERS)
            pipe.sync()
        except psycopg.Error as exc:
            # The first statement without a result is the one that failed (those after it were skipped by the server).
            failed = next((i for i, cur in enumerate(sent) if cur.pgresult is None), None)
            if timeouts.pgresult is not None and failed is not None:
                raise _Failed(exc, failed + 1, statements[failed]) from None
            if isinstance(exc, psycopg.OperationalError) and not sqlstate(exc):
                raise  # the connection broke: nothing was committed, said by the caller
            if LOCK_RELEASED in str(exc) and timeouts.pgresult is None:
                raise StatementFailed(
                    f"{label}: before its first statement ran, the engine found its migration lock no longer held by this "
                    "session (released since it was last checked, after the previous step's statements); the steps before "
                    "are committed, another applier could have started since. Nothing of this migration ran, the ledger is "
                    "unchanged, and the run stopped.",
                    "check `status` and `verify`, then run apply again.",
                ) from None
            if LOCK_RELEASED in str(exc):
                raise StatementFailed(
                    f"{label}: a statement of the migration, or a trigger it fired, released the engine's migration lock (pg_advisory_unlock_all(), "
                    "pg_advisory_unlock() or DISCARD ALL; a rollback does not take it back): another applier could have started "
                    "meanwhile. The migration was rolled back, the ledger is unchanged, and the run stopped.",
                    "remove the unlock from the migration (release only the advisory locks it took, by their keys), then run apply again.",
                ) from None
            if cat.HELD_CURSORS_OPEN in str(exc):
                raise self._held_cursors(label, exc) from None
            replaced = replaced_names(str(exc))
            if replaced is not None or sqlstate(exc) == DUPLICATE_PREPARED:
                raise self._replaced(label, replaced, exc, before=timeouts.pgresult is None) from None
            if recorded is not None and recorded.pgresult is not None and deferred is not None and deferred.pgresult is None:
                raise StatementFailed(
                    f"{label}: a deferred constraint failed when checked after the last statement ({first_line(exc, self.settings)} "
                    f"[SQLSTATE {sqlstate(exc)}]); the migration was rolled back, the ledger is unchanged.",
                    "fix the rows or the constraint in the migration (a DEFERRABLE constraint is checked before COMMIT).",
                ) from None
            # The engine's own query in the step failed: its timeouts (before any statement), or its verifying read or
            # ledger row (after all of them). Raised inside the transaction, which rolls back on the way out.
            when = "before its first statement ran" if timeouts.pgresult is None else "after every statement ran"
            raise StatementFailed(
                f"{label}: the engine's own query in the step failed {when} ({first_line(exc, self.settings)} "
                f"[SQLSTATE {sqlstate(exc) or '?'}]); the migration was rolled back, the ledger is unchanged.",
                "if a statement of the migration changes session settings or prepared statements (RESET ALL, DEALLOCATE ALL, "
                "DISCARD), move it out; otherwise run apply again and report this with the error.",
            ) from None
        self.progress(
            f"{label}: statements 1-{len(statements)}, the verifying read and the ledger row in one round trip, "
            f"{1000 * (time.monotonic() - t0):.1f} ms"
        )
        writes = writes_of(timeouts.fetchone())
        flag = at_commit.fetchone()
        self._user_code_at_commit = bool(flag and flag[0])
        row = read.fetchone()
        assert row is not None
        if flag and flag[0] and self._deferred_work_ran(pipe, label):
            # a deferred trigger ran after the read: read again, whole (the transaction is still open)
            scoped, again = False, self.conn.execute(*cat.verifiable_query(self.schema))
            pipe.sync()
            row = again.fetchone()
            assert row is not None
        if scoped:
            assert self.verified is not None
            before = self.verified.catalog
            proven = cat.scoped_result(row[0], self.verified, expected, writes, delta, order)
            if proven is not None:  # the live catalog is `expected`: meta/ must record its hash
                hashed = self._fingerprints(expected, before, delta)
                self._check_fingerprint(label, expected_version, expected_fingerprint, hashed)
                return expected_fingerprint, proven
            again = self.conn.execute(*cat.verifiable_query(self.schema))
            pipe.sync()
            row = again.fetchone()
            assert row is not None
        live, proven = cat.verifiable_result(row[0])
        self._verify(label, expected_version, expected, live, rolled_back=True)
        fingerprint = cat.fingerprint(live)
        self._check_fingerprint(label, expected_version, expected_fingerprint, fingerprint)
        return fingerprint, proven

    def _deferred_work_ran(self, pipe: psycopg.Pipeline | None, label: str, *, committed: int | None = None) -> bool:
        """With user-defined deferrable constraint triggers in the database: whether deferred work ran after the
        verifying read. SET CONSTRAINTS ALL IMMEDIATE before the read fired what was pending then, but a trigger it fired
        may have said SET CONSTRAINTS ALL DEFERRED and queued more, which would run at COMMIT. So fire again until a round
        changes no row anywhere (a trigger that writes no row queues no event: the queue is then empty)."""
        import psycopg

        ran = False
        for _ in range(DEFERRED_ROUNDS):
            fired, stage = None, "count"
            try:
                before = self.conn.execute(cat.XACT_ROWS_WRITTEN)
                stage = "constraints"
                fired = self.conn.execute("SET CONSTRAINTS ALL IMMEDIATE")
                stage = "checks"
                self.conn.execute("DISCARD TEMP")  # what a trigger made here ends before any read (its drops count as work)
                after = self.conn.execute(cat.XACT_ROWS_WRITTEN)
                # what a trigger fired here may have done without writing a row: a cursor WITH HOLD, a setting the
                # read prints under (pinned again: the caller reads again after a round that did work), the lock
                self.conn.execute(cat.HELD_CURSORS)
                for query in cat.RESET_PRINT_SETTINGS:
                    self.conn.execute(query)
                if self.lock_key is not None:
                    self.conn.execute(*lock_held_check(self.lock_key))
                if pipe is not None:
                    pipe.sync()
            except psycopg.Error as exc:
                if isinstance(exc, psycopg.OperationalError) and not sqlstate(exc):
                    raise
                if cat.HELD_CURSORS_OPEN in str(exc):
                    raise self._held_cursors(label, exc, committed=committed) from None
                if LOCK_RELEASED in str(exc):
                    raise self._after_statements(
                        label,
                        "a deferred trigger released the engine's migration lock (pg_advisory_unlock_all() or "
                        "pg_advisory_unlock()): another applier could have started meanwhile",
                        "remove the unlock from the trigger.",
                        committed,
                    ) from None
                if stage == "constraints" or (pipe is not None and fired is not None and fired.pgresult is None):
                    raise self._after_statements(
                        label,
                        f"a deferred constraint or trigger failed when checked again after the verifying read "
                        f"({first_line(exc, self.settings)} [SQLSTATE {sqlstate(exc) or '?'}])",
                        "fix the rows or the constraint in the migration (a DEFERRABLE constraint is checked before COMMIT).",
                        committed,
                    ) from None
                raise
            counts = before.fetchone(), after.fetchone()
            if counts[0] is None or counts[0][0] is None or counts[1] is None or counts[1][0] is None:
                raise self._after_statements(
                    label,
                    "the database has deferrable triggers and track_counts is off, so the engine cannot tell whether "
                    "deferred work would still run at COMMIT, after its verifying read",
                    "turn track_counts on (the PostgreSQL default; a parameter group setting on Aurora).",
                    committed,
                )
            if counts[0] == counts[1]:
                return ran
            ran = True
        raise self._after_statements(
            label,
            f"deferred triggers kept queueing work for {DEFERRED_ROUNDS} rounds of SET CONSTRAINTS ALL IMMEDIATE after the last statement",
            "find the deferred constraint trigger that re-defers itself (SET CONSTRAINTS ... DEFERRED in its function) and remove that.",
            committed,
        )

    @staticmethod
    def _after_statements(label: str, what: str, fix: str, committed: int | None) -> MigrationError:
        """A refusal after every statement ran: in a transaction (`committed` None) the step is rolled back; outside one
        its `committed` statements stay committed and only the final ledger row is not written."""
        if committed is None:
            return StatementFailed(f"{label}: {what}; the migration was rolled back, the ledger is unchanged.", fix)
        return IncompleteMigration(
            f"{label} runs outside a transaction: all {committed} statements completed and stay committed; then {what}. The "
            "version was not recorded as applied (the ledger marks it interrupted after its last statement); the run stopped.",
            f"{fix.removesuffix('.').removesuffix(', then run apply again')}, then run apply again: it verifies and records the version.",
        )

    def _held_cursors(self, label: str, exc: Exception, *, committed: int | None = None) -> MigrationError:
        tail = str(exc).split(cat.HELD_CURSORS_OPEN, 1)[-1].split("\n", 1)[0]
        names = tail[:-1] if tail.endswith('"') else tail  # the error quotes the value: the list ends before its closing quote
        return self._after_statements(
            label,
            f"cursor(s) declared WITH HOLD were open ({names}), left by the migration or declared by a trigger it fired: "
            "PostgreSQL runs such a cursor's query to its end at COMMIT, after the engine's verifying read, so what it calls "
            "could not be verified",
            "close the cursor in the migration (CLOSE name) or declare it without WITH HOLD, then run apply again.",
            committed,
        )

    def _replaced(self, label: str, names: str | None, exc: Exception, *, before: bool) -> MigrationError:
        if names is None:  # the engine's PREPARE met a statement of that name the migration prepared
            return StatementFailed(
                f"{label}: a statement of the migration prepared a statement under a name the engine uses "
                f"({first_line(exc, self.settings)}); the migration was rolled back, the ledger is unchanged.",
                "rename the prepared statement in the migration (the engine's are named wishlist_*), then run apply again.",
            )
        if before:
            return StatementFailed(
                f"{label}: the engine's prepared statement(s) {names} were replaced, removed or taken (prepared under the "
                "engine's name) before this step, by a statement run on the engine's connection by an earlier migration; "
                "nothing of this migration ran, the ledger is unchanged.",
                "find the DEALLOCATE or PREPARE (at top level, in a DO block or in a function) in the migrations run before "
                "this one, remove it, then run apply again: it starts on a new connection.",
            )
        return StatementFailed(
            f"{label}: a statement of the migration replaced or removed the engine's prepared statement(s) {names} "
            "(DEALLOCATE and PREPARE, at top level, in a DO block or in a function, are not undone by a rollback); the "
            "engine cannot know what they would run. The migration was rolled back, the ledger is unchanged.",
            "remove the DEALLOCATE / PREPARE of the engine's statements (named wishlist_*) from the migration, then run apply again.",
        )

    def _rolled_back(self, failed: _Failed, label: str, total: int) -> MigrationError:
        where = f"statement {failed.index}/{total} (line {failed.stmt.line})"
        primary = first_line(failed.exc, self.settings)
        if failed.connection_lost:
            return StatementFailed(
                f"{label}: the connection was lost at {where}: {primary}. The server rolls back an uncommitted transaction: "
                "nothing of this migration was committed, the ledger is unchanged.",
                "check that the server is up, then run again.",
            )
        if failed.state == "25006":
            return NotWritable(f"{label}: {where} was refused: {primary}; the migration was rolled back.", STATE_FIXES["25006"])
        if failed.state == "42501":
            return PermissionMissing(
                f"{label}: {where} `{snippet(failed.stmt)}`: {primary}; the migration was rolled back.", STATE_FIXES["42501"]
            )
        blocked = ""
        if failed.state == LOCK_NOT_AVAILABLE:
            blocked = (
                f" It waited over lock_timeout ({self.options.lock_timeout_ms} ms) on each of {self.options.ddl_retries + 1} attempt(s); "
                f"{self._blockers(failed.stmt)}."
            )
        return StatementFailed(
            f"{label} failed at {where} `{snippet(failed.stmt)}`: {primary} [SQLSTATE {failed.state or '?'}]; "
            f"the migration was rolled back, the ledger is unchanged.{blocked}",
            STATE_FIXES.get(failed.state, "fix the statement in a new migration (or this one, if it was never applied anywhere)."),
        )

    # -- outside a transaction

    def _outside_transaction(
        self, step: Step, label: str, statements: list[Statement], expected_version: str | None, expected: cat.Catalog, started: float
    ) -> str:
        import psycopg

        total, start = len(statements), step.resume_from
        self._clean = False  # the statements run here, outside any check of the engine's prepared statements
        for query in cat.START_OVER:  # as a step in a transaction: from the engine's own settings
            self.conn.execute(query)
        if not step.resuming:
            self._record(step, started, None, status=STARTED, done=0, digest=statements_digest([]))
        else:
            self.progress(f"{label}: resuming at statement {start + 1}/{total} ({start} completed by an earlier run)")
        set_timeouts(self.conn, self.options, local=False)
        self._replay_session(statements, start, label, step.migration.version)
        for index in range(start, total):
            stmt = statements[index]
            try:
                if concurrent_index(stmt.text) is None and stmt.kind not in OUTSIDE_ONLY and not needs_autocommit(stmt.text):
                    # The statement and its progress row commit together: a kill between them cannot happen.
                    try:
                        self._statement_with_progress(step, statements, index, label)
                        continue
                    except _Failed as refused:
                        self_committing = refused.state == INVALID_TRANSACTION_TERMINATION and stmt.kind in ("DoStmt", "CallStmt")
                        if not self_committing and refused.state != ACTIVE_SQL_TRANSACTION:
                            raise
                        # Refused in a block (it COMMITs itself, or PostgreSQL runs it only outside one, as snapshot
                        # found): the block was rolled back, nothing of it stays; it runs again on its own, then its
                        # progress row. A statement that commits itself is never retried: part of it may be committed.
                        self.progress(f"{label}: statement {index + 1}/{total} runs outside a transaction block")
                        self._execute_one(stmt, index + 1, total, label, retry=not self_committing, commits_itself=self_committing)
                        self._progress(step, statements, index, stmt)
                        continue
                if not (index == start and step.resuming and self._guarded(self._already_done, stmt, index, label)):
                    batches = commits_itself(stmt.text)  # a DO block that COMMITs: never retried, part of it may stay
                    self._execute_one(stmt, index + 1, total, label, retry=not batches, commits_itself=batches)
                self._progress(step, statements, index, stmt)
            except _Failed as failed:
                raise self._partial(step, label, failed, total) from None
        self.verified = None  # statements committed one by one: what the schema now holds is known only once it is read
        fingerprint = cat.fingerprint(expected)
        with self.conn.transaction():
            # As in a transaction: the final ledger row first (a trigger on the ledger runs user code), then what would
            # run at COMMIT, then the read; the row commits only if the read matches the snapshot.
            # (CLOSE ALL: a cursor the statements declared WITH HOLD ran to its end when its statement committed)
            for query in ("RESET ROLE", "DISCARD TEMP", "CLOSE ALL"):
                self.conn.execute(query)
            try:
                self._record(step, started, fingerprint)
                self.conn.execute("SET CONSTRAINTS ALL IMMEDIATE")
            except psycopg.Error as exc:
                if isinstance(exc, psycopg.OperationalError) and not sqlstate(exc):
                    raise
                raise self._after_statements(
                    label,
                    f"the engine's final ledger row, or a deferred constraint or trigger checked after it, failed "
                    f"({first_line(exc, self.settings)} [SQLSTATE {sqlstate(exc) or '?'}])",
                    "fix what the trigger or constraint refused.",
                    total,
                ) from None
            for query in (*cat.RESET_PRINT_SETTINGS, "DISCARD TEMP"):  # after the triggers: what they made ends now
                self.conn.execute(query)
            try:
                self.conn.execute(cat.HELD_CURSORS)
            except psycopg.Error as exc:
                if cat.HELD_CURSORS_OPEN not in str(exc):
                    raise
                raise self._held_cursors(label, exc, committed=total) from None
            self._lock_still_held(label, total)  # after the triggers the ledger row and SET CONSTRAINTS fired
            live, proven = cat.introspect_verifiable(self.conn, self.schema)
            flag = self.conn.execute(cat.USER_DEFERRABLE_TRIGGERS).fetchone()
            at_commit = bool(flag and flag[0])
            if at_commit and self._deferred_work_ran(None, label, committed=total):
                live, proven = cat.introspect_verifiable(self.conn, self.schema)  # deferred work ran after the read: again
            self._verify(label, expected_version, expected, live, rolled_back=False, total=total)
        self.verified = proven
        if at_commit:  # as in a transaction: what the rounds cannot see would have run at COMMIT
            self._read_after_commit(label, expected_version, expected, step.direction)
        return fingerprint

    def _lock_still_held(self, label: str, total: int) -> None:
        import psycopg

        if self.lock_key is None:
            return
        try:
            self.conn.execute(*lock_held_check(self.lock_key))
        except psycopg.Error as exc:
            if LOCK_RELEASED not in str(exc):
                raise
            raise IncompleteMigration(
                f"{label} runs outside a transaction: all {total} statements completed and stay committed, but one of them "
                "released the engine's migration lock (pg_advisory_unlock_all(), pg_advisory_unlock() or DISCARD ALL): another "
                "applier could have run meanwhile. The ledger marks it interrupted after its last statement; the run stopped.",
                "remove the unlock from the migration, check `status` and `verify`, then run apply again: it verifies and records "
                "the version.",
            ) from None

    def _guarded(self, check: Callable[[Statement, str], bool], stmt: Statement, index: int, label: str) -> bool:
        """The engine's own work before a resumed statement (dropping what an interrupted build left): its failure is
        told as the statement's, with what is committed."""
        import psycopg

        try:
            return check(stmt, label)
        except psycopg.Error as exc:
            raise _Failed(exc, index + 1, stmt) from None

    def _replay_session(self, statements: list[Statement], start: int, label: str, version: str) -> None:
        """A resume runs the rest of the file in a new session: the settings its completed part made (SET search_path,
        SET ROLE, SELECT set_config(...)) are made again first, or the rest would run elsewhere (another schema's
        tables). A completed DO block or procedure that may have set one cannot be replayed: refused."""
        import psycopg

        for position, stmt in enumerate(statements[:start], start=1):
            if session_setting(stmt.text):
                self.progress(f"{label}: resuming: `{snippet(stmt)}` (statement {position}) run again first")
                try:
                    self.conn.execute(stmt.text.encode(), prepare=False)
                except psycopg.Error as exc:
                    raise StatementFailed(
                        f"{label}: resuming, statement {position} `{snippet(stmt)}` (a setting the completed part made) failed when "
                        f"run again: {first_line(exc, self.settings)}; statements 1-{start} stay committed, nothing more ran.",
                        "fix the cause (the setting must still be valid), then run apply again.",
                    ) from None
            elif may_set_session(stmt.text):
                raise IncompleteMigration(
                    f"{label} was interrupted after statement {start}; statement {position} `{snippet(stmt)}` may have changed "
                    "session settings (set_config or SET inside a DO block or procedure), which a resume in a new session "
                    f"cannot make again: statements 1-{start} stay committed, nothing more ran.",
                    "finish the remaining statements by hand under the settings they need, then run "
                    f"`python -m components.migrate resolve {version}`; put such settings "
                    "in SET statements (which a resume replays).",
                )

    def _statement_with_progress(self, step: Step, statements: list[Statement], index: int, label: str) -> None:
        stmt, total = statements[index], len(statements)
        for attempt in range(self.options.ddl_retries + 1):
            try:
                with self.conn.transaction():
                    self._execute_one(stmt, index + 1, total, label)
                    self._progress(step, statements, index, stmt)
                return
            except _Failed as failed:
                if failed.state != LOCK_NOT_AVAILABLE or attempt == self.options.ddl_retries:
                    raise
                self._wait_to_retry(attempt, label, index + 1, total, stmt, "nothing of it was done")
            except Exception as exc:
                import psycopg

                if isinstance(exc, psycopg.Error):  # COMMIT itself failed: the statement may or may not have completed
                    raise _Failed(exc, index + 1, stmt, maybe_done=True) from None
                raise

    def _progress(self, step: Step, statements: list[Statement], index: int, stmt: Statement) -> None:
        import psycopg

        try:
            self.ledger.progress(self.conn, step.migration.version, index + 1, statements_digest(statements[: index + 1]))
        except psycopg.Error as exc:  # the statement completed; whether its progress was recorded is unknown
            raise _Failed(exc, index + 1, stmt, maybe_done=True) from None

    def _already_done(self, stmt: Statement, label: str) -> bool:
        """Resuming at a concurrent index operation whose earlier attempt may have finished, or left an invalid index."""
        op = concurrent_index(stmt.text)
        if op is None or not op.names:
            return False
        states = [self._index_state(schema, name) for schema, name in op.names]
        if op.action == "drop":
            return all(s is None for s in states)
        if op.action == "reindex":
            # An interrupted REINDEX CONCURRENTLY leaves its new copies (<index>_ccnew) or, after the swap, the old ones
            # (<index>_ccold) invalid on the table: dropped concurrently, then the reindex runs again.
            schema, name = op.names[0]
            target = f"{sql.Identifier(schema or self.schema).as_string(self.conn)}.{sql.Identifier(name).as_string(self.conn)}"
            for leftover in self._reindex_leftovers(target):
                self.progress(f"{label}: dropping the invalid index {leftover} left by the interrupted reindex")
                self.conn.execute(
                    sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}.{}").format(
                        sql.Identifier(schema or self.schema), sql.Identifier(leftover)
                    )
                )
            return False
        if op.action == "create":
            if states[0] is True:
                self.progress(f"{label}: index {op.names[0][1]} was built by the interrupted run and is valid; not built again")
                return True
            if states[0] is False:
                schema, name = op.names[0]
                self.progress(f"{label}: dropping the invalid index {name} left by the interrupted build, then building it again")
                self.conn.execute(
                    sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}.{}").format(sql.Identifier(schema or self.schema), sql.Identifier(name))
                )
        return False

    def _reindex_leftovers(self, target: str) -> list[str]:
        """Invalid copies a REINDEX CONCURRENTLY of `target` (an index or a table) left on its table."""
        rows = self.conn.execute(
            "SELECT c.relname FROM pg_catalog.pg_index x JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) x.indexrelid"
            " WHERE NOT x.indisvalid AND c.relname OPERATOR(pg_catalog.~) '_cc(new|old)[0-9]*$'"
            " AND x.indrelid OPERATOR(pg_catalog.=) coalesce((SELECT i.indrelid FROM pg_catalog.pg_index i"
            "   WHERE i.indexrelid OPERATOR(pg_catalog.=) pg_catalog.to_regclass(%s)), pg_catalog.to_regclass(%s)::pg_catalog.oid)"
            " ORDER BY 1",
            (target, target),
        ).fetchall()
        return [str(r[0]) for r in rows]

    def _index_state(self, schema: str | None, name: str) -> bool | None:
        """True valid, False invalid, None absent."""
        row = self.conn.execute(
            "SELECT x.indisvalid FROM pg_catalog.pg_index x JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) x.indexrelid"
            " JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace WHERE n.nspname OPERATOR(pg_catalog.=) %s AND c.relname OPERATOR(pg_catalog.=) %s",
            (schema or self.schema, name),
        ).fetchone()
        return None if row is None else bool(row[0])

    def _partial(self, step: Step, label: str, failed: _Failed, total: int) -> MigrationError:
        """The honest account of a run outside a transaction that stopped: what completed, what did not, what is left."""
        done = failed.index - 1
        primary = first_line(failed.exc, self.settings)
        this = (
            f"statement {failed.index} (line {failed.stmt.line}) `{snippet(failed.stmt)}` commits its own work and failed after "
            f"an unknown part of it committed: {primary} [SQLSTATE {failed.state or '?'}]"
            if failed.commits_itself
            else f"statement {failed.index} (line {failed.stmt.line}) may or may not have completed (the connection failed: {primary})"
            if failed.connection_lost
            else f"statement {failed.index} (line {failed.stmt.line}) `{snippet(failed.stmt)}` failed and did not complete: {primary} "
            f"[SQLSTATE {failed.state or '?'}]"
        )
        left = self._leftovers()
        rest = f"; statements {failed.index + 1}-{total} did not run" if failed.index < total else ""
        return IncompleteMigration(
            f"{label} runs outside a transaction, so nothing was rolled back: statements 1-{done} of {total} completed and stay "
            f"committed; {this}{rest}. "
            f"The database now holds {left}. The ledger should mark {step.migration.version} interrupted after statement {done} "
            "(`status` reads it)."
            if done > 0
            else f"{label} runs outside a transaction, so nothing was rolled back: {this}{rest}; no statement before it had completed. "
            f"The database now holds {left}. The ledger should mark {step.migration.version} interrupted before statement 1 "
            "(`status` reads it).",
            f"fix the cause, then run apply again: it resumes at statement {failed.index}"
            + self._resume_does(failed.stmt, left)
            + ". `python -m components.migrate status` shows where it stopped.",
        )

    @staticmethod
    def _resume_does(stmt: Statement, left: str) -> str:
        """What the resume does first about what the failed statement left, by the kind of operation it was."""
        op = concurrent_index(stmt.text)
        if op is None or not left.startswith("invalid index"):
            return ""
        if op.action == "create":
            return " (and first drops the invalid index concurrently, then builds it again)"
        if op.action == "reindex":
            return " (and first drops the invalid _ccnew/_ccold copies concurrently, then reindexes again)"
        return " (the drop runs again)"

    def _leftovers(self) -> str:
        """Invalid indexes in the schema, read on this connection or, if it broke, a new one."""
        query = (
            "SELECT c.relname, t.relname FROM pg_catalog.pg_index x JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) x.indexrelid"
            " JOIN pg_catalog.pg_class t ON t.oid OPERATOR(pg_catalog.=) x.indrelid JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace"
            " WHERE n.nspname OPERATOR(pg_catalog.=) %s AND NOT x.indisvalid ORDER BY 1"
        )
        try:
            if not (self.conn.closed or self.conn.broken):
                rows = self.conn.execute(query, (self.schema,)).fetchall()
            else:
                with self.settings.connect(autocommit=True) as conn:
                    rows = conn.execute(query, (self.schema,)).fetchall()
        except Exception as exc:
            return f"what could not be read back ({first_line(exc, self.settings)}): check `status`"
        if not rows:
            return "no invalid index"
        return ", ".join(f"invalid index {self.schema}.{i} on {t}" for i, t in rows) + " (left by a failed CONCURRENTLY build)"

    # -- shared

    def _execute_one(
        self, stmt: Statement, index: int, total: int, label: str, *, retry: bool = True, commits_itself: bool = False
    ) -> None:
        """One statement; outside a transaction, a DDL lock timeout is retried here (the statement did nothing), unless
        `retry` is off (a statement that commits itself may have done part of its work)."""
        import psycopg

        in_tx = self._in_tx()
        concurrent = not in_tx and concurrent_index(stmt.text) is not None
        if concurrent:
            # A CONCURRENTLY build waits for older transactions; that wait blocks no app query, so no DDL lock_timeout.
            self.conn.execute("SELECT pg_catalog.set_config('lock_timeout', '0', false)")
        t0 = time.monotonic()
        try:
            for attempt in range(1 if in_tx or not retry else self.options.ddl_retries + 1):
                try:
                    self.conn.execute(stmt.text.encode(), prepare=False)
                    break
                except psycopg.Error as exc:
                    failed = _Failed(exc, index, stmt, commits_itself=commits_itself)
                    if in_tx or not retry or failed.state != LOCK_NOT_AVAILABLE or attempt == self.options.ddl_retries:
                        raise failed from None
                    self._wait_to_retry(attempt, label, index, total, stmt, "nothing of it was done")
        finally:
            if concurrent and not (self.conn.closed or self.conn.broken):
                self.conn.execute("SELECT pg_catalog.set_config('lock_timeout', %s, false)", (f"{self.options.lock_timeout_ms}ms",))
        self.progress(f"{label}: statement {index}/{total} (line {stmt.line}) {1000 * (time.monotonic() - t0):.1f} ms")

    def _in_tx(self) -> bool:
        from psycopg.pq import TransactionStatus

        return self.conn.info.transaction_status != TransactionStatus.IDLE

    def _wait_to_retry(self, attempt: int, label: str, index: int, total: int, stmt: Statement, undone: str) -> None:
        """After a DDL lock timeout: say who blocked and what was undone, then back off (0.2 s doubling, at most 5 s)."""
        delay = min(0.2 * 2**attempt, 5.0)
        self.progress(
            f"{label}: statement {index}/{total} waited over lock_timeout ({self.options.lock_timeout_ms} ms) for a table lock "
            f"({self._blockers(stmt)}); {undone}, retry {attempt + 1}/{self.options.ddl_retries} in {int(delay * 1000)} ms"
        )
        self.sleep(delay)

    def _blockers(self, stmt: Statement) -> str:
        """The sessions holding locks on the relations `stmt` names (what a DDL statement waited for)."""
        names = list(relations(stmt.text))
        if not names or self.conn.broken or self._in_tx():
            return "the blocking session could not be read"
        rows = self.conn.execute(
            "SELECT DISTINCT l.pid, a.application_name, a.state, a.xact_start, pg_catalog.left(pg_catalog.regexp_replace(a.query, '\\s+', ' ', 'g'), 100)"
            " FROM pg_catalog.pg_locks l JOIN pg_catalog.pg_stat_activity a ON a.pid OPERATOR(pg_catalog.=) l.pid"
            " WHERE l.granted AND l.pid OPERATOR(pg_catalog.<>) pg_catalog.pg_backend_pid() AND l.relation OPERATOR(pg_catalog.=) ANY("
            "  ARRAY(SELECT pg_catalog.to_regclass(n) FROM pg_catalog.unnest(%s::pg_catalog.text[]) n)) ORDER BY l.pid",
            (names,),
        ).fetchall()
        if not rows:
            return "the blocking session has ended since"
        return "blocked by " + "; ".join(
            f"pid {pid} ({app or 'no application_name'}, {state}, transaction open since "
            f"{'?' if since is None else f'{since:%H:%M:%S}'}, query: {mask_dsn(query or '')})"
            for pid, app, state, since, query in rows
        )

    def _query(self, name: str, query: str, params: Mapping[str, Any] | Sequence[Any], *, direct: bool) -> psycopg.Cursor[Any]:
        return self.conn.execute(query, params, prepare=False) if direct else self.prepared.execute(name, query, params)

    def _check_fingerprint(self, label: str, version: str | None, recorded: str, computed: str) -> None:
        """The live catalog equals the snapshot entry by entry: the fingerprint meta/ records for it must be its hash."""
        if recorded != computed:
            raise ChecksumMismatch(
                f"{label}: the snapshot of {version} records fingerprint {recorded[:19]}, but its catalog (which the live schema "
                f"matches) hashes to {computed[:19]}: meta/ was edited. The migration was rolled back, the ledger is unchanged.",
                "restore meta/ from git, or regenerate it (`python -m components.migrate snapshot`) if this version was never "
                "applied anywhere.",
            )

    def _verify(
        self, label: str, version: str | None, expected: cat.Catalog, live: cat.Catalog, *, rolled_back: bool, total: int = 0
    ) -> None:
        differences = cat.compare(expected, live)
        if not differences:
            return
        what = "; ".join(d.describe() for d in differences[:10]) + (f" (+{len(differences) - 10} more)" if len(differences) > 10 else "")
        problem = f"{label}: the catalog after the migration does not match the snapshot of {version or 'the empty schema'}: {what}."
        if rolled_back:
            raise VerifyFailed(
                problem + " The migration was rolled back, the ledger is unchanged.",
                "regenerate the snapshot if the migration changed on purpose and was never applied "
                "(`python -m components.migrate snapshot`), or fix the schema drift first.",
            )
        raise IncompleteMigration(
            problem + f" It runs outside a transaction, so nothing was rolled back: all {total} statements completed and stay "
            "committed; the ledger marks it interrupted after its last statement.",
            "make the schema match the snapshot by hand (or fix the snapshot if it was never applied anywhere), then run apply again: "
            "it verifies and records the version.",
        )

    def _record(
        self,
        step: Step,
        started: float | None,
        fingerprint: str | None,
        *,
        status: str = APPLIED,
        done: int = 0,
        digest: str | None = None,
        prepared: bool = False,
    ) -> psycopg.Cursor[Any]:
        """The step's ledger row; `started` None: the server measures the duration from the transaction's start."""
        m = step.migration
        if step.direction == "down" and status == APPLIED:
            return self.ledger.forget(self.conn, m.version)
        row = self.ledger.record_statement(
            version=m.version,
            name=m.name,
            checksum=m.checksum,
            applied_by=f"{self.settings.user} ({whoami()})",
            duration_ms=None if started is None else int((time.monotonic() - started) * 1000),
            stack=self.options.stack,
            database_identity=self.state.identity,
            fingerprint=fingerprint,
            status=status,
            statements_done=done,
            done_digest=digest,
            direction=step.direction,
        )
        if prepared:
            return self.prepared.execute("wishlist_ledger_record", *row)
        return self.conn.execute(*row)
