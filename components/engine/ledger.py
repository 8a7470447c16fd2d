"""The ledger: which versions are applied to a database, by whom, and which stack owns it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from psycopg import sql

from .options import DEFAULT_LEDGER_SCHEMA  # noqa: F401  (re-exported)

if TYPE_CHECKING:
    import psycopg

STARTED = "started"  # a non-transactional migration that has not finished (up or down)
APPLIED = "applied"
LEDGER_FORMAT = 2  # 2: progress of a run outside a transaction (statements_done, done_digest, direction); owner.resource_id


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
    statements_done: int = 0  # outside a transaction: statements that completed (and stay committed)
    done_digest: str | None = None  # sha256 of those statements' text, so an edited file can still resume safely
    direction: str = "up"

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Owner:
    stack: str
    system_identifier: str
    database: str
    claimed_at: str
    resource_id: str | None = None  # the Pulumi resource that owns the schema (a renamed resource's old copy does not)


@dataclass(frozen=True)
class LedgerState:
    exists: bool
    rows: tuple[LedgerRow, ...]
    owner: Owner | None
    system_identifier: str
    database: str
    format: int = LEDGER_FORMAT
    other_sets: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = ()  # (set name, ((version, checksum), ...))

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


# What a database says about itself when it has no ledger (read before the ledger, in the same round trip).
ABSENT = (
    "SELECT pg_catalog.json_build_object('rows', '[]'::pg_catalog.json, 'owner', NULL,"
    " 'sysid', (SELECT system_identifier::pg_catalog.text FROM pg_catalog.pg_control_system()), 'db', pg_catalog.current_database())"
)


def _row(raw: dict[str, Any]) -> LedgerRow:
    return LedgerRow(
        version=str(raw["version"]),
        name=str(raw["name"]),
        checksum=str(raw["checksum"]),
        applied_at=str(raw["applied_at"]).replace("T", " "),
        applied_by=str(raw["applied_by"]),
        duration_ms=int(raw["duration_ms"]),
        stack=raw.get("stack"),
        database_identity=str(raw["database_identity"]),
        fingerprint=raw.get("fingerprint"),
        status=str(raw["status"]),
        statements_done=int(raw.get("statements_done") or 0),
        done_digest=raw.get("done_digest"),
        direction=str(raw.get("direction") or "up"),
    )


class Ledger:
    """SQL for the ledger tables; every identifier goes through psycopg.sql."""

    def __init__(self, schema: str, set_name: str) -> None:
        self.schema = schema
        self.set_name = set_name
        self._s = sql.Identifier(schema)

    def _t(self, table: str) -> sql.Composed:
        return sql.SQL("{}.{}").format(self._s, sql.Identifier(table))

    def read_statement(self, conn: psycopg.Connection[Any]) -> tuple[sql.Composed, dict[str, Any]]:
        """Ledger rows, owner and server identity in one statement (it fails with UndefinedTable when there is no ledger)."""
        # to_jsonb(a) reads whatever columns exist, so a ledger of an older format still reads (and is upgraded later).
        query = sql.SQL(
            "SELECT pg_catalog.json_build_object("
            " 'rows', (SELECT coalesce(pg_catalog.json_agg(pg_catalog.to_jsonb(a) ORDER BY a.version::bigint), '[]') FROM {applied} a WHERE set_name OPERATOR(pg_catalog.=) %(set)s),"
            " 'owner', (SELECT pg_catalog.to_jsonb(o) FROM {owner} o WHERE set_name OPERATOR(pg_catalog.=) %(set)s),"
            " 'others', (SELECT coalesce(pg_catalog.json_agg(pg_catalog.json_build_array(set_name, v)), '[]') FROM (SELECT set_name,"
            "   pg_catalog.json_agg(pg_catalog.json_build_array(version, checksum) ORDER BY version::bigint) AS v FROM {applied}"
            "   WHERE set_name OPERATOR(pg_catalog.<>) %(set)s AND status OPERATOR(pg_catalog.=) 'applied' GROUP BY set_name) o),"
            " 'format', (SELECT pg_catalog.count(*) FROM pg_catalog.pg_attribute WHERE attrelid OPERATOR(pg_catalog.=) ANY (ARRAY[%(table)s::pg_catalog.regclass, %(owner)s::pg_catalog.regclass])"
            "   AND attname OPERATOR(pg_catalog.=) ANY (ARRAY['statements_done', 'done_digest', 'direction', 'resource_id']::pg_catalog.name[]) AND NOT attisdropped),"
            " 'sysid', (SELECT system_identifier::pg_catalog.text FROM pg_catalog.pg_control_system()),"
            " 'db', pg_catalog.current_database())"
        ).format(applied=self._t("applied"), owner=self._t("owner"))
        table, owner_table = self._t("applied").as_string(conn), self._t("owner").as_string(conn)
        return query, {"set": self.set_name, "table": table, "owner": owner_table}

    def read(self, conn: psycopg.Connection[Any]) -> LedgerState:
        """Ledger rows, owner and server identity in one round trip (two when the ledger does not exist yet)."""
        import psycopg

        if conn.autocommit:  # one round trip either way: what a database without a ledger says, then the ledger
            identity, ledger = conn.cursor(), conn.cursor()  # made first: an error may surface while the next is sent
            try:
                with conn.pipeline():
                    identity.execute(ABSENT)
                    ledger.execute(*self.read_statement(conn))
            except psycopg.errors.UndefinedTable:
                pass
            return self.state_or_absent(identity, ledger)
        try:
            with conn.transaction():  # a savepoint inside a transaction
                row = conn.execute(*self.read_statement(conn)).fetchone()
        except psycopg.errors.UndefinedTable:
            row = conn.execute(ABSENT).fetchone()
            assert row is not None
            return LedgerState(False, (), None, row[0]["sysid"], row[0]["db"])
        assert row is not None
        return self.state_of(row[0])

    def state_or_absent(self, identity: psycopg.Cursor[Any], ledger: psycopg.Cursor[Any]) -> LedgerState:
        """The state from a pipelined ABSENT and read_statement: the ledger's, or only the identity when it has none."""
        if ledger.pgresult is not None:
            row = ledger.fetchone()
            assert row is not None
            return self.state_of(row[0])
        row = identity.fetchone()
        assert row is not None
        return LedgerState(False, (), None, row[0]["sysid"], row[0]["db"])

    @staticmethod
    def state_of(data: dict[str, Any]) -> LedgerState:
        """The LedgerState of a read_statement row."""
        rows = tuple(_row(r) for r in data["rows"])
        o = data["owner"]
        owner = Owner(o["stack"], o["system_identifier"], o["database"], str(o["claimed_at"]), o.get("resource_id")) if o else None
        others = tuple((str(name), tuple((str(v), str(c)) for v, c in versions)) for name, versions in data["others"])
        fmt = LEDGER_FORMAT if data["format"] == 4 else 1
        return LedgerState(True, rows, owner, data["sysid"], data["db"], fmt, others)

    def ensure(self, conn: psycopg.Connection[Any]) -> None:
        """Create the ledger schema and tables if missing (idempotent)."""
        # CREATE SCHEMA IF NOT EXISTS needs CREATE on the database even when the schema exists (e.g. made by Pulumi):
        # the schema is created only when it is missing. One round trip: no parameter, so the statements go together.
        name = sql.Literal(self.schema)
        tag = "$wishlist$"
        while tag in name.as_string(conn):  # the DO body's quote must not occur in the quoted name
            tag = tag[:-1] + "_$"
        conn.execute(
            sql.SQL(
                "DO {tag} BEGIN IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname OPERATOR(pg_catalog.=) {name}) THEN"
                " EXECUTE pg_catalog.format('CREATE SCHEMA %I', {name}); END IF; END {tag};"
                "CREATE TABLE IF NOT EXISTS {applied} ("
                " set_name pg_catalog.text NOT NULL, version pg_catalog.text NOT NULL, name pg_catalog.text NOT NULL, checksum pg_catalog.text NOT NULL,"
                " applied_at pg_catalog.timestamptz NOT NULL DEFAULT pg_catalog.now(), applied_by pg_catalog.text NOT NULL,"
                " duration_ms integer NOT NULL DEFAULT 0, stack pg_catalog.text, database_identity pg_catalog.text NOT NULL,"
                " fingerprint pg_catalog.text, status pg_catalog.text NOT NULL DEFAULT 'applied' CHECK (status OPERATOR(pg_catalog.=) ANY (ARRAY['applied', 'started'])),"
                " PRIMARY KEY (set_name, version));"
                "CREATE TABLE IF NOT EXISTS {owner} ("
                " set_name pg_catalog.text PRIMARY KEY, stack pg_catalog.text NOT NULL, system_identifier pg_catalog.text NOT NULL,"
                " database pg_catalog.text NOT NULL, claimed_at pg_catalog.timestamptz NOT NULL DEFAULT pg_catalog.now());"
                "ALTER TABLE {applied} ADD COLUMN IF NOT EXISTS statements_done integer NOT NULL DEFAULT 0,"
                " ADD COLUMN IF NOT EXISTS done_digest pg_catalog.text, ADD COLUMN IF NOT EXISTS direction pg_catalog.text NOT NULL DEFAULT 'up';"
                "ALTER TABLE {owner} ADD COLUMN IF NOT EXISTS resource_id pg_catalog.text"
            ).format(applied=self._t("applied"), owner=self._t("owner"), name=name, tag=sql.SQL(tag))
        )

    def record(self, conn: psycopg.Connection[Any], **row: Any) -> None:
        """Insert or update one version's row (the fields of record_statement)."""
        conn.execute(*self.record_statement(**row))

    def record_statement(
        self,
        *,
        version: str,
        name: str,
        checksum: str,
        applied_by: str,
        duration_ms: int | None,
        stack: str | None,
        database_identity: str,
        fingerprint: str | None,
        status: str = APPLIED,
        statements_done: int = 0,
        done_digest: str | None = None,
        direction: str = "up",
    ) -> tuple[sql.Composed, tuple[Any, ...]]:
        """The upsert of one version's row, and its values; `duration_ms` None: the server measures it since the
        transaction began."""
        query = sql.SQL(
            "INSERT INTO {} (set_name, version, name, checksum, applied_by, duration_ms, stack, database_identity, fingerprint, status,"
            " statements_done, done_digest, direction)"
            " VALUES (%s, %s, %s, %s, %s,"
            " coalesce(%s, (extract(epoch FROM pg_catalog.clock_timestamp() OPERATOR(pg_catalog.-) pg_catalog.transaction_timestamp()) OPERATOR(pg_catalog.*) 1000)::integer),"
            " %s, %s, %s, %s, %s, %s, %s)"
            " ON CONFLICT (set_name, version) DO UPDATE SET checksum = EXCLUDED.checksum, applied_at = pg_catalog.now(),"
            " applied_by = EXCLUDED.applied_by, duration_ms = EXCLUDED.duration_ms, fingerprint = EXCLUDED.fingerprint,"
            " status = EXCLUDED.status, statements_done = EXCLUDED.statements_done, done_digest = EXCLUDED.done_digest,"
            " direction = EXCLUDED.direction"
        ).format(self._t("applied"))
        values = (self.set_name, version, name, checksum, applied_by, duration_ms, stack, database_identity, fingerprint, status)
        return query, (*values, statements_done, done_digest, direction)

    def progress(self, conn: psycopg.Connection[Any], version: str, statements_done: int, done_digest: str) -> None:
        """After each statement of a run outside a transaction: how far it got (committed with the statement's effect)."""
        conn.execute(
            sql.SQL(
                "UPDATE {} SET statements_done = %s, done_digest = %s WHERE set_name OPERATOR(pg_catalog.=) %s AND version OPERATOR(pg_catalog.=) %s"
            ).format(self._t("applied")),
            (statements_done, done_digest, self.set_name, version),
        )

    def forget(self, conn: psycopg.Connection[Any], version: str) -> psycopg.Cursor[Any]:
        return conn.execute(
            sql.SQL("DELETE FROM {} WHERE set_name OPERATOR(pg_catalog.=) %s AND version OPERATOR(pg_catalog.=) %s").format(
                self._t("applied")
            ),
            (self.set_name, version),
        )

    def claim(
        self, conn: psycopg.Connection[Any], stack: str, system_identifier: str, database: str, resource_id: str | None = None
    ) -> None:
        """Record the owning stack (once) and the owning resource (the newest creator takes it over)."""
        conn.execute(
            sql.SQL(
                "INSERT INTO {} (set_name, stack, system_identifier, database, resource_id) VALUES (%s, %s, %s, %s, %s)"
                " ON CONFLICT (set_name) DO UPDATE SET resource_id = coalesce(EXCLUDED.resource_id, {}.resource_id)"
            ).format(self._t("owner"), self._t("owner")),
            (self.set_name, stack, system_identifier, database, resource_id),
        )

    def release(self, conn: psycopg.Connection[Any]) -> None:
        conn.execute(sql.SQL("DELETE FROM {} WHERE set_name OPERATOR(pg_catalog.=) %s").format(self._t("owner")), (self.set_name,))
