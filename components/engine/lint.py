"""Lint of pending migrations: statements that lock or rewrite a table that already holds rows."""

from __future__ import annotations

import re
from dataclasses import dataclass

from .migset import Migration

_WORD = r'(?:"[^"]+"|[A-Za-z_][A-Za-z0-9_$]*)'
_NAME = rf"(?:{_WORD}\.)?({_WORD})"
_CREATE_TABLE = re.compile(rf"^CREATE\s+(?:UNLOGGED\s+|TEMP\s+|TEMPORARY\s+)?TABLE\s+(?:IF\s+NOT\s+EXISTS\s+)?{_NAME}", re.I)
_CREATE_INDEX = re.compile(
    rf"^CREATE\s+(?:UNIQUE\s+)?INDEX\s+(CONCURRENTLY\s+)?(?:IF\s+NOT\s+EXISTS\s+)?(?:{_WORD}\s+)?ON\s+(?:ONLY\s+)?{_NAME}", re.I
)
_ALTER_TABLE = re.compile(rf"^ALTER\s+TABLE\s+(?:IF\s+EXISTS\s+)?(?:ONLY\s+)?{_NAME}\s+(.*)$", re.I | re.S)
_DROP_TABLE = re.compile(r"^DROP\s+TABLE\s+(?:IF\s+EXISTS\s+)?(.+?)(?:\s+(?:CASCADE|RESTRICT))?$", re.I | re.S)
_ADD_VALUE = re.compile(r"^ALTER\s+TYPE\s+\S+\s+ADD\s+VALUE\s+(?:IF\s+NOT\s+EXISTS\s+)?'((?:[^']|'')*)'", re.I)

RULES = {
    "index-without-concurrently": "CREATE INDEX without CONCURRENTLY blocks writes to the table for the whole build",
    "add-column-not-null-without-default": "ADD COLUMN ... NOT NULL without DEFAULT fails on a table with rows",
    "column-type-change": "ALTER COLUMN ... TYPE rewrites the table under an ACCESS EXCLUSIVE lock",
    "drop-table": "DROP TABLE destroys data",
    "drop-column": "DROP COLUMN destroys data (and breaks code still reading it)",
    "enum-add-value-in-transaction": "a value added by ALTER TYPE ... ADD VALUE cannot be used in the same transaction",
}


@dataclass(frozen=True)
class Finding:
    version: str
    rule: str
    table: str | None
    line: int
    statement: str
    acknowledged: bool

    def describe(self) -> str:
        ack = " (acknowledged)" if self.acknowledged else ""
        where = f" on {self.table}" if self.table else ""
        return f"{self.version} line {self.line}{where}: {self.rule}: {RULES[self.rule]}{ack}"


def _bare(name: str) -> str:
    return name.strip('"').lower()


def lint(migration: Migration) -> list[Finding]:
    """Findings for one up migration; tables created in the same migration are exempt."""
    created: set[str] = set()
    findings: list[Finding] = []
    statements = migration.statements()
    added_values: list[tuple[str, int]] = []

    def add(rule: str, table: str | None, stmt_line: int, text: str) -> None:
        findings.append(Finding(migration.version, rule, table, stmt_line, " ".join(text.split())[:120], rule in migration.acknowledged))

    for stmt in statements:
        text = stmt.text
        if m := _CREATE_TABLE.match(text):
            created.add(_bare(m.group(1)))
        elif (m := _CREATE_INDEX.match(text)) and not m.group(1):
            table = _bare(m.group(2))
            if table not in created:
                add("index-without-concurrently", table, stmt.line, text)
        elif m := _ALTER_TABLE.match(text):
            table, action = _bare(m.group(1)), m.group(2)
            if table in created:
                continue
            for clause in re.split(r",(?![^()]*\))", action):
                c = clause.strip()
                if (
                    re.match(r"^ADD\s+(?:COLUMN\s+)?", c, re.I)
                    and re.search(r"\bNOT\s+NULL\b", c, re.I)
                    and not re.search(r"\bDEFAULT\b", c, re.I)
                ):
                    add("add-column-not-null-without-default", table, stmt.line, text)
                elif re.match(r"^ALTER\s+(?:COLUMN\s+)?\S+\s+(?:SET\s+DATA\s+)?TYPE\b", c, re.I):
                    add("column-type-change", table, stmt.line, text)
                elif re.match(r"^DROP\s+(?:COLUMN\s+)?(?!CONSTRAINT\b)", c, re.I):
                    add("drop-column", table, stmt.line, text)
        elif m := _DROP_TABLE.match(text):
            for name in m.group(1).split(","):
                table = _bare(name.strip().split(".")[-1])
                if table not in created:
                    add("drop-table", table, stmt.line, text)
        elif m := _ADD_VALUE.match(text):
            added_values.append((m.group(1), stmt.line))
    if migration.transactional:
        for value, line in added_values:
            literal = "'" + value.replace("'", "''") + "'"
            if any(literal in s.text and not _ADD_VALUE.match(s.text) for s in statements):
                add("enum-add-value-in-transaction", None, line, f"ADD VALUE {literal} then used in the same file")
    return findings
