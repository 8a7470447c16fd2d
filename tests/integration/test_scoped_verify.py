"""Verification that reads only what a step changed: everything the full read would catch is still caught."""

from __future__ import annotations

import dataclasses
import json
import re
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from components.engine import catalog as cat
from components.engine import migset, runner
from components.engine.connection import ConnectionSettings
from components.engine.engine import Engine
from components.engine.errors import VerifyFailed
from components.engine.snapshot import generate
from devtools import localpg
from tests.integration.test_wishlist_items_migration import ledger_rows

# Three small migrations after 0007; the middle one is the one tampered with, so that it is verified by the scoped read
# (the last step of a run always reads the whole schema).
BASE = {
    "0008": "CREATE TABLE a (id int PRIMARY KEY, note text);\nCREATE TABLE c (id int PRIMARY KEY, a_id int REFERENCES a (id));\n"
    "CREATE TABLE e (id int PRIMARY KEY, note text);\nCREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1';\n",
    "0009": "CREATE TABLE b (id int PRIMARY KEY, note text);\n",
    "0010": "CREATE TABLE d (id int PRIMARY KEY);\n",
}


@pytest.fixture(autouse=True)
def _scoped_even_for_a_small_schema(monkeypatch: pytest.MonkeyPatch) -> None:
    """The wishlist schema is below runner.SCOPED_FROM: make every middle step use the scoped read."""
    monkeypatch.setattr(runner, "SCOPED_FROM", 0)


def _set(set_copy: Path, admin: ConnectionSettings, middle: str | None = None) -> migset.MigrationSet:
    """The set with snapshots from BASE; `middle` then replaces 0009's file (journal patched: only verify can notice)."""
    for version, sql in BASE.items():
        (set_copy / f"{version}_step.sql").write_text(sql)
    generate(admin, set_copy)
    if middle is not None:
        path = set_copy / "0009_step.sql"
        path.write_text(middle)
        journal_path = set_copy / "meta/_journal.json"
        journal = json.loads(journal_path.read_text())
        for entry in journal["entries"]:
            if entry["version"] == "0009":
                entry["up"]["sha256"] = migset.sha256_hex(path.read_bytes())
        journal_path.write_text(json.dumps(journal, indent=2, sort_keys=True) + "\n")
    return migset.load(set_copy)


