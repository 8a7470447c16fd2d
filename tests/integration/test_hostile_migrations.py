"""Migrations that attack the engine's own session: its prepared statements, the functions and operators its catalog
read calls, and the stored snapshots it trusts. Found by a context-free breaking review of apply's verification (round 3
of issue #14); each test failed on the code before its fix."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from components.engine import migset, runner
from components.engine.connection import ConnectionSettings
from components.engine.engine import Engine
from components.engine.errors import MigrationError, VerifyFailed
from tests.integration.test_scoped_verify import BASE, _set
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
    (set_copy / "0009_step.sql").write_text(BASE["0009"])
    journal_path = set_copy / "meta/_journal.json"
    journal = json.loads(journal_path.read_text())
    for entry in journal["entries"]:
        if entry["version"] == "0009":
            entry["up"]["sha256"] = migset.sha256_hex((set_copy / "0009_step.sql").read_bytes())
    journal_path.write_text(json.dumps(journal, indent=2, sort_keys=True) + "\n")
    result = Engine(fresh_db, migset.load(set_copy)).apply()
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
