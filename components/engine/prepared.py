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
    """SQL-level prepared statements of one connection, by name; the connection's own auto-preparing is turned off."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn
        conn.prepare_threshold = None  # psycopg would otherwise prepare, then DEALLOCATE ALL after the next ALTER
        self._order: dict[str, list[str | int]] = {}

    def prepare(self, statements: Mapping[str, str | sql.Composable]) -> None:
        """PREPARE the statements not prepared yet, in one round trip (outside a transaction, or in one that commits or not)."""
        todo = {name: q for name, q in statements.items() if name not in self._order}
        if not todo:
            return
        orders = {}
        with self.conn.pipeline():
            for name, query in todo.items():
                numbered, orders[name] = positional(query if isinstance(query, str) else query.as_string(self.conn))
                self.conn.execute(sql.SQL("PREPARE {} AS ").format(sql.Identifier(name)) + sql.SQL(numbered), prepare=False)
        self._order |= orders  # only once the server answered: an error leaves them unprepared for the next call

    def execute(self, name: str, params: Mapping[str, Any] | Sequence[Any]) -> psycopg.Cursor[Any]:
        """EXECUTE a prepared statement (pipelined when the connection is in a pipeline)."""
        order = self._order[name]
        values = [params[k] for k in order]  # type: ignore[index]
        return self.conn.execute(
            sql.SQL("EXECUTE {}({})").format(sql.Identifier(name), sql.SQL(", ").join(sql.Literal(v) for v in values)), prepare=False
        )
