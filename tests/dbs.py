"""Dropping a test's database the way the engine drops its scratch database."""

from __future__ import annotations

from components.engine.connection import ConnectionSettings


def drop_database(admin: ConnectionSettings, name: str) -> None:
    """FORCE first, for a test's own sessions still open; a plain DROP when FORCE refuses a non-superuser because an
    autovacuum worker is connected (the plain DROP ends autovacuum workers itself)."""
    import psycopg
    from psycopg import sql

    with admin.connect(autocommit=True) as conn:
        try:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        except psycopg.errors.InsufficientPrivilege:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))
