"""A stack state written by the previous main (before the engine reshape) still previews and updates (issue #12).

The provider's class path is pickled into state, and its inputs changed shape: this proves the old state reads.
"""

from __future__ import annotations

import secrets
import tarfile
from dataclasses import replace
from pathlib import Path

from psycopg import sql

from components.engine.connection import ConnectionSettings
from devtools import localpg
from devtools.pulumi_project import PROJECT_FILES, REPO, ROLES, copy_project, dev_project
from tests.dbs import drop_database
from tests.integration.test_wishlist_items_migration import q

PREVIOUS_MAIN = "f2cfa51"  # the last main before RunOptions, migrate_to and the password-free provider inputs
# Its project files (`git archive f2cfa51 Pulumi.yaml Pulumi.dev.yaml __main__.py components migrations`), kept as a
# fixture so that the test needs no git history (CI may clone shallow).
FIXTURE = Path(__file__).parent / "fixtures" / f"previous-main-{PREVIOUS_MAIN}.tar.gz"


def _checkout(target: Path) -> Path:
    with tarfile.open(FIXTURE) as tar:
        tar.extractall(target, filter="data")
    return target


def test_a_state_written_by_the_previous_main_previews_and_updates(
    pg_cluster: localpg.Cluster, admin: ConnectionSettings, tmp_path: Path
) -> None:
    dbname = f"compat_{secrets.token_hex(4)}"
    with admin.connect() as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
    passwords = {role: secrets.token_hex(16) for role in ROLES}
    old = _checkout(tmp_path / "previous-main")
    project = dev_project(
        tmp_path / "run",
        port=pg_cluster.port,
        dbname=dbname,
        admin_password=pg_cluster.admin_password,
        role_passwords=passwords,
        source=old,
    )
    try:
        project.run("up", "--yes")
        db = admin.with_database(dbname)
        assert q(db, "SELECT to_regclass('wishlist_items') IS NOT NULL") == [(True,)]
        app = replace(db, user="wishlist_app", password=passwords["wishlist_app"])
        with app.connect() as conn:  # a row that must survive the upgrade: the schema is updated in place, never replaced
            conn.execute("INSERT INTO wishlist_items (user_id, title, store) VALUES ('u1', 'Millennium Falcon', 'LEGO')")
        # Today's code over the same workdir and state (the stack file keeps its salt and settings).
        copy_project(REPO, project.workdir, tuple(n for n in PROJECT_FILES if n != "Pulumi.dev.yaml"))
        project.run("config", "set", "--path", "wishlist:migrations.destroyDropsSchema", "true")
        preview = project.run("preview", "--diff").stdout
        assert "wishlist-schema" in preview
        # An update at most, never a replacement (which, with destroyDropsSchema on, would drop the table).
        assert not [line for line in preview.splitlines() if "wishlist-schema" in line and "replace" in line], preview
        up = project.run("up", "--yes").stdout
        assert "replaced" not in up and "deleted" not in up, up
        assert q(app, "SELECT title FROM wishlist_items") == [("Millennium Falcon",)]
        project.run("up", "--yes", "--expect-no-changes")
        assert project.run("stack", "output", "schema_version").stdout.strip() == "0007"
        project.run("destroy", "--yes")
        assert q(db, "SELECT to_regclass('wishlist_items')") == [(None,)]
    finally:
        project.run("destroy", "--yes", check=False)
        drop_database(admin, dbname)
        with admin.connect() as conn:
            for role in ROLES:
                conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))
