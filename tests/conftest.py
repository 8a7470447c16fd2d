"""Fixtures that start servers: one throwaway PostgreSQL cluster per test session, a fresh database per test."""

from __future__ import annotations

import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from components.engine.connection import ConnectionSettings
from devtools import localpg
from tests.dbs import drop_database

REPO = Path(__file__).resolve().parent.parent
APP_SET = REPO / "migrations" / "app"


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[localpg.Cluster]:
    """A real PostgreSQL on 127.0.0.1, admin role like an RDS master user (CREATEROLE CREATEDB, no superuser)."""
    with localpg.temp_cluster("wishlist-test-pg-") as cluster:
        yield cluster


@pytest.fixture(scope="module")
def dedicated_cluster() -> Iterator[localpg.Cluster]:
    """A cluster of the module's own, for tests that restart the server (the session cluster must stay up)."""
    with localpg.temp_cluster("wishlist-dedicated-pg-") as cluster:
        yield cluster


@pytest.fixture(scope="session")
def admin(pg_cluster: localpg.Cluster) -> ConnectionSettings:
    return ConnectionSettings(
        host="127.0.0.1",
        port=pg_cluster.port,
        dbname="wishlist",
        user=localpg.ADMIN_USER,
        password=pg_cluster.admin_password,
        sslmode="disable",
        connect_timeout=5,
    )


@pytest.fixture
def fresh_db(admin: ConnectionSettings, pg_cluster: localpg.Cluster) -> Iterator[ConnectionSettings]:
    """An empty database owned by the admin role, dropped after the test."""
    import psycopg
    from psycopg import sql

    name = f"t_{secrets.token_hex(5)}"
    with admin.connect() as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield admin.with_database(name)
    finally:
        try:
            drop_database(admin, name)
        except psycopg.errors.InsufficientPrivilege:
            # A session of another role (a test's role, a subprocess applier still exiting) is connected: only a
            # superuser may end it. The name is ours (t_ + hex), so it needs no quoting beyond the double quotes.
            pg_cluster.superuser_psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def set_copy(tmp_path: Path) -> Path:
    """A private copy of the app migration set that a test may edit."""
    target = tmp_path / "app"
    shutil.copytree(APP_SET, target)
    return target


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print the reliability tally (faults injected and survived, bad inputs tried) when any was recorded."""
    from tests.integration import reliability

    lines = reliability.summary_lines()
    if lines:
        terminalreporter.section("reliability")
        for line in lines:
            terminalreporter.write_line(line)
        path = reliability.save()
        terminalreporter.write_line(f"saved to {path}")
