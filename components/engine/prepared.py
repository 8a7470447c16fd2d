"""The statements a run sends at every step, prepared once per connection with SQL `PREPARE`.

psycopg's own prepared statements are deallocated (DEALLOCATE ALL) after any ALTER, DROP or ROLLBACK, which migrations run
at every step, and a statement prepared again is planned again: 3 ms per step for the scoped catalog read (bench section
4). A statement prepared with SQL PREPARE lives until the connection ends (a ROLLBACK does not undo it), and its generic
plan is kept. Values are bound as literals quoted by psycopg (EXECUTE cannot infer the type of a protocol parameter).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from psycopg import sql

if TYPE_CHECKING:
    import psycopg

_PLACEHOLDER = re.compile(r"%\((\w+)\)s|%s")


def positional(query: str) -> tuple[str, list[str | int]]:
    """`query` with psycopg placeholders turned into $n, and which value each $n takes (a name, or a position)."""
    order: list[str | int] = []
    counter = iter(range(10_000))

    def number(match: re.Match[str]) -> str:
        key: str | int = match.group(1) if match.group(1) else next(counter)
        if key not in order:
            order.append(key)
        return f"${order.index(key) + 1}"

    return _PLACEHOLDER.sub(number, query), order


class PreparedStatements:
    """SQL-level prepared statements of one connection, by name; the connection's own auto-preparing is turned off.

    The first EXECUTE of a name is preceded by its PREPARE in the same round trip; `settle()` after the server answered
    records which PREPAREs ran (one skipped after an earlier error is sent again next time)."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn
        conn.prepare_threshold = None  # psycopg would otherwise prepare, then DEALLOCATE ALL after the next ALTER
        self._order: dict[str, list[str | int]] = {}
        self._pending: dict[str, tuple[list[str | int], psycopg.Cursor[Any]]] = {}

    def execute(self, name: str, query: str | sql.Composable, params: Mapping[str, Any] | Sequence[Any]) -> psycopg.Cursor[Any]:
        """EXECUTE `query` prepared as `name` (pipelined when the connection is in a pipeline)."""
        order = self._order.get(name) or (self._pending[name][0] if name in self._pending else None)
        if order is None:
            numbered, order = positional(query if isinstance(query, str) else query.as_string(self.conn))
            cursor = self.conn.execute(sql.SQL("PREPARE {} AS ").format(sql.Identifier(name)) + sql.SQL(numbered), prepare=False)
            self._pending[name] = (order, cursor)
        values = [params[k] for k in order]  # type: ignore[index]
        return self.conn.execute(
            sql.SQL("EXECUTE {}({})").format(sql.Identifier(name), sql.SQL(", ").join(sql.Literal(v) for v in values)), prepare=False
        )

    def resync(self) -> None:
        """After statements that may have deallocated ours (DEALLOCATE, DISCARD): keep only the names the server still has."""
        rows = self.conn.execute("SELECT name FROM pg_catalog.pg_prepared_statements").fetchall()
        alive = {str(r[0]) for r in rows}
        self._order = {name: order for name, order in self._order.items() if name in alive}

    def settle(self) -> None:
        """After the server answered (or failed): the PREPAREs that ran are kept, the others forgotten."""
        for name, (order, cursor) in self._pending.items():
            if cursor.pgresult is not None:
                self._order[name] = order
        self._pending.clear()
