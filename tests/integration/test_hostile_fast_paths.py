"""Found by a context-free breaking review of round 9 (issue #14), on the fast paths: a middle step that swaps its schema
for an empty one or drops a rule of an older table was accepted by the scoped read (and by check's proof, which then
never read the schema whole). Each test failed on the code it was written against."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from components.engine import migset, runner
from components.engine.connection import ConnectionSettings
from components.engine.engine import Engine
from components.engine.errors import VerifyFailed
from components.engine.snapshot import generate
from tests.integration.test_wishlist_items_migration import ledger_rows

# 0009 writes no catalog row, so that 0010 (a middle step: 0011 is the last) is read from its own writes alone.
FILES = {
    "0008": "CREATE TABLE a (id int PRIMARY KEY, note text);\nCREATE TABLE e (id int PRIMARY KEY, note text);\n"
    "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1';\n",
    "0009": "INSERT INTO a VALUES (1, 'x');\n",
    "0010": "CREATE TABLE d (id int PRIMARY KEY);\n",
    "0011": "CREATE TABLE g (id int PRIMARY KEY);\n",
}


@pytest.fixture(autouse=True)
def _scoped_even_for_a_small_schema(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runner, "SCOPED_FROM", 0)


def _set(set_copy: Path, admin: ConnectionSettings, files: dict[str, str], version: str, text: str) -> migset.MigrationSet:
    """Snapshots from `files`; then `version`'s file is replaced by `text` (journal patched: only verify can notice)."""
    for v, sql in files.items():
        (set_copy / f"{v}_step.sql").write_text(sql)
    generate(admin, set_copy)
    path = set_copy / f"{version}_step.sql"
    path.write_text(text)
    journal_path = set_copy / "meta/_journal.json"
    journal = json.loads(journal_path.read_text())
    for entry in journal["entries"]:
        if entry["version"] == version:
            entry["up"]["sha256"] = migset.sha256_hex(path.read_bytes())
    journal_path.write_text(json.dumps(journal, indent=2, sort_keys=True) + "\n")
    return migset.load(set_copy)


def _rolled_back(fresh_db: ConnectionSettings, mset: migset.MigrationSet, version: str, message: str) -> None:
    with pytest.raises(VerifyFailed, match=re.escape(message)) as failure:
        Engine(fresh_db, mset).apply()
    assert version in str(failure.value) and "rolled back" in str(failure.value), str(failure.value)
    before = [v for v in ["0007", "0008", "0009", "0010", "0011"] if v < version]
    assert [r[0] for r in ledger_rows(fresh_db)] == before


def test_a_middle_step_that_swaps_the_schema_for_an_empty_one_is_rolled_back(
    fresh_db: ConnectionSettings, set_copy: Path, admin: ConnectionSettings
) -> None:
    """Renaming the migrated schema writes one pg_namespace row and no row of the objects in it; a new schema of the
    same name that holds what the step's delta names is all the scoped read looks at."""
    text = "ALTER SCHEMA public RENAME TO old_public;\nCREATE SCHEMA public;\n" + FILES["0010"]
    mset = _set(set_copy, admin, FILES, "0010", text)
    _rolled_back(fresh_db, mset, "0010", "column a.id is missing")


def test_a_middle_step_that_drops_a_rule_of_an_older_table_is_rolled_back(
    fresh_db: ConnectionSettings, set_copy: Path, admin: ConnectionSettings
) -> None:
    """DROP RULE deletes one pg_rewrite row and writes nothing else the scoped read follows (relhasrules is left set):
    deleted pg_rewrite rows are counted but not refused (only _DROPS' are)."""
    files = dict(FILES)
    files["0008"] += "CREATE RULE e_quiet AS ON DELETE TO e DO INSTEAD NOTHING;\n"
    mset = _set(set_copy, admin, files, "0010", FILES["0010"] + "DROP RULE e_quiet ON e;\n")
    _rolled_back(fresh_db, mset, "0010", "rule e.e_quiet is missing")


def _meta_of_honest_files_with_a_tampered_version(
    set_copy: Path, admin: ConnectionSettings, files: dict[str, str], version: str, text: str
) -> migset.MigrationSet:
    """meta/ generated from `files` (the stored snapshots), then `version`'s file replaced by `text` with its checksum
    and lock trace taken from a generation of the tampered files: every hash in meta/ is consistent, only the stored
    snapshot is not what the files produce."""
    import shutil

    for v, sql in files.items():
        (set_copy / f"{v}_step.sql").write_text(sql)
    generate(admin, set_copy)
    honest = set_copy.parent / "honest_meta"
    shutil.copytree(set_copy / "meta", honest)
    (set_copy / f"{version}_step.sql").write_text(text)
    shutil.rmtree(set_copy / "meta")
    generate(admin, set_copy)  # (a fresh generation: nothing stored to prove from)
    tampered_trace = (set_copy / "meta" / f"{version}_trace.json").read_bytes()
    shutil.rmtree(set_copy / "meta")
    shutil.copytree(honest, set_copy / "meta")
    (set_copy / "meta" / f"{version}_trace.json").write_bytes(tampered_trace)
    journal_path = set_copy / "meta/_journal.json"
    journal = json.loads(journal_path.read_text())
    for entry in journal["entries"]:
        if entry["version"] == version:
            entry["up"]["sha256"] = migset.sha256_hex((set_copy / f"{version}_step.sql").read_bytes())
            entry["trace"]["sha256"] = migset.sha256_hex(tampered_trace)
    journal_path.write_text(json.dumps(journal, indent=2) + "\n")
    return migset.load(set_copy)


def test_check_names_a_version_whose_file_drops_a_rule_its_stored_snapshot_keeps(set_copy: Path, admin: ConnectionSettings) -> None:
    """`check` proves each version scoped and never reads the whole schema: the unrefused pg_rewrite delete goes unseen."""
    from components.engine.snapshot import replay

    files = dict(FILES)
    files["0008"] += "CREATE RULE e_quiet AS ON DELETE TO e DO INSTEAD NOTHING;\n"
    mset = _meta_of_honest_files_with_a_tampered_version(set_copy, admin, files, "0010", FILES["0010"] + "DROP RULE e_quiet ON e;\n")
    assert "rule:e.e_quiet" in mset.expected_catalog("0011")
    assert replay(admin, mset)[:1] == ["0010"]


def test_check_names_a_version_whose_file_swaps_the_schema_its_stored_snapshot_keeps(set_copy: Path, admin: ConnectionSettings) -> None:
    from components.engine.snapshot import replay

    text = "ALTER SCHEMA public RENAME TO old_public;\nCREATE SCHEMA public;\n" + FILES["0010"]
    mset = _meta_of_honest_files_with_a_tampered_version(set_copy, admin, FILES, "0010", text)
    assert replay(admin, mset)[:1] == ["0010"]
