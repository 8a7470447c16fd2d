"""Produce meta/ (journal + per-version snapshots) by applying the set to a throwaway database."""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import TYPE_CHECKING, Any

from psycopg import sql

from . import catalog as cat
from .connection import ConnectionSettings
from .errors import DatabaseError, MigrationError, SetError, StatementFailed
from .migset import NO_TRANSACTION, MigrationSet, ScannedFile, file_statements, load, scan, sha256_hex, write_meta
from .prepared import PreparedStatements
from .sqltext import Statement, header_markers
from .statement_kinds import needs_autocommit
from .trace import RelationTracker, StatementTrace, Trace, trace_outside_transaction

if TYPE_CHECKING:
    import psycopg


def current_schema(directory: Path, default: str = "public") -> str:
    journal = directory / "meta" / "_journal.json"
    if journal.exists():
        try:
            value = json.loads(journal.read_text()).get("schema")
            if isinstance(value, str) and value:
                return value
        except (json.JSONDecodeError, AttributeError):
            pass
    return default


def generate(settings: ConnectionSettings, directory: Path, schema: str | None = None) -> Path:
    """Apply every file in order to a new database, introspect after each, write meta/. Needs CREATEDB.

    The versions meta/ already describes (same file, same order) are proven against their stored snapshots from what
    they wrote, as `check` proves them; the others are read whole."""
    schema = schema or current_schema(directory)
    snapshots, traces = build(settings, directory, schema, _reusable(directory, schema))
    return write_meta(directory, schema, snapshots, traces)


def _reusable(directory: Path, schema: str) -> MigrationSet | None:
    """The meta/ being replaced, where it still loads (new files not in its journal yet are left out)."""
    try:
        known = load(directory, parse=False, unjournaled_ok=True)
    except MigrationError:
        return None
    return known if known.schema == schema else None


def replay(settings: ConnectionSettings, mset: MigrationSet) -> list[str]:
    """Apply the loaded set to a throwaway database: the versions whose catalog or lock trace differs from meta/."""
    built, traces = build(settings, mset.directory, mset.schema, mset)
    fingerprint = cat.Fingerprints()  # the built catalogs share most entries
    return [
        m.version
        for m in mset.migrations
        if (m.fingerprint is not None and fingerprint(built[m.version]) != m.fingerprint)
        or (m.trace is not None and m.trace != traces[m.version])
    ]


def build(
    settings: ConnectionSettings, directory: Path, schema: str, known: MigrationSet | None = None
) -> tuple[dict[str, cat.Catalog], dict[str, Trace]]:
    """The catalog after each version and the lock trace of each statement, from applying every file in order to a new
    database. Needs CREATEDB.

    `known`: stored snapshots to prove instead of reading the schema whole after every version. A version whose file
    and place match one of them is proven from the catalog rows it wrote (catalog.prove_scoped, the proof `apply`
    uses); where the proof does not hold (a drop, a write it cannot follow, a different result) it is read whole, and
    the catalog returned is always the one the database has."""
    files = scan(directory)
    if not files:
        raise SetError(f"{directory} holds no NNNN_name.sql file.", "add the first migration, then run snapshot again.")
    parsed = []  # every file is parsed before anything is created: a bad one is refused with nothing to clean up
    for f in files:
        text = f.up.read_bytes().decode()
        transactional = NO_TRANSACTION not in header_markers(text)
        parsed.append((f, transactional, file_statements(str(f.up), text, transactional=transactional)))
        if f.down is not None:
            file_statements(str(f.down), f.down.read_bytes().decode())
    scratch = f"wishlist_snapshot_{secrets.token_hex(4)}"
    with settings.connect(autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(scratch)))
    try:
        built = _apply_each(settings.with_database(scratch), schema, parsed, known)
    except BaseException as exc:
        _drop_scratch(settings, scratch, failed=exc)
        raise
    _drop_scratch(settings, scratch, failed=None)
    return built


