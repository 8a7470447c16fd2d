"""What a pending statement will feel like in production: its measured locks and rewrites against the live table sizes. Pure."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

from .migset import Migration

# Weakest to strongest; each mode conflicts with every mode at least as strong as its own mirror (PostgreSQL docs, 13.3.1).
MODES = (
    "AccessShareLock",
    "RowShareLock",
    "RowExclusiveLock",
    "ShareUpdateExclusiveLock",
    "ShareLock",
    "ShareRowExclusiveLock",
    "ExclusiveLock",
    "AccessExclusiveLock",
)
_BLOCKS = {
    "AccessExclusiveLock": "reads, writes",
    "ExclusiveLock": "writes",
    "ShareRowExclusiveLock": "writes",
    "ShareLock": "writes",
    "ShareUpdateExclusiveLock": "other DDL and VACUUM only",
    "RowExclusiveLock": "nothing (row locks)",
    "RowShareLock": "nothing",
    "AccessShareLock": "nothing",
}
_TABLE_KINDS = ("table", "materialized view")


@dataclass(frozen=True)
class TableSize:
    """A table's live size on the target, read at plan time."""

    rows: int | None  # the planner's estimate (reltuples); None when never analysed
    total_bytes: int  # pg_total_relation_size: heap, indexes and TOAST
    heap_bytes: int

    @property
    def empty(self) -> bool:
        return self.heap_bytes == 0


