"""meta/ stores each version's snapshot as its changes against the previous one: the same catalogs, the same guarantees."""

from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path

import pytest

from components.engine import catalog as cat
from components.engine import migset
from components.engine.connection import ConnectionSettings
from components.engine.engine import Engine
from components.engine.errors import ChecksumMismatch, SetError
from components.engine.snapshot import generate, replay
from devtools import localpg
from tests.integration.test_wishlist_items_migration import ledger_rows

STEPS = {
    "0008": "CREATE TABLE a (id int PRIMARY KEY, note text);\nCREATE INDEX a_note ON a (note);\n",
    "0009": "ALTER TABLE a ALTER COLUMN note SET NOT NULL;\nDROP INDEX a_note;\nCREATE TABLE b (id int PRIMARY KEY);\n",
    "0010": "DROP TABLE b;\nALTER TABLE wishlist_items ADD COLUMN theme text;\n",
}
DOWNS = {
    "0008": "DROP TABLE a;\n",
    "0009": "DROP TABLE b;\nCREATE INDEX a_note ON a (note);\nALTER TABLE a ALTER COLUMN note DROP NOT NULL;\n",
    "0010": "ALTER TABLE wishlist_items DROP COLUMN theme;\nCREATE TABLE b (id int PRIMARY KEY);\n",
}


def _generated(set_copy: Path, admin: ConnectionSettings) -> migset.MigrationSet:
    for version, sql in STEPS.items():
        (set_copy / f"{version}_step.sql").write_text(sql)
        (set_copy / f"{version}_step.down.sql").write_text(DOWNS[version])
    generate(admin, set_copy)
    return migset.load(set_copy)


def _rejournal(set_copy: Path, version: str) -> None:
    """After a hand edit of a snapshot: record its new bytes in the journal, as a careless regeneration would."""
    journal_path = set_copy / "meta/_journal.json"
    journal = json.loads(journal_path.read_text())
    for entry in journal["entries"]:
        if entry["version"] == version:
            entry["snapshot"]["sha256"] = migset.sha256_hex((set_copy / f"meta/{version}_snapshot.json").read_bytes())
    journal_path.write_text(json.dumps(journal, indent=2) + "\n")


def test_later_versions_store_only_what_changed_and_rebuild_the_catalog_a_database_has(
    fresh_db: ConnectionSettings, set_copy: Path, admin: ConnectionSettings
) -> None:
    mset = _generated(set_copy, admin)
    first = json.loads((set_copy / "meta/0007_snapshot.json").read_text())
    assert "catalog" in first and "changes" not in first  # the first version is whole: the committed file is unchanged
    second = json.loads((set_copy / "meta/0009_snapshot.json").read_text())
    assert second["base"] == "0008" and "catalog" not in second
    assert second["changes"]["index:a_note"] is None and "table:b" in second["changes"]
    assert "column:wishlist_items.title" not in second["changes"]  # unchanged entries are not repeated
    assert mset.changed_keys("0009") == frozenset(second["changes"])
    for version in ("0007", "0008", "0009", "0010", "0009", "0008"):  # forward, then backward through the cache
        Engine(fresh_db, mset).migrate_to(version, allow_rollback=True)
        with fresh_db.connect() as conn:
            live = cat.introspect(conn, "public")
        assert mset.expected_catalog(version) == live
        assert cat.fingerprint(live) == mset.get(version).fingerprint
    assert replay(admin, mset) == []


def test_an_edited_delta_is_refused_even_with_its_journal_regenerated(
    fresh_db: ConnectionSettings, set_copy: Path, admin: ConnectionSettings
) -> None:
    """A delta's fingerprint is not recomputed at load (that would cost the whole history): it is checked whenever the
    catalog is compared whole, and by `check`. (An edit of the entries themselves fails verification: the live schema
    differs from them.)"""
    good = _generated(set_copy, admin)
    Engine(fresh_db, good).apply("0009")
    path = set_copy / "meta/0009_snapshot.json"
    snap = json.loads(path.read_text())
    snap["fingerprint"] = "sha256:" + "1" * 64  # the catalog is right, the fingerprint recorded for it is not
    path.write_text(json.dumps(snap, indent=2, sort_keys=True) + "\n")
    _rejournal(set_copy, "0009")
    edited = migset.load(set_copy)  # the bytes match the journal now
    with pytest.raises(ChecksumMismatch, match=re.escape("records fingerprint")) as refused:
        Engine(fresh_db, edited).verify()
    assert "meta/ was edited. Nothing was run" in str(refused.value)
    Engine(fresh_db, good).rollback("0008")
    with pytest.raises(ChecksumMismatch, match=re.escape("the snapshot of 0009 records fingerprint")) as failure:
        Engine(fresh_db, edited).apply("0009")  # the last step of a run compares its snapshot whole
    assert "rolled back" in str(failure.value)
    assert [r[0] for r in ledger_rows(fresh_db)] == ["0007", "0008"]
    assert replay(admin, edited) == ["0009"]  # `check` rebuilds every version and names it


