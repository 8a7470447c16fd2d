"""What a statement does, read from PostgreSQL's own parse tree (pglast, imported only when a run needs it)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any


@dataclass(frozen=True)
class ConcurrentIndex:
    """A CREATE/DROP INDEX CONCURRENTLY (or REINDEX ... CONCURRENTLY): runs outside a transaction, can leave an invalid index."""

    action: str  # "create" | "drop" | "reindex"
    names: tuple[tuple[str | None, str], ...]  # (schema or None, index name); empty for an unnamed CREATE INDEX
    table: tuple[str | None, str] | None  # the indexed table, for "create"


@lru_cache(maxsize=1024)
def _statement(text: str) -> Any:
    """The parse tree of one statement (pglast), None when it does not parse as one: every question below reads it."""
    from pglast import parse_sql

    try:
        (raw,) = parse_sql(text)
    except Exception:
        return None
    return raw.stmt


@lru_cache(maxsize=1024)
def concurrent_index(text: str) -> ConcurrentIndex | None:
    """The concurrent index operation `text` is, if it is one."""
    from pglast import ast, enums

    stmt = _statement(text)
    if stmt is None:
        return None
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
    refuses it in one (DETACH PARTITION ... CONCURRENTLY, REINDEX SCHEMA/SYSTEM/DATABASE), or a DO block whose body
    COMMITs (run in a block first, it would do its work up to the COMMIT twice). A procedure that COMMITs is found when
    it fails inside one (see StepRunner._outside_transaction)."""
    from pglast import ast, enums

    stmt = _statement(text)
    if stmt is None:
        return False
    if isinstance(stmt, ast.DoStmt):
        return commits_itself(text)
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


@lru_cache(maxsize=1024)
def session_setting(text: str) -> bool:
    """A plain SET, RESET or SET ROLE: it does nothing else, so a resume makes it again."""
    from pglast import ast

    return isinstance(_statement(text), ast.VariableSetStmt)


@lru_cache(maxsize=1024)
def _plpgsql(text: str) -> str | None:
    """The PL/pgSQL parse tree of a DO block (as JSON text), None when it is not one; "" when it cannot be parsed."""
    import json

    from pglast import ast, parse_plpgsql

    stmt = _statement(text)
    if not isinstance(stmt, ast.DoStmt):
        return None
    options = {d.defname: d.arg for d in stmt.args or () if isinstance(d, ast.DefElem)}
    language = options.get("language")
    if language is not None and getattr(language, "sval", "plpgsql").lower() != "plpgsql":
        return ""
    body = getattr(options.get("as"), "sval", None)
    if body is None:
        return ""
    tag = "$wishlist_do$"
    while tag in body:
        tag = tag[:-1] + "_$"
    try:
        return json.dumps(parse_plpgsql(f"CREATE FUNCTION pg_temp.do_block() RETURNS void LANGUAGE plpgsql AS {tag}{body}{tag}"))
    except Exception:
        return ""


@lru_cache(maxsize=1024)
def commits_itself(text: str) -> bool:
    """A DO block whose PL/pgSQL body COMMITs or ROLLBACKs (a backfill in batches): it runs only outside a block."""
    tree = _plpgsql(text)
    return tree is not None and ("PLpgSQL_stmt_commit" in tree or "PLpgSQL_stmt_rollback" in tree)


_SETS = re.compile(r'"query": "\s*(SET|RESET)\b', re.IGNORECASE)


@lru_cache(maxsize=1024)
def may_set_session(text: str) -> bool:
    """Whether a statement other than a plain setting may change session settings in a way a resume cannot make again:
    set_config called anywhere in it (not inside a function body it creates: that is a string); in a DO block, a SET or
    RESET statement, set_config, or dynamic SQL (EXECUTE: what it runs is not known); a DO block that cannot be parsed.
    (A procedure's body is not seen: CALL is trusted not to.)"""
    from pglast import ast

    tree = _plpgsql(text)
    if tree is not None:
        return tree == "" or "PLpgSQL_stmt_dynexecute" in tree or bool(_SETS.search(tree)) or "set_config" in tree.lower()
    stmt = _statement(text)
    if stmt is None:
        return False

    def calls_set_config(node: object) -> bool:
        if isinstance(node, (list, tuple)):
            return any(calls_set_config(n) for n in node)
        if isinstance(node, ast.Node):
            if isinstance(node, ast.FuncCall) and [n.sval for n in node.funcname or ()][-1:] == ["set_config"]:
                return True
            return any(calls_set_config(getattr(node, a)) for a in node)
        return False

    return calls_set_config(stmt)


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