class _Known:
    """The stored snapshots of the versions applied so far, in order; None once the files part from them."""

    def __init__(self, mset: MigrationSet | None) -> None:
        self.mset, self.position = mset, 0

    def next(self, f: ScannedFile, checksum: str) -> tuple[cat.Catalog, frozenset[str], list[str]] | None:
        """What version `f` should leave, if meta/ records it for these bytes in this place."""
        if self.mset is None:
            return None
        ms = self.mset.migrations
        if self.position < len(ms) and ms[self.position].version == f.version and ms[self.position].checksum == checksum:
            m = ms[self.position]
            self.position += 1
            expected = self.mset.expected_catalog(m.version)
            return expected, self.mset.changed_keys(m.version), self.mset.expected_keys(m.version)
        self.mset = None  # from here on the stored snapshots describe another history
        return None


def _apply_each(
    scratch_settings: ConnectionSettings,
    schema: str,
    parsed: list[tuple[ScannedFile, bool, list[Statement]]],
    known: MigrationSet | None,
) -> tuple[dict[str, cat.Catalog], dict[str, Trace]]:
    """Apply the parsed files in order to the scratch database: the catalog after each, the lock trace of each statement."""
    import psycopg

    snapshots: dict[str, cat.Catalog] = {}
    traces: dict[str, Trace] = {}
    stored = _Known(known)
    proven_last = False
    with scratch_settings.connect(autocommit=True, search_path=schema) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
        tracker = RelationTracker(conn, schema)
        prover = _Prover(conn)
        _, verified = cat.introspect_verifiable(conn, schema)  # the empty schema: what the first proof starts from
        for f, transactional, statements in parsed:
            checksum = sha256_hex(f.up.read_bytes())
            recorded = stored.next(f, checksum)
            # outside a transaction the statements commit one by one: nothing to prove before a COMMIT, read whole below
            expected = recorded if transactional else None
            measured: list[StatementTrace] = []
            live: cat.Catalog | None = None
            try:
                if transactional:
                    with conn.transaction():
                        tracker.begin(conn)
                        writes = cat.writes_at_begin(conn) if expected is not None else None
                        measured = [tracker.trace(conn, stmt) for stmt in statements]
                        # what would run at COMMIT (temporary objects ending, deferred constraint triggers) runs now,
                        # under the connecting role; a user's deferrable trigger may defer again and run at COMMIT
                        # anyway: then the version is read whole after COMMIT instead of proven before it
                        for query in ("RESET ROLE", "SET CONSTRAINTS ALL IMMEDIATE", "DISCARD TEMP"):
                            conn.execute(query)
                        # as apply refuses them: a cursor WITH HOLD runs its query at COMMIT, after any read
                        held = [str(r[0]) for r in conn.execute("SELECT name FROM pg_catalog.pg_cursors WHERE is_holdable ORDER BY 1")]
                        if held:
                            raise StatementFailed(
                                f"{f.up} leaves cursor(s) declared WITH HOLD open at its end ({', '.join(held)}): PostgreSQL "
                                "runs such a cursor's query at COMMIT, after the engine's verifying read, and apply refuses it.",
                                "close the cursor in the migration (CLOSE name) or declare it without WITH HOLD, then run snapshot again.",
                            )
                        row = conn.execute(cat.USER_DEFERRABLE_TRIGGERS).fetchone()
                        if row is not None and row[0]:
                            expected = None
                        if expected is not None:
                            proven = prover.try_prove(schema, verified, expected, writes)
                            if proven is not None:
                                live, verified = expected[0], proven
                else:
                    for stmt in statements:
                        if needs_autocommit(stmt.text):  # as apply runs it: on its own, outside any block
                            measured.append(trace_outside_transaction(conn, scratch_settings, schema, stmt))
                            tracker.reload(conn)
                            continue
                        try:  # each statement commits on its own: measured in a block of its own when it allows one
                            with conn.transaction():
                                tracker.begin(conn)
                                measured.append(tracker.trace(conn, stmt))
                        except (psycopg.errors.ActiveSqlTransaction, psycopg.errors.InvalidTransactionTermination):
                            # refused in a block, or it COMMITs itself (a DO block or procedure): its block rolled back
                            measured.append(trace_outside_transaction(conn, scratch_settings, schema, stmt))
                            tracker.reload(conn)
            except StatementFailed:
                raise
            except Exception as exc:
                raise StatementFailed(
                    f"{f.up} does not apply on a fresh database: {str(exc).strip().splitlines()[0] if str(exc).strip() else exc!r}.",
                    "fix the SQL and run snapshot again.",
                ) from None
            for query in cat.START_OVER:  # the next version starts from the engine's settings, as in apply
                conn.execute(query)
            if live is None:
                # Read after COMMIT, as any later session reads it (a SET LOCAL of the version has ended with it).
                live, verified = cat.introspect_verifiable(conn, schema)
                if recorded is None or live != recorded[0]:
                    # What meta/ stores from here on was built on another catalog: its deltas prove nothing now.
                    stored.mset = None
            snapshots[f.version] = live
            traces[f.version] = Trace(f.version, checksum, tuple(measured))
            proven_last = live is not None and expected is not None and live is expected[0]
        if parsed and proven_last:
            # The proof is never the only check: the schema the last version left is read whole, as apply's last step
            # reads it (a version the proof wrongly accepted shows there, at the latest).
            for query in cat.START_OVER:
                conn.execute(query)
            whole, _ = cat.introspect_verifiable(conn, schema)
            if whole != snapshots[parsed[-1][0].version]:
                snapshots[parsed[-1][0].version] = whole
    return snapshots, traces