def test_a_delta_must_follow_the_version_before_it(set_copy: Path, admin: ConnectionSettings) -> None:
    _generated(set_copy, admin)
    path = set_copy / "meta/0010_snapshot.json"
    snap = json.loads(path.read_text())
    snap["base"] = "0008"
    path.write_text(json.dumps(snap, indent=2, sort_keys=True) + "\n")
    _rejournal(set_copy, "0010")
    with pytest.raises(SetError, match="holds the changes since version 0008, but the version before it is 0009"):
        migset.load(set_copy)


def test_a_scratch_database_that_cannot_be_dropped_is_named_and_meta_is_left_untouched(
    set_copy: Path, admin: ConnectionSettings, pg_cluster: localpg.Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Snapshot drops its scratch database at the end. A session the admin may not end (here the bootstrap
    superuser's) holds it open: the error names the database, says meta/ was not written and how to clean up."""
    import psycopg

    from components.engine import snapshot
    from components.engine.errors import DatabaseError

    monkeypatch.setattr(snapshot.secrets, "token_hex", lambda n: "feedbeef")
    scratch = "wishlist_snapshot_feedbeef"
    before = (set_copy / "meta/_journal.json").read_bytes()
    held = threading.Event()
    release = threading.Event()

    def hold() -> None:  # connect as the superuser as soon as the scratch database exists, stay until released
        while not release.is_set():
            try:
                with psycopg.connect(host=str(pg_cluster.socket_dir), port=pg_cluster.port, user="postgres", dbname=scratch):
                    held.set()
                    release.wait(60)
                    return
            except psycopg.OperationalError:
                time.sleep(0.01)

    holder = threading.Thread(target=hold, daemon=True)
    holder.start()
    (set_copy / "0008_step.sql").write_text("SELECT pg_sleep(1);\n" + STEPS["0008"])
    (set_copy / "0008_step.down.sql").write_text(DOWNS["0008"])
    try:
        with pytest.raises(DatabaseError) as caught:
            generate(admin, set_copy)
    finally:
        release.set()
        holder.join(10)
    assert held.is_set()
    message = str(caught.value)
    assert scratch in message and "nothing was written to meta/" in message, message
    assert "DROP DATABASE" in message and "pg_stat_activity" in message, message
    assert (set_copy / "meta/_journal.json").read_bytes() == before
    pg_cluster.superuser_psql(f'DROP DATABASE IF EXISTS "{scratch}"')


def _more(set_copy: Path, admin: ConnectionSettings) -> migset.MigrationSet:
    """STEPS, then six versions that each create a table with an index."""
    for n in range(11, 17):
        (set_copy / f"00{n}_t{n}.sql").write_text(f"CREATE TABLE t{n} (id int PRIMARY KEY, v text);\nCREATE INDEX t{n}_v ON t{n} (v);\n")
    return _generated(set_copy, admin)


def _counting_whole_reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every read of the whole schema that snapshot and check make (the scratch database's catalogs)."""
    from components.engine import snapshot

    reads: list[str] = []
    for name in ("introspect", "introspect_verifiable"):
        real = getattr(cat, name)

        def counted(*args: object, _real: object = real, _name: str = name) -> object:
            reads.append(_name)
            return _real(*args)  # type: ignore[operator]

        monkeypatch.setattr(snapshot.cat, name, counted)
    return reads


def test_check_proves_each_stored_snapshot_from_what_its_version_changed(
    set_copy: Path, admin: ConnectionSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At N versions `check` used to read the whole schema N times: now once, on the empty schema; each version is then
    proven from the rows it wrote against its stored snapshot, as `apply` does (a version that drops a table is read
    whole: a deleted row cannot be read)."""
    mset = _more(set_copy, admin)
    reads = _counting_whole_reads(monkeypatch)
    assert replay(admin, mset) == []
    # 0009 drops an index, 0010 a table: read whole after them; the 10 others are proven from what they wrote; and the
    # schema the last version left is read whole once more (the proof is never the only check)
    assert len(reads) == 4, reads


def test_check_still_names_a_version_whose_snapshot_was_edited_consistently(set_copy: Path, admin: ConnectionSettings) -> None:
    """A delta edited with its fingerprint and journal recomputed (a hand-made snapshot): the replay's proof fails,
    the whole read differs, and check names the version."""
    _generated(set_copy, admin)
    path = set_copy / "meta/0008_snapshot.json"
    snap = json.loads(path.read_text())
    snap["changes"] = {k: v for k, v in snap["changes"].items() if k != "index:a_note"}  # claims a_note is not there
    before = migset.load(set_copy).expected_catalog("0007")
    after = {**before, **{k: v for k, v in snap["changes"].items() if v is not None}}
    snap["fingerprint"] = cat.fingerprint(after)
    path.write_text(json.dumps(snap, indent=2, sort_keys=True) + "\n")
    _rejournal(set_copy, "0008")
    edited = migset.load(set_copy)
    assert replay(admin, edited) == ["0008"]


def test_snapshot_of_one_new_version_reads_the_whole_schema_for_it_alone(
    set_copy: Path, admin: ConnectionSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Adding a migration and running snapshot: the versions meta/ already holds are proven as check proves them, the
    new one is read whole; the files of the old versions stay byte for byte."""
    _more(set_copy, admin)
    old = {p.name: p.read_bytes() for p in (set_copy / "meta").iterdir() if not p.name.startswith("_")}
    (set_copy / "0017_more.sql").write_text("CREATE TABLE c (id int PRIMARY KEY);\n")
    reads = _counting_whole_reads(monkeypatch)
    generate(admin, set_copy)
    assert len(reads) == 4, reads  # the empty schema, 0009 and 0010 (drops), and the new 0017
    assert {p.name: p.read_bytes() for p in (set_copy / "meta").iterdir() if p.name in old} == old
    mset = migset.load(set_copy)
    assert "table:c" in mset.expected_catalog("0017") and mset.changed_keys("0017") >= {"table:c"}


@pytest.mark.parametrize("reset", ["DEALLOCATE ALL;", "DEALLOCATE PREPARE ALL;", "RESET ALL;"])
def test_a_version_that_drops_prepared_statements_or_settings_is_still_proven(
    set_copy: Path, admin: ConnectionSettings, reset: str
) -> None:
    """check and snapshot prepare their proof once per connection: a version deallocating it (or resetting the setting
    that holds its write counts) is proven or read whole, and the versions after it are proven again."""
    for n, sql in (
        (11, "CREATE TABLE t11 (id int);\n"),
        (12, f"CREATE TABLE t12 (id int);\n{reset}\n"),
        (13, "CREATE TABLE t13 (id int);\n"),
    ):
        (set_copy / f"00{n}_t{n}.sql").write_text(sql)
    mset = _generated(set_copy, admin)
    assert replay(admin, mset) == []
    (set_copy / "0014_t14.sql").write_text("CREATE TABLE t14 (id int);\n")
    generate(admin, set_copy)
    assert replay(admin, migset.load(set_copy)) == []


def test_a_version_outside_a_transaction_does_not_end_the_proof_of_the_versions_after_it(
    set_copy: Path, admin: ConnectionSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A `-- migrate:no-transaction` version is read whole (its statements commit one by one: nothing to prove before a
    COMMIT); when that read equals its stored snapshot, the versions after it are still proven from meta/."""
    (set_copy / "0017_concurrently.sql").write_text("-- migrate:no-transaction\nCREATE INDEX CONCURRENTLY t16_id ON t16 (id);\n")
    for n in range(18, 22):
        (set_copy / f"00{n}_t{n}.sql").write_text(f"CREATE TABLE t{n} (id int PRIMARY KEY);\n")
    mset = _more(set_copy, admin)
    reads = _counting_whole_reads(monkeypatch)
    assert replay(admin, mset) == []
    # the empty schema, 0009 and 0010 (drops), 0017 (outside a transaction); 0018-0021 proven; the last read whole again
    assert len(reads) == 5, reads
