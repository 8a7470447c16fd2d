"""What to run: the plan from the set on disk and the ledger, with the checks that refuse a bad plan. Pure, no I/O."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import ChecksumMismatch, IncompleteMigration, OutOfOrder, PromotionBlocked, SetError, UnknownVersion, WrongDatabase
from .impact import StatementImpact
from .lint import Finding
from .migset import Migration, MigrationSet
from .sqltext import Statement

if TYPE_CHECKING:
    from .ledger import LedgerState  # psycopg: not imported by the Pulumi program, which plans nothing

LATEST = "latest"
ZERO_WORDS = ("0", "none", "zero")


def parse_target(mset: MigrationSet, text: str | int | None) -> str | None:
    """The one place a target is read: None/'latest' is the latest version, 0/'none' is before the first, else a version."""
    raw = LATEST if text is None else str(text).strip().lower()
    if raw in ("", LATEST):
        return mset.latest
    if raw in ZERO_WORDS or (raw.isdigit() and int(raw) == 0):
        return None
    if not raw.isdigit():
        raise UnknownVersion(
            f"target {text!r} is not a version.", f"name a version ({', '.join(mset.versions) or 'none'}), 'latest', or 0 for none."
        )
    return mset.get(raw.zfill(4)).version


def target_prop(version: str | None) -> str:
    """A resolved target as text (stack state, JSON): the version, or '0' for none."""
    return version if version is not None else "0"


@dataclass(frozen=True)
class Step:
    """One migration to run, up or down."""

    migration: Migration
    direction: str  # "up" | "down"
    resume_from: int = 0  # outside a transaction: statements an interrupted run already completed
    resuming: bool = False  # this step finishes an interrupted run (its ledger row says 'started')

    @property
    def transactional(self) -> bool:
        return self.migration.runs_in_transaction(self.direction)

    @property
    def sql(self) -> str:
        return self.migration.up_sql if self.direction == "up" else self.migration.down_sql or ""

    def statements(self) -> list[Statement]:
        m = self.migration
        return m.statements() if self.direction == "up" else m.down_statements()

    def as_dict(self) -> dict[str, Any]:
        m = self.migration
        return {
            "version": m.version,
            "name": m.name,
            "direction": self.direction,
            "transactional": self.transactional,
            "resume_from": self.resume_from,
            "sql": self.sql,
        }


@dataclass(frozen=True)
class Plan:
    current: str | None
    target: str | None
    steps: tuple[Step, ...]
    ledger: LedgerState
    findings: tuple[Finding, ...] = ()
    impacts: tuple[StatementImpact, ...] = ()  # per pending up statement: measured locks against live sizes

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
            "trace": [i.as_dict() for i in self.impacts],
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
        if row.status != "applied" and row.version in known:
            continue  # an interrupted run: judged by check_resumable, statement by statement
        m = known.get(row.version)
        if m is None and row.status != "applied":
            raise SetError(
                f"version {row.version} ({row.name}) was interrupted on {state.database} ({row.direction}, outside a transaction: "
                + (
                    f"statements 1-{row.statements_done} of its run stay committed"
                    if row.statements_done
                    else "no statement of its run completed"
                )
                + f"), and its file is missing from {mset.directory}.",
                "restore the file from git and run apply to finish it; or repair by hand and run "
                f"`python -m components.migrate resolve {row.version}`.",
            )
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


def statements_digest(statements: Sequence[Statement]) -> str:
    """The identity of the statements an interrupted run completed (their text, in order)."""
    h = hashlib.sha256()
    for stmt in statements:
        h.update(stmt.text.encode())
        h.update(b"\x00")
    return h.hexdigest()


def check_resumable(step: Step, done_digest: str | None) -> None:
    """An interrupted run resumes only if the statements it completed are still the file's first statements."""
    if not step.resuming or step.resume_from == 0:
        return
    m = step.migration
    if step.transactional:
        # A run in a transaction runs every statement: the first ones, committed by the interrupted run, would run twice.
        raise IncompleteMigration(
            f"{m.label} ({step.direction}) was interrupted outside a transaction after statement {step.resume_from}, and "
            f"its file no longer says `-- migrate:no-transaction`: run in a transaction now, its first {step.resume_from} "
            "statement(s) would run a second time.",
            "put `-- migrate:no-transaction` back (apply then resumes after the completed statements) and put other changes "
            f"in a new migration; or repair by hand and run `python -m components.migrate resolve {m.version}`.",
        )
    done = step.statements()[: step.resume_from]
    if len(done) < step.resume_from or statements_digest(done) != done_digest:
        raise IncompleteMigration(
            f"{m.label} ({step.direction}, outside a transaction) was interrupted after statement {step.resume_from}, "
            f"and the file's first {step.resume_from} statement(s) changed since then: resuming could skip or repeat work.",
            f"restore the file as it was when the run started (git), run `apply` to finish, and put changes in a new migration; "
            f"or repair by hand and run `python -m components.migrate resolve {m.version}`.",
        )


def check_identity(mset: MigrationSet, state: LedgerState) -> None:
    """A set found under another name in the ledger (a renamed directory or journal) is explained, not re-applied."""
    if state.rows or not state.other_sets:
        return
    ours = {m.version: m.checksum for m in mset.migrations}
    for name, versions in state.other_sets:
        if versions and all(ours.get(v) == c for v, c in versions):
            raise SetError(
                f"the ledger of {state.database} has no versions of set {mset.name!r}, but set {name!r} there has applied "
                f"{', '.join(v for v, _ in versions)} with exactly this set's checksums: the set was renamed "
                f"(its identity is the 'set' name in {mset.directory}/meta/_journal.json, not the directory).",
                f'set "set": "{name}" in the journal (and keep it), then run again; nothing was written.',
            )


def plan_steps(mset: MigrationSet, state: LedgerState, target: str | None) -> tuple[Step, ...]:
    """An interrupted run first (resumed), then up steps to `target` (ascending) or down steps (descending)."""
    applied = set(state.applied)
    first: list[Step] = []
    if state.started:
        row = state.started[0]
        m = mset.get(row.version)
        goes_up = row.direction == "up"
        below = target is None or int(target) < int(m.version)
        if goes_up == below:
            raise IncompleteMigration(
                f"{m.label} ({row.direction}, outside a transaction) was interrupted after statement {row.statements_done} "
                f"on {state.database}; target {target_prop(target)} would go the other way.",
                f"finish it first (`apply`/`rollback` to a target on its side resumes it at statement {row.statements_done + 1}), "
                f"or repair by hand and `python -m components.migrate resolve {m.version}`.",
            )
        step = Step(m, row.direction, resume_from=row.statements_done, resuming=True)
        check_resumable(step, row.done_digest)
        first.append(step)
        applied = applied | {m.version} if goes_up else applied - {m.version}
    steps = tuple(first) + _plan_from(mset, applied, target)
    for s in steps:  # every file the plan will run is parsed before any runs: a bad one is refused with nothing applied
        s.statements()
    return steps


def _plan_from(mset: MigrationSet, applied: set[str], target: str | None) -> tuple[Step, ...]:
    """Up steps to reach `target` (ascending) or down steps (descending); out-of-order files are refused."""
    current = max(applied, key=int) if applied else None
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
