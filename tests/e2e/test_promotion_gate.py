"""The promotion gate with two stacks under the real CLI: the gated stack refuses what its source has not applied."""

from __future__ import annotations

import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from components.engine.connection import ConnectionSettings
from devtools import localpg
from devtools.pulumi_project import ROLES, Project, dev_project
from tests.integration.test_wishlist_items_migration import q


@pytest.fixture(scope="module")
def two_stacks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Project, Project, ConnectionSettings]]:
    """`dev` (the source, think staging) and `gated` (think prod), one project, one backend, two clusters."""
    roots = [Path(tempfile.mkdtemp(prefix="wishlist-gate-pg-")) for _ in range(2)]
    clusters = [localpg.init_cluster(r, localpg.free_port(), secrets.token_hex(12)) for r in roots]
    passwords = {r: secrets.token_hex(12) for r in ROLES}
    root = tmp_path_factory.mktemp("gate")
    source = dev_project(
        root, port=clusters[0].port, dbname="wishlist", admin_password=clusters[0].admin_password, role_passwords=passwords
    )
    shutil.copy(source.workdir / "Pulumi.dev.yaml", source.workdir / "Pulumi.gated.yaml")
    gated = Project(source.workdir, {**source.env, "WISHLIST_ADMIN_PASSWORD": clusters[1].admin_password}, stack="gated")
    gated.run("stack", "init")
    gated.run("config", "set", "--path", "wishlist:db.port", str(clusters[1].port))
    gated.run("config", "set", "--path", "wishlist:migrations.requireAppliedIn", "dev")
    target = ConnectionSettings(
        port=clusters[1].port, dbname="wishlist", user=localpg.ADMIN_USER, password=clusters[1].admin_password, sslmode="disable"
    )
    try:
        yield source, gated, target
    finally:
        for project in (gated, source):
            project.run("destroy", "--yes", check=False)
        for cluster in clusters:
            cluster.destroy()


def test_gated_stack_refuses_until_the_source_stack_applied_the_version(two_stacks: tuple[Project, Project, ConnectionSettings]) -> None:
    source, gated, target = two_stacks
    preview = gated.run("preview")
    assert (
        "promotion gate (dev): applied there and cleared none; not yet applied there 0007_wishlist_items" in preview.stdout + preview.stderr
    )
    up = gated.run("up", "--yes", check=False)
    assert up.returncode != 0
    assert "0007_wishlist_items not yet applied (with the same checksum) in stack 'dev'" in up.stdout + up.stderr
    assert "pulumi up --stack dev" in up.stdout + up.stderr
    assert q(target, "SELECT to_regclass('wishlist_items')") == [(None,)]

    source.run("up", "--yes")
    preview = gated.run("preview")
    assert (
        "promotion gate (dev): applied there and cleared 0007_wishlist_items; not yet applied there none" in preview.stdout + preview.stderr
    )
    gated.run("up", "--yes")
    assert q(target, "SELECT to_regclass('wishlist_items') IS NOT NULL") == [(True,)]
    gated.run("preview", "--expect-no-changes")
