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
    " FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace"
    " LEFT JOIN pg_catalog.pg_stat_xact_all_tables s ON s.relid OPERATOR(pg_catalog.=) c.oid"
    " WHERE n.nspname OPERATOR(pg_catalog.=) %s AND c.relkind OPERATOR(pg_catalog.=) ANY ('{r,p,m,i,I,S,v,f}'::pg_catalog.\"char\"[])"
)
# After a statement, in one round trip: the relation locks this transaction holds (user relations: OIDs from 16384),
# and the relations they name together with those that change with them under their lock without one of their own (an
# index or an owned sequence moves with its table's ALTER ... SET SCHEMA): each by OID, and whether it is in the schema.
_TOUCHED_SQL = (
    "WITH lk AS (SELECT relation::pg_catalog.oid AS oid, mode FROM pg_catalog.pg_locks WHERE locktype OPERATOR(pg_catalog.=) 'relation'"
    "  AND pid OPERATOR(pg_catalog.=) pg_catalog.pg_backend_pid() AND granted AND relation OPERATOR(pg_catalog.>=) 16384),"
    " k AS (SELECT DISTINCT oid FROM lk),"
    " cand AS (SELECT oid FROM k"
    "  UNION SELECT i.indexrelid FROM k JOIN pg_catalog.pg_index i ON i.indrelid OPERATOR(pg_catalog.=) k.oid"
    "  UNION SELECT d.objid FROM k JOIN pg_catalog.pg_depend d ON d.refclassid OPERATOR(pg_catalog.=) 'pg_catalog.pg_class'::pg_catalog.regclass"
    "   AND d.refobjid OPERATOR(pg_catalog.=) k.oid AND d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_class'::pg_catalog.regclass),"
    " rels AS (SELECT cand.oid, c.relname, c.relkind, c.relfilenode, COALESCE(pg_catalog.pg_stat_get_xact_numscans(c.oid), 0) AS scans,"
    "  c.oid IS NOT NULL AND n.nspname OPERATOR(pg_catalog.=) %s AND c.relkind OPERATOR(pg_catalog.=) ANY ('{r,p,m,i,I,S,v,f}'::pg_catalog.\"char\"[]) AS here"
    "  FROM cand LEFT JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) cand.oid LEFT JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace)"
    " SELECT (SELECT coalesce(pg_catalog.json_agg(pg_catalog.json_build_array(oid, mode)), '[]') FROM lk),"
    "  (SELECT coalesce(pg_catalog.json_agg(pg_catalog.json_build_array(oid, relname, relkind, relfilenode, scans, here)), '[]') FROM rels)"
)
_SCANS_SQL = "SELECT oid, pg_catalog.pg_stat_get_xact_numscans(oid) FROM pg_catalog.unnest(%s::pg_catalog.oid[]) AS oid"
_LOCK_SQL = "SELECT relation, mode FROM pg_catalog.pg_locks WHERE locktype OPERATOR(pg_catalog.=) 'relation' AND pid OPERATOR(pg_catalog.=) %s AND granted"
_WAIT_SQL = "SELECT relation, mode, granted FROM pg_catalog.pg_locks WHERE pid OPERATOR(pg_catalog.=) %s"


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


def _touched(conn: psycopg.Connection[Any], schema: str) -> tuple[set[tuple[int, str]], set[int], dict[int, _Rel]]:
    """The user relation locks held, and the relations they name with those that change with them (_TOUCHED_SQL):
    every OID looked at, and those of them in the schema now."""
    row = conn.execute(_TOUCHED_SQL, (schema,)).fetchone()
    assert row is not None
    locks, rels = row
    here = {int(r[0]): (str(r[1]), _RELKINDS.get(str(r[2]), "other"), int(r[3]), int(r[4])) for r in rels if r[5]}
    return {(int(oid), str(mode)) for oid, mode in locks}, {int(r[0]) for r in rels}, here


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


# Statements whose effects on relations may leave no lock behind (see RelationTracker.trace).
_UNLOCKED = frozenset({"DoStmt", "CallStmt", "SelectStmt", "RenameStmt"})