class _Prover:
    """The scoped proof that a version left its stored catalog (the step runner's, catalog.scoped_result), its read
    prepared once per connection with a generic plan made with sequential scans off, as the runner's."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn
        self.prepared = PreparedStatements(conn)

    def try_prove(
        self,
        schema: str,
        prev: cat.Verified,
        expected: tuple[cat.Catalog, frozenset[str], list[str]],
        writes: dict[str, int] | None,
    ) -> cat.Verified | None:
        """prove() in a savepoint of the version's transaction: None (read the version whole after COMMIT) when one of
        its queries fails, as when a statement of the version changed the session under it (statement_timeout, a
        prepared statement of the same name): the failure is not the file's, and the file may still apply."""
        import psycopg

        try:
            with self.conn.transaction():
                # a statement may have deallocated or replaced the prepared proof, top-level or in a DO block
                self.prepared.resync()
                return self.prove(schema, prev, expected, writes)
        except psycopg.Error:
            return None

    def prove(
        self,
        schema: str,
        prev: cat.Verified,
        expected: tuple[cat.Catalog, frozenset[str], list[str]],
        writes: dict[str, int] | None,
    ) -> cat.Verified | None:
        """In the transaction that began with catalog.writes_at_begin, after resync: the proof, or None (then read the
        schema whole)."""
        if writes is None:
            return None
        after, delta, order = expected
        self.conn.execute(
            "SELECT pg_catalog.set_config('enable_seqscan', 'off', true), pg_catalog.set_config('jit', 'off', true),"
            " pg_catalog.set_config('plan_cache_mode', 'force_generic_plan', true)"
        )
        query, params = cat.scoped_query(schema, prev, after, delta)
        try:
            cursor = self.prepared.execute("wishlist_scoped", query, params)
            row = cursor.fetchone()
        finally:
            self.prepared.settle()
        self.conn.execute("RESET enable_seqscan")
        assert row is not None
        return cat.scoped_result(row[0], prev, after, writes, delta, order)


def _drop_scratch(settings: ConnectionSettings, scratch: str, *, failed: BaseException | None) -> None:
    """Drop the scratch database. A plain DROP first: it ends autovacuum workers itself and waits up to 5 s for other
    sessions, where FORCE refuses outright when one of them (an autovacuum worker, another role) may not be signalled
    by a non-superuser. FORCE second, for our own sessions still exiting. If both fail, say what was left."""
    import psycopg

    name = sql.Identifier(scratch)
    reason = ""
    with settings.connect(autocommit=True) as admin:
        for statement in (sql.SQL("DROP DATABASE IF EXISTS {}"), sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")):
            try:
                admin.execute(statement.format(name))
                return
            except (psycopg.errors.ObjectInUse, psycopg.errors.InsufficientPrivilege) as exc:
                reason = str(exc).strip().splitlines()[0]
    before = f"{failed} Then " if isinstance(failed, Exception) else ""
    raise DatabaseError(
        f"{before}the scratch database {scratch} could not be dropped ({reason}); nothing was written to meta/.",
        f"see who holds it (SELECT pid, usename, application_name FROM pg_stat_activity WHERE datname = '{scratch}'), "
        f"end those sessions, DROP DATABASE {scratch}; then run snapshot again.",
    ) from failed
