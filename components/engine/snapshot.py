"""Produce meta/ (journal + per-version snapshots) by applying the set to a throwaway database."""

from __future__ import annotations

import json
import secrets
from pathlib import Path

from psycopg import sql

from . import catalog as cat
from .connection import ConnectionSettings
from .errors import SetError, StatementFailed
from .migset import NO_TRANSACTION, MigrationSet, file_statements, scan, write_meta
from .sqltext import header_markers


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
    """Apply every file in order to a new database, introspect after each, write meta/. Needs CREATEDB."""
    schema = schema or current_schema(directory)
    return write_meta(directory, schema, build(settings, directory, schema))


def replay(settings: ConnectionSettings, mset: MigrationSet) -> list[str]:
    """Apply the loaded set to a throwaway database: the versions whose catalog differs from their snapshot."""
    built = build(settings, mset.directory, mset.schema)
    return [m.version for m in mset.migrations if m.fingerprint is not None and cat.fingerprint(built[m.version]) != m.fingerprint]


def build(settings: ConnectionSettings, directory: Path, schema: str) -> dict[str, cat.Catalog]:
    """The catalog after each version, from applying every file in order to a new database. Needs CREATEDB."""
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
        snapshots: dict[str, cat.Catalog] = {}
        with settings.with_database(scratch).connect(autocommit=True, search_path=schema) as conn:
            conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
            for f, transactional, statements in parsed:
                try:
                    if transactional:
                        with conn.transaction():
                            for stmt in statements:
                                conn.execute(stmt.text.encode(), prepare=False)
                    else:
                        for stmt in statements:
                            conn.execute(stmt.text.encode(), prepare=False)
                except Exception as exc:
                    raise StatementFailed(
                        f"{f.up} does not apply on a fresh database: {str(exc).strip().splitlines()[0] if str(exc).strip() else exc!r}.",
                        "fix the SQL and run snapshot again.",
                    ) from None
                snapshots[f.version] = cat.introspect(conn, schema)
        return snapshots
    finally:
        with settings.connect(autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(scratch)))
