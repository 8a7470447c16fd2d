"""The executor between the set on disk and the ledger: plan, apply, verify, drift, rollback, adopt."""

from __future__ import annotations

import getpass
import hashlib
import socket
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from psycopg import sql

from . import catalog as cat
from .connection import ConnectionSettings
from .errors import (
    ChecksumMismatch,
    DriftDetected,
    IncompleteMigration,
    LintRefused,
    LockTimeout,
    MigrationError,
    NotWritable,
    OutOfOrder,
    PermissionMissing,
    PromotionBlocked,
    SetError,
    StatementFailed,
    VerifyFailed,
    WrongDatabase,
)
from .ledger import APPLIED, DEFAULT_LEDGER_SCHEMA, STARTED, Ledger, LedgerState
from .lint import Finding, lint
from .migset import Migration, MigrationSet

if TYPE_CHECKING:
    import psycopg

Progress = Callable[[str], None]

# SQLSTATEs whose cause we can name, with the fix to suggest.
_STATE_FIXES = {
    "42P07": "an object of that name already exists (made by hand or by another tool): drop or rename it, "
    "or adopt the database (`python -m components.migrate adopt`, docs/runbook.md).",
    "42710": "an object of that name already exists: drop or rename it, or adopt the database (docs/runbook.md).",
    "42501": "the role lacks a privilege: grant it (the access component grants CREATE on the schema to the migrator).",
    "25006": "the connection is read-only: connect to the primary/writer endpoint.",
    "57014": "a statement ran past statement_timeout: raise --statement-timeout, or split the migration.",
    "55P03": "a lock was not granted within lock_timeout: retry when the table is quiet, or raise --lock-timeout.",
    "40P01": "a deadlock with another session: retry.",
}


