"""Migrations that attack the engine's own session: its prepared statements, the functions and operators its catalog
read calls, and the stored snapshots it trusts. Found by a context-free breaking review of apply's verification (round 3
of issue #14); each test failed on the code before its fix."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from components.engine import catalog as cat
from components.engine import migset, runner
from components.engine.connection import ConnectionSettings
from components.engine.engine import Engine
from components.engine.errors import MigrationError, VerifyFailed
from components.engine.snapshot import generate, replay
from devtools import localpg
from tests.integration.test_scoped_verify import BASE, _set
from tests.integration.test_snapshot_deltas import _rejournal
from tests.integration.test_wishlist_items_migration import ledger_rows

# A DO block that replaces the engine's prepared read with one returning what the honest read returned before the block
# did its extra work: the read then "proves" a catalog without table evil.
_FORGE_READ = """
DO $$
DECLARE q text; j json;
BEGIN
  SELECT regexp_replace(statement, '^PREPARE \\S+ AS ', '') INTO q FROM pg_prepared_statements WHERE name = 'wishlist_verifiable';
  EXECUTE replace(q, '$1', quote_literal(current_schema())) INTO j;
  CREATE TABLE evil (id int);
  EXECUTE 'DEALLOCATE wishlist_verifiable';
  EXECUTE format('PREPARE wishlist_verifiable(text) AS SELECT %L::json', j);
END $$;
"""


def _relations(settings: ConnectionSettings) -> set[str]:
    with settings.connect() as conn:
        rows = conn.execute("SELECT relname FROM pg_class WHERE relnamespace = 'public'::regnamespace AND relkind = 'r'").fetchall()
    return {str(r[0]) for r in rows}


def test_a_migration_that_forges_the_engines_prepared_read_is_rolled_back(
    fresh_db: ConnectionSettings, set_copy: Path, admin: ConnectionSettings
) -> None:
    mset = _set(set_copy, admin, BASE["0009"] + _FORGE_READ)
    with pytest.raises(MigrationError) as failure:
        Engine(fresh_db, mset).apply()
    message = str(failure.value)
    assert "0009" in message and "rolled back" in message and "wishlist_verifiable" in message
    assert [r[0] for r in ledger_rows(fresh_db)] == ["0007", "0008"]
    assert "evil" not in _relations(fresh_db) and "b" not in _relations(fresh_db)


@pytest.mark.parametrize("name", ["wishlist_verifiable", "wishlist_scoped", "wishlist_timeouts", "wishlist_ledger_record"])
def test_a_migration_that_prepares_an_engine_statement_again_is_rolled_back(
    name: str, fresh_db: ConnectionSettings, set_copy: Path, admin: ConnectionSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Even with the engine's own text: a statement prepared by the migration resolved its names under the migration's
    search_path, and the engine cannot tell what it would run."""
    monkeypatch.setattr(runner, "SCOPED_FROM", 0 if name == "wishlist_scoped" else 10**9)
    again = f"""
DO $$
DECLARE q text;
BEGIN
  SELECT statement INTO q FROM pg_prepared_statements WHERE name = '{name}';
  IF q IS NULL THEN RAISE EXCEPTION 'the engine did not prepare {name} before 0009 ran'; END IF;
  EXECUTE 'DEALLOCATE {name}';
  EXECUTE q;
END $$;
"""
    mset = _set(set_copy, admin, BASE["0009"] + again)
    with pytest.raises(MigrationError) as failure:
        Engine(fresh_db, mset).apply()
    message = str(failure.value)
    assert "0009" in message and "rolled back" in message and name in message
    assert [r[0] for r in ledger_rows(fresh_db)] == ["0007", "0008"]
    # the run after it starts clean: a file without the DO block applies
    result = Engine(fresh_db, _swap(set_copy, "0009", BASE["0009"])).apply()
    assert [r["version"] for r in result.ran] == ["0009", "0010"]


# An aggregate json_agg(json) in the migrated schema: an exact match for the read's json_agg(json_build_array(...)),
# it beats pg_catalog.json_agg(anyelement) and drops the entries that would give the migration away.
_HIDING_AGGREGATE = """
CREATE FUNCTION hide_step(acc json[], item json) RETURNS json[] LANGUAGE sql IMMUTABLE AS
  $f$ SELECT CASE WHEN item::text ~ '(evil|hide_|json_agg)' THEN acc ELSE coalesce(acc, '{}') || item END $f$;
CREATE FUNCTION hide_done(acc json[]) RETURNS json LANGUAGE sql IMMUTABLE AS $f$ SELECT array_to_json(acc) $f$;
CREATE AGGREGATE json_agg(json) (SFUNC = hide_step, STYPE = json[], FINALFUNC = hide_done);
CREATE TABLE evil (id int);
"""


