"""Every query the engine sends resolves its functions and operators in pg_catalog, whatever the migrated schema holds.

The engine's sessions run with the migrated schema on the search_path (definitions print relative to it), and a
function or operator there that matches the argument types better than pg_catalog's wins: a schema's json_agg(json)
beats pg_catalog.json_agg(anyelement). Types and relations are looked up in the session's temporary schema first
(a migration can create `pg_temp.regclass`, a domain whose CHECK runs its code inside the engine's read). pg_dump
qualifies its queries the same way (`OPERATOR(pg_catalog.=)`, `pg_catalog.text`)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from pglast import ast, parse_sql
from pglast.enums import A_Expr_Kind, SubLinkType

from components.engine import migset, runner
from components.engine.connection import ConnectionSettings
from components.engine.engine import Engine
from components.engine.prepared import positional
from tests.integration.test_scoped_verify import _set

_OPERATOR_KINDS_WITHOUT_A_QUALIFIED_FORM = {
    A_Expr_Kind.AEXPR_NULLIF: "NULLIF",
    A_Expr_Kind.AEXPR_IN: "IN (list)",
    A_Expr_Kind.AEXPR_BETWEEN: "BETWEEN",
    A_Expr_Kind.AEXPR_NOT_BETWEEN: "NOT BETWEEN",
    A_Expr_Kind.AEXPR_DISTINCT: "IS DISTINCT FROM",
    A_Expr_Kind.AEXPR_NOT_DISTINCT: "IS NOT DISTINCT FROM",
    A_Expr_Kind.AEXPR_LIKE: "LIKE",
    A_Expr_Kind.AEXPR_ILIKE: "ILIKE",
    A_Expr_Kind.AEXPR_SIMILAR: "SIMILAR TO",
}


def _name(parts: Any) -> tuple[str, ...]:
    return tuple(p.sval for p in parts or ())


def _nodes(node: Any) -> Iterator[ast.Node]:
    """`node` and every node under it."""
    if isinstance(node, (list, tuple)):
        for item in node:
            yield from _nodes(item)
    elif isinstance(node, ast.Node):
        yield node
        for attribute in node:
            yield from _nodes(getattr(node, attribute))


def _found(node: ast.Node) -> str | None:
    """What of `node` resolves through the search_path, if anything."""
    if isinstance(node, ast.FuncCall) and _name(node.funcname)[:1] != ("pg_catalog",):
        return "function " + ".".join(_name(node.funcname))
    if isinstance(node, ast.A_Expr):
        if node.kind in _OPERATOR_KINDS_WITHOUT_A_QUALIFIED_FORM:
            return _OPERATOR_KINDS_WITHOUT_A_QUALIFIED_FORM[node.kind]
        if _name(node.name)[:1] != ("pg_catalog",):
            return "operator " + ".".join(_name(node.name))
    if isinstance(node, ast.SubLink) and node.subLinkType in (SubLinkType.ANY_SUBLINK, SubLinkType.ALL_SUBLINK):
        if _name(node.operName)[:1] != ("pg_catalog",):  # IN (subquery) has none: it means =
            return "IN / ANY (subquery)"
    if isinstance(node, ast.JoinExpr) and node.usingClause:
        return "JOIN ... USING"
    if isinstance(node, ast.CaseExpr) and node.arg is not None:
        return "CASE x WHEN (compares with =)"
    if isinstance(node, ast.SortBy) and node.useOp:
        return "ORDER BY ... USING"
    if isinstance(node, ast.TypeName) and _name(node.names)[:1] != ("pg_catalog",):
        # the session's temporary schema is searched for types before pg_catalog (never for functions or operators)
        return "type " + ".".join(_name(node.names))
    if isinstance(node, ast.RangeVar) and not node.schemaname:
        return "relation " + node.relname
    return None


def unqualified(query: str) -> list[str]:
    """What in `query` resolves through the search_path (CTE names excepted)."""
    nodes = list(_nodes(parse_sql(positional(query)[0])))
    ctes = {f"relation {n.ctename}" for n in nodes if isinstance(n, ast.CommonTableExpr)}
    return sorted({f for n in nodes if (f := _found(n)) is not None and f not in ctes})


def test_the_checker_finds_what_resolves_through_the_search_path() -> None:
    query = (
        "WITH c AS (SELECT 1 AS x) SELECT json_agg(x), a = b, nullif(a, ''), x IN (1, 2), x IS DISTINCT FROM 1,"
        " CASE x WHEN 1 THEN 2 END, 'a'::regclass FROM c JOIN t USING (x) WHERE x NOT IN (SELECT 1) AND y LIKE 'z'"
    )
    assert unqualified(query) == sorted(
        [
            "function json_agg",
            "operator =",
            "NULLIF",
            "IN (list)",
            "IS DISTINCT FROM",
            "CASE x WHEN (compares with =)",
            "JOIN ... USING",
            "IN / ANY (subquery)",
            "LIKE",
            "relation t",
            "type regclass",
        ]
    )
    clean = (
        "WITH c AS (SELECT 1 AS x) SELECT pg_catalog.json_agg(x), a OPERATOR(pg_catalog.=) b FROM c"
        " JOIN pg_catalog.pg_class k ON k.oid OPERATOR(pg_catalog.=) c.x WHERE x OPERATOR(pg_catalog.=) ANY (SELECT 1)"
        " AND k.oid OPERATOR(pg_catalog.<>) 'a'::pg_catalog.regclass AND x::bigint OPERATOR(pg_catalog.>) 0"
    )
    assert unqualified(clean) == []


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Every query text sent through psycopg while the test runs (bytes are the migrations' statements: left out)."""
    queries: list[str] = []
    original = psycopg.Cursor.execute

    def execute(self: psycopg.Cursor[Any], query: Any, *args: Any, **kwargs: Any) -> Any:
        if not isinstance(query, bytes):
            queries.append(query if isinstance(query, str) else query.as_string(self.connection))
        return original(self, query, *args, **kwargs)

    monkeypatch.setattr(psycopg.Cursor, "execute", execute)
    yield queries


def test_every_query_the_engine_sends_is_qualified(
    sent: list[str], fresh_db: ConnectionSettings, set_copy: Path, admin: ConnectionSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    (set_copy / "0010_step.down.sql").write_text("DROP TABLE d;\n")
    mset = _set(set_copy, admin)
    user = {s.text for m in mset.migrations for s in (*m.statements(), *m.down_statements())}
    sent.clear()  # snapshot generation above runs the files on a scratch database
    monkeypatch.setattr(runner, "SCOPED_FROM", 0)  # the scoped read too
    engine = Engine(fresh_db, mset)
    engine.apply()
    engine.verify()
    engine.status()
    engine.rollback("0009")
    engine.apply()
    assert sent
    problems = {q[:120]: p for q in dict.fromkeys(sent) if q not in user and (p := unqualified(q))}
    assert not problems, "\n".join(f"{query!r}: {', '.join(found)}" for query, found in problems.items())


def test_snapshot_and_check_queries_are_qualified(sent: list[str], set_copy: Path, admin: ConnectionSettings) -> None:
    mset = _set(set_copy, admin)
    user = {s.text for m in mset.migrations for s in (*m.statements(), *m.down_statements())}
    sent.clear()
    from components.engine.snapshot import generate, replay

    replay(admin, migset.load(set_copy))
    generate(admin, set_copy)
    problems = {q[:120]: p for q in dict.fromkeys(sent) if q not in user and (p := unqualified(q))}
    assert not problems, "\n".join(f"{query!r}: {', '.join(found)}" for query, found in problems.items())
