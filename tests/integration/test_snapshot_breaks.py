"""Found by a context-free breaking review of check, snapshot and the lock trace (round 3 of issue #14): each failed on the code before its fix."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import psycopg

from components.engine import catalog as cat
from components.engine import migset
from components.engine.connection import ConnectionSettings
from components.engine.snapshot import generate, replay
from components.engine.sqltext import split_statements
from components.engine.trace import RelationTracker, _compare, _held, _relations
from tests.integration.test_snapshot_deltas import _generated, _more, _rejournal


def _edit_consistently(set_copy: Path, version: str, extra: dict[str, Any]) -> None:
    """Add `extra` to the delta of `version`, then recompute every later fingerprint and the journal: meta/ that is
    consistent with itself, claiming entries the files never make."""
    good = migset.load(set_copy)
    versions = [m.version for m in good.migrations]
    catalogs = {v: good.expected_catalog(v) for v in versions}
    for v in versions[versions.index(version) :]:
        catalogs[v] = {**catalogs[v], **extra}
        path = set_copy / f"meta/{v}_snapshot.json"
        snap = json.loads(path.read_text())
        if v == version:
            snap["changes"].update(extra)
        snap["fingerprint"] = cat.fingerprint(dict(sorted(catalogs[v].items())))
        path.write_text(json.dumps(snap, indent=2, sort_keys=True) + "\n")
        _rejournal(set_copy, v)


def test_check_names_every_version_whose_stored_snapshot_claims_an_entry_replay_never_makes(
    set_copy: Path, admin: ConnectionSettings
) -> None:
    _more(set_copy, admin)  # 0011..0016 each create a table and an index (no drops: all proven)
    _edit_consistently(set_copy, "0011", {"table:ghost": {}})
    edited = migset.load(set_copy)
    for v in ("0011", "0012", "0016"):
        assert "table:ghost" in edited.expected_catalog(v)
    # every one of 0011..0016 stores a catalog with table:ghost, which replaying the files never creates
    assert replay(admin, edited) == ["0011", "0012", "0013", "0014", "0015", "0016"]


def test_snapshot_regenerated_over_a_wrong_meta_writes_what_the_database_has(set_copy: Path, admin: ConnectionSettings) -> None:
    _more(set_copy, admin)
    _edit_consistently(set_copy, "0011", {"table:ghost": {}})
    generate(admin, set_copy)  # the documented fix: regenerate meta/
    regenerated = migset.load(set_copy)
    wrong = [v for v in regenerated.versions if "table:ghost" in regenerated.expected_catalog(v)]
    assert wrong == []  # no version of the database has table:ghost


def test_check_of_a_version_that_deallocates_inside_a_do_block(set_copy: Path, admin: ConnectionSettings) -> None:
    """The file applies on a fresh database; check must not say it does not."""
    for n, text in (
        (11, "CREATE TABLE t11 (id int);\n"),
        (12, "CREATE TABLE t12 (id int);\nDO $$ BEGIN EXECUTE 'DEALLOCATE ALL'; END $$;\n"),
        (13, "CREATE TABLE t13 (id int);\n"),
    ):
        (set_copy / f"00{n}_t{n}.sql").write_text(text)
    mset = _generated(set_copy, admin)  # first generate: nothing known, every version read whole
    assert replay(admin, mset) == []


def _reference(conn: psycopg.Connection[Any], tracker: RelationTracker, text: str) -> tuple[Any, Any]:
    """As tests/integration/test_trace_scoped.py: the tracker's trace and the whole-read reference."""
    (stmt,) = split_statements(text)
    before, held = _relations(conn, "public"), _held(conn)
    traced = tracker.trace(conn, stmt)
    return traced, _compare(stmt, before, _relations(conn, "public"), _held(conn) - held, measured=True, scans=True)


def _run(fresh_db: ConnectionSettings, files: list[list[str]]) -> list[tuple[str, Any, Any]]:
    out = []
    with fresh_db.connect(autocommit=True, search_path="public") as conn:
        tracker = RelationTracker(conn, "public")
        for statements in files:
            with conn.transaction():
                tracker.begin(conn)
                for text in statements:
                    traced, reference = _reference(conn, tracker, text)
                    out.append((text, traced, reference))
    return out