def test_a_migration_that_shadows_a_function_of_the_catalog_read_is_rolled_back(
    fresh_db: ConnectionSettings, set_copy: Path, admin: ConnectionSettings
) -> None:
    mset = _set(set_copy, admin, BASE["0009"] + _HIDING_AGGREGATE)
    Engine(fresh_db, mset).apply("0008")
    # 0009 is then the first step of a run: the engine's reads are prepared after its statements, with the aggregate there
    with pytest.raises(VerifyFailed) as failure:
        Engine(fresh_db, mset).apply()
    message = str(failure.value)
    assert "0009" in message and "rolled back" in message and "table evil is not expected" in message
    assert [r[0] for r in ledger_rows(fresh_db)] == ["0007", "0008"]
    assert "evil" not in _relations(fresh_db)


def test_verify_and_drift_see_objects_a_shadowing_aggregate_would_hide(
    fresh_db: ConnectionSettings, set_copy: Path, admin: ConnectionSettings
) -> None:
    mset = _set(set_copy, admin)
    Engine(fresh_db, mset).apply()
    with fresh_db.connect(search_path="public") as conn:
        conn.execute(_HIDING_AGGREGATE)
    report = Engine(fresh_db, mset).verify()
    assert not report.ok
    found = {d.key for d in report.differences}
    assert {"table:evil", "function:json_agg(json)", "function:hide_step(acc json[], item json)"} <= found


