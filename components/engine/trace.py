"""The measured lock trace: what each statement locked, rewrote and scanned when `snapshot` applied it to a throwaway database."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .sqltext import Statement

if TYPE_CHECKING:
    import psycopg

    from .connection import ConnectionSettings

TRACE_FORMAT = 1
_RELKINDS = {"r": "table", "p": "table", "m": "materialized view", "i": "index", "I": "index", "S": "sequence", "v": "view", "f": "table"}
_REL_SQL = (
    "SELECT c.oid, c.relname, c.relkind, c.relfilenode, COALESCE(s.seq_scan, 0)"
    " FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
    " LEFT JOIN pg_catalog.pg_stat_xact_all_tables s ON s.relid = c.oid"
    " WHERE n.nspname = %s AND c.relkind IN ('r', 'p', 'm', 'i', 'I', 'S', 'v', 'f')"
)
_LOCK_SQL = "SELECT relation, mode FROM pg_catalog.pg_locks WHERE locktype = 'relation' AND pid = %s AND granted"
_WAIT_SQL = "SELECT relation, mode, granted FROM pg_catalog.pg_locks WHERE pid = %s"


@dataclass(frozen=True)
class Lock:
    relation: str
    kind: str  # "table", "index", "sequence", ...
    mode: str  # pg_locks mode, e.g. "AccessExclusiveLock"

    def as_dict(self) -> dict[str, str]:
        return {"relation": self.relation, "kind": self.kind, "mode": self.mode}


@dataclass(frozen=True)
class StatementTrace:
    """What one statement did on the throwaway database; `measured` is False when its locks could only be partly seen."""

    line: int
    kind: str
    locks: tuple[Lock, ...] = ()  # relation locks it took (not those an earlier statement of the transaction held)
    rewrites: tuple[str, ...] = ()  # tables whose relfilenode changed: every row was copied
    scans: tuple[str, ...] = ()  # existing tables it read in full without rewriting them (validation, index build, UPDATE)
    created: tuple[str, ...] = ()  # relations that did not exist before it
    measured: bool = True

    def as_dict(self) -> dict[str, Any]:
        return {
            "line": self.line,
            "kind": self.kind,
            "locks": [lock.as_dict() for lock in self.locks],
            "rewrites": list(self.rewrites),
            "scans": list(self.scans),
            "created": list(self.created),
            "measured": self.measured,
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> StatementTrace:
        return cls(
            line=int(raw["line"]),
            kind=str(raw["kind"]),
            locks=tuple(Lock(str(lk["relation"]), str(lk["kind"]), str(lk["mode"])) for lk in raw.get("locks") or []),
            rewrites=tuple(str(t) for t in raw.get("rewrites") or []),
            scans=tuple(str(t) for t in raw.get("scans") or []),
            created=tuple(str(t) for t in raw.get("created") or []),
            measured=bool(raw.get("measured", True)),
        )


@dataclass(frozen=True)
class Trace:
    """The trace of one migration file, for the exact bytes it was measured on (`up_sha256`)."""

    version: str
    up_sha256: str
    statements: tuple[StatementTrace, ...]
    measured: bool = True  # False: written without a database (tests), so `check` replays it as stale

    def as_dict(self) -> dict[str, Any]:
        return {
            "format": TRACE_FORMAT,
            "version": self.version,
            "up_sha256": self.up_sha256,
            "measured": self.measured,
            "statements": [s.as_dict() for s in self.statements],
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Trace:
        return cls(
            version=str(raw["version"]),
            up_sha256=str(raw["up_sha256"]),
            statements=tuple(StatementTrace.from_dict(s) for s in raw["statements"]),
            measured=bool(raw.get("measured", True)),
        )

    def created(self) -> set[str]:
        """Relations the migration itself created (lint is silent about them)."""
        return {name for s in self.statements for name in s.created}


# ---- measuring ------------------------------------------------------------------------------------

_Rel = tuple[str, str, int, int]  # name, kind, relfilenode, seq_scan


def _relations(conn: psycopg.Connection[Any], schema: str) -> dict[int, _Rel]:
    rows = conn.execute(_REL_SQL, (schema,)).fetchall()
    return {int(r[0]): (str(r[1]), _RELKINDS.get(str(r[2]), "other"), int(r[3]), int(r[4])) for r in rows}


def _held(conn: psycopg.Connection[Any]) -> set[tuple[int, str]]:
    return {(int(r[0]), str(r[1])) for r in conn.execute(_LOCK_SQL, (conn.info.backend_pid,)).fetchall() if r[0] is not None}


def _compare(
    stmt: Statement, before: dict[int, _Rel], after: dict[int, _Rel], locks: set[tuple[int, str]], *, measured: bool, scans: bool
) -> StatementTrace:
    names = {**before, **after}  # a dropped relation is named from before, a new one from after
    taken = sorted({Lock(names[oid][0], names[oid][1], mode) for oid, mode in locks if oid in names}, key=lambda lk: (lk.relation, lk.mode))
    tables = [oid for oid, rel in before.items() if rel[1] in ("table", "materialized view") and oid in after]
    rewrites = tuple(sorted(before[oid][0] for oid in tables if after[oid][2] != before[oid][2]))
    scanned = tuple(sorted(before[oid][0] for oid in tables if scans and after[oid][3] > before[oid][3] and before[oid][0] not in rewrites))
    created = tuple(sorted(rel[0] for oid, rel in after.items() if oid not in before))
    return StatementTrace(stmt.line, stmt.kind, tuple(taken), rewrites, scanned, created, measured)


def trace_in_transaction(conn: psycopg.Connection[Any], schema: str, stmt: Statement) -> StatementTrace:
    """Run `stmt` inside the open transaction of `conn` and read, before it ends, what it locked, rewrote and scanned."""
    held, before = _held(conn), _relations(conn, schema)
    conn.execute(stmt.text.encode(), prepare=False)
    return _compare(stmt, before, _relations(conn, schema), _held(conn) - held, measured=True, scans=True)


def trace_outside_transaction(
    conn: psycopg.Connection[Any], settings: ConnectionSettings, schema: str, stmt: Statement, *, wait_s: float = 5.0
) -> StatementTrace:
    """Best effort for a statement that refuses a transaction block (CREATE INDEX CONCURRENTLY, VACUUM, ...).

    A second session holds an open snapshot, which a concurrent index build waits for; while it waits, its granted
    locks are read from pg_locks. A statement that never waits is recorded with the locks seen, `measured` False.
    """
    before = _relations(conn, schema)
    pid = conn.info.backend_pid
    failure: list[BaseException] = []

    def run() -> None:
        try:
            conn.execute(stmt.text.encode(), prepare=False)
        except BaseException as exc:  # re-raised in the caller's thread
            failure.append(exc)

    seen: set[tuple[int, str]] = set()
    waited = False
    with settings.connect(autocommit=True) as watcher:
        watcher.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        watcher.execute("SELECT 1")  # takes the snapshot the statement will wait for
        worker = threading.Thread(target=run, daemon=True)
        worker.start()
        deadline = time.monotonic() + wait_s
        while worker.is_alive() and time.monotonic() < deadline:
            rows = watcher.execute(_WAIT_SQL, (pid,)).fetchall()
            seen |= {(int(r[0]), str(r[1])) for r in rows if r[0] is not None and r[2]}
            if any(not r[2] for r in rows):
                waited = True
                break
            time.sleep(0.002)
        watcher.execute("COMMIT")
        worker.join()
    if failure:
        raise failure[0]
    return _compare(stmt, before, _relations(conn, schema), seen, measured=waited, scans=False)
