"""The real `pulumi` CLI on the dev stack, local file backend, against a real PostgreSQL. Tests run in order."""

from __future__ import annotations

import json
import secrets
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from components.engine import migset
from components.engine.connection import ConnectionSettings
from components.engine.snapshot import generate
from devtools import localpg
from devtools.pulumi_project import ROLES, Project, dev_project
from tests.conftest import REPO
from tests.dbs import drop_database
from tests.integration.test_wishlist_items_migration import (
    CURRENCY_LABELS,
    EXPECTED_COLUMNS,
    EXPECTED_INDEXES,
    STORE_LABELS,
    enum_labels,
    q,
)


@dataclass
class Stack:
    project: Project
    db: ConnectionSettings
    passwords: dict[str, str]

    @property
    def workdir(self) -> Path:
        return self.project.workdir

    @property
    def env(self) -> dict[str, str]:
        return self.project.env

    @property
    def log(self) -> list[str]:
        return self.project.log

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.project.run(*args, check=check)

    def outputs(self) -> dict[str, Any]:
        return dict(json.loads(self.run("stack", "output", "--json").stdout))

    def as_role(self, role: str) -> ConnectionSettings:
        return replace(self.db, user=role, password=self.passwords[role])


@pytest.fixture(scope="module")
def stack(pg_cluster: localpg.Cluster, admin: ConnectionSettings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("e2e")
    dbname = f"e2e_{secrets.token_hex(4)}"
    with admin.connect() as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
    with admin.with_database(dbname).connect() as conn:
        conn.execute("GRANT CREATE ON SCHEMA public TO PUBLIC")  # what PostgreSQL 14 (still allowed in config) starts with
    passwords = {role: secrets.token_hex(16) for role in ROLES}
    project = dev_project(root, port=pg_cluster.port, dbname=dbname, admin_password=pg_cluster.admin_password, role_passwords=passwords)
    s = Stack(project, admin.with_database(dbname), passwords | {"admin": pg_cluster.admin_password})
    try:
        yield s
    finally:
        (root / "pulumi-commands.log").write_text("\n".join(s.log))
        s.run("destroy", "--yes", check=False)
        drop_database(admin, dbname)
        with admin.connect() as conn:
            for role in ROLES:
                conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


def test_1_preview_lists_the_pending_migration_and_writes_nothing(stack: Stack) -> None:
    preview = stack.run("preview", "--diff")
    out = preview.stdout
    assert "pulumi-python:dynamic/db:SchemaMigration" in out and "wishlist-schema" in out
    # The inputs carry version and checksum; the provider prints the SQL it will run (on the CLI's stderr).
    assert '"0007"' in out and "  | CREATE TABLE wishlist_items (" in preview.stderr
    assert q(stack.db, "SELECT to_regclass('wishlist_items'), to_regnamespace('migration_ledger')") == [(None, None)]
    assert q(stack.db, "SELECT count(*) FROM pg_roles WHERE rolname LIKE 'wishlist\\_%%' AND rolname <> 'wishlist_admin'") == [(0,)]
    plugins = subprocess.run(["pulumi", "plugin", "ls"], env=stack.env, text=True, capture_output=True, check=True).stdout
    assert "aws" not in plugins  # the dev stack never needs the AWS provider plugin, which cannot be built here


def test_2_up_creates_roles_grants_and_the_verified_schema(stack: Stack) -> None:
    stack.run("up", "--yes")
    cols = q(
        stack.as_role("wishlist_migrator"),  # information_schema shows only what the user may access; the migrator owns it
        "SELECT column_name, data_type, is_nullable, column_default FROM information_schema.columns"
        " WHERE table_name = 'wishlist_items' ORDER BY ordinal_position",
    )
    assert cols == EXPECTED_COLUMNS
    assert {r[0] for r in q(stack.db, "SELECT indexname FROM pg_indexes WHERE tablename = 'wishlist_items'")} == EXPECTED_INDEXES | {
        "wishlist_items_pkey"
    }
    assert enum_labels(stack.db, "wishlist_store") == STORE_LABELS and enum_labels(stack.db, "wishlist_currency") == CURRENCY_LABELS
    assert q(stack.db, "SELECT tableowner FROM pg_tables WHERE tablename = 'wishlist_items'") == [("wishlist_migrator",)]
    outputs = stack.outputs()
    expected = migset.load(REPO / "migrations/app").get("0007").fingerprint
    assert outputs["schema_version"] == "0007" and outputs["schema_fingerprint"] == expected
    assert outputs["roles"] == {"migrator": "wishlist_migrator", "app": "wishlist_app", "readonly": "wishlist_readonly"}

    with stack.as_role("wishlist_app").connect() as app:
        app.execute("INSERT INTO wishlist_items (user_id, title, store) VALUES ('u1', 'Hogwarts Castle', 'LEGO')")
        app.execute("UPDATE wishlist_items SET priority = 4 WHERE user_id = 'u1'")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            app.execute("CREATE TABLE app_made (id int)")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            app.execute("TRUNCATE wishlist_items")
    with stack.as_role("wishlist_readonly").connect() as ro:
        assert ro.execute("SELECT count(*) FROM wishlist_items").fetchone() == (1,)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            ro.execute("DELETE FROM wishlist_items")


def test_2a_least_privilege_holds_for_later_sequences_and_for_public(stack: Stack) -> None:
    """A later migration's serial column works for the app at once; PUBLIC keeps nothing on `public`."""
    assert q(stack.db, "SELECT has_schema_privilege('public', 'public', 'CREATE'), has_schema_privilege('public', 'public', 'USAGE')") == [
        (False, False)
    ]
    # PUBLIC keeps CONNECT on the database, not TEMPORARY: the read-only role makes no temp tables.
    with stack.as_role("wishlist_readonly").connect() as ro, pytest.raises(psycopg.errors.InsufficientPrivilege):
        ro.execute("CREATE TEMP TABLE scratch (x int)")
    with stack.as_role("wishlist_migrator").connect() as mig:
        mig.execute("CREATE TABLE later_serial (id serial PRIMARY KEY, note text)")  # as a later migration would
    try:
        with stack.as_role("wishlist_app").connect() as app:
            app.execute("INSERT INTO later_serial (note) VALUES ('first')")
            assert app.execute("SELECT currval('later_serial_id_seq')").fetchone() == (1,)
        with stack.as_role("wishlist_readonly").connect() as ro:
            assert ro.execute("SELECT last_value FROM later_serial_id_seq").fetchone() == (1,)
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                ro.execute("SELECT nextval('later_serial_id_seq')")
    finally:
        with stack.as_role("wishlist_migrator").connect() as mig:
            mig.execute("DROP TABLE later_serial")


def test_3_second_up_changes_nothing(stack: Stack) -> None:
    out = stack.run("up", "--yes").stdout
    assert "unchanged" in out and "updated" not in out and "created" not in out
    stack.run("preview", "--expect-no-changes")


def _add_migration(stack: Stack, admin: ConnectionSettings) -> None:
    set_dir = stack.workdir / "migrations/app"
    (set_dir / "0008_wishlist_price_alerts.sql").write_text(
        "CREATE TABLE wishlist_price_alerts (\n  id uuid PRIMARY KEY DEFAULT gen_random_uuid(),\n"
        "  item_id uuid NOT NULL REFERENCES wishlist_items(id) ON DELETE CASCADE,\n  target_price numeric(10, 2) NOT NULL\n);\n"
    )
    (set_dir / "0008_wishlist_price_alerts.down.sql").write_text("DROP TABLE wishlist_price_alerts;\n")
    generate(admin, set_dir)


def test_4_a_new_migration_shows_in_preview_and_up_applies_it(stack: Stack, admin: ConnectionSettings) -> None:
    _add_migration(stack, admin)
    preview = stack.run("preview", "--diff")
    out = preview.stdout
    assert "~ pulumi-python:dynamic/db:SchemaMigration" in out or "update" in out
    assert "0008" in out and "  | CREATE TABLE wishlist_price_alerts" in preview.stderr
    assert "CREATE TABLE wishlist_items" not in out + preview.stderr  # the applied version shows as version and checksum only
    assert q(stack.db, "SELECT to_regclass('wishlist_price_alerts')") == [(None,)]
    stack.run("up", "--yes")
    assert stack.outputs()["schema_version"] == "0008"
    # Default privileges owned by the migrator give the app role DML on the new table with no change to the grants.
    with stack.as_role("wishlist_app").connect() as app:
        assert app.execute("SELECT count(*) FROM wishlist_price_alerts").fetchone() == (0,)


def test_5_drift_made_by_hand_is_shown_and_up_does_not_pretend(stack: Stack) -> None:
    with stack.as_role("wishlist_migrator").connect() as conn:
        conn.execute("DROP INDEX idx_wishlist_user_priority")
    refresh = stack.run("refresh", "--yes")
    assert "idx_wishlist_user_priority is missing" in refresh.stdout + refresh.stderr
    preview = stack.run("preview", "--diff")
    assert "idx_wishlist_user_priority" in preview.stdout + preview.stderr
    assert stack.run("preview", "--expect-no-changes", check=False).returncode != 0
    up = stack.run("up", "--yes", check=False)
    assert up.returncode != 0 and "idx_wishlist_user_priority is missing" in up.stdout + up.stderr
    with stack.as_role("wishlist_migrator").connect() as conn:
        conn.execute("CREATE INDEX idx_wishlist_user_priority ON wishlist_items(user_id, priority)")
    stack.run("up", "--yes")
    stack.run("preview", "--expect-no-changes")


def test_6_an_edited_applied_file_fails_preview_naming_it(stack: Stack, admin: ConnectionSettings) -> None:
    path = stack.workdir / "migrations/app/0007_wishlist_items.sql"
    original = path.read_text()
    path.write_text(original.replace("'Other'", "'Other', 'Amazon'"))
    try:
        out = stack.run("preview", check=False)
        assert out.returncode != 0 and "0007_wishlist_items.sql" in out.stdout + out.stderr
        generate(admin, stack.workdir / "migrations/app")  # even with a regenerated journal
        out = stack.run("preview", check=False)
        assert out.returncode != 0 and "0007_wishlist_items.sql was edited after it was applied" in out.stdout + out.stderr
    finally:
        path.write_text(original)
        generate(admin, stack.workdir / "migrations/app")
    stack.run("preview", "--expect-no-changes")


def test_7_state_holds_no_password_in_plaintext(stack: Stack) -> None:
    exported = stack.run("stack", "export").stdout
    state_files = "".join(p.read_text(errors="replace") for p in (stack.workdir.parent / "state").rglob("*") if p.is_file())
    for role, password in stack.passwords.items():
        assert password not in exported, f"{role}'s password is in the exported state"
        assert password not in state_files, f"{role}'s password is in the backend's files"
        assert password not in "\n".join(stack.log), f"{role}'s password is in pulumi's output"
    assert '"password"' in exported and "ciphertext" in exported  # present, but encrypted
    # What the README says is stored, decrypted: the migration resource holds no password at all; the role passwords
    # are only the roles' write-only inputs.
    revealed = json.loads(stack.project.run("stack", "export", "--show-secrets", log=False).stdout)
    for resource in revealed["deployment"]["resources"]:
        text = json.dumps(resource)
        holders = [role for role, password in stack.passwords.items() if password in text]
        if resource["type"] == "pulumi-python:dynamic/db:SchemaMigration":
            assert holders == [], f"the migration resource holds the {holders} password"
        elif holders:
            assert resource["type"] in ("postgresql:index/role:Role", "pulumi:providers:postgresql"), (resource["type"], holders)


def _rename_migration(stack: Stack, new_name: str, *, alias: bool) -> None:
    main = stack.workdir / "__main__.py"
    text = main.read_text()
    current = text.split("migration = SchemaMigration(\n    ", 1)[1].split(",", 1)[0]
    text = text.replace(f"migration = SchemaMigration(\n    {current},", f'migration = SchemaMigration(\n    "{new_name}",')
    text = text.replace(
        "opts=pulumi.ResourceOptions(depends_on=[*target.ready, *access.ready], protect=cfg.protect)",
        "opts=pulumi.ResourceOptions(depends_on=[*target.ready, *access.ready], protect=cfg.protect"
        + (f", aliases=[pulumi.Alias(name={current})]" if alias else "")
        + ")",
    )
    assert f'"{new_name}"' in text
    main.write_text(text)


def test_7a_renaming_the_migration_with_an_alias_changes_nothing(stack: Stack) -> None:
    _rename_migration(stack, "wishlist-schema-renamed", alias=True)
    stack.run("preview", "--expect-no-changes")
    stack.run("up", "--yes", "--expect-no-changes")


def test_7b_renaming_the_migration_without_an_alias_keeps_the_table(stack: Stack) -> None:
    """Pulumi creates the new resource, then deletes the old one: the delete must drop nothing (dev drops on destroy)."""
    _rename_migration(stack, "wishlist-schema-again", alias=False)
    up = stack.run("up", "--yes").stdout
    assert "wishlist-schema-again" in up and "deleted" in up
    assert q(stack.db, "SELECT to_regclass('wishlist_items') IS NOT NULL, to_regtype('wishlist_store') IS NOT NULL") == [(True, True)]
    ledger = q(stack.as_role("wishlist_migrator"), "SELECT version FROM migration_ledger.applied ORDER BY version")
    assert [r[0] for r in ledger] == ["0007", "0008"]
    assert stack.outputs()["schema_version"] == "0008"


def test_8_destroy_leaves_no_table_enum_or_role(stack: Stack) -> None:
    stack.run("destroy", "--yes")
    assert q(
        stack.db,
        "SELECT to_regclass('wishlist_items'), to_regclass('wishlist_price_alerts'), to_regtype('wishlist_store'),"
        " to_regtype('wishlist_currency'), to_regnamespace('migration_ledger')",
    ) == [(None, None, None, None, None)]
    assert q(stack.db, "SELECT rolname FROM pg_roles WHERE rolname = ANY(%s)", (list(ROLES),)) == []
    for password in stack.passwords.values():
        assert password not in "\n".join(stack.log)