def test_a_stored_delta_that_does_not_hash_to_its_fingerprint_is_refused_at_its_own_step(
    fresh_db: ConnectionSettings, set_copy: Path, admin: ConnectionSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A middle step proven by the scoped read: the catalog it proved must be the one meta/ recorded for the version."""
    monkeypatch.setattr(runner, "SCOPED_FROM", 0)
    _set(set_copy, admin)
    # 0009's file and the entries of its delta edited to agree (note int); its fingerprint and every later one left alone
    (set_copy / "0009_step.sql").write_text("CREATE TABLE b (id int PRIMARY KEY, note int);\n")
    snap_path = set_copy / "meta/0009_snapshot.json"
    snap = json.loads(snap_path.read_text())
    snap["changes"]["column:b.note"]["type"] = "integer"
    snap_path.write_text(json.dumps(snap, indent=2, sort_keys=True) + "\n")
    journal_path = set_copy / "meta/_journal.json"
    journal = json.loads(journal_path.read_text())
    for entry in journal["entries"]:
        if entry["version"] == "0009":
            entry["up"]["sha256"] = migset.sha256_hex((set_copy / "0009_step.sql").read_bytes())
            entry["snapshot"]["sha256"] = migset.sha256_hex(snap_path.read_bytes())
    journal_path.write_text(json.dumps(journal, indent=2, sort_keys=True) + "\n")
    edited = migset.load(set_copy)
    with pytest.raises(MigrationError) as failure:
        Engine(fresh_db, edited).apply()
    message = str(failure.value)
    assert re.search(r"0009_step.*fingerprint", message, re.S) and "rolled back" in message
    assert [r[0] for r in ledger_rows(fresh_db)] == ["0007", "0008"]


def test_the_hiding_aggregate_hides_from_an_unqualified_call(fresh_db: ConnectionSettings) -> None:
    """The attack of the two tests above is real: the schema's aggregate wins over pg_catalog's for a json argument."""
    with fresh_db.connect(search_path="public") as conn:
        conn.execute(_HIDING_AGGREGATE)
        row = conn.execute("SELECT json_agg(x) FROM (VALUES ('{\"a\": 1}'::json), ('\"evil\"'::json)) v(x)").fetchone()
    assert row is not None and row[0] == [{"a": 1}]


# -- work the verifying read would not see: at COMMIT, or caused by the engine's own ledger row

_DEFERRED_INFRA = (
    "CREATE TABLE q (id int);\n"
    "CREATE FUNCTION mk() RETURNS trigger LANGUAGE plpgsql AS\n"
    "  $f$ BEGIN EXECUTE 'CREATE TABLE IF NOT EXISTS evil (id int)'; RETURN NULL; END $f$;\n"
    "CREATE CONSTRAINT TRIGGER q_later AFTER INSERT ON q DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION mk();\n"
)


def _write(set_copy: Path, admin: ConnectionSettings, files: dict[str, str]) -> migset.MigrationSet:
    for version, text in files.items():
        (set_copy / f"{version}_step.sql").write_text(text)
    generate(admin, set_copy)
    return migset.load(set_copy)


def _swap(set_copy: Path, version: str, text: str) -> migset.MigrationSet:
    """Replace a file after its snapshot was made (the journal's hash patched: only verification can notice)."""
    path = set_copy / f"{version}_step.sql"
    path.write_text(text)
    journal_path = set_copy / "meta/_journal.json"
    journal = json.loads(journal_path.read_text())
    for entry in journal["entries"]:
        if entry["version"] == version:
            entry["up"]["sha256"] = migset.sha256_hex(path.read_bytes())
    journal_path.write_text(json.dumps(journal, indent=2, sort_keys=True) + "\n")
    return migset.load(set_copy)


def test_snapshot_stores_what_a_deferred_trigger_does_at_commit(set_copy: Path, admin: ConnectionSettings) -> None:
    mset = _write(set_copy, admin, {"0008": BASE["0008"] + _DEFERRED_INFRA, "0009": BASE["0009"] + "INSERT INTO q VALUES (1);\n"})
    assert "table:evil" not in mset.expected_catalog("0008")
    assert "table:evil" in mset.expected_catalog("0009")


# A deferred trigger that defers again (SET CONSTRAINTS ALL DEFERRED in its function) and queues another: the second
# runs at COMMIT whatever SET CONSTRAINTS ALL IMMEDIATE was said before (found by the round 5 review).
_REDEFER_INFRA = (
    "CREATE TABLE q1 (i int);\nCREATE TABLE q2 (i int);\n"
    "CREATE FUNCTION t1() RETURNS trigger LANGUAGE plpgsql AS\n"
    "  $f$ BEGIN SET CONSTRAINTS ALL DEFERRED; INSERT INTO q2 VALUES (NEW.i); RETURN NULL; END $f$;\n"
    "CREATE FUNCTION t2() RETURNS trigger LANGUAGE plpgsql AS\n"
    "  $f$ BEGIN EXECUTE 'CREATE TABLE IF NOT EXISTS public.evil (id int)'; RETURN NULL; END $f$;\n"
    "CREATE CONSTRAINT TRIGGER c1 AFTER INSERT ON q1 DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION t1();\n"
    "CREATE CONSTRAINT TRIGGER c2 AFTER INSERT ON q2 DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION t2();\n"
)


@pytest.mark.parametrize(
    ("infra", "insert"),
    [(_DEFERRED_INFRA, "INSERT INTO q VALUES (1);\n"), (_REDEFER_INFRA, "INSERT INTO q1 VALUES (1);\n")],
    ids=["deferred", "deferred again"],
)
def test_check_names_a_stored_snapshot_without_what_a_deferred_trigger_does_at_commit(
    infra: str, insert: str, set_copy: Path, admin: ConnectionSettings
) -> None:
    """check proves stored snapshots from what each version wrote, before COMMIT: the deferred work must be in it."""
    files = {"0008": BASE["0008"] + infra, "0009": BASE["0009"] + insert, "0010": BASE["0010"]}
    honest = _write(set_copy, admin, files)
    assert replay(admin, honest) == []
    # meta/ edited consistently (entries, fingerprints, journal) to say 0009 leaves no table evil
    path = set_copy / "meta/0009_snapshot.json"
    snap = json.loads(path.read_text())
    assert {"table:evil", "column:evil.id"} <= set(snap["changes"])
    for key in ("table:evil", "column:evil.id"):
        del snap["changes"][key]
    for version in ("0009", "0010"):
        catalog = {k: v for k, v in honest.expected_catalog(version).items() if k not in ("table:evil", "column:evil.id")}
        path = set_copy / f"meta/{version}_snapshot.json"
        stored = snap if version == "0009" else json.loads(path.read_text())
        stored["fingerprint"] = cat.fingerprint(dict(sorted(catalog.items())))
        path.write_text(json.dumps(stored, indent=2, sort_keys=True) + "\n")
        _rejournal(set_copy, version)
    assert replay(admin, migset.load(set_copy)) == ["0009", "0010"]


def test_a_deferred_trigger_that_changes_the_schema_at_commit_is_caught_at_its_step(
    fresh_db: ConnectionSettings, set_copy: Path, admin: ConnectionSettings
) -> None:
    _write(set_copy, admin, {"0008": BASE["0008"] + _DEFERRED_INFRA, **{v: BASE[v] for v in ("0009", "0010")}})
    mset = _swap(set_copy, "0009", BASE["0009"] + "INSERT INTO q VALUES (1);\n")
    with pytest.raises(VerifyFailed) as failure:
        Engine(fresh_db, mset).apply()
    message = str(failure.value)
    assert "0009" in message and "table evil is not expected" in message and "rolled back" in message
    assert [r[0] for r in ledger_rows(fresh_db)] == ["0007", "0008"]
    assert "evil" not in _relations(fresh_db)


def test_a_trigger_on_the_ledger_that_changes_the_schema_is_caught_at_its_step(
    fresh_db: ConnectionSettings, set_copy: Path, admin: ConnectionSettings
) -> None:
    """The migrator owns the ledger, so a migration can put a trigger on it: the engine's own ledger row then runs user
    code in the step's transaction. It must run before the verifying read."""
    on_ledger = (
        "CREATE FUNCTION on_row() RETURNS trigger LANGUAGE plpgsql AS\n"
        "  $f$ BEGIN EXECUTE 'CREATE TABLE IF NOT EXISTS public.evil (id int)'; RETURN NULL; END $f$;\n"
        "CREATE TRIGGER on_row AFTER INSERT ON migration_ledger.applied FOR EACH ROW EXECUTE FUNCTION on_row();\n"
    )
    mset = _set(set_copy, admin, BASE["0009"] + on_ledger)
    with pytest.raises(VerifyFailed) as failure:
        Engine(fresh_db, mset).apply()
    message = str(failure.value)
    assert "0009" in message and "table evil is not expected" in message and "rolled back" in message
    assert [r[0] for r in ledger_rows(fresh_db)] == ["0007", "0008"]
    assert "evil" not in _relations(fresh_db)


# -- session state a migration leaves on the engine's connection

_LEAKS = {
    "search_path": "CREATE SCHEMA elsewhere;\nSET search_path = elsewhere;\n",
    "DateStyle": "SET DateStyle = 'SQL, DMY';\n",
    "role": "SET ROLE pg_read_all_data;\n",
}


@pytest.mark.parametrize("runs", [["0010"], ["0008", "0010"]], ids=["one run", "two runs"])
@pytest.mark.parametrize("leak", sorted(_LEAKS))
def test_a_session_setting_of_one_migration_does_not_reach_the_next(
    leak: str, runs: list[str], fresh_db: ConnectionSettings, set_copy: Path, admin: ConnectionSettings, pg_cluster: localpg.Cluster
) -> None:
    """Each migration starts from the connection's own settings, in apply (one run or several) and in snapshot: a
    session-level SET in 0008 changes neither where 0009 creates its table, nor how its default prints, nor who owns it."""
    if leak == "role":
        pg_cluster.superuser_psql(f"GRANT pg_read_all_data TO {admin.user}")
    try:
        _leak_does_not_reach_the_next(leak, runs, fresh_db, set_copy, admin)
    finally:
        if leak == "role":
            pg_cluster.superuser_psql(f"REVOKE pg_read_all_data FROM {admin.user}")


def _leak_does_not_reach_the_next(
    leak: str, runs: list[str], fresh_db: ConnectionSettings, set_copy: Path, admin: ConnectionSettings
) -> None:
    files = {
        "0008": BASE["0008"] + _LEAKS[leak],
        "0009": "CREATE TABLE b (id int PRIMARY KEY, d date DEFAULT '2024-01-02');\n",
        "0010": BASE["0010"],
    }
    mset = _write(set_copy, admin, files)
    assert mset.expected_catalog("0009")["column:b.d"]["default"] == "'2024-01-02'::date"
    for target in runs:
        Engine(fresh_db, mset).apply(target)
    assert [r[0] for r in ledger_rows(fresh_db)] == ["0007", "0008", "0009", "0010"]
    assert Engine(fresh_db, mset).verify().ok


def test_check_of_a_version_that_takes_the_name_of_the_engines_proof(set_copy: Path, admin: ConnectionSettings) -> None:
    """The version prepares a statement under the name the engine's proof uses, before the engine first prepared it: the
    engine's PREPARE then fails. That is not the file's fault (it applies), and check must not say it does not apply."""
    first = set_copy / "0007_wishlist_items.sql"
    first.write_text("DO $$ BEGIN EXECUTE 'PREPARE wishlist_scoped AS SELECT 1'; END $$;\n" + first.read_text())
    mset = _write(set_copy, admin, {"0008": BASE["0008"]})
    assert replay(admin, mset) == []


def test_a_deferred_constraint_that_fails_is_named_and_the_step_rolled_back(
    fresh_db: ConnectionSettings, set_copy: Path, admin: ConnectionSettings
) -> None:
    mset = _write(
        set_copy,
        admin,
        {
            "0008": "CREATE TABLE parent (id int PRIMARY KEY);\n"
            "CREATE TABLE child (id int PRIMARY KEY, parent_id int REFERENCES parent (id) DEFERRABLE INITIALLY DEFERRED);\n",
            "0009": BASE["0009"],
        },
    )
    mset = _swap(set_copy, "0009", BASE["0009"] + "INSERT INTO child VALUES (1, 42);\n")
    with pytest.raises(MigrationError) as failure:
        Engine(fresh_db, mset).apply()
    message = str(failure.value)
    assert "0009" in message and "deferred constraint" in message and "child_parent_id_fkey" in message
    assert "rolled back" in message and "ledger is unchanged" in message
    assert [r[0] for r in ledger_rows(fresh_db)] == ["0007", "0008"]
    assert "b" not in _relations(fresh_db)
