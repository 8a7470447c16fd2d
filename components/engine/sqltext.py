"""Split a SQL file into statements with PostgreSQL's own parser (pglast) and read its header markers."""

from __future__ import annotations

import json
import re
from bisect import bisect_left
from dataclasses import dataclass
from typing import Any

from .errors import SetError

_MARKER = re.compile(r"^--\s*migrate:([a-z-]+)(?:\s+(.*?))?\s*$")
_BOM = "\ufeff"
_COMMENTS = frozenset({"SQL_COMMENT", "C_COMMENT"})
TRANSACTION_STMT = "TransactionStmt"


@dataclass(frozen=True)
class Statement:
    text: str
    line: int  # 1-based line of the statement's first character in the file
    kind: str  # parse-tree node name, e.g. "CreateStmt", "TransactionStmt"


def is_transaction_control(stmt: Statement) -> bool:
    """BEGIN, START TRANSACTION, COMMIT/END, ROLLBACK/ABORT, SAVEPOINT, RELEASE, PREPARE TRANSACTION, COMMIT/ROLLBACK PREPARED."""
    return stmt.kind == TRANSACTION_STMT


def split_statements(sql: str, source: str = "SQL text") -> list[Statement]:
    """Statements of `sql` as PostgreSQL parses them, without semicolons or surrounding comments; SetError on a syntax error."""
    from pglast import parser  # lazily: importing it costs tens of milliseconds the CLI's other paths do not need

    body = sql.removeprefix(_BOM)  # a byte-order mark is no part of the SQL, and holds no newline
    try:
        raw = json.loads(parser.parse_sql_json(body)).get("stmts", [])
    except parser.ParseError as exc:
        message, index = exc.args[0], exc.args[1] if len(exc.args) > 1 else None
        line = body.count("\n", 0, len(body.rstrip()) if index is None else index) + 1  # None: at the end of the text
        raise SetError(
            f"{source} line {line}: {message} (PostgreSQL's parser).",
            "fix the SQL; `python -m components.migrate check` parses every file.",
        ) from None
    tokens = [t for t in parser.scan(body) if t.name not in _COMMENTS] if raw else []
    starts = [t.start for t in tokens]
    out: list[Statement] = []
    for (start, end), node in zip(_char_spans(body, raw), raw, strict=True):
        inside = tokens[bisect_left(starts, start) : bisect_left(starts, end)]
        first, last = inside[0].start, inside[-1].end + 1  # scanner offsets are str indices, end inclusive
        out.append(Statement(body[first:last], body.count("\n", 0, first) + 1, next(iter(node["stmt"]))))
    return out


def _char_spans(body: str, raw: list[dict[str, Any]]) -> list[tuple[int, int]]:
    """str index spans of the parsed statements, whose locations libpg_query gives as UTF-8 byte offsets."""
    data = body.encode()
    spans: list[tuple[int, int]] = []
    byte_at, char_at = 0, 0

    def to_char(offset: int) -> int:
        nonlocal byte_at, char_at
        char_at += len(data[byte_at:offset].decode())  # offsets ascend and always fall between characters
        byte_at = offset
        return char_at

    for stmt in raw:
        start = stmt.get("stmt_location", 0)
        length = stmt.get("stmt_len", 0)  # 0: the statement runs to the end of the text
        spans.append((to_char(start), to_char(start + length) if length else len(body)))
    return spans


def header_markers(sql: str) -> dict[str, list[str]]:
    """`-- migrate:<name> [value]` lines at the top of a file (before the first statement)."""
    markers: dict[str, list[str]] = {}
    for raw in sql.removeprefix(_BOM).splitlines():
        line = raw.strip()
        if not line:
            continue
        if not line.startswith("--"):
            break
        m = _MARKER.match(line)
        if m:
            markers.setdefault(m.group(1), []).append((m.group(2) or "").strip())
    return markers
