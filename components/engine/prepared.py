"""The statements a run sends at every step, prepared once per connection with SQL `PREPARE`.

psycopg's own prepared statements are deallocated (DEALLOCATE ALL) after any ALTER, DROP or ROLLBACK, which migrations run
at every step, and a statement prepared again is planned again: 3 ms per step for the scoped catalog read (bench section
4). A statement prepared with SQL PREPARE lives until the connection ends (a ROLLBACK does not undo it), and its generic
plan is kept. Values are bound as literals quoted by psycopg (EXECUTE cannot infer the type of a protocol parameter).

A migration runs on the same connection and may replace one of them (DEALLOCATE and PREPARE inside a DO block are not
undone by a rollback either), with any text, or with the engine's own text prepared under its search_path. So the
server's record of each statement (a hash of its text and its prepare time, which no later statement can give another
statement) is read right after the engine's PREPARE, and `guard()` queues a query that fails unless every recorded
statement is still that one: sent after a migration's statements and before the engine's next EXECUTE, in the same
pipeline, it stops the EXECUTE of a replaced statement (the error rolls the transaction back).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from psycopg import sql

if TYPE_CHECKING:
    import psycopg

_PLACEHOLDER = re.compile(r"%\((\w+)\)s|%s")

# The first words of the error the guard raises (an integer cast of a text that is no integer: plain SQL has no RAISE).
REPLACED = "the engine's prepared statements were replaced or removed: "

# Every name, function and operator qualified: the migration's schema is on the search_path (see catalog.py).
# The prepare time as seconds since the epoch (numeric: exact to the microsecond), never as text a migration's
# DateStyle would print.
_TIME = "EXTRACT(epoch FROM p.prepare_time)"
_RECORD = (
    "SELECT pg_catalog.encode(pg_catalog.sha256(pg_catalog.convert_to(p.statement, 'UTF8')), 'hex'), "
    + _TIME
    + " FROM pg_catalog.pg_prepared_statements p WHERE p.name OPERATOR(pg_catalog.=) %s"
)
# Every name the engine prepares statements under (runner and snapshot): one the engine has not prepared (yet) on a
# connection must not exist there, or a migration took it.
ENGINE_NAMES = ("wishlist_ledger_record", "wishlist_scoped", "wishlist_timeouts", "wishlist_verifiable")
_GUARD = (
    "SELECT CASE WHEN x.bad IS NULL THEN 0 ELSE ('" + REPLACED.replace("'", "''") + "' OPERATOR(pg_catalog.||) x.bad)::pg_catalog.int4 END"
    " FROM (SELECT pg_catalog.string_agg(b.name, ', ' ORDER BY b.name) AS bad FROM ("
    "SELECT e.name FROM ROWS FROM (pg_catalog.unnest(%(names)s::pg_catalog.text[]), pg_catalog.unnest(%(hashes)s::pg_catalog.text[]),"
    " pg_catalog.unnest(%(times)s::pg_catalog.numeric[])) AS e(name, hash, prepared)"
    " WHERE NOT EXISTS (SELECT FROM pg_catalog.pg_prepared_statements p WHERE p.name OPERATOR(pg_catalog.=) e.name"
    " AND " + _TIME + " OPERATOR(pg_catalog.=) e.prepared"
    " AND pg_catalog.encode(pg_catalog.sha256(pg_catalog.convert_to(p.statement, 'UTF8')), 'hex') OPERATOR(pg_catalog.=) e.hash)"
    " UNION ALL SELECT p.name FROM pg_catalog.pg_prepared_statements p WHERE p.name OPERATOR(pg_catalog.=) ANY (%(absent)s::pg_catalog.text[])"
    ") b) x"
)
_LIST = (
    "SELECT p.name, pg_catalog.encode(pg_catalog.sha256(pg_catalog.convert_to(p.statement, 'UTF8')), 'hex'), "
    + _TIME
    + " FROM pg_catalog.pg_prepared_statements p WHERE p.name OPERATOR(pg_catalog.=) ANY(%s::pg_catalog.text[])"
)


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


def replaced_names(message: str) -> str | None:
    """The names in a guard's error message (None: the message is not the guard's)."""
    start = message.find(REPLACED)
    if start < 0:
        return None
    return message[start + len(REPLACED) :].split('"')[0]


class PreparedStatements:
    """SQL-level prepared statements of one connection, by name; the connection's own auto-preparing is turned off.

    The first EXECUTE of a name is preceded by its PREPARE and the read of the server's record of it, in the same round
    trip; `settle()` after the server answered keeps the names whose PREPARE ran (one skipped after an earlier error is
    sent again next time)."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn
        conn.prepare_threshold = None  # psycopg would otherwise prepare, then DEALLOCATE ALL after the next ALTER
        self._order: dict[str, list[str | int]] = {}
        self._record: dict[str, tuple[str, Decimal]] = {}
        self._pending: dict[str, tuple[list[str | int], psycopg.Cursor[Any], psycopg.Cursor[Any]]] = {}
        self._names: set[str] = set()  # every name this connection's engine uses

    def execute(self, name: str, query: str | sql.Composable, params: Mapping[str, Any] | Sequence[Any]) -> psycopg.Cursor[Any]:
        """EXECUTE `query` prepared as `name` (pipelined when the connection is in a pipeline)."""
        self._names.add(name)
        order = self._order.get(name) or (self._pending[name][0] if name in self._pending else None)
        if order is None:
            numbered, order = positional(query if isinstance(query, str) else query.as_string(self.conn))
            prepared = self.conn.execute(sql.SQL("PREPARE {} AS ").format(sql.Identifier(name)) + sql.SQL(numbered), prepare=False)
            record = self.conn.execute(_RECORD, (name,), prepare=False)
            self._pending[name] = (order, prepared, record)
        values = [params[k] for k in order]  # type: ignore[index]
        return self.conn.execute(
            sql.SQL("EXECUTE {}({})").format(sql.Identifier(name), sql.SQL(", ").join(sql.Literal(v) for v in values)), prepare=False
        )

    @property
    def pending(self) -> bool:
        """Whether a PREPARE was sent whose record is not read yet (settle() reads it): until then, guard() cannot tell
        whether that statement is still the engine's."""
        return bool(self._pending)

    def guard(self) -> psycopg.Cursor[Any]:
        """Queue the query that fails (with REPLACED and the names) unless every statement prepared so far is still the
        engine's and no other name of ENGINE_NAMES is taken (except those pending in this pipeline). Send it after
        statements that are not the engine's, before its next EXECUTE."""
        names = sorted(self._record)
        absent = sorted(set(ENGINE_NAMES) - self._record.keys() - self._pending.keys())
        return self.conn.execute(
            _GUARD,
            {"names": names, "hashes": [self._record[n][0] for n in names], "times": [self._record[n][1] for n in names], "absent": absent},
            prepare=False,
        )

    def resync(self) -> None:
        """Outside a failed transaction, after statements that may have deallocated or replaced the engine's: forget the
        names the server no longer has, deallocate those it has that are not the engine's (they are prepared again at
        their next use)."""
        rows = self.conn.execute(_LIST, (sorted(self._names),), prepare=False).fetchall()
        alive = {str(name): (str(digest), when) for name, digest, when in rows}
        for name in self._names:
            if name in alive and self._record.get(name) != alive[name]:
                self.conn.execute(sql.SQL("DEALLOCATE {}").format(sql.Identifier(name)), prepare=False)
                del alive[name]
            if name not in alive:
                self._order.pop(name, None)
                self._record.pop(name, None)

    def settle(self) -> bool:
        """After the server answered (or failed): the PREPAREs that ran are kept, the others forgotten. False when one
        ran without its record being read (then resync() before the next use)."""
        complete = True
        for name, (order, prepared, record) in self._pending.items():
            if prepared.pgresult is None:
                continue
            row = record.fetchone() if record.pgresult is not None else None
            if row is None:
                complete = False
                continue
            self._order[name] = order
            self._record[name] = (str(row[0]), row[1])
        self._pending.clear()
        return complete
