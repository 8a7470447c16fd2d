"""The plan as a reviewer reads it: pending SQL, measured locks against live sizes, lint, drift and the promotion gate. Pure."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .connection import mask_dsn
from .impact import size_text

if TYPE_CHECKING:
    from .engine import VerifyReport
    from .planner import Gate, Plan


@dataclass(frozen=True)
class PlanReport:
    set_name: str
    plan: Plan
    drift: VerifyReport | None  # None: not read
    gate: Gate | None
    gate_note: str | None = None  # why the gate was not checked, when it was not

    def gate_line(self) -> str:
        if self.gate is not None:
            return self.gate.describe(*self.gate.split(self.plan.steps))
        return self.gate_note or "no promotion gate for this stack"

    def drift_lines(self) -> list[str]:
        if self.drift is None:
            return ["not read"]
        if self.plan.current is None:
            return ["nothing applied yet"]
        if self.drift.ok:
            return [f"none: the live schema matches version {self.drift.version} ({self.drift.fingerprint[:19]})"]
        return [d.describe() for d in self.drift.differences]

    def as_dict(self) -> dict[str, Any]:
        return {
            "set": self.set_name,
            **self.plan.as_dict(),
            "pending": self.plan.pending,
            "drift": self.drift_lines(),
            "drift_ok": None if self.drift is None else self.drift.ok or self.plan.current is None,
            "gate": self.gate_line(),
        }

    def markdown(self) -> str:
        plan = self.plan
        out = [f"## Schema migration plan: `{self.set_name}`", ""]
        if not plan.steps:
            out.append(f"Nothing to do: at version {plan.current or 'none'}.")
        else:
            out.append(f"Current **{plan.current or 'none'}** → target **{plan.target or 'none'}**: {len(plan.steps)} step(s).")
        for step in plan.steps:
            m = step.migration
            txn = "in one transaction" if step.transactional else "outside a transaction, statement by statement"
            resume = f", resumes at statement {step.resume_from + 1}" if step.resuming else ""
            # A fence longer than any backtick run in the SQL: a migration cannot close it and forge the sections below.
            fence = "`" * max(3, 1 + max((len(run) for run in re.findall(r"`+", step.sql)), default=0))
            out += ["", f"### {step.direction} `{m.label}` ({txn}{resume})", "", f"{fence}sql", step.sql.rstrip(), fence]
            impacts = [i for i in plan.impacts if i.version == m.version] if step.direction == "up" else []
            if impacts:
                out += [
                    "",
                    "| line | statement | lock (measured) | blocks | rewrite / scan | table size (live) | duration |",
                    "|---:|---|---|---|---|---|---|",
                ]
                for i in impacts:
                    lock = i.lock_text("`") if i.table and i.mode else "none on an existing table"
                    work = ", ".join(w for w, on in (("rewrite", i.rewrite), ("scan", i.scan)) if on) or "no"
                    size = size_text(i.size, i.new_table) if i.table else ""
                    sql = i.sql.replace("|", "\\|").replace("`", "'")  # a cell cannot end its own code span
                    partly = "" if i.measured else " (partly seen)"
                    out.append(f"| {i.line} | `{sql}` | {lock}{partly} | {i.blocks} | {work} | {size} | {i.duration} |")
        out += ["", "### Lint", ""]
        out += [f"- {'acknowledged' if f.acknowledged else '**open**'}: {f.describe()}" for f in plan.findings] or ["none"]
        out += ["", "### Drift", "", *(f"- {line}" for line in self.drift_lines())]
        out += ["", "### Promotion gate", "", self.gate_line(), ""]
        return mask_dsn("\n".join(out))  # a PR comment: no password from a statement or a literal