SCAN_IN_ABORTED_SUBXACT = (
    "DO $$ BEGIN BEGIN PERFORM count(*) FROM t; RAISE EXCEPTION 'undo'; EXCEPTION WHEN raise_exception THEN NULL; END; END $$"
)


def test_a_scan_whose_lock_went_with_its_subtransaction(fresh_db: ConnectionSettings) -> None:
    """A scan in a subtransaction that rolls back: its AccessShareLock is released, its scan count stays."""
    got = _run(
        fresh_db,
        [
            ["CREATE TABLE t (id int)", "INSERT INTO t SELECT generate_series(1, 100)"],
            [SCAN_IN_ABORTED_SUBXACT, "ALTER TABLE t ADD COLUMN c int"],
        ],
    )
    wrong = [f"{text}\n   tracker:   {traced}\n   reference: {reference}" for text, traced, reference in got if traced != reference]
    assert not wrong, "\n".join(wrong)


def test_a_schema_swap_moves_relations_without_locking_them(fresh_db: ConnectionSettings) -> None:
    """ALTER SCHEMA ... RENAME takes no relation lock, yet every relation of both schemas changes schema."""
    got = _run(
        fresh_db,
        [
            ["CREATE TABLE t (id int)", "CREATE SCHEMA staging", "CREATE TABLE staging.u (id int)"],
            ["ALTER SCHEMA public RENAME TO old", "ALTER SCHEMA staging RENAME TO public"],
            ["ALTER TABLE public.u ADD COLUMN c int", "ALTER TABLE old.t ADD COLUMN c int"],
        ],
    )
    wrong = [f"{text}\n   tracker:   {traced}\n   reference: {reference}" for text, traced, reference in got if traced != reference]
    assert not wrong, "\n".join(wrong)


def test_a_version_with_set_local_is_snapshotted_as_the_database_reads_after_it(
    set_copy: Path, admin: ConnectionSettings, fresh_db: ConnectionSettings
) -> None:
    """SET LOCAL ends with the version's transaction; the snapshot must be the schema as any later session reads it."""
    from components.engine.engine import Engine

    (set_copy / "0008_local.sql").write_text(
        "SET LOCAL search_path = pg_catalog;\n"
        "SET LOCAL DateStyle = 'SQL, DMY';\n"
        "CREATE TABLE public.t (id int, since date DEFAULT '2020-01-31');\n"
        "CREATE VIEW public.v AS SELECT id FROM public.t;\n"
    )
    generate(admin, set_copy)
    mset = migset.load(set_copy)
    stored = mset.expected_catalog("0008")
    Engine(fresh_db, migset.load(set_copy, parse=False)).apply("0008")
    with fresh_db.connect() as conn:
        live = cat.introspect(conn, "public")
    report = Engine(fresh_db, mset).verify()  # a later session: search_path and DateStyle as usual
    differ = sorted(k for k in stored.keys() | live.keys() if stored.get(k) != live.get(k))
    assert differ == [] and report.ok, (differ, stored["column:t.since"], live["column:t.since"], report)


def test_the_trace_of_a_concurrent_index_build_is_the_same_at_every_snapshot(set_copy: Path, admin: ConnectionSettings) -> None:
    """Found while adding a no-transaction version to a check test: its trace recorded the lock the build held on its
    own new index when a sample caught it (AccessExclusiveLock or RowExclusiveLock), and check then named the version."""
    (set_copy / "0008_t.sql").write_text("CREATE TABLE t (id int PRIMARY KEY, v text);\n")
    (set_copy / "0009_concurrently.sql").write_text("-- migrate:no-transaction\nCREATE INDEX CONCURRENTLY t_v ON t (v);\n")
    generate(admin, set_copy)
    traces = {json.dumps(json.loads((set_copy / "meta/0009_trace.json").read_text()), sort_keys=True)}
    for _ in range(5):
        generate(admin, set_copy)
        traces.add(json.dumps(json.loads((set_copy / "meta/0009_trace.json").read_text()), sort_keys=True))
    assert len(traces) == 1, traces
    (trace,) = traces
    assert '"t_v"' not in trace.split('"created"')[0]  # no lock recorded on the index the statement creates
