"""The dynamic provider's methods called directly against a real PostgreSQL (no Pulumi engine)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from components.engine import migset
from components.engine.connection import ConnectionSettings
from components.engine.snapshot import generate
from components.schema_migration import UNKNOWN, SchemaMigrationProvider
from devtools.provider_props import provider_inputs
from tests.integration.test_wishlist_items_migration import ledger_rows, q


def props_for(db: ConnectionSettings, set_dir: Path, **extra: Any) -> dict[str, Any]:
    defaults = {"connect_timeout": 5, "stack": "wishlist-infra/test", "lock_wait_ms": 5000}
    # loaded as the program loads it: files are parsed by the run that needs them
    return provider_inputs(db, migset.load(set_dir, parse=False), **{**defaults, **extra})


def test_create_diff_update_read_delete(fresh_db: ConnectionSettings, set_copy: Path, admin: ConnectionSettings) -> None:
    provider = SchemaMigrationProvider()
    props = props_for(fresh_db, set_copy)
    created = provider.create(props)
    outs = created.outs
    assert outs["applied_version"] == "0007" and outs["applied"][0]["version"] == "0007"
    assert outs["fingerprint"] == props["expected_fingerprint"] and outs["drift"] == []
    assert created.id.startswith("wishlist-infra/test:")

    assert provider.diff(created.id, outs, props).changes is False  # nothing to do

    (set_copy / "0008_theme.sql").write_text("ALTER TABLE wishlist_items ADD COLUMN theme text;\n")
    generate(admin, set_copy)
    news = props_for(fresh_db, set_copy)
    assert provider.diff(created.id, outs, news).changes is True
    updated = provider.update(created.id, outs, news).outs
    assert updated["applied_version"] == "0008" and [a["version"] for a in updated["applied"]] == ["0007", "0008"]

    with fresh_db.connect() as conn:
        conn.execute("DROP INDEX idx_wishlist_user_priority")
    read = provider.read(created.id, updated)
    assert read.outs["drift"] == [d for d in read.outs["drift"] if "idx_wishlist_user_priority" in d] != []
    assert read.inputs is not None and "password" not in read.inputs
    assert fresh_db.password and fresh_db.password not in json.dumps([props, outs, updated, read.outs, read.inputs])
    assert provider.diff(created.id, read.outs, news).changes is True
    with pytest.raises(Exception, match="idx_wishlist_user_priority is missing"):
        provider.update(created.id, read.outs, news)

    provider.delete(created.id, updated)  # destroy_drops_schema is off: nothing dropped
    assert [r[0] for r in ledger_rows(fresh_db)] == ["0007", "0008"]


def test_delete_with_destroy_drops_schema_drops_everything(fresh_db: ConnectionSettings, set_copy: Path) -> None:
    provider = SchemaMigrationProvider()
    props = props_for(fresh_db, set_copy, destroy_drops_schema=True)
    created = provider.create(props)
    provider.delete(created.id, created.outs)
    assert q(fresh_db, "SELECT to_regclass('wishlist_items'), to_regtype('wishlist_store')") == [(None, None)]
    assert ledger_rows(fresh_db) == []


def test_allow_rollback_alone_does_not_drop_on_delete(fresh_db: ConnectionSettings, set_copy: Path) -> None:
    provider = SchemaMigrationProvider()
    created = provider.create(props_for(fresh_db, set_copy, allow_rollback=True))
    provider.delete(created.id, created.outs)
    assert [r[0] for r in ledger_rows(fresh_db)] == ["0007"]


def test_deleting_the_old_copy_of_a_renamed_resource_drops_nothing(fresh_db: ConnectionSettings, set_copy: Path) -> None:
    """A rename without an alias: Pulumi creates the new resource, then deletes the old one."""
    provider = SchemaMigrationProvider()
    props = props_for(fresh_db, set_copy, destroy_drops_schema=True)
    old = provider.create(props)
    new = provider.create(props)  # finds nothing to apply, takes the schema over
    assert new.outs["applied_version"] == "0007" and new.id != old.id
    provider.delete(old.id, old.outs)
    assert [r[0] for r in ledger_rows(fresh_db)] == ["0007"]
    assert q(fresh_db, "SELECT to_regclass('wishlist_items') IS NOT NULL") == [(True,)]
    provider.delete(new.id, new.outs)  # the owner's own destroy still rolls back
    assert ledger_rows(fresh_db) == []


def test_lower_target_is_refused_unless_rollback_allowed(fresh_db: ConnectionSettings, set_copy: Path) -> None:
    provider = SchemaMigrationProvider()
    outs = provider.create(props_for(fresh_db, set_copy)).outs
    with pytest.raises(Exception, match="was not allowed"):
        provider.update("x", outs, props_for(fresh_db, set_copy, target_version="0"))
    assert [r[0] for r in ledger_rows(fresh_db)] == ["0007"]
    back = provider.update("x", outs, props_for(fresh_db, set_copy, target_version="0", allow_rollback=True)).outs
    assert back["applied_version"] is None and ledger_rows(fresh_db) == []


def test_diff_refuses_a_tampered_applied_file(fresh_db: ConnectionSettings, set_copy: Path, admin: ConnectionSettings) -> None:
    provider = SchemaMigrationProvider()
    outs = provider.create(props_for(fresh_db, set_copy)).outs
    up = set_copy / "0007_wishlist_items.sql"
    up.write_text(up.read_text() + "\nCREATE INDEX idx_extra ON wishlist_items (title);\n")
    generate(admin, set_copy)
    with pytest.raises(Exception, match=r"0007_wishlist_items\.sql was edited after it was applied"):
        provider.diff("x", outs, props_for(fresh_db, set_copy))


def test_diff_with_unknown_inputs_does_not_connect(set_copy: Path) -> None:
    props = props_for(ConnectionSettings(host=UNKNOWN, port=1, dbname="d", user="u"), set_copy)
    assert SchemaMigrationProvider().diff("x", {}, props).changes is True


def test_wrong_database_owner_is_refused(fresh_db: ConnectionSettings, set_copy: Path) -> None:
    provider = SchemaMigrationProvider()
    provider.create(props_for(fresh_db, set_copy, stack="wishlist-infra/prod"))
    with pytest.raises(Exception, match="owned by stack 'wishlist-infra/prod', but this is stack 'wishlist-infra/staging'"):
        provider.diff("x", {}, props_for(fresh_db, set_copy, stack="wishlist-infra/staging"))


def test_import_from_an_id_points_to_adopt() -> None:
    """`pulumi import` calls read with the id alone: the error says how to bring an existing schema under Pulumi."""
    with pytest.raises(Exception, match=r"cannot be imported from its id .*python -m components.migrate adopt VERSION") as err:
        SchemaMigrationProvider().read("wishlist-infra/prod:abc", {})
    assert "\n" not in str(err.value)


def test_no_aws_credentials_is_one_line(fresh_db: ConnectionSettings, set_copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # never ask an instance metadata address
    props = props_for(fresh_db, set_copy, auth="iam", region="us-east-1")
    with pytest.raises(Exception) as err:
        SchemaMigrationProvider().create(props)
    text = str(err.value)
    assert text.startswith("ConnectFailed: no AWS credentials to sign an IAM token") and "\n" not in text
    assert "Traceback" not in text


def test_preview_without_a_database_counts_only_versions_up_to_the_target(
    fresh_db: ConnectionSettings, set_copy: Path, admin: ConnectionSettings
) -> None:
    provider = SchemaMigrationProvider()
    outs = provider.create(props_for(fresh_db, set_copy)).outs
    (set_copy / "0008_theme.sql").write_text("ALTER TABLE wishlist_items ADD COLUMN theme text;\n")
    generate(admin, set_copy)
    unreachable = replace(fresh_db, port=1)
    # The target stays at 0007: 0008 on disk is not a pending change of this stack.
    news = props_for(unreachable, set_copy, target_version="0007")
    olds = {**outs, **{k: news[k] for k in ("host", "port", "migrations")}}
    assert provider.diff("x", olds, news).changes is False
    assert provider.diff("x", olds, props_for(unreachable, set_copy)).changes is True


def test_preview_without_a_database_still_parses_the_down_files_a_rollback_would_run(
    fresh_db: ConnectionSettings, set_copy: Path, admin: ConnectionSettings
) -> None:
    (set_copy / "0008_theme.sql").write_text("ALTER TABLE wishlist_items ADD COLUMN theme text;\n")
    (set_copy / "0008_theme.down.sql").write_text("ALTER TABLE wishlist_items DROP COLUMN theme;\n")
    generate(admin, set_copy)
    provider = SchemaMigrationProvider()
    outs = provider.create(props_for(fresh_db, set_copy)).outs
    # the down file broken after it was journaled (its new hash recorded): a COMMIT the engine refuses
    down = set_copy / "0008_theme.down.sql"
    down.write_text("ALTER TABLE wishlist_items DROP COLUMN theme;\nCOMMIT;\n")
    journal_path = set_copy / "meta/_journal.json"
    journal = json.loads(journal_path.read_text())
    for entry in journal["entries"]:
        if entry["version"] == "0008":
            entry["down"]["sha256"] = migset.sha256_hex(down.read_bytes())
    journal_path.write_text(json.dumps(journal, indent=2) + "\n")
    news = props_for(replace(fresh_db, port=1), set_copy, target_version="0007")
    with pytest.raises(Exception, match=r"0008_theme\.down\.sql") as err:
        provider.diff("x", {**outs, **{k: news[k] for k in ("host", "port", "migrations")}}, news)
    assert "COMMIT" in str(err.value)


def test_destroy_drops_schema_without_a_stack_is_refused_at_check(fresh_db: ConnectionSettings, set_copy: Path) -> None:
    props = props_for(fresh_db, set_copy, destroy_drops_schema=True, stack=None)
    failures = SchemaMigrationProvider().check({}, props).failures
    assert [f.property for f in failures] == ["destroy_drops_schema"]


def test_a_refused_login_fails_the_preview_instead_of_judging_from_state(fresh_db: ConnectionSettings, set_copy: Path) -> None:
    """A wrong password must not turn into 'unchanged': only an unreachable server falls back to the stack state."""
    provider = SchemaMigrationProvider()
    outs = provider.create(props_for(fresh_db, set_copy)).outs
    wrong = props_for(replace(fresh_db, password="not-the-password"), set_copy)
    with pytest.raises(Exception, match=r"ConnectFailed: cannot connect .*password authentication failed") as err:
        provider.diff("x", {**outs, "host": wrong["host"]}, wrong)
    assert "not-the-password" not in str(err.value)
    assert provider.diff("x", outs, props_for(replace(fresh_db, port=1), set_copy)).changes is not None  # unreachable: falls back


def test_preview_logs_the_measured_lock_and_live_size_of_each_pending_statement(
    fresh_db: ConnectionSettings, set_copy: Path, admin: ConnectionSettings, capsys: pytest.CaptureFixture[str]
) -> None:
    provider = SchemaMigrationProvider()
    created = provider.create(props_for(fresh_db, set_copy))
    (set_copy / "0008_priority.sql").write_text("ALTER TABLE wishlist_items ALTER COLUMN priority TYPE bigint;\n")
    generate(admin, set_copy)
    capsys.readouterr()
    assert provider.diff(created.id, created.outs, props_for(fresh_db, set_copy)).changes is True
    err = capsys.readouterr().err
    assert "[schema-migration] plan: up 0008_priority" in err
    assert (
        "[schema-migration] trace: 0008 line 1: ACCESS EXCLUSIVE on wishlist_items (blocks reads, writes); rewrites; ~0 rows, "
        in err.replace("rows unknown (never analysed)", "~0 rows")
    ), err


def test_preview_shows_pending_sql_only_and_an_old_state_with_sql_in_its_inputs_is_no_change(
    fresh_db: ConnectionSettings, set_copy: Path, admin: ConnectionSettings, capsys: pytest.CaptureFixture[str]
) -> None:
    provider = SchemaMigrationProvider()
    props = props_for(fresh_db, set_copy)
    assert [sorted(m) for m in props["migrations"]] == [["checksum", "down_checksum", "name", "transactional", "version"]]
    created = provider.create(props)
    # A state written before this change carries every version's SQL in its inputs: reading it is not a change.
    old_state = {**created.outs, "migrations": [{**m, "sql": ["CREATE TABLE ..."]} for m in created.outs["migrations"]]}
    assert provider.diff(created.id, old_state, props_for(fresh_db, set_copy)).changes is False

    (set_copy / "0008_theme.sql").write_text("-- theme per item\nALTER TABLE wishlist_items ADD COLUMN theme text;\n")
    generate(admin, set_copy)
    capsys.readouterr()
    assert provider.diff(created.id, old_state, props_for(fresh_db, set_copy)).changes is True
    err = capsys.readouterr().err
    assert (
        "[schema-migration] pending SQL of 0008_theme:\n  | -- theme per item\n  | ALTER TABLE wishlist_items ADD COLUMN theme text;\n"
        in err
    ), err
    assert "CREATE TABLE wishlist_items" not in err  # the applied version's SQL is not repeated


def test_the_first_preview_of_a_new_resource_shows_all_its_sql(
    fresh_db: ConnectionSettings, set_copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A create is not diffed: check shows the SQL it will run (every version up to the target)."""
    provider = SchemaMigrationProvider()
    props = props_for(fresh_db, set_copy)
    capsys.readouterr()
    provider.check({}, props)
    err = capsys.readouterr().err
    assert "[schema-migration] pending SQL of 0007_wishlist_items:\n" in err and "\n  | CREATE TABLE wishlist_items (\n" in err
    provider.check(props, props)  # an existing resource: its diff shows the pending SQL
    assert "CREATE TABLE" not in capsys.readouterr().err