class RelationTracker:
    """The schema's relations as the last traced statement left them, kept up to date from the relations each
    transaction locks: the cost of a statement's trace follows what its transaction touched, not the schema's size.

    It holds because a relation's file (a rewrite), name, schema and existence change only under a lock that its
    transaction keeps to the end, and a scan takes one too: a relation no lock of the transaction names is as it was.
    Scan counts (`pg_stat_xact_all_tables`) are this backend's not yet reported to the statistics: they grow with its
    own scans only, and drop to zero when it reports them, between transactions (PostgreSQL 15: at most once a
    second), so `begin` reads them again for the relations it has seen scanned."""

    def __init__(self, conn: psycopg.Connection[Any], schema: str) -> None:
        self.schema = schema
        self.relations: dict[int, _Rel] = {}
        self.counted: set[int] = set()  # seen with a scan count
        self.held: set[tuple[int, str]] = set()  # the user relation locks of the open transaction
        self._whole(_relations(conn, schema))

    def _whole(self, relations: dict[int, _Rel]) -> None:
        """The schema as a whole read found it."""
        self.relations = relations
        self.counted = {oid for oid, rel in relations.items() if rel[3]}

    def begin(self, conn: psycopg.Connection[Any]) -> None:
        """In a new transaction, before its first statement: no lock held yet, and the scan counts the backend may have
        reported since."""
        self.held = set()
        if self.counted:
            rows = conn.execute(_SCANS_SQL, (sorted(self.counted),)).fetchall()
            now = {int(r[0]): int(r[1]) for r in rows}
            for oid in self.counted & self.relations.keys():
                self.relations[oid] = (*self.relations[oid][:3], now.get(oid, 0))
            self.counted = {oid for oid in self.counted if oid in self.relations and self.relations[oid][3]}

    def reload(self, conn: psycopg.Connection[Any]) -> None:
        """After work outside a transaction (its locks are gone when it ends): read the whole schema again."""
        self._whole(_relations(conn, self.schema))
        self.held = set()

    def trace(self, conn: psycopg.Connection[Any], stmt: Statement) -> StatementTrace:
        """Run `stmt` inside the open transaction of `conn` and read, before it ends, what it locked, rewrote and scanned."""
        conn.execute(stmt.text.encode(), prepare=False)
        if stmt.kind in _UNLOCKED:
            # Procedural code can scan in a subtransaction it rolls back (its locks go, its scan counts stay), and
            # ALTER SCHEMA ... RENAME moves relations without locking them: read the whole schema after these.
            now = {(oid, mode) for oid, mode in _held(conn) if oid >= 16384}
            whole = _relations(conn, self.schema)
            traced = _compare(stmt, self.relations, whole, now - self.held, measured=True, scans=True)
            self.held = now
            self._whole(whole)
            return traced
        # every relation the transaction touched so far (locks last to its end), and what changes with them
        now, looked, after = _touched(conn, self.schema)
        before = {oid: self.relations[oid] for oid in looked if oid in self.relations}
        traced = _compare(stmt, before, after, now - self.held, measured=True, scans=True)
        self.held = now
        for oid in looked:  # dropped or moved out of the schema: looked at, and no longer there
            if oid in after:
                self.relations[oid] = after[oid]
                if after[oid][3]:
                    self.counted.add(oid)
            else:
                self.relations.pop(oid, None)
        return traced


def trace_outside_transaction(
    conn: psycopg.Connection[Any], settings: ConnectionSettings, schema: str, stmt: Statement, *, wait_s: float = 5.0
) -> StatementTrace:
    """Best effort for a statement that refuses a transaction block (CREATE INDEX CONCURRENTLY, VACUUM, ...).

    A second session holds an open snapshot, which a concurrent index build waits for; while it waits, its granted
    locks are read from pg_locks. A statement that never waits is recorded without locks, `measured` False: what a
    sample would catch of it depends on timing, and `check` compares traces exactly.
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
            if any(not r[2] for r in rows):
                # What it holds while it waits for the snapshot: the same at every run. Samples taken before (phases
                # the statement passes through in microseconds) are caught or missed by timing, and are not kept.
                seen = {(int(r[0]), str(r[1])) for r in rows if r[0] is not None and r[2]}
                waited = True
                break
            time.sleep(0.002)
        watcher.execute("COMMIT")
        worker.join()
    if failure:
        raise failure[0]
    # Locks on relations the statement itself creates block nobody, and which of them a sample catches depends on
    # timing (a concurrent build holds AccessExclusiveLock on its new index, then RowExclusiveLock): left out, so that
    # the trace of a file is the same at every snapshot and check.
    seen = {(oid, mode) for oid, mode in seen if oid in before}
    return _compare(stmt, before, _relations(conn, schema), seen, measured=waited, scans=False)
