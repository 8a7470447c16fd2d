"""What a statement does, read from PostgreSQL's own parse tree (pglast, imported only when a run needs it)."""

from __future__ import annotations

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