def human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("bytes", "kB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{int(size)} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TB"  # pragma: no cover


def mode_name(mode: str) -> str:
    """'AccessExclusiveLock' -> 'ACCESS EXCLUSIVE', as the SQL LOCK command spells it."""
    words, word = [], ""
    for ch in mode.removesuffix("Lock"):
        if ch.isupper() and word:
            words.append(word)
            word = ""
        word += ch
    return " ".join([*words, word]).upper()


def strongest(modes: Iterable[str]) -> str | None:
    ranked = [m for m in modes if m in MODES]
    return max(ranked, key=MODES.index) if ranked else None


@dataclass(frozen=True)
class StatementImpact:
    version: str
    line: int
    sql: str  # the statement on one line, shortened
    table: str | None  # the existing table it locks hardest (None: it locks no existing table)
    mode: str | None  # the strongest lock held on that table while it runs (earlier statements of its transaction count)
    blocks: str
    rewrite: bool
    scan: bool
    new_table: bool  # the table is created by a pending migration: nothing to block yet
    size: TableSize | None
    duration: str  # "instant", "grows with 2.1 GB", "unknown (no trace)"
    measured: bool
    own_mode: str | None = None  # the strongest lock this statement itself took on the table
    held_since: int | None = None  # line of the earlier statement of the transaction that took `mode`

    def describe(self) -> str:
        """One line, for `pulumi preview` and the text plan."""
        if self.table is None:
            return f"{self.version} line {self.line}: no lock on an existing table; {self.duration}: {self.sql}"
        what = ", ".join(w for w, on in (("rewrites", self.rewrite), ("scans", self.scan)) if on) or "no rewrite or scan"
        return (
            f"{self.version} line {self.line}: {self.lock_text()} (blocks {self.blocks}); {what}; "
            f"{size_text(self.size, self.new_table)}; {self.duration}{'' if self.measured else ' (trace partly seen)'}: {self.sql}"
        )

    def lock_text(self, quote: str = "") -> str:
        """'ACCESS EXCLUSIVE on t', and the line that took it when an earlier statement of the transaction did.

        pg_locks shows only locks a statement adds, so what it would take alone is not known once a stronger one is held."""
        text = f"{mode_name(self.mode or '')} on {quote}{self.table}{quote}"
        if self.held_since is not None and self.held_since != self.line:
            text += f" (held since line {self.held_since})"
        return text

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["mode"] = mode_name(self.mode) if self.mode else None
        out["own_mode"] = mode_name(self.own_mode) if self.own_mode else None
        out["message"] = self.describe()
        return out


def size_text(size: TableSize | None, new_table: bool) -> str:
    if new_table:
        return "new table"
    if size is None:
        return "size unknown"
    rows = "rows unknown (never analysed)" if size.rows is None else f"~{size.rows:,} rows"
    return f"{rows}, {human_bytes(size.total_bytes)}"


def touched_tables(migrations: Iterable[Migration]) -> set[str]:
    """Existing tables the traces of `migrations` lock, rewrite or scan: those whose live size the plan reads."""
    out: set[str] = set()
    for m in migrations:
        for s in m.trace.statements if m.trace is not None else ():
            out |= {lk.relation for lk in s.locks if lk.kind in _TABLE_KINDS} | set(s.rewrites) | set(s.scans)
    return out


def assess(migrations: Iterable[Migration], sizes: Mapping[str, TableSize]) -> tuple[StatementImpact, ...]:
    """One impact per statement of each pending up migration; tables absent from `sizes` are new on the target."""
    out: list[StatementImpact] = []
    for m in migrations:
        statements = m.statements()
        trace = m.trace
        if trace is None or len(trace.statements) != len(statements):
            out += [
                StatementImpact(
                    m.version, s.line, _short(s.text), None, None, "unknown", False, False, False, None, "unknown (no trace)", False
                )
                for s in statements
            ]
            continue
        held: dict[str, dict[str, int]] = {}  # table -> mode -> line that took it; in a transaction locks last to the end
        for stmt, t in zip(statements, trace.statements, strict=True):
            if not m.transactional:
                held = {}
            own: dict[str, set[str]] = {}
            for lk in t.locks:
                if lk.kind in _TABLE_KINDS:
                    own.setdefault(lk.relation, set()).add(lk.mode)
            for name, modes in own.items():
                for mode in modes:
                    held.setdefault(name, {}).setdefault(mode, stmt.line)
            touched = set(own) | set(t.rewrites) | set(t.scans)
            if not touched:
                touched = set(_mentioned(stmt.text)) & set(held)
            imp = _impact(m, stmt.line, stmt.text, t.measured, touched, held, t.rewrites, t.scans, trace.created(), sizes, stmt.kind)
            if imp.table is not None and imp.mode is not None:
                imp = replace(imp, own_mode=strongest(own.get(imp.table, ())), held_since=held[imp.table][imp.mode])
            out.append(imp)
    return tuple(out)


def _impact(
    m: Migration,
    line: int,
    text: str,
    measured: bool,
    touched: set[str],
    held: dict[str, dict[str, int]],
    rewrites: tuple[str, ...],
    scans: tuple[str, ...],
    created: set[str],
    sizes: Mapping[str, TableSize],
    kind: str,
) -> StatementImpact:
    existing = [t for t in touched if t not in created]
    candidates = existing or list(touched)
    if not candidates:
        return StatementImpact(m.version, line, _short(text), None, None, "nothing", False, False, False, None, "instant", measured)
    table = max(candidates, key=lambda t: (MODES.index(strongest(held.get(t, ())) or MODES[0]), sizes[t].total_bytes if t in sizes else -1))
    mode = strongest(held.get(table, ()))
    new_table = table in created or table not in sizes
    size = None if new_table else sizes[table]
    rewrite, scan = table in rewrites, table in scans
    heavy = rewrite or scan or (kind == "IndexStmt" and not new_table)
    if not heavy or new_table:
        duration = "instant"
    elif size is not None and size.empty:
        duration = "instant (empty table)"
    else:
        duration = f"grows with {human_bytes(size.total_bytes)}" if size is not None else "grows with the table"
    blocks = _BLOCKS.get(mode or "", "nothing")
    return StatementImpact(m.version, line, _short(text), table, mode, blocks, rewrite, scan, new_table, size, duration, measured)


def _mentioned(text: str) -> tuple[str, ...]:
    from .statement_kinds import relations

    return tuple(r.rpartition(".")[2].strip('"') for r in relations(text))


def _short(text: str, width: int = 100) -> str:
    one = " ".join(text.split())
    return one if len(one) <= width else one[: width - 3] + "..."