def advisory_key(set_name: str) -> int:
    """A stable signed 64-bit advisory-lock key per migration set."""
    digest = hashlib.sha256(f"wishlist-infra/migrations/{set_name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


@dataclass(frozen=True)
class Step:
    """One migration to run, up or down."""

    migration: Migration
    direction: str  # "up" | "down"

    def as_dict(self) -> dict[str, Any]:
        m = self.migration
        return {
            "version": m.version,
            "name": m.name,
            "direction": self.direction,
            "transactional": m.transactional,
            "sql": m.up_sql if self.direction == "up" else m.down_sql,
        }


@dataclass(frozen=True)
class Plan:
    current: str | None
    target: str | None
    steps: tuple[Step, ...]
    ledger: LedgerState
    findings: tuple[Finding, ...] = ()

    @property
    def pending(self) -> list[str]:
        return [s.migration.version for s in self.steps if s.direction == "up"]

    @property
    def blocking(self) -> list[Finding]:
        return [f for f in self.findings if not f.acknowledged]

    def as_dict(self) -> dict[str, Any]:
        return {
            "current": self.current,
            "target": self.target,
            "steps": [s.as_dict() for s in self.steps],
            "lint": [{**f.__dict__, "message": f.describe()} for f in self.findings],
        }


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


@dataclass(frozen=True)
class Gate:
    """The versions (with checksums) another stack has applied; only those may be applied here."""

    stack: str
    applied: dict[str, str]

    def split(self, steps: tuple[Step, ...]) -> tuple[list[str], list[str]]:
        """Labels of the up steps the gate clears, and of those it blocks."""
        return self.split_items((s.migration.version, s.migration.label, s.migration.checksum) for s in steps if s.direction == "up")

    def split_items(self, items: Iterable[tuple[str, str, str]]) -> tuple[list[str], list[str]]:
        cleared: list[str] = []
        blocked: list[str] = []
        for version, label, checksum in items:
            (cleared if self.applied.get(version) == checksum else blocked).append(label)
        return cleared, blocked

    def describe(self, cleared: list[str], blocked: list[str]) -> str:
        return (
            f"promotion gate ({self.stack}): applied there and cleared {', '.join(cleared) or 'none'}; "
            f"not yet applied there {', '.join(blocked) or 'none'}"
        )

    def enforce(self, steps: tuple[Step, ...]) -> None:
        _, blocked = self.split(steps)
        if blocked:
            raise PromotionBlocked(
                f"{', '.join(blocked)} not yet applied (with the same checksum) in stack {self.stack!r}, which this stack requires first.",
                f"run `pulumi up --stack {self.stack}` first, then preview this stack again.",
            )


# ---- pure checks ------------------------------------------------------------------------------


def check_checksums(mset: MigrationSet, state: LedgerState) -> None:
    """Every applied version must still be on disk with the checksum it was applied with."""
    known = {m.version: m for m in mset.migrations}
    for row in state.rows:
        m = known.get(row.version)
        if m is None:
            raise SetError(
                f"version {row.version} ({row.name}) is applied to {state.database} but its file is missing from {mset.directory}.",
                "restore the file from git: applied migrations are never deleted (roll back first if it must go).",
            )
        if m.checksum != row.checksum:
            raise ChecksumMismatch(
                f"{m.up_file} was edited after it was applied to {state.database} "
                f"(sha256 {m.checksum[:12]}, applied {row.checksum[:12]} on {row.applied_at} by {row.applied_by}).",
                "revert the file (git checkout) and put the change in a new migration.",
            )


def check_owner(state: LedgerState, stack: str | None) -> None:
    """Refuse a database that another stack owns (e.g. staging settings aimed at prod)."""
    if stack is None or state.owner is None:
        return
    if state.owner.stack != stack:
        raise WrongDatabase(
            f"database {state.database} (system {state.system_identifier}) is owned by stack {state.owner.stack!r}, "
            f"but this is stack {stack!r}.",
            "check the host/database in this stack's config; nothing was written.",
        )


def check_incomplete(mset: MigrationSet, state: LedgerState, live: cat.Catalog | None = None) -> None:
    """A non-transactional migration that stopped half-way must be repaired before anything else runs."""
    if not state.started:
        return
    row = state.started[0]
    invalid = [k.partition(":")[2] for k, v in (live or {}).items() if k.startswith("index:") and v.get("valid") is False]
    detail = f" Invalid indexes left behind: {', '.join(invalid)}." if invalid else ""
    drops = "; ".join(f"DROP INDEX CONCURRENTLY IF EXISTS {mset.schema}.{name}" for name in invalid)
    raise IncompleteMigration(
        f"migration {row.version}_{row.name} (run outside a transaction) did not finish on {state.database}.{detail}",
        (f"run `{drops}`, then " if drops else "repair what it left, then ")
        + f"`python -m components.migrate resolve {row.version}` to clear the mark, and apply again.",
    )


def plan_steps(mset: MigrationSet, state: LedgerState, target: str | None) -> tuple[Step, ...]:
    """Up steps to reach `target` (ascending) or down steps (descending); out-of-order files are refused."""
    applied = state.applied
    current = state.current
    floor = -1 if target is None else int(target)  # None: before the first migration
    if current is not None and floor < int(current):
        downs = [mset.get(v) for v in sorted(applied, key=int, reverse=True) if int(v) > floor]
        for m in downs:
            if m.down_sql is None:
                raise SetError(
                    f"rolling back {m.label} needs {m.up_file[:-4]}.down.sql, which does not exist.",
                    "write the down migration (and regenerate meta/), or pick a later --to version.",
                )
        return tuple(Step(m, "down") for m in downs)
    ups = [m for m in mset.up_to(target) if m.version not in applied]
    if current is not None:
        late = [m for m in ups if int(m.version) < int(current)]
        if late:
            raise OutOfOrder(
                f"{late[0].up_file} (version {late[0].version}) is older than the applied version {current} and was never applied.",
                f"renumber it above {current} (e.g. {int(current) + 1:04d}_{late[0].name}.sql) and regenerate meta/.",
            )
    return tuple(Step(m, "up") for m in ups)


def whoami() -> str:
    try:
        user = getpass.getuser()
    except Exception:  # no passwd entry in some containers
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


# ---- the engine -------------------------------------------------------------------------------


class Engine:
    """Runs a migration set against one database. Each public method opens and closes its own connection."""

    def __init__(
        self,
        settings: ConnectionSettings,
        mset: MigrationSet,
        *,
        stack: str | None = None,
        ledger_schema: str = DEFAULT_LEDGER_SCHEMA,
        lock_timeout_ms: int = 60_000,
        statement_timeout_ms: int = 0,
        strict_lint: bool = False,
        gate: Gate | None = None,
        progress: Progress | None = None,
    ) -> None:
        self.settings = settings
        self.mset = mset
        self.stack = stack
        self.ledger = Ledger(ledger_schema, mset.name)
        self.lock_timeout_ms = lock_timeout_ms
        self.statement_timeout_ms = statement_timeout_ms
        self.strict_lint = strict_lint  # prod: unacknowledged lint findings refuse the apply
        self.gate = gate  # promotion gate: versions must be applied in another stack first
        self.progress = progress or (lambda _msg: None)

    # -- connections and guards

    @contextmanager
    def connect(self) -> Iterator[psycopg.Connection[Any]]:
        """A connection for one operation; a database error nobody named becomes a MigrationError, password masked."""
        import psycopg

        conn = self.settings.connect(autocommit=True, search_path=self.mset.schema)
        try:
            yield conn
        except psycopg.Error as exc:
            message = (exc.diag.message_primary if exc.diag and exc.diag.message_primary else str(exc).strip()) or type(exc).__name__
            if self.settings.password:
                message = message.replace(self.settings.password, "***")
            raise MigrationError(
                f"{self.settings.describe()}: {message} [SQLSTATE {exc.sqlstate or '?'}]; nothing of a failed migration was committed.",
                _STATE_FIXES.get(exc.sqlstate or "", "check `python -m components.migrate status`, fix the cause, and run again."),
            ) from None
        finally:
            conn.close()

    def read_state(self, conn: psycopg.Connection[Any]) -> LedgerState:
        state = self.ledger.read(conn)
        check_owner(state, self.stack)
        check_checksums(self.mset, state)
        return state

    def preflight(self, conn: psycopg.Connection[Any]) -> None:
        """Before any write: the session can write, and the role has the privileges a migration needs."""
        # Schemas and the ledger table are found by name in the catalogs and checked by OID, so that names with
        # quotes or dots are never parsed as SQL identifiers.
        row = conn.execute(
            "WITH s AS (SELECT (SELECT oid FROM pg_catalog.pg_namespace WHERE nspname = %(schema)s) AS target,"
            "                  (SELECT oid FROM pg_catalog.pg_namespace WHERE nspname = %(ledger)s) AS ledger),"
            " t AS (SELECT (SELECT c.oid FROM pg_catalog.pg_class c, s WHERE c.relnamespace = s.ledger AND c.relname = 'applied') AS tbl)"
            " SELECT current_user, pg_catalog.pg_is_in_recovery(),"
            " current_setting('transaction_read_only'), current_setting('default_transaction_read_only'),"
            " s.target IS NOT NULL,"
            " s.target IS NOT NULL AND has_schema_privilege(s.target, 'CREATE') AND has_schema_privilege(s.target, 'USAGE'),"
            " s.ledger IS NOT NULL,"
            " CASE WHEN s.ledger IS NULL THEN has_database_privilege(current_database(), 'CREATE')"
            "      ELSE has_schema_privilege(s.ledger, 'USAGE') END,"
            " CASE WHEN t.tbl IS NULL THEN s.ledger IS NULL OR has_schema_privilege(s.ledger, 'CREATE')"
            "      ELSE has_table_privilege(t.tbl, 'SELECT, INSERT, UPDATE, DELETE') END,"
            " current_database()"
            " FROM s, t",
            {"schema": self.mset.schema, "ledger": self.ledger.schema},
        ).fetchone()
        assert row is not None
        user, standby, tx_ro, default_ro, has_schema, schema_ok, ledger_exists, ledger_ok, table_ok, db = row
        where = self.settings.describe()
        if standby:
            raise NotWritable(
                f"{where} is a hot standby (pg_is_in_recovery() is true): a migration cannot write there.",
                "connect to the primary (the cluster's writer endpoint), not a replica or reader endpoint.",
            )
        if tx_ro == "on" or default_ro == "on":
            raise NotWritable(
                f"the session on {where} is read-only (default_transaction_read_only={default_ro}).",
                f"connect with a read-write session, e.g. `ALTER ROLE {user} SET default_transaction_read_only = off`, "
                "or use the writer endpoint.",
            )
        missing = []
        if not has_schema:
            missing.append(f"schema {self.mset.schema} does not exist (CREATE SCHEMA {self.mset.schema} AUTHORIZATION {user})")
        elif not schema_ok:
            missing.append(f"CREATE and USAGE on schema {self.mset.schema} (GRANT CREATE, USAGE ON SCHEMA {self.mset.schema} TO {user})")
        if not ledger_exists and not ledger_ok:
            missing.append(
                f"CREATE on database {db} to create the ledger schema {self.ledger.schema} "
                f"(or create it first: CREATE SCHEMA {self.ledger.schema} AUTHORIZATION {user})"
            )
        elif ledger_exists and not (ledger_ok and table_ok):
            missing.append(
                f"USAGE, CREATE on schema {self.ledger.schema} and SELECT, INSERT, UPDATE, DELETE on its tables "
                f"(GRANT ... TO {user}, or make {user} their owner)"
            )
        if missing:
            raise PermissionMissing(
                f"role {user} on {where} lacks what a migration needs: " + "; ".join(missing) + ".",
                "grant the privileges named above (the access component does this for wishlist_migrator), then run again.",
            )

    @contextmanager
    def locked(self, conn: psycopg.Connection[Any]) -> Iterator[None]:
        """Session advisory lock per set; waits at most lock_timeout, released even on error."""
        import psycopg

        key = advisory_key(self.mset.name)
        # If this process dies mid-statement, the server notices within a second and rolls back (PostgreSQL 14+).
        conn.execute(
            sql.SQL("SET lock_timeout = {}; SET client_connection_check_interval = '1s'").format(sql.Literal(f"{self.lock_timeout_ms}ms"))
        )
        try:
            conn.execute("SELECT pg_catalog.pg_advisory_lock(%s)", (key,))
        except psycopg.errors.LockNotAvailable:
            raise LockTimeout(
                f"another migration of set {self.mset.name!r} holds the lock on {self.settings.describe()}; "
                f"waited {self.lock_timeout_ms} ms.",
                "wait for it to finish and run again (it will find nothing pending), or raise --lock-timeout.",
            ) from None
        try:
            yield
        finally:
            if not conn.closed and not conn.broken:
                conn.execute("SELECT pg_catalog.pg_advisory_unlock(%s)", (key,))

    # -- read-only operations

    def status(self) -> tuple[LedgerState, Plan]:
        with self.connect() as conn:
            state = self.ledger.read(conn)
            check_owner(state, self.stack)
        return state, Plan(state.current, self.mset.latest, plan_steps(self.mset, state, self.mset.latest), state)

    def plan(self, target: str | None = "latest") -> Plan:
        """What apply (or rollback) would run; no writes; one round trip when the ledger exists."""
        resolved = self.mset.resolve_target(target)
        with self.connect() as conn:
            state = self.read_state(conn)
            steps = plan_steps(self.mset, state, resolved)
            findings = self.lint(conn, steps)
        return Plan(state.current, resolved, steps, state, findings)

    def lint(self, conn: psycopg.Connection[Any], steps: tuple[Step, ...]) -> tuple[Finding, ...]:
        """Lint findings of the pending up steps, kept only for tables that hold (or held) rows."""
        found = [f for s in steps if s.direction == "up" for f in lint(s.migration)]
        tables = sorted({f.table for f in found if f.table})
        if not tables:
            return tuple(found)
        rows = conn.execute(
            "SELECT c.relname FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = %s AND c.relname = ANY(%s) AND pg_catalog.pg_relation_size(c.oid) > 0",
            (self.mset.schema, tables),
        ).fetchall()
        with_rows = {r[0] for r in rows}
        return tuple(f for f in found if f.table is None or f.table in with_rows)

    def _refuse_lint(self, findings: tuple[Finding, ...]) -> None:
        blocking = [f for f in findings if not f.acknowledged]
        if self.strict_lint and blocking:
            raise LintRefused(
                "pending migrations hold statements that lock or rewrite tables with rows: "
                + "; ".join(f.describe() for f in blocking)
                + ".",
                "rewrite them (e.g. CREATE INDEX CONCURRENTLY in a `-- migrate:no-transaction` file, ADD COLUMN with a DEFAULT), "
                "or, after review, add `-- migrate:allow <rule>` at the top of the file.",
            )

    def verify(self) -> VerifyReport:
        """The live catalog against the snapshot of the latest applied version."""
        with self.connect() as conn:
            state = self.read_state(conn)
            live = cat.introspect(conn, self.mset.schema)
        return self._report(state.current, live)

    def observe(self, target: str | None = "latest") -> tuple[Plan, VerifyReport]:
        """Plan and drift together on one connection (what `pulumi preview` and `refresh` need): two round trips."""
        resolved = self.mset.resolve_target(target)
        with self.connect() as conn:
            state = self.read_state(conn)
            steps = plan_steps(self.mset, state, resolved)
            findings = self.lint(conn, steps)
            live = cat.introspect(conn, self.mset.schema)
        return Plan(state.current, resolved, steps, state, findings), self._report(state.current, live)

    def _report(self, version: str | None, live: cat.Catalog) -> VerifyReport:
        expected = self.mset.expected_catalog(version)
        return VerifyReport(version, cat.fingerprint(live), cat.fingerprint(expected), tuple(cat.compare(expected, live)))

    # -- writes

    def apply(self, target: str | None = "latest") -> RunResult:
        """Pending migrations in order, each in its own transaction and verified, under the advisory lock."""
        resolved = self.mset.resolve_target(target)
        with self.connect() as conn:
            state = self.read_state(conn)
            steps = plan_steps(self.mset, state, resolved)
            if any(s.direction == "down" for s in steps):
                raise MigrationError(
                    f"target {resolved} is below the applied version {state.current}: apply only moves forward.",
                    f"use `rollback --to {resolved}` to go back.",
                )
            if not steps and not state.started:
                # Nothing to do: still prove the schema is what the ledger says.
                live = cat.introspect(conn, self.mset.schema)
                self._raise_on_drift(state.current, live)
                return RunResult(state.current, [], cat.fingerprint(live), state)
            self.preflight(conn)
            with self.locked(conn):
                if not state.exists:
                    self.ledger.ensure(conn)
                state = self.read_state(conn)  # another applier may have finished while we waited
                live = cat.introspect(conn, self.mset.schema)
                check_incomplete(self.mset, state, live)
                if state.current is not None:
                    self._raise_on_drift(state.current, live)
                if self.stack is not None and state.owner is None:
                    self.ledger.claim(conn, self.stack, state.system_identifier, state.database)
                result = RunResult(state.current)
                steps = plan_steps(self.mset, state, resolved)
                findings = self.lint(conn, steps)
                self._refuse_lint(findings)
                if self.gate is not None:
                    self.gate.enforce(steps)
                for f in findings:
                    self.progress(f"lint: {f.describe()}")
                for step in steps:
                    result.ran.append(self._run_step(conn, step, state))
                    result.current = step.migration.version
                # The last step verified the catalog inside its transaction: that is the final fingerprint.
                result.fingerprint = result.ran[-1]["fingerprint"] if result.ran else cat.fingerprint(live)
                result.ledger = self.ledger.read(conn)
                return result

    def rollback(self, target: str | None) -> RunResult:
        """Down migrations in reverse order to `target` (None = before the first), each verified."""
        resolved = self.mset.resolve_target(target if target is not None else "0")
        with self.connect() as conn:
            state = self.read_state(conn)
            if state.current is None or (resolved is not None and int(resolved) >= int(state.current)):
                live = cat.introspect(conn, self.mset.schema)
                return RunResult(state.current, [], cat.fingerprint(live), state)
            self.preflight(conn)
            with self.locked(conn):
                state = self.read_state(conn)
                result = RunResult(state.current)
                for step in plan_steps(self.mset, state, resolved):
                    result.ran.append(self._run_step(conn, step, state))
                    remaining = [v for v in state.applied if int(v) < int(step.migration.version)]
                    result.current = max(remaining, key=int) if remaining else None
                if resolved is None and self.stack is not None:
                    self.ledger.release(conn)
                result.fingerprint = (
                    result.ran[-1]["fingerprint"] if result.ran else cat.fingerprint(cat.introspect(conn, self.mset.schema))
                )
                result.ledger = self.ledger.read(conn)
                return result

    def adopt(self, version: str, drizzle_dir: Path | None = None) -> RunResult:
        """Record versions up to `version` as applied without running them, if the live schema is exactly their snapshot."""
        from .adopt import check_drizzle

        resolved = self.mset.resolve_target(version)
        if resolved is None:
            raise MigrationError("adopt needs a version to adopt (e.g. 0007).", "name the version whose snapshot the database matches.")
        with self.connect() as conn:
            state = self.read_state(conn)
            if state.rows:
                raise MigrationError(
                    f"{state.database} already has applied versions ({', '.join(r.version for r in state.rows)}): nothing to adopt.",
                    "use `apply`; adopt is for a database that has the schema but no ledger.",
                )
            problems: list[str] = []
            if drizzle_dir is not None:
                problems += check_drizzle(conn, drizzle_dir).problems
            live = cat.introspect(conn, self.mset.schema)
            problems += [d.describe() for d in cat.compare(self.mset.expected_catalog(resolved), live)]
            if problems:
                raise VerifyFailed(
                    f"{state.database} cannot be adopted at {resolved}; nothing was recorded: " + "; ".join(problems) + ".",
                    "make the database match (or pick the version it matches), then adopt again.",
                )
            self.preflight(conn)
            with self.locked(conn):
                self.ledger.ensure(conn)
                state = self.read_state(conn)
                result = RunResult(None)
                with conn.transaction():
                    if self.stack is not None and state.owner is None:
                        self.ledger.claim(conn, self.stack, state.system_identifier, state.database)
                    for m in self.mset.up_to(resolved):
                        self.ledger.record(
                            conn,
                            version=m.version,
                            name=m.name,
                            checksum=m.checksum,
                            applied_by=f"{self.settings.user} ({whoami()}, adopted)",
                            duration_ms=0,
                            stack=self.stack,
                            database_identity=state.identity,
                            fingerprint=cat.fingerprint(live),
                        )
                        result.ran.append({"version": m.version, "name": m.name, "direction": "adopt", "duration_ms": 0})
                result.current, result.fingerprint, result.ledger = resolved, cat.fingerprint(live), self.ledger.read(conn)
                return result

    def resolve(self, version: str) -> None:
        """Clear the 'started' mark of an interrupted non-transactional migration after a manual repair."""
        with self.connect() as conn:
            state = self.read_state(conn)
            if not any(r.version == version for r in state.started):
                raise MigrationError(f"version {version} is not marked as interrupted on {state.database}.", "nothing to resolve.")
            self.preflight(conn)
            with self.locked(conn):
                self.ledger.forget(conn, version)

    def _raise_on_drift(self, version: str | None, live: cat.Catalog) -> None:
        if version is None:
            return
        report = self._report(version, live)
        if not report.ok:
            raise DriftDetected(
                f"the live schema of {self.settings.describe()} differs from the snapshot of version {version}: "
                + "; ".join(d.describe() for d in report.differences)
                + ".",
                "undo the manual change (or capture it in a new migration), check with "
                "`python -m components.migrate drift`, then run again.",
            )

    def _expected_after(self, step: Step, state: LedgerState) -> tuple[str | None, cat.Catalog]:
        if step.direction == "up":
            return step.migration.version, self.mset.expected_catalog(step.migration.version)
        earlier = [v for v in sorted(state.applied, key=int) if int(v) < int(step.migration.version)]
        version = earlier[-1] if earlier else None
        return version, self.mset.expected_catalog(version)

    def _run_step(self, conn: psycopg.Connection[Any], step: Step, state: LedgerState) -> dict[str, Any]:
        m = step.migration
        statements = m.statements() if step.direction == "up" else m.down_statements()
        expected_version, expected = self._expected_after(step, state)
        started = time.monotonic()
        label = f"{m.label} ({step.direction})"
        self.progress(f"{label}: {len(statements)} statement(s){'' if m.transactional else ', outside a transaction'}")
        if m.transactional or step.direction == "down":
            try:
                with conn.transaction():
                    self._set_timeouts(conn, local=True)
                    self._execute(conn, statements, label)
                    live = cat.introspect(conn, self.mset.schema)
                    self._verify_or_raise(label, expected_version, expected, live)
                    fingerprint = cat.fingerprint(live)
                    self._record(conn, step, state, started, fingerprint)
            except MigrationError:
                raise
            except Exception as exc:
                raise self._wrap_failure(exc, label) from None
        else:
            self._record(conn, step, state, started, None, status=STARTED)
            self._set_timeouts(conn, local=False)
            self._execute(conn, statements, label)
            live = cat.introspect(conn, self.mset.schema)
            self._verify_or_raise(label, expected_version, expected, live)
            fingerprint = cat.fingerprint(live)
            self._record(conn, step, state, started, fingerprint)
        duration = int((time.monotonic() - started) * 1000)
        self.progress(f"{label}: done in {duration} ms, verified")
        return {"version": m.version, "name": m.name, "direction": step.direction, "duration_ms": duration, "fingerprint": fingerprint}

    def _record(
        self, conn: psycopg.Connection[Any], step: Step, state: LedgerState, started: float, fingerprint: str | None, status: str = APPLIED
    ) -> None:
        m = step.migration
        if step.direction == "down":
            self.ledger.forget(conn, m.version)
            return
        self.ledger.record(
            conn,
            version=m.version,
            name=m.name,
            checksum=m.checksum,
            applied_by=f"{self.settings.user} ({whoami()})",
            duration_ms=int((time.monotonic() - started) * 1000),
            stack=self.stack,
            database_identity=state.identity,
            fingerprint=fingerprint,
            status=status,
        )

    def _set_timeouts(self, conn: psycopg.Connection[Any], *, local: bool) -> None:
        """lock_timeout and statement_timeout for this transaction (local) or this session."""
        conn.execute(
            "SELECT set_config('lock_timeout', %s, %s), set_config('statement_timeout', %s, %s)",
            (f"{self.lock_timeout_ms}ms", local, f"{self.statement_timeout_ms}ms", local),
        )

    def _execute(self, conn: psycopg.Connection[Any], statements: list[Any], label: str) -> None:
        import psycopg

        for index, stmt in enumerate(statements, 1):
            t0 = time.monotonic()
            try:
                conn.execute(stmt.text.encode(), prepare=False)
            except psycopg.Error as exc:
                raise self._statement_error(exc, label, index, len(statements), stmt) from None
            self.progress(f"{label}: statement {index}/{len(statements)} (line {stmt.line}) {1000 * (time.monotonic() - t0):.1f} ms")

    def _statement_error(self, exc: Exception, label: str, index: int, total: int, stmt: Any) -> MigrationError:
        import psycopg

        diag = exc.diag if isinstance(exc, psycopg.Error) else None
        state = getattr(exc, "sqlstate", None) or ""
        primary = (
            diag.message_primary
            if diag and diag.message_primary
            else str(exc).strip().splitlines()[0]
            if str(exc).strip()
            else type(exc).__name__
        )
        snippet = " ".join(stmt.text.split())[:160]
        if isinstance(exc, psycopg.OperationalError) and not state:
            return StatementFailed(
                f"{label}: the connection was lost at statement {index}/{total} (line {stmt.line}): {primary}.",
                "the transaction was rolled back by the server; check the server, then run again.",
            )
        if state == "25006":
            return NotWritable(f"{label}: statement {index}/{total} (line {stmt.line}) was refused: {primary}.", _STATE_FIXES[state])
        if state == "42501":
            return PermissionMissing(f"{label}: statement {index}/{total} (line {stmt.line}) `{snippet}`: {primary}.", _STATE_FIXES[state])
        return StatementFailed(
            f"{label} failed at statement {index}/{total} (line {stmt.line}) `{snippet}`: {primary} [SQLSTATE {state or '?'}]; "
            "the migration was rolled back, the ledger is unchanged.",
            _STATE_FIXES.get(state, "fix the statement in a new migration (or this one, if it was never applied anywhere)."),
        )

    def _wrap_failure(self, exc: Exception, label: str) -> MigrationError:
        import psycopg

        if isinstance(exc, psycopg.OperationalError):
            return StatementFailed(
                f"{label}: the connection failed while committing: {str(exc).strip().splitlines()[0] if str(exc).strip() else exc!r}.",
                "nothing of this migration was committed unless the ledger shows it; check `status` and run again.",
            )
        return MigrationError(
            f"{label}: unexpected failure: {type(exc).__name__}: {exc}.", "report this as a bug; the migration was rolled back."
        )

    def _verify_or_raise(self, label: str, version: str | None, expected: cat.Catalog, live: cat.Catalog) -> None:
        differences = cat.compare(expected, live)
        if differences:
            raise VerifyFailed(
                f"{label}: the catalog after the migration does not match the snapshot of "
                f"{version or 'the empty schema'}: "
                + "; ".join(d.describe() for d in differences[:10])
                + (f" (+{len(differences) - 10} more)" if len(differences) > 10 else "")
                + ". The migration was rolled back.",
                "regenerate the snapshot if the migration changed on purpose and was never applied "
                "(`python -m components.migrate snapshot`), or fix the schema drift first.",
            )
