"""What a statement does, read from PostgreSQL's own parse tree (pglast, imported only when a run needs it)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache


@dataclass(frozen=True)
class ConcurrentIndex:
    """A CREATE/DROP INDEX CONCURRENTLY (or REINDEX ... CONCURRENTLY): runs outside a transaction, can leave an invalid index."""

    action: str  # "create" | "drop" | "reindex"
    names: tuple[tuple[str | None, str], ...]  # (schema or None, index name); empty for an unnamed CREATE INDEX
    table: tuple[str | None, str] | None  # the indexed table, for "create"


@lru_cache(maxsize=1024)
def concurrent_index(text: str) -> ConcurrentIndex | None:
    """The concurrent index operation `text` is, if it is one."""
    from pglast import ast, enums, parse_sql

    try:
        (raw,) = parse_sql(text)
    except Exception:
        return None
    stmt = raw.stmt
    if isinstance(stmt, ast.IndexStmt) and stmt.concurrent and stmt.relation is not None:
        rel = stmt.relation
        schema, table = _opt(rel.schemaname), str(rel.relname)
        return ConcurrentIndex("create", ((schema, str(stmt.idxname)),) if stmt.idxname else (), (schema, table))
    if isinstance(stmt, ast.DropStmt) and stmt.concurrent and stmt.removeType == enums.ObjectType.OBJECT_INDEX:
        names = tuple((_opt(parts[0].sval) if len(parts) > 1 else None, str(parts[-1].sval)) for parts in stmt.objects or ())
        return ConcurrentIndex("drop", names, None)
    if isinstance(stmt, ast.ReindexStmt) and any(p.defname == "concurrently" for p in stmt.params or ()):
        target = stmt.relation
        return ConcurrentIndex("reindex", ((_opt(target.schemaname), str(target.relname)),) if target is not None else (), None)
    return None


@lru_cache(maxsize=1024)
def needs_autocommit(text: str) -> bool:
    """Whether a statement of a no-transaction file must run on its own, outside any transaction block: PostgreSQL
    refuses it in one (DETACH PARTITION ... CONCURRENTLY, REINDEX SCHEMA/SYSTEM/DATABASE). A DO block or procedure that
    COMMITs is found when it fails inside one (see StepRunner._outside_transaction)."""
    from pglast import ast, enums, parse_sql

    try:
        (raw,) = parse_sql(text)
    except Exception:
        return False
    stmt = raw.stmt
    if isinstance(stmt, ast.ReindexStmt):
        return stmt.kind in (
            enums.ReindexObjectType.REINDEX_OBJECT_SCHEMA,
            enums.ReindexObjectType.REINDEX_OBJECT_SYSTEM,
            enums.ReindexObjectType.REINDEX_OBJECT_DATABASE,
        )
    if isinstance(stmt, ast.AlterTableStmt):
        return any(
            isinstance(cmd, ast.AlterTableCmd)
            and cmd.subtype == enums.AlterTableType.AT_DetachPartition
            and bool(getattr(cmd.def_, "concurrent", False))
            for cmd in stmt.cmds or ()
        )
    return False


def _set_config_only(stmt: object) -> bool:
    from pglast import ast

    if not isinstance(stmt, ast.SelectStmt) or stmt.fromClause or not stmt.targetList:
        return False
    return all(
        isinstance(t, ast.ResTarget) and isinstance(t.val, ast.FuncCall) and [n.sval for n in t.val.funcname or ()][-1:] == ["set_config"]
        for t in stmt.targetList
    )


@lru_cache(maxsize=1024)
def session_setting(text: str) -> bool:
    """A statement that only changes session settings (SET, RESET, SET ROLE, or SELECT set_config(...) alone): run again,
    it does nothing else, so a resume makes it again."""
    from pglast import ast, parse_sql

    try:
        (raw,) = parse_sql(text)
    except Exception:
        return False
    return isinstance(raw.stmt, ast.VariableSetStmt) or _set_config_only(raw.stmt)


_SET_CONFIG = re.compile(r"\bset_config\s*\(", re.IGNORECASE)
# a PL/pgSQL SET statement (not UPDATE ... SET col =, not SET LOCAL): at the start of a statement of the block
_PLPGSQL_SET = re.compile(
    r"(^|;|\bBEGIN\b|\bTHEN\b|\bELSE\b|\bLOOP\b)\s*SET\s+(SESSION\s+)?(ROLE\b|[A-Za-z_.]+\s*(=|\bTO\b))", re.IGNORECASE | re.MULTILINE
)


@lru_cache(maxsize=1024)
def may_set_session(text: str) -> bool:
    """Whether a statement other than a plain setting may change session settings: SET or set_config inside a DO block,
    set_config called among other things. (A procedure's body is not seen: CALL is trusted not to.)"""
    from pglast import ast, parse_sql

    try:
        (raw,) = parse_sql(text)
    except Exception:
        return False
    if session_setting(text):
        return False
    if isinstance(raw.stmt, ast.DoStmt):
        return bool(_SET_CONFIG.search(text) or _PLPGSQL_SET.search(text))
    return bool(_SET_CONFIG.search(text))


def _opt(value: object) -> str | None:
    return None if value is None else str(value)


@lru_cache(maxsize=1024)
def relations(text: str) -> tuple[str, ...]:
    """Relations a statement names (as written, possibly schema-qualified)."""
    from pglast.visitors import referenced_relations

    try:
        return tuple(sorted(referenced_relations(text)))
    except Exception:
        return ()