def _count_calls(monkeypatch: pytest.MonkeyPatch, name: str) -> list[Any]:
    calls: list[Any] = []
    original: Callable[..., Any] = getattr(cat, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        result = original(*args, **kwargs)
        calls.append(result)
        return result

    monkeypatch.setattr(cat, name, wrapper)
    return calls


def test_a_bulk_apply_reads_the_whole_schema_only_before_and_at_the_end(
    fresh_db: ConnectionSettings, set_copy: Path, admin: ConnectionSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    mset = _set(set_copy, admin)
    full = _count_calls(monkeypatch, "verifiable_result")
    scoped = _count_calls(monkeypatch, "scoped_result")
    result = Engine(fresh_db, mset).apply()
    assert [r["version"] for r in result.ran] == ["0007", "0008", "0009", "0010"]
    # pre-check, then 0007-0009 proven from what they changed, then 0010 (the last) read whole
    assert len(full) == 2 and len(scoped) == 3 and all(v is not None for v in scoped)
    assert [r["fingerprint"] for r in result.ran] == [mset.get(v).fingerprint for v in ("0007", "0008", "0009", "0010")]
    assert Engine(fresh_db, mset).verify().ok


TAMPERED = {
    "drops an index of another table": ("DROP INDEX idx_wishlist_user_priority;", "index idx_wishlist_user_priority is missing"),
    "renames a column of another table": (
        "ALTER TABLE wishlist_items RENAME COLUMN notes TO remarks;",
        "column wishlist_items.notes is missing",
    ),
    "drops a check of another table": (
        "ALTER TABLE wishlist_items DROP CONSTRAINT priority_range_check;",
        "constraint wishlist_items.priority_range_check is missing",
    ),
    "drops a foreign key of another table": ("ALTER TABLE c DROP CONSTRAINT c_a_id_fkey;", "constraint c.c_a_id_fkey is missing"),
    "sets NOT NULL on another table": ("ALTER TABLE a ALTER COLUMN note SET NOT NULL;", "column a.note differs"),
    "changes a default of another table": (
        "ALTER TABLE wishlist_items ALTER COLUMN notes SET DEFAULT 'x';",
        "column wishlist_items.notes differs",
    ),
    "adds a value to an enum": ("ALTER TYPE wishlist_store ADD VALUE 'Mega';", "enum wishlist_store differs"),
    "builds an index inside a subtransaction": (
        "DO $$ BEGIN CREATE INDEX by_hand ON a (note); EXCEPTION WHEN others THEN NULL; END $$;",
        "index by_hand is not expected",
    ),
    "replaces a function's body": ("CREATE OR REPLACE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 2';", "function f() differs"),
    "moves a table to another schema": ("CREATE SCHEMA elsewhere; ALTER TABLE e SET SCHEMA elsewhere;", "table e is missing"),
    "renames a table into the name the step creates": (
        "ALTER TABLE e RENAME TO b; ALTER INDEX e_pkey RENAME TO b_pkey;",
        "table e is missing",
    ),
    # Tried against the lookup by lock (session 3): each writes somewhere the step's own locks may not lead to.
    "alters another table through a SECURITY DEFINER function": (
        "CREATE FUNCTION sneak() RETURNS void LANGUAGE plpgsql SECURITY DEFINER AS $$ BEGIN"
        " EXECUTE 'ALTER TABLE a ALTER COLUMN note SET NOT NULL'; END $$; SELECT sneak(); DROP FUNCTION sneak();",
        "column a.note differs",
    ),
    "alters another table from a trigger fired by an insert": (
        "CREATE FUNCTION trg() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
        " EXECUTE 'ALTER TABLE e ALTER COLUMN note SET DEFAULT ''z'''; RETURN NEW; END $$;"
        " CREATE TRIGGER t BEFORE INSERT ON b FOR EACH ROW EXECUTE FUNCTION trg(); INSERT INTO b VALUES (1);"
        " DROP TRIGGER t ON b; DROP FUNCTION trg();",
        "column e.note differs",
    ),
    "creates and drops a table, then changes another": (
        "CREATE TABLE tmp1 (i int); DROP TABLE tmp1; ALTER TABLE a ALTER COLUMN note SET NOT NULL;",
        "column a.note differs",
    ),
    "locks many tables and changes one": (
        "LOCK TABLE a, c, e IN SHARE MODE; ALTER TABLE c ALTER COLUMN a_id SET NOT NULL;",
        "column c.a_id differs",
    ),
    "alters another table in a subtransaction that commits": (
        "DO $$ BEGIN BEGIN ALTER TABLE a ALTER COLUMN note SET NOT NULL; EXCEPTION WHEN others THEN NULL; END; END $$;",
        "column a.note differs",
    ),
    "adds a sequence owned by another table's column": (
        "CREATE SEQUENCE s1; ALTER SEQUENCE s1 OWNED BY a.note;",
        "sequence s1 is not expected",
    ),
    "adds a partitioned table": (
        "CREATE TABLE p (k int) PARTITION BY RANGE (k); CREATE TABLE p1 PARTITION OF p FOR VALUES FROM (0) TO (10);",
        "table p is not expected",
    ),
    "adds a column of a domain type to another table": (
        "CREATE DOMAIN dd AS int DEFAULT 3; ALTER TABLE a ADD COLUMN q dd;",
        "column a.q is not expected",
    ),
    "creates a temporary table and changes another": (
        "CREATE TEMP TABLE tt (i int); ALTER TABLE a ALTER COLUMN note SET NOT NULL;",
        "column a.note differs",
    ),
}


@pytest.mark.parametrize("case", sorted(TAMPERED))
def test_a_middle_step_that_does_more_than_its_snapshot_is_rolled_back(
    case: str, fresh_db: ConnectionSettings, set_copy: Path, admin: ConnectionSettings
) -> None:
    extra, message = TAMPERED[case]
    middle = extra + "\n" if "RENAME TO b" in extra else BASE["0009"] + extra + "\n"
    mset = _set(set_copy, admin, middle)
    with pytest.raises(VerifyFailed, match=re.escape(message)) as failure:
        Engine(fresh_db, mset).apply()
    assert "0009" in str(failure.value) and "rolled back" in str(failure.value)
    assert [r[0] for r in ledger_rows(fresh_db)] == ["0007", "0008"]
    assert Engine(fresh_db, migset.load(set_copy)).verify().version == "0008"


def test_drift_by_another_session_during_a_run_is_caught_before_it_ends(
    fresh_db: ConnectionSettings, set_copy: Path, admin: ConnectionSettings
) -> None:
    """A drop by another session leaves no row to read: the scoped read of 0009 cannot see it, the full read of 0010 does."""
    mset = _set(set_copy, admin)
    dropped: list[str] = []

    def progress(message: str) -> None:
        if message.startswith("0009_step (up): 1 statement") and not dropped:
            with fresh_db.connect(autocommit=True) as other:
                other.execute("DROP INDEX idx_wishlist_user_store")
            dropped.append(message)

    with pytest.raises(VerifyFailed, match="index idx_wishlist_user_store is missing") as failure:
        Engine(fresh_db, mset, progress=progress).apply()
    assert dropped and "0010" in str(failure.value)
    assert [r[0] for r in ledger_rows(fresh_db)] == ["0007", "0008", "0009"]
    report = Engine(fresh_db, migset.load(set_copy)).verify()
    assert [(d.key, d.change) for d in report.differences] == [("index:idx_wishlist_user_store", "missing")]


def test_a_change_to_a_catalog_the_scoped_proof_does_not_follow_sends_the_step_to_the_whole_read(
    fresh_db: ConnectionSettings, set_copy: Path, admin: ConnectionSettings
) -> None:
    """Renaming a text search configuration two steps after it was made (found by a breaking review): not committed."""
    files = {
        "0008": "CREATE TABLE a (id int PRIMARY KEY, note text);\nCREATE TEXT SEARCH CONFIGURATION cfg (COPY = english);\n"
        "CREATE INDEX a_fts ON a USING gin (to_tsvector('cfg'::regconfig, note));\n",
        "0009": "CREATE TABLE b (id int PRIMARY KEY);\n",
        "0010": "CREATE TABLE d (id int PRIMARY KEY);\n",
        "0011": "CREATE TABLE g (id int PRIMARY KEY);\n",
    }
    for version, text in files.items():
        (set_copy / f"{version}_step.sql").write_text(text)
    generate(admin, set_copy)
    path = set_copy / "0010_step.sql"
    path.write_text(files["0010"] + "ALTER TEXT SEARCH CONFIGURATION cfg RENAME TO cfg2;\n")
    journal_path = set_copy / "meta/_journal.json"
    journal = json.loads(journal_path.read_text())
    for entry in journal["entries"]:
        if entry["version"] == "0010":
            entry["up"]["sha256"] = migset.sha256_hex(path.read_bytes())
    journal_path.write_text(json.dumps(journal, indent=2, sort_keys=True) + "\n")
    with pytest.raises(VerifyFailed, match="0010_step"):
        Engine(fresh_db, migset.load(set_copy)).apply()
    assert [r[0] for r in ledger_rows(fresh_db)] == ["0007", "0008", "0009"]


def test_a_catalog_write_that_takes_no_lock_on_the_table_it_changes_is_still_caught(
    fresh_db: ConnectionSettings, set_copy: Path, admin: ConnectionSettings, pg_cluster: localpg.Cluster
) -> None:
    """The scoped read finds a step's rows from the relations it locked, and proves by the server's write counts that
    there are no others. A superuser's UPDATE of pg_attribute locks no table: the counts differ, the catalog is scanned."""
    role, password = f"su_{secrets.token_hex(4)}", secrets.token_hex(12)
    pg_cluster.superuser_psql(f"CREATE ROLE {role} SUPERUSER LOGIN PASSWORD '{password}'")
    try:
        superuser = dataclasses.replace(fresh_db, user=role, password=password)
        middle = (
            BASE["0009"] + "UPDATE pg_catalog.pg_attribute SET attnotnull = true WHERE attrelid = 'a'::regclass AND attname = 'note';\n"
        )
        mset = _set(set_copy, admin, middle)
        with pytest.raises(VerifyFailed, match=re.escape("column a.note differs")) as failure:
            Engine(superuser, mset).apply()
        assert "0009" in str(failure.value) and "rolled back" in str(failure.value)
        assert [r[0] for r in ledger_rows(superuser)] == ["0007", "0008"]
    finally:
        pg_cluster.superuser_psql(f"REASSIGN OWNED BY {role} TO {admin.user}; DROP OWNED BY {role}", dbname=fresh_db.dbname)
        pg_cluster.superuser_psql(f"DROP ROLE {role}")


def test_a_migration_that_forges_the_write_counts_is_still_rolled_back(
    fresh_db: ConnectionSettings, set_copy: Path, admin: ConnectionSettings
) -> None:
    """The counts the scoped read compares with live in a setting of the transaction, which the migration can set."""
    middle = BASE["0009"] + "ALTER TABLE a ALTER COLUMN note SET NOT NULL;\nSELECT set_config('wishlist.xact_writes', '{}', true);\n"
    mset = _set(set_copy, admin, middle)
    with pytest.raises(VerifyFailed, match=re.escape("column a.note differs")) as failure:
        Engine(fresh_db, mset).apply()
    assert "0009" in str(failure.value) and "rolled back" in str(failure.value)
    assert [r[0] for r in ledger_rows(fresh_db)] == ["0007", "0008"]


@pytest.mark.parametrize("extra", ["RESET ALL;", "DEALLOCATE ALL;", "DEALLOCATE PREPARE ALL;"])
def test_a_migration_that_resets_the_session_still_applies_and_verifies(
    extra: str, fresh_db: ConnectionSettings, set_copy: Path, admin: ConnectionSettings
) -> None:
    """Settings and prepared statements of the engine's session may be reset by a migration: the run must still verify
    each step (and the next steps still run)."""
    mset = _set(set_copy, admin, BASE["0009"] + extra + "\n")
    result = Engine(fresh_db, mset).apply()
    assert [r["version"] for r in result.ran] == ["0007", "0008", "0009", "0010"]
    assert Engine(fresh_db, mset).verify().ok
