"""The ledger: which versions are applied to a database, by whom, and which stack owns it."""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from psycopg import sql

if TYPE_CHECKING:
    import psycopg

DEFAULT_LEDGER_SCHEMA = "migration_ledger"
STARTED = "started"  # a non-transactional migration that has not finished
APPLIED = "applied"


@dataclass(frozen=True)
class LedgerRow:
    version: str
    name: str
    checksum: str
    applied_at: str
    applied_by: str
    duration_ms: int
    stack: str | None
    database_identity: str
    fingerprint: str | None
    status: str

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Owner:
    stack: str
    system_identifier: str
    database: str
    claimed_at: str


@dataclass(frozen=True)
class LedgerState:
    exists: bool
    rows: tuple[LedgerRow, ...]
    owner: Owner | None
    system_identifier: str
    database: str

    @property
    def applied(self) -> dict[str, LedgerRow]:
        return {r.version: r for r in self.rows if r.status == APPLIED}

    @property
    def started(self) -> list[LedgerRow]:
        return [r for r in self.rows if r.status == STARTED]

    @property
    def current(self) -> str | None:
        versions = sorted(self.applied, key=int)
        return versions[-1] if versions else None

    @property
    def identity(self) -> str:
        return f"{self.database}@{self.system_identifier}"


class Ledger:
    """SQL for the ledger tables; every identifier goes through psycopg.sql."""

    def __init__(self, schema: str, set_name: str) -> None:
        self.schema = schema
        self.set_name = set_name
        self._s = sql.Identifier(schema)

    def _t(self, table: str) -> sql.Composed:
        return sql.SQL("{}.{}").format(self._s, sql.Identifier(table))

    def read(self, conn: psycopg.Connection[Any]) -> LedgerState:
        """Ledger rows, owner and server identity in one round trip (two when the ledger does not exist yet)."""
        import psycopg

        query = sql.SQL(
            "SELECT json_build_object("
            " 'rows', (SELECT coalesce(json_agg(json_build_array(version, name, checksum, applied_at::text, applied_by,"
            "   duration_ms, stack, database_identity, fingerprint, status) ORDER BY version::bigint), '[]')"
            "   FROM {applied} WHERE set_name = %(set)s),"
            " 'owner', (SELECT json_build_array(stack, system_identifier, database, claimed_at::text)"
            "   FROM {owner} WHERE set_name = %(set)s),"
            " 'sysid', (SELECT system_identifier::text FROM pg_catalog.pg_control_system()),"
            " 'db', current_database())"
        ).format(applied=self._t("applied"), owner=self._t("owner"))
        try:
            with conn.transaction() if not conn.autocommit else nullcontext():  # a savepoint inside a transaction
                row = conn.execute(query, {"set": self.set_name}).fetchone()
        except psycopg.errors.UndefinedTable:
            row = conn.execute(
                "SELECT json_build_object('rows', '[]'::json, 'owner', NULL,"
                " 'sysid', (SELECT system_identifier::text FROM pg_catalog.pg_control_system()), 'db', current_database())"
            ).fetchone()
            assert row is not None
            data = row[0]
            return LedgerState(False, (), None, data["sysid"], data["db"])
        assert row is not None
        data = row[0]
        rows = tuple(LedgerRow(*r) for r in data["rows"])
        owner = Owner(*data["owner"]) if data["owner"] else None
        return LedgerState(True, rows, owner, data["sysid"], data["db"])

    def ensure(self, conn: psycopg.Connection[Any]) -> None:
        """Create the ledger schema and tables if missing (idempotent)."""
        # CREATE SCHEMA IF NOT EXISTS needs CREATE on the database even when the schema exists (e.g. made by Pulumi).
        if conn.execute("SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = %s", (self.schema,)).fetchone() is None:
            conn.execute(sql.SQL("CREATE SCHEMA {}").format(self._s))
        conn.execute(
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {applied} ("
                " set_name text NOT NULL, version text NOT NULL, name text NOT NULL, checksum text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now(), applied_by text NOT NULL,"
                " duration_ms integer NOT NULL DEFAULT 0, stack text, database_identity text NOT NULL,"
                " fingerprint text, status text NOT NULL DEFAULT 'applied' CHECK (status IN ('applied', 'started')),"
                " PRIMARY KEY (set_name, version));"
                "CREATE TABLE IF NOT EXISTS {owner} ("
                " set_name text PRIMARY KEY, stack text NOT NULL, system_identifier text NOT NULL,"
                " database text NOT NULL, claimed_at timestamptz NOT NULL DEFAULT now())"
            ).format(applied=self._t("applied"), owner=self._t("owner"))
        )

    def record(
        self,
        conn: psycopg.Connection[Any],
        *,
        version: str,
        name: str,
        checksum: str,
        applied_by: str,
        duration_ms: int,
        stack: str | None,
        database_identity: str,
        fingerprint: str | None,
        status: str = APPLIED,
    ) -> None:
        conn.execute(
            sql.SQL(
                "INSERT INTO {} (set_name, version, name, checksum, applied_by, duration_ms, stack, database_identity, fingerprint, status)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
                " ON CONFLICT (set_name, version) DO UPDATE SET checksum = EXCLUDED.checksum, applied_at = now(),"
                " applied_by = EXCLUDED.applied_by, duration_ms = EXCLUDED.duration_ms, fingerprint = EXCLUDED.fingerprint,"
                " status = EXCLUDED.status"
            ).format(self._t("applied")),
            (self.set_name, version, name, checksum, applied_by, duration_ms, stack, database_identity, fingerprint, status),
        )

    def forget(self, conn: psycopg.Connection[Any], version: str) -> None:
        conn.execute(sql.SQL("DELETE FROM {} WHERE set_name = %s AND version = %s").format(self._t("applied")), (self.set_name, version))

    def claim(self, conn: psycopg.Connection[Any], stack: str, system_identifier: str, database: str) -> None:
        conn.execute(
            sql.SQL(
                "INSERT INTO {} (set_name, stack, system_identifier, database) VALUES (%s, %s, %s, %s) ON CONFLICT (set_name) DO NOTHING"
            ).format(self._t("owner")),
            (self.set_name, stack, system_identifier, database),
        )

    def release(self, conn: psycopg.Connection[Any]) -> None:
        conn.execute(sql.SQL("DELETE FROM {} WHERE set_name = %s").format(self._t("owner")), (self.set_name,))
