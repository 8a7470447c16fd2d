"""What stands between a run and the database: preflight checks, the migration lock, and the session's timeouts."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from .catalog import XACT_WRITES
from .connection import ConnectionSettings, mask_dsn
from .errors import LockTimeout, NotWritable, PermissionMissing
from .options import RunOptions

if TYPE_CHECKING:
    import psycopg

TABLE_PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE")


def advisory_key(set_id: str) -> int:
    """A stable signed 64-bit advisory-lock key per migration set."""
    digest = hashlib.sha256(f"wishlist-infra/migrations/{set_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def preflight(conn: psycopg.Connection[Any], settings: ConnectionSettings, schema: str, ledger_schema: str) -> None:
    """Before any write: the session can write, and the role holds each privilege a migration needs."""
    preflight_check(conn.execute(*preflight_statement(schema, ledger_schema)).fetchone(), settings)


def preflight_statement(schema: str, ledger_schema: str) -> tuple[str, dict[str, Any]]:
    """What preflight reads, in one statement (read-only: it may share a round trip with the lock's first try)."""
    # Schemas and the ledger table are found by name in the catalogs and checked by OID, so that names with
    # quotes or dots are never parsed as SQL identifiers. Each privilege is checked on its own: has_*_privilege
    # with a list is true when ANY of them is held.
    return (
        "WITH s AS (SELECT (SELECT oid FROM pg_catalog.pg_namespace WHERE nspname OPERATOR(pg_catalog.=) %(schema)s) AS target,"
        "                  (SELECT oid FROM pg_catalog.pg_namespace WHERE nspname OPERATOR(pg_catalog.=) %(ledger)s) AS ledger),"
        " t AS (SELECT (SELECT c.oid FROM pg_catalog.pg_class c, s WHERE c.relnamespace OPERATOR(pg_catalog.=) s.ledger AND c.relname OPERATOR(pg_catalog.=) 'applied') AS tbl,"
        "              (SELECT c.oid FROM pg_catalog.pg_class c, s WHERE c.relnamespace OPERATOR(pg_catalog.=) s.ledger AND c.relname OPERATOR(pg_catalog.=) 'owner') AS own)"
        " SELECT current_user, pg_catalog.pg_is_in_recovery(),"
        " pg_catalog.current_setting('transaction_read_only'), pg_catalog.current_setting('default_transaction_read_only'),"
        " s.target IS NOT NULL,"
        " ARRAY(SELECT p FROM pg_catalog.unnest(ARRAY['USAGE', 'CREATE']) p WHERE s.target IS NOT NULL AND NOT pg_catalog.has_schema_privilege(s.target, p)),"
        " s.ledger IS NOT NULL, pg_catalog.has_database_privilege(pg_catalog.current_database(), 'CREATE'),"
        " ARRAY(SELECT p FROM pg_catalog.unnest(ARRAY['USAGE', 'CREATE']) p WHERE s.ledger IS NOT NULL AND NOT pg_catalog.has_schema_privilege(s.ledger, p)),"
        " ARRAY(SELECT x.rel OPERATOR(pg_catalog.||) ':' OPERATOR(pg_catalog.||) p FROM (VALUES ('applied', t.tbl), ('owner', t.own)) x(rel, oid),"
        "       pg_catalog.unnest(%(privs)s::pg_catalog.text[]) p WHERE x.oid IS NOT NULL AND NOT pg_catalog.has_table_privilege(x.oid, p)),"
        " pg_catalog.quote_ident(pg_catalog.current_database()), pg_catalog.quote_ident(current_user), pg_catalog.quote_ident(%(schema)s), pg_catalog.quote_ident(%(ledger)s),"
        # default privileges of this role that grant PUBLIC on the tables and sequences it creates in the schema
        " ARRAY(SELECT DISTINCT d.defaclobjtype::pg_catalog.text OPERATOR(pg_catalog.||) ':' OPERATOR(pg_catalog.||) x.privilege_type"
        "       FROM pg_catalog.pg_default_acl d CROSS JOIN LATERAL pg_catalog.aclexplode(d.defaclacl) x"
        "       WHERE d.defaclrole OPERATOR(pg_catalog.=) (SELECT r.oid FROM pg_catalog.pg_roles r WHERE r.rolname OPERATOR(pg_catalog.=) current_user)"
        "         AND d.defaclnamespace OPERATOR(pg_catalog.=) ANY (ARRAY['0'::pg_catalog.oid, s.target])"
        "         AND d.defaclobjtype OPERATOR(pg_catalog.=) ANY ('{r,S}'::pg_catalog.\"char\"[]) AND x.grantee OPERATOR(pg_catalog.=) 0"
        # and a global default for functions that takes EXECUTE from PUBLIC (only a global one can: it replaces the
        # built-in default)
        "       UNION SELECT 'f:no EXECUTE' FROM pg_catalog.pg_default_acl d"
        "       WHERE d.defaclrole OPERATOR(pg_catalog.=) (SELECT r.oid FROM pg_catalog.pg_roles r WHERE r.rolname OPERATOR(pg_catalog.=) current_user)"
        "         AND d.defaclnamespace OPERATOR(pg_catalog.=) 0 AND d.defaclobjtype OPERATOR(pg_catalog.=) 'f'"
        "         AND NOT EXISTS (SELECT FROM pg_catalog.aclexplode(d.defaclacl) x WHERE x.grantee OPERATOR(pg_catalog.=) 0"
        "           AND x.privilege_type OPERATOR(pg_catalog.=) 'EXECUTE'))"
        " FROM s, t",
        {"schema": schema, "ledger": ledger_schema, "privs": list(TABLE_PRIVILEGES)},
    )


def preflight_check(row: tuple[Any, ...] | None, settings: ConnectionSettings) -> None:
    """Raise, naming every missing privilege and its GRANT, unless the preflight_statement row says a migration can run."""
    assert row is not None
    (_user, standby, tx_ro, default_ro, has_schema, schema_missing, ledger_exists, db_create, ledger_missing, table_missing) = row[:10]
    # Names as PostgreSQL quotes them (only when needed), so the printed fix commands run as they are.
    db, who, s_id, l_id, public_defaults = row[10:]
    where = settings.describe()
    if standby:
        raise NotWritable(
            f"{where} is a hot standby (pg_is_in_recovery() is true): a migration cannot write there.",
            "connect to the primary (the cluster's writer endpoint), not a replica or reader endpoint.",
        )
    if tx_ro == "on" or default_ro == "on":
        raise NotWritable(
            f"the session on {where} is read-only (default_transaction_read_only={default_ro}).",
            f"connect with a read-write session, e.g. `ALTER ROLE {who} SET default_transaction_read_only = off`, or use the writer endpoint.",
        )
    if public_defaults:
        grants = ", ".join(sorted(public_defaults))
        raise PermissionMissing(
            f"role {who} on {where} has default privileges that change what PUBLIC gets on what it creates in schema {s_id} "
            f"({grants}; r: tables, S: sequences, f: functions): every such object a migration creates would differ from its "
            "snapshot (made on a database without them), and verification would refuse it. Nothing was written.",
            f"put the defaults back (ALTER DEFAULT PRIVILEGES FOR ROLE {who} [IN SCHEMA {s_id}] REVOKE ALL ON TABLES FROM PUBLIC; "
            f"the same ON SEQUENCES; ALTER DEFAULT PRIVILEGES FOR ROLE {who} GRANT EXECUTE ON FUNCTIONS TO PUBLIC), and grant "
            "or revoke PUBLIC's privileges in the migrations where that is intended.",
        )
    missing: list[str] = []
    if not has_schema:
        missing.append(f"schema {s_id} does not exist (CREATE SCHEMA {s_id} AUTHORIZATION {who})")
    elif schema_missing:
        privs = ", ".join(schema_missing)
        missing.append(f"{privs} on schema {s_id} (GRANT {privs} ON SCHEMA {s_id} TO {who})")
    if not ledger_exists and not db_create:
        missing.append(
            f"CREATE on database {db} to create the ledger schema {l_id} (or create it first: CREATE SCHEMA {l_id} AUTHORIZATION {who})"
        )
    if ledger_missing:
        privs = ", ".join(ledger_missing)
        missing.append(f"{privs} on schema {l_id} (GRANT {privs} ON SCHEMA {l_id} TO {who})")
    for table in ("applied", "owner"):
        privs = ", ".join(p.partition(":")[2] for p in table_missing if p.startswith(table + ":"))
        if privs:
            t_id = f"{l_id}.{table}"
            missing.append(f"{privs} on table {t_id} (GRANT {privs} ON {t_id} TO {who})")
    if missing:
        raise PermissionMissing(
            f"role {who} on {where} lacks what a migration needs: " + "; ".join(missing) + ". Nothing was written.",
            "grant the privileges named above (the access component does this for wishlist_migrator), then run again.",
        )


# The first words of the error the lock check raises (an integer cast of a text that is no integer).
LOCK_RELEASED = "the migration lock is no longer held by this session"


def lock_held_check(key: int) -> tuple[str, tuple[int, int]]:
    """A query that fails (with LOCK_RELEASED) unless this session still holds the migration lock `key` at session
    level: a migration can release it (pg_advisory_unlock_all(), DISCARD ALL; a rollback does not take it back), and a
    transaction-level lock on the key it takes instead looks the same in pg_locks. pg_advisory_unlock() succeeds only
    for a session-level hold; the lock is taken back at once (if another session got it in between, that fails too)."""
    error = (
        f"('{LOCK_RELEASED} (pid ' OPERATOR(pg_catalog.||) pg_catalog.pg_backend_pid()::pg_catalog.text"
        " OPERATOR(pg_catalog.||) ')')::pg_catalog.int4"
    )
    # (the message made from the session's pid: a constant would be cast when the query is planned, and fail always;
    # CASE evaluates its branches in order, AND would not promise to)
    return (
        f"SELECT CASE WHEN NOT pg_catalog.pg_advisory_unlock(%s::pg_catalog.int8) THEN {error}"
        f" WHEN NOT pg_catalog.pg_try_advisory_lock(%s::pg_catalog.int8) THEN {error} ELSE 0 END",
        (key, key),
    )


def _holder(conn: psycopg.Connection[Any], key: int) -> str:
    """Who holds the advisory lock `key` (a bigint key is stored as classid = high 32 bits, objid = low 32 bits)."""
    row = conn.execute(
        "SELECT a.pid, a.application_name, a.usename, a.client_addr::pg_catalog.text, a.backend_start, a.state, a.state_change,"
        " pg_catalog.left(pg_catalog.regexp_replace(a.query, '\\s+', ' ', 'g'), 120)"
        " FROM pg_catalog.pg_locks l JOIN pg_catalog.pg_stat_activity a ON a.pid OPERATOR(pg_catalog.=) l.pid"
        " WHERE l.locktype OPERATOR(pg_catalog.=) 'advisory' AND l.granted AND l.objsubid OPERATOR(pg_catalog.=) 1 AND l.database OPERATOR(pg_catalog.=) "
        " (SELECT oid FROM pg_catalog.pg_database WHERE datname OPERATOR(pg_catalog.=) pg_catalog.current_database())"
        " AND l.classid::bigint OPERATOR(pg_catalog.=) %s AND l.objid::bigint OPERATOR(pg_catalog.=) %s",
        ((key >> 32) & 0xFFFFFFFF, key & 0xFFFFFFFF),
    ).fetchone()
    if row is None:
        return "the holder released it just now"
    pid, app, user, addr, since, state, state_since, query = row
    return (
        f"held by pid {pid} (application_name {app!r}, user {user}, from {addr or 'local socket'}), "
        f"connected since {since:%Y-%m-%d %H:%M:%S %Z}, {state} since {state_since:%H:%M:%S}, last query: {mask_dsn(query or '')}"
        if since is not None
        else f"held by pid {pid} (application_name {app!r})"
    )


@contextmanager
def migration_lock(
    conn: psycopg.Connection[Any],
    key: int,
    *,
    wait_ms: int,
    set_name: str,
    where: str,
    progress: Callable[[str], None],
    sleep: Callable[[float], None] = time.sleep,
    acquired: bool = False,
) -> Iterator[dict[str, bool]]:
    """Session advisory lock per set, polled with pg_try_advisory_lock from the client with backoff.

    Never waits inside a statement: a statement waiting for a lock holds a snapshot, and a CREATE INDEX
    CONCURRENTLY in the lock holder waits for every such snapshot (a deadlock the server then breaks).
    """
    deadline = time.monotonic() + wait_ms / 1000
    delay, told = 0.02, False
    while not acquired:  # `acquired`: the caller's own pg_try_advisory_lock (sent with other reads) got it
        row = conn.execute("SELECT pg_catalog.pg_try_advisory_lock(%s)", (key,)).fetchone()
        if row is not None and row[0]:
            break
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise LockTimeout(
                f"the migration lock of set {set_name!r} on {where} is {_holder(conn, key)}; waited {wait_ms} ms. Nothing was written.",
                "if that session is a running migration, wait for it and run again (it will find nothing pending); if it is stuck, "
                "end it with `SELECT pg_terminate_backend(<pid>)` after checking `status`; or raise the lock wait (lockWaitMs / --lock-wait).",
            )
        if not told:
            progress(f"waiting up to {wait_ms} ms for the migration lock of set {set_name!r} ({_holder(conn, key)})")
            told = True
        sleep(min(delay, remaining))
        delay = min(delay * 2, 0.5)
    held = {"held": True}  # the caller sets it False when it released the lock itself (in a round trip of its own)
    try:
        yield held
    finally:
        if held["held"] and not conn.closed and not conn.broken:
            conn.execute("SELECT pg_catalog.pg_advisory_unlock(%s)", (key,))


def timeouts_query(options: RunOptions, *, local: bool) -> tuple[str, tuple[Any, ...]]:
    """DDL lock_timeout and statement_timeout for this transaction (local) or this session; no JIT and one generic plan
    for prepared statements (the scoped catalog read's estimates are far above jit_above_cost, and compiling or
    re-planning it costs more than running it).

    Its row's last column is the catalog rows this backend wrote so far (catalog.XACT_WRITES); in a transaction they are
    also kept in the setting wishlist.xact_writes, where the scoped catalog read finds them."""
    return (
        "SELECT pg_catalog.set_config('lock_timeout', %s, %s), pg_catalog.set_config('statement_timeout', %s, %s),"
        " pg_catalog.set_config('client_connection_check_interval', '1s', false), pg_catalog.set_config('jit', 'off', %s),"
        " pg_catalog.set_config('plan_cache_mode', 'force_generic_plan', %s),"
        " pg_catalog.set_config('wishlist.xact_writes', coalesce(w::pg_catalog.text, 'null'), %s), w FROM (SELECT "
        + XACT_WRITES
        + " AS w) x",
        (f"{options.lock_timeout_ms}ms", local, f"{options.statement_timeout_ms}ms", local, local, local, local),
    )


def writes_of(row: tuple[Any, ...] | None) -> dict[str, int] | None:
    """The catalog write counts from a timeouts_query row (None: track_counts is off)."""
    return None if row is None or row[-1] is None else {str(k): int(v) for k, v in row[-1].items()}


def set_timeouts(conn: psycopg.Connection[Any], options: RunOptions, *, local: bool) -> dict[str, int] | None:
    """Run timeouts_query; returns the catalog rows this backend wrote so far."""
    return writes_of(conn.execute(*timeouts_query(options, local=local)).fetchone())
