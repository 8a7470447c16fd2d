"""The executor between the set on disk and the ledger: one call per operation, each on one connection.

Planning is in planner.py (pure), guards (preflight, lock, timeouts) in guards.py, how a step runs in runner.py.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from . import catalog as cat
from .connection import ConnectionSettings
from .errors import (
    ChecksumMismatch,
    DriftDetected,
    LintRefused,
    MigrationError,
    PermissionMissing,
    RollbackRefused,
    UsageError,
    WrongDatabase,
)
from .guards import advisory_key, migration_lock, preflight, preflight_check, preflight_statement
from .impact import StatementImpact, TableSize, assess, touched_tables
from .ledger import ABSENT, LEDGER_FORMAT, Ledger, LedgerState
from .lint import Finding, lint
from .migset import MigrationSet
from .options import RunOptions
from .pgerrors import first_line, translate
from .planner import LATEST, Gate, Plan, Step, check_checksums, check_identity, check_owner, parse_target, plan_steps, target_prop
from .runner import StepRunner

if TYPE_CHECKING:
    import psycopg

Progress = Callable[[str], None]


@dataclass
class RunResult:
    current: str | None
    ran: list[dict[str, Any]] = field(default_factory=list)
    fingerprint: str | None = None
    ledger: LedgerState | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"current": self.current, "ran": self.ran, "fingerprint": self.fingerprint}


@dataclass(frozen=True)
class VerifyReport:
    version: str | None
    fingerprint: str
    expected_fingerprint: str
    differences: tuple[cat.Difference, ...]

    @property
    def ok(self) -> bool:
        return not self.differences

    def as_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "ok": self.ok,
            "fingerprint": self.fingerprint,
            "expected_fingerprint": self.expected_fingerprint,
            "differences": [d.as_dict() for d in self.differences],
        }


class Engine:
    """Runs a migration set against one database. Each public method opens and closes its own connection."""

    def __init__(
        self,
        settings: ConnectionSettings,
        mset: MigrationSet,
        options: RunOptions | None = None,
        *,
        gate: Gate | None = None,
        progress: Progress | None = None,
    ) -> None:
        self.settings = settings
        self.mset = mset
        self.options = options or RunOptions()
        self.ledger = Ledger(self.options.ledger_schema, mset.name)
        self.gate = gate  # promotion gate: versions must be applied in another stack first
        self.progress = progress or (lambda _msg: None)

    # -- connections and checks

    @contextmanager
    def connect(self) -> Iterator[psycopg.Connection[Any]]:
        """A connection for one operation; a database error nobody named becomes a MigrationError, password masked."""
        import psycopg

        conn = self.settings.connect(autocommit=True, search_path=self.mset.schema)
        try:
            yield conn
        except psycopg.Error as exc:
            raise translate(exc, self.settings, "it came from a ledger, lock or catalog query, outside any migration step.") from None
        finally:
            conn.close()

    def locked(self, conn: psycopg.Connection[Any], *, acquired: bool = False) -> AbstractContextManager[dict[str, bool]]:
        """The migration lock of this set on `conn` (polled, bounded by lock_wait_ms; `acquired`: already taken)."""
        return migration_lock(
            conn,
            advisory_key(self.mset.name),
            wait_ms=self.options.lock_wait_ms,
            set_name=self.mset.name,
            where=self.settings.describe(),
            progress=self.progress,
            acquired=acquired,
        )

    def _preflight_and_lock(self, conn: psycopg.Connection[Any]) -> tuple[bool, LedgerState | None]:
        """One round trip: the preflight read, the lock's first try and, under the lock if it was granted, the ledger.

        Returns whether the lock was granted and the ledger read under it (None: read it again once the lock is held)."""
        import psycopg

        checks, lock, identity, ledger = (conn.cursor() for _ in range(4))  # made first: an error may surface while sending
        missing = False
        try:
            with conn.pipeline():
                checks.execute(*preflight_statement(self.mset.schema, self.ledger.schema))
                lock.execute("SELECT pg_catalog.pg_try_advisory_lock(%s)", (advisory_key(self.mset.name),))
                identity.execute(ABSENT)
                ledger.execute(*self.ledger.read_statement(conn))  # its own snapshot, taken after the lock statement
        except psycopg.errors.UndefinedTable:
            missing = True  # no ledger yet: `identity` says what a database without one says
        except psycopg.Error:
            if checks.pgresult is None or lock.pgresult is None or identity.pgresult is None:
                raise
            # a ledger this role cannot read: read again under the lock, where the error is named
        row = lock.fetchone()
        acquired = bool(row and row[0])
        try:
            preflight_check(checks.fetchone(), self.settings)
        except MigrationError:
            if acquired:
                conn.execute("SELECT pg_catalog.pg_advisory_unlock(%s)", (advisory_key(self.mset.name),))
            raise
        if not acquired or identity.pgresult is None or (ledger.pgresult is None and not missing):
            return acquired, None
        return True, self.ledger.state_or_absent(identity, ledger)

    def read_state(self, conn: psycopg.Connection[Any], state: LedgerState | None = None) -> LedgerState:
        """The ledger (`state`: as already read) with the refusals that need no lock: owner, checksums, identity."""
        import psycopg

        try:
            state = state or self.ledger.read(conn)
        except psycopg.errors.InsufficientPrivilege as exc:
            schema = self.ledger.schema
            raise PermissionMissing(
                f"role {self.settings.user} cannot read the ledger {schema}.applied on {self.settings.describe()} "
                f"({first_line(exc, self.settings)}). Nothing was written.",
                f"GRANT USAGE, CREATE ON SCHEMA {schema} TO {self.settings.user}; "
                f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {schema} TO {self.settings.user} "
                "(quote names as needed; the access component does this for wishlist_migrator).",
            ) from None
        check_owner(state, self.options.stack)
        check_checksums(self.mset, state)
        check_identity(self.mset, state)
        return state

    # -- read-only operations

    def status(self) -> tuple[LedgerState, Plan]:
        with self.connect() as conn:
            state = self.ledger.read(conn)
            check_owner(state, self.options.stack)
        return state, Plan(state.current, self.mset.latest, plan_steps(self.mset, state, self.mset.latest), state)

    def plan(self, target: str | None) -> Plan:
        """What migrate_to(target) would run; no writes; one round trip when the ledger exists."""
        with self.connect() as conn:
            state = self.read_state(conn)
            steps = plan_steps(self.mset, state, target)
            findings, impacts = self.assess(conn, steps)
        return Plan(state.current, target, steps, state, findings, impacts)

    def observe(self, target: str | None) -> tuple[Plan, VerifyReport]:
        """Plan and drift together on one connection (what `pulumi preview` and `refresh` need): two round trips."""
        with self.connect() as conn:
            state = self.read_state(conn)
            steps = plan_steps(self.mset, state, target)
            findings, impacts = self.assess(conn, steps)
            live = cat.introspect(conn, self.mset.schema)
        return Plan(state.current, target, steps, state, findings, impacts), self._report(state.current, live)

    def verify(self) -> VerifyReport:
        """The live catalog against the snapshot of the latest applied version."""
        with self.connect() as conn:
            state = self.read_state(conn)
            live = cat.introspect(conn, self.mset.schema)
        return self._report(state.current, live)

    def lint(self, conn: psycopg.Connection[Any], steps: tuple[Step, ...]) -> tuple[Finding, ...]:
        """Lint findings of the pending up steps, kept only for tables that hold (or held) rows."""
        return self.assess(conn, steps)[0]

    def assess(self, conn: psycopg.Connection[Any], steps: tuple[Step, ...]) -> tuple[tuple[Finding, ...], tuple[StatementImpact, ...]]:
        """Lint findings and per-statement impact of the pending up steps, from one read of the live table sizes."""
        ups = [s.migration for s in steps if s.direction == "up"]
        found = [f for m in ups for f in lint(m)]
        tables = sorted({f.table for f in found if f.table} | touched_tables(ups))
        sizes = self.table_sizes(conn, tables)
        findings = tuple(f for f in found if f.table is None or (f.table in sizes and not sizes[f.table].empty))
        return findings, assess(ups, sizes)

    def table_sizes(self, conn: psycopg.Connection[Any], tables: list[str]) -> dict[str, TableSize]:
        """Live size of the named tables of the set's schema that exist (read-only; estimates, no scan)."""
        if not tables:
            return {}
        return self._sizes_of(conn.execute(*self._sizes_statement(tables)).fetchall())

    def _sizes_statement(self, tables: list[str]) -> tuple[str, tuple[Any, ...]]:
        return (
            "SELECT c.relname, c.reltuples::bigint, pg_catalog.pg_total_relation_size(c.oid), pg_catalog.pg_relation_size(c.oid)"
            " FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = %s AND c.relname = ANY(%s) AND c.relkind IN ('r', 'p', 'm')",
            (self.mset.schema, tables),
        )

    @staticmethod
    def _sizes_of(rows: list[tuple[Any, ...]]) -> dict[str, TableSize]:
        return {str(r[0]): TableSize(None if r[1] < 0 else int(r[1]), int(r[2]), int(r[3])) for r in rows}

    # -- writes

    def migrate_to(
        self,
        target: str | None,
        *,
        allow_rollback: bool = False,
        allow_forward: bool = True,
        expected_fingerprint: str | None = None,
        owner_id: str | None = None,
    ) -> RunResult:
        """Reach `target` (None: before the first migration): plan, lock, run each step verified, on one connection.

        `owner_id` (the Pulumi resource id) is recorded as the schema's owning resource when it is not already.
        """
        self._check_expected(target, expected_fingerprint)
        with self.connect() as conn:
            state, steps = self._checked_plan(conn, target, allow_rollback, allow_forward)
            claimed = state.owner is not None and state.owner.resource_id == owner_id
            if not steps and (owner_id is None or claimed or not state.exists):
                # Nothing to do: still prove the schema is what the ledger says.
                live = cat.introspect(conn, self.mset.schema)
                self._refuse_drift(self._report(state.current, live))
                return RunResult(state.current, [], cat.fingerprint(live), state)
            acquired, under_lock = self._preflight_and_lock(conn)
            with self.locked(conn, acquired=acquired) as held:
                # Another applier may have finished while we waited: plan again.
                state, steps = self._checked_plan(conn, target, allow_rollback, allow_forward, under_lock)
                live, verified, findings = self._read_schema_and_lint(conn, steps)
                report = self._report(state.current, live)
                if not state.started and not any(s.direction == "down" for s in steps):
                    # Forward runs start from the verified schema; a rollback (each down step verified) is a way out of drift.
                    self._refuse_drift(report)
                self._refuse_lint(findings)
                if self.gate is not None:
                    self.gate.enforce(steps)
                # Every refusal is behind us: only now does anything get written.
                if not state.exists or state.format < LEDGER_FORMAT:
                    self.ledger.ensure(conn)
                if self.options.stack is not None and (state.owner is None or (owner_id and state.owner.resource_id != owner_id)):
                    self.ledger.claim(conn, self.options.stack, state.system_identifier, state.database, owner_id)
                for f in findings:
                    self.progress(f"lint: {f.describe()}")
                # The schema as read is the snapshot of the current version: the first step can read only what it changes.
                proven = verified if report.ok and not state.started else None
                return self._run(conn, state, steps, target, live, proven, held)

    def _read_schema_and_lint(
        self, conn: psycopg.Connection[Any], steps: tuple[Step, ...]
    ) -> tuple[cat.Catalog, cat.Verified, tuple[Finding, ...]]:
        """One round trip: the whole schema (the run starts from it) and the live sizes of the tables the lint names."""
        ups = [s.migration for s in steps if s.direction == "up"]
        found = [f for m in ups for f in lint(m)]
        tables = sorted({f.table for f in found if f.table})
        with conn.pipeline():
            schema = conn.execute(*cat.verifiable_query(self.mset.schema))
            sizes = conn.execute(*self._sizes_statement(tables)) if tables else None
        row = schema.fetchone()
        assert row is not None
        live, verified = cat.verifiable_result(row[0])
        measured = self._sizes_of(sizes.fetchall()) if sizes is not None else {}
        return live, verified, tuple(f for f in found if f.table is None or (f.table in measured and not measured[f.table].empty))

    def _run(
        self,
        conn: psycopg.Connection[Any],
        state: LedgerState,
        steps: tuple[Step, ...],
        target: str | None,
        live: cat.Catalog,
        verified: cat.Verified | None,
        held: dict[str, bool] | None = None,
    ) -> RunResult:
        runner = StepRunner(
            conn,
            self.settings,
            self.mset.schema,
            self.ledger,
            self.options,
            state,
            self.progress,
            verified=verified,
            lock_key=advisory_key(self.mset.name),
        )
        applied = set(state.applied)
        result = RunResult(state.current)
        for i, step in enumerate(steps):
            version = step.migration.version
            if step.direction == "up":
                applied.add(version)
            else:
                applied.discard(version)
            after = max(applied, key=int) if applied else None
            # The last step reads the whole schema: what another session changed meanwhile is caught before the run ends.
            expected = self.mset.expected_catalog(after)
            expected_fp = self.mset.get(after).fingerprint if after is not None else None
            result.ran.append(
                runner.run(
                    step,
                    after,
                    expected,
                    expected_fp or cat.fingerprint(expected),
                    full=i == len(steps) - 1,
                    delta=self.mset.changed_keys(version),
                    order=self.mset.expected_keys(after),
                )
            )
            result.current = after
        if target is None and not applied and self.options.stack is not None:
            self.ledger.release(conn)
        # The last step verified the catalog: that is the final fingerprint.
        result.fingerprint = result.ran[-1]["fingerprint"] if result.ran else cat.fingerprint(live)
        if held is None:
            result.ledger = self.ledger.read(conn)
            return result
        with conn.pipeline():  # the ledger as the run left it, and the lock released, in one round trip
            ledger = conn.execute(*self.ledger.read_statement(conn))
            conn.execute("SELECT pg_catalog.pg_advisory_unlock(%s)", (advisory_key(self.mset.name),))
        held["held"] = False
        row = ledger.fetchone()
        assert row is not None
        result.ledger = self.ledger.state_of(row[0])
        return result

    def apply(self, target: str | None = LATEST) -> RunResult:
        """Library convenience (tests, bench): migrate forward to a target written as text; the adapters call migrate_to."""
        return self.migrate_to(parse_target(self.mset, target))

    def rollback(self, target: str | None) -> RunResult:
        """Library convenience: migrate down to a target written as text (0 = before the first)."""
        return self.migrate_to(parse_target(self.mset, target if target is not None else "0"), allow_rollback=True, allow_forward=False)

    def tear_down(self, owner_id: str) -> RunResult | None:
        """Roll everything back for a destroy, unless another resource owns the schema now (this one was renamed)."""
        with self.connect() as conn:
            owner = self.read_state(conn).owner
        if owner is not None and owner.resource_id not in (None, owner_id):
            self.progress(
                f"the schema is owned by resource {owner.resource_id}, not {owner_id} (this resource was replaced or renamed): "
                "nothing was dropped"
            )
            return None
        return self.migrate_to(None, allow_rollback=True, allow_forward=False)

    def resolve(self, version: str) -> None:
        """Clear the 'started' mark of an interrupted non-transactional migration after a manual repair."""
        with self.connect() as conn:
            state = self.read_state(conn)
            if not any(r.version == version for r in state.started):
                raise UsageError(f"version {version} is not marked as interrupted on {state.database}.", "nothing to resolve.")
            self.refuse_unnamed_writer(state)
            preflight(conn, self.settings, self.mset.schema, self.ledger.schema)
            with self.locked(conn):
                self.ledger.forget(conn, version)

    # -- refusals

    def refuse_unnamed_writer(self, state: LedgerState) -> None:
        """A database a stack owns is written only under that stack's rules (strict lint, timeouts, gate)."""
        if state.owner is not None and self.options.stack is None:
            name = state.owner.stack.rpartition("/")[2]
            raise WrongDatabase(
                f"database {state.database} is owned by stack {state.owner.stack!r}; a write without a stack would skip its rules "
                "(strict lint, lock waits, timeouts, promotion gate). Nothing was run.",
                f"pass `--stack {name}` (the CLI then reads Pulumi.{name}.yaml), or use `pulumi up --stack {name}`.",
            )

    def _check_expected(self, target: str | None, expected_fingerprint: str | None) -> None:
        """What was previewed is what runs: the target's snapshot must be the one the caller saw."""
        if expected_fingerprint is None:
            return
        actual = self.mset.get(target).fingerprint if target is not None else None
        if actual != expected_fingerprint:
            raise ChecksumMismatch(
                f"the snapshot of target {target_prop(target)} has fingerprint {str(actual)[:12]}, but the previewed plan expected "
                f"{expected_fingerprint[:12]}: meta/ changed since the preview. Nothing was run.",
                "run `pulumi preview` again and review the new plan.",
            )

    def _refuse_direction(
        self, steps: tuple[Step, ...], state: LedgerState, target: str | None, allow_rollback: bool, allow_forward: bool
    ) -> None:
        downs = [s for s in steps if s.direction == "down"]
        resumed = [s for s in downs if s.resuming]
        if resumed and not allow_rollback:
            # Not a new rollback: one that was interrupted, outside a transaction, and is still half done.
            r = resumed[0]
            raise RollbackRefused(
                f"the rollback of {r.migration.label} was interrupted after statement {r.resume_from} of its down file (outside "
                f"a transaction: statements 1-{r.resume_from} stay committed, and the ledger marks it interrupted); target "
                f"{target_prop(target)} means finishing that rollback, which this command does not do. "
                "Nothing was run.",
                f"finish it with `python -m components.migrate rollback --to {target_prop(target)}` (it resumes at statement "
                f"{r.resume_from + 1}); `status` shows where it stopped.",
            )
        if downs and not allow_rollback:
            raise RollbackRefused(
                f"target {target_prop(target)} is below the applied version {state.current}: that is a rollback "
                f"({', '.join(s.migration.label for s in downs)}), which destroys data and was not allowed. Nothing was run.",
                f"roll back explicitly (`python -m components.migrate rollback --to {target_prop(target)}`, or "
                "`allowRollback: true` under wishlist:migrations for a stack where that is allowed).",
            )
        if not allow_forward and any(s.direction == "up" and not s.resuming for s in steps):
            raise UsageError(
                f"target {target_prop(target)} is above the applied version {state.current or 'none'}: rollback only goes down.",
                f"use `apply --to {target_prop(target)}`.",
            )

    def _refuse_lint(self, findings: tuple[Finding, ...]) -> None:
        blocking = [f for f in findings if not f.acknowledged]
        if self.options.strict_lint and blocking:
            raise LintRefused(
                "pending migrations hold statements that lock or rewrite tables with rows: "
                + "; ".join(f.describe() for f in blocking)
                + ". Nothing was run.",
                "rewrite them (e.g. CREATE INDEX CONCURRENTLY in a `-- migrate:no-transaction` file, ADD COLUMN with a DEFAULT), "
                "or, after review, add `-- migrate:allow <rule>` at the top of the file.",
            )

    def _checked_plan(
        self,
        conn: psycopg.Connection[Any],
        target: str | None,
        allow_rollback: bool,
        allow_forward: bool,
        state: LedgerState | None = None,
    ) -> tuple[LedgerState, tuple[Step, ...]]:
        """The ledger read (unless given) and the plan to `target`, with the refusals that need no lock (direction,
        unnamed writer)."""
        state = self.read_state(conn, state)
        steps = plan_steps(self.mset, state, target)
        self._refuse_direction(steps, state, target, allow_rollback, allow_forward)
        if steps:
            self.refuse_unnamed_writer(state)
        return state, steps

    def _refuse_drift(self, report: VerifyReport) -> None:
        """Before anything runs, the live schema must be the snapshot of the applied version (none applied: no claim)."""
        if report.version is not None and not report.ok:
            raise DriftDetected(
                f"the live schema of {self.settings.describe()} differs from the snapshot of version {report.version}: "
                + "; ".join(d.describe() for d in report.differences)
                + ". Nothing was run.",
                "undo the manual change (or capture it in a new migration), check with "
                "`python -m components.migrate drift`, then run again.",
            )

    def _report(self, version: str | None, live: cat.Catalog) -> VerifyReport:
        expected = self.mset.expected_catalog(version)
        computed = cat.fingerprint(expected)
        recorded = self.mset.get(version).fingerprint if version is not None else None
        if recorded is not None and recorded != computed:
            raise ChecksumMismatch(
                f"the snapshot of version {version} in {self.mset.directory / 'meta'} records fingerprint {recorded[:19]}, but its "
                f"catalog hashes to {computed[:19]}: meta/ was edited. Nothing was run.",
                "restore meta/ from git, or regenerate it (`python -m components.migrate snapshot`) if no version was applied anywhere.",
            )
        return VerifyReport(version, cat.fingerprint(live), computed, tuple(cat.compare(expected, live)))
