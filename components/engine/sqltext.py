"""Split a SQL file into statements (quotes, dollar quotes and comments respected) and read its header markers."""

from __future__ import annotations

import re
from dataclasses import dataclass

_DOLLAR_TAG = re.compile(r"\$([A-Za-z_][A-Za-z_0-9]*)?\$")
_MARKER = re.compile(r"^--\s*migrate:([a-z-]+)(?:\s+(.*?))?\s*$")


@dataclass(frozen=True)
class Statement:
    text: str
    line: int  # 1-based line of the statement's first character in the file


def split_statements(sql: str) -> list[Statement]:
    """Statements of `sql` without their trailing semicolons; comment-only parts are dropped."""
    out: list[Statement] = []
    i, n = 0, len(sql)
    has_code = False
    code_start = 0

    def flush(end: int) -> None:
        nonlocal has_code
        text = sql[code_start:end].strip()
        if has_code and text:
            out.append(Statement(text, sql.count("\n", 0, code_start) + 1))
        has_code = False

    while i < n:
        ch = sql[i]
        if ch == "-" and sql.startswith("--", i):
            j = sql.find("\n", i)
            i = n if j < 0 else j + 1
            continue
        if ch == "/" and sql.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if sql.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif sql.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    i += 1
            continue
        if ch == ";":
            flush(i)
            i += 1
            continue
        if ch.isspace():
            i += 1
            continue
        if not has_code:
            has_code, code_start = True, i
        if ch in ("'", '"'):
            j = i + 1
            while j < n:
                if sql[j] == ch:
                    if j + 1 < n and sql[j + 1] == ch:  # doubled quote
                        j += 2
                        continue
                    break
                if ch == "'" and sql[j] == "\\" and i > 0 and sql[i - 1] in "eE":
                    j += 2
                    continue
                j += 1
            i = j + 1
            continue
        if ch == "$":
            m = _DOLLAR_TAG.match(sql, i)
            if m and not (i > 0 and (sql[i - 1].isalnum() or sql[i - 1] == "_")):
                close = sql.find(m.group(0), m.end())
                i = n if close < 0 else close + len(m.group(0))
                continue
        i += 1
    flush(n)
    return out


def header_markers(sql: str) -> dict[str, list[str]]:
    """`-- migrate:<name> [value]` lines at the top of a file (before the first statement)."""
    markers: dict[str, list[str]] = {}
    for raw in sql.splitlines():
        line = raw.strip()
        if not line:
            continue
        if not line.startswith("--"):
            break
        m = _MARKER.match(line)
        if m:
            markers.setdefault(m.group(1), []).append((m.group(2) or "").strip())
    return markers
