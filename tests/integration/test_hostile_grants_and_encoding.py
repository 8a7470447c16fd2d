"""Found by a context-free breaking review of round 7 (issue #14): a function renamed outside the schema that a domain's
CHECK or an operator prints (accepted by the scoped read), PUBLIC grants hidden behind default privileges or not
printed (functions, columns), a database's client_encoding corrupting non-ASCII text, settings that change how
constants parse, and passwords printed from failing statements. Each test failed on the code it was written against."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest

from components.engine import migset, runner
from components.engine.connection import ConnectionSettings
from components.engine.engine import Engine
from components.engine.errors import MigrationError, VerifyFailed
from devtools import localpg
from tests.integration.test_hostile_migrations import _swap, _write
from tests.integration.test_scoped_verify import BASE
from tests.integration.test_wishlist_items_migration import ledger_rows

# -- 1. The scoped proof (a middle step of a run) prints no domain constraint and no operator unless the step wrote
# their own rows. Both print a function outside the schema by name; a step that renames that function changes them,
# and the whole read sees it. The scoped read does not: the step commits with its ledger row, and the run's last step
# (honest) is refused instead.

_OUTSIDE = (
    "CREATE SCHEMA util;\n"
    "CREATE FUNCTION util.ok(int) RETURNS boolean LANGUAGE sql IMMUTABLE AS 'SELECT $1 > 0';\n"
    "CREATE FUNCTION util.same(int, int) RETURNS boolean LANGUAGE sql IMMUTABLE AS 'SELECT $1 = $2';\n"
)
_USES = {
    "domain check": (
        "CREATE DOMAIN posint AS int CHECK (util.ok(VALUE));\n",
        "ALTER FUNCTION util.ok(int) RENAME TO ok2;\n",
        "domain posint differs",
    ),
    "operator function": (
        "CREATE OPERATOR === (LEFTARG = int, RIGHTARG = int, FUNCTION = util.same);\n",
        "ALTER FUNCTION util.same(int, int) RENAME TO same2;\n",
        "operator ===(integer,integer) differs",
    ),
}


@pytest.mark.parametrize("case", sorted(_USES))
def test_scoped_proof_sees_a_renamed_function_that_a_schema_object_prints(
    case: str, fresh_db: ConnectionSettings, set_copy: Path, admin: ConnectionSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runner, "SCOPED_FROM", 0)  # the production threshold is 500 entries: a schema of that size
    create, rename, message = _USES[case]
    _write(set_copy, admin, {"0008": BASE["0008"] + _OUTSIDE + create, "0009": BASE["0009"], "0010": BASE["0010"]})
    # the whole read refuses the tampered step (the check of this test's premise)
    assert not _whole_read_accepts(fresh_db, set_copy, rename)
    mset = _swap(set_copy, "0009", BASE["0009"] + rename)
    with pytest.raises(VerifyFailed) as failure:
        Engine(fresh_db, mset).apply()
    told = str(failure.value)
    recorded = [r[0] for r in ledger_rows(fresh_db)]
    assert "0009" in told and "rolled back" in told and recorded == ["0007", "0008"], (
        f"{case}: the tampered 0009 was committed (ledger {recorded}); the error blames: {told[:400]}"
    )
    assert message in told


def _whole_read_accepts(settings: ConnectionSettings, set_copy: Path, rename: str) -> bool:
    """On a scratch database: 0007-0008 applied, then `rename`: does the whole read equal 0009's snapshot?"""
    from psycopg import sql

    from tests.dbs import drop_database

    name = f"t_{secrets.token_hex(5)}"
    with settings.connect() as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        other = settings.with_database(name)
        mset = migset.load(set_copy)
        Engine(other, mset).apply("0009")
        with other.connect(search_path="public") as conn:
            conn.execute(rename)
        return Engine(other, mset).verify().ok
    finally:
        drop_database(settings, name)


# -- 2. PUBLIC privileges that match a default ACL of the table's owner are left out of the model ("the database's,
# not drift"), whoever granted them. On a database whose defaults grant PUBLIC SELECT on new tables, an honest
# migration that grants SELECT to PUBLIC itself prints nothing; the snapshot (scratch database, no such default) prints
# 'SELECT': refused. And a table handed to another owner keeps what the creator's default granted, which no longer
# matches the (new) owner's defaults: refused as well.

_GRANTS_PUBLIC = "CREATE TABLE pub (id int PRIMARY KEY);\nGRANT SELECT ON pub TO PUBLIC;\n"


_UNPRINTED_GRANTS = {
    "function EXECUTE revoked from PUBLIC": "REVOKE EXECUTE ON FUNCTION f() FROM PUBLIC",
    "column SELECT granted to PUBLIC": "GRANT SELECT (note) ON a TO PUBLIC",
    "column UPDATE granted to PUBLIC": "GRANT UPDATE (note) ON a TO PUBLIC",
}


@pytest.mark.parametrize("what", sorted(_UNPRINTED_GRANTS))
def test_verify_reports_drift_in_public_privileges_the_model_does_not_print(
    what: str, fresh_db: ConnectionSettings, set_copy: Path, admin: ConnectionSettings
) -> None:
    mset = _write(set_copy, admin, {"0008": BASE["0008"]})
    Engine(fresh_db, mset).apply()
    assert Engine(fresh_db, mset).verify().ok
    with fresh_db.connect(search_path="public") as conn:
        conn.execute(_UNPRINTED_GRANTS[what])
    assert not Engine(fresh_db, mset).verify().ok, f"{what}: verify reports no drift"


# -- 4. client_encoding is a session default like TimeZone (ALTER DATABASE ... SET client_encoding, ALTER ROLE, or the
# operator's PGCLIENTENCODING) and is not pinned. The runner sends each statement as UTF-8 bytes (stmt.text.encode())
# whatever the session's encoding: under LATIN1 the server takes them for LATIN1 text. A non-ASCII constant in a
# definition is stored as mojibake (the honest migration is refused: its CHECK differs), and in data it is stored as
# mojibake silently (the migration applies and verifies).

_NON_ASCII_CHECK = "CREATE TABLE labels (id int PRIMARY KEY, label text CHECK (label <> '→ café'));\n"
_NON_ASCII_DATA = "CREATE TABLE labels (id int PRIMARY KEY, label text);\nINSERT INTO labels VALUES (1, 'café');\n"


def _latin1(settings: ConnectionSettings) -> None:
    from psycopg import sql

    with settings.connect() as conn:
        conn.execute(sql.SQL("ALTER DATABASE {} SET client_encoding = 'LATIN1'").format(sql.Identifier(settings.dbname)))


def test_a_non_ascii_constant_in_a_definition_is_stored_as_its_snapshot_says_when_the_database_sets_client_encoding(
    fresh_db: ConnectionSettings, set_copy: Path, admin: ConnectionSettings
) -> None:
    """The catalog read comes back as JSON, which psycopg decodes as UTF-8 whatever the session's encoding: the two
    errors cancel out, and apply and verify both call the mojibake CHECK the snapshot's."""
    mset = _write(set_copy, admin, {"0008": BASE["0008"] + _NON_ASCII_CHECK})
    expected = mset.expected_catalog("0008")["constraint:labels.labels_label_check"]["definition"]
    _latin1(fresh_db)
    Engine(fresh_db, mset).apply()
    assert Engine(fresh_db, mset).verify().ok
    with fresh_db.connect() as conn:
        conn.execute("SET client_encoding = 'UTF8'")
        row = conn.execute("SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = 'labels_label_check'").fetchone()
    assert row == (expected,), f"applied and verified, but the database holds {row!r}; the snapshot says {expected!r}"


def test_a_migrations_non_ascii_data_is_stored_as_written_when_the_database_sets_client_encoding(
    fresh_db: ConnectionSettings, set_copy: Path, admin: ConnectionSettings
) -> None:
    mset = _write(set_copy, admin, {"0008": BASE["0008"] + _NON_ASCII_DATA})
    _latin1(fresh_db)
    Engine(fresh_db, mset).apply()
    assert Engine(fresh_db, mset).verify().ok
    with fresh_db.connect() as conn:
        conn.execute("SET client_encoding = 'UTF8'")
        stored = conn.execute("SELECT label FROM labels").fetchone()
    assert stored == ("café",), f"the migration wrote 'café'; the database holds {stored!r}"


def test_verify_on_an_untouched_database_does_not_depend_on_the_operators_pgclientencoding(
    fresh_db: ConnectionSettings, set_copy: Path, admin: ConnectionSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    mset = _write(set_copy, admin, {"0008": BASE["0008"] + _NON_ASCII_CHECK})
    Engine(fresh_db, mset).apply()
    assert Engine(fresh_db, mset).verify().ok
    monkeypatch.setenv("PGCLIENTENCODING", "LATIN1")
    try:
        report = Engine(fresh_db, mset).verify()
    except Exception as exc:
        pytest.fail(f"verify failed on an untouched database under PGCLIENTENCODING=LATIN1: {type(exc).__name__}: {str(exc)[:300]}")
    assert report.ok, "; ".join(d.describe() for d in report.differences)


# -- 5. The same filter hides drift: GRANT SELECT ON an existing table TO PUBLIC, plus a default privilege that grants
# the same on new tables (pg_default_acl is not in the model), and verify reports nothing. The grant on the existing
# table came from no default: it was made by hand after the table.


def test_verify_reports_a_public_grant_on_an_existing_table_hidden_behind_a_new_default_privilege(
    fresh_db: ConnectionSettings, set_copy: Path, admin: ConnectionSettings
) -> None:
    mset = _write(set_copy, admin, {"0008": BASE["0008"]})
    Engine(fresh_db, mset).apply()
    assert Engine(fresh_db, mset).verify().ok
    with fresh_db.connect(search_path="public") as conn:
        conn.execute("GRANT SELECT ON wishlist_items TO PUBLIC")
    assert not Engine(fresh_db, mset).verify().ok  # reported as long as no default matches it
    with fresh_db.connect(search_path="public") as conn:
        conn.execute("ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO PUBLIC")
    report = Engine(fresh_db, mset).verify()
    assert not report.ok, "every role can read wishlist_items (granted by hand, after the table was made); verify: no drift"


# -- 6. Settings that change how a migration's constants PARSE, not pinned: a database default (ALTER DATABASE ... SET,
# as in test_hostile_session) changes what an honest migration's DEFAULT/CHECK means, so it is refused (and the same
# constant in an INSERT is stored differently, silently).

_PARSE_SETTINGS = {
    "array_nulls": ("off", "CREATE TABLE tags (id int PRIMARY KEY, t text[] DEFAULT '{a,NULL}');\n"),
    "timezone_abbreviations": (
        "Australia",
        "CREATE TABLE shifts (id int PRIMARY KEY, at timestamptz CHECK (at > '2024-01-01 09:00 EST'));\n",
    ),
    "transform_null_equals": ("on", "CREATE VIEW open_notes AS SELECT id FROM a WHERE note = NULL;\n"),
}


@pytest.mark.parametrize("setting", sorted(_PARSE_SETTINGS))
def test_an_honest_migration_applies_under_a_database_default_that_changes_how_constants_parse(
    setting: str, fresh_db: ConnectionSettings, set_copy: Path, admin: ConnectionSettings
) -> None:
    from psycopg import sql

    value, text = _PARSE_SETTINGS[setting]
    mset = _write(set_copy, admin, {"0008": BASE["0008"] + text})
    with fresh_db.connect() as conn:
        conn.execute(
            sql.SQL("ALTER DATABASE {} SET {} = {}").format(sql.Identifier(fresh_db.dbname), sql.Identifier(setting), sql.Literal(value))
        )
    try:
        Engine(fresh_db, mset).apply()
    except MigrationError as exc:
        pytest.fail(f"an honest migration was refused on a database with {setting} = {value}: {str(exc)[:500]}")


# -- 7. A failing statement is quoted in the message with passwords masked (connection.mask_dsn): the masking knows
# `PASSWORD '...'` and its E'/dollar forms only. A password passed to format() or quote_literal() in dynamic SQL, or
# after a comment, is printed. Here the role exists already (the snapshot's run made it: roles are cluster-wide), as
# when a migration is re-run against another database of the same cluster.

_SECRET = "hunter2-Zq9"
_LEAKS = {
    "format %L": "DO $$ BEGIN EXECUTE format('CREATE ROLE %I LOGIN PASSWORD %L', '{role}', '{secret}'); END $$;\n",
    "quote_literal": "DO $$ BEGIN EXECUTE 'CREATE ROLE {role} LOGIN PASSWORD ' || quote_literal('{secret}'); END $$;\n",
    "comment before the literal": "CREATE ROLE {role} LOGIN PASSWORD /* the app's */ '{secret}';\n",
}


@pytest.mark.parametrize("case", sorted(_LEAKS))
def test_a_password_in_a_failing_statement_is_not_printed(
    case: str, fresh_db: ConnectionSettings, set_copy: Path, admin: ConnectionSettings, pg_cluster: localpg.Cluster
) -> None:
    role = f"app_{secrets.token_hex(4)}"
    try:
        mset = _write(set_copy, admin, {"0008": BASE["0008"] + _LEAKS[case].format(role=role, secret=_SECRET)})
        with pytest.raises(MigrationError) as failure:
            Engine(fresh_db, mset).apply()
        told = f"{failure.value} {getattr(failure.value, 'hint', '')}"
        assert "already exists" in told
        assert _SECRET not in told, f"{case}: the password is printed: {told[:400]}"
    finally:
        pg_cluster.superuser_psql(f"DROP ROLE IF EXISTS {role}")


def test_a_run_of_several_steps_under_an_operators_pgclientencoding_stores_and_reads_non_ascii_text(
    fresh_db: ConnectionSettings, set_copy: Path, admin: ConnectionSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PGCLIENTENCODING wins over the startup options, and RESET ALL at each step goes back to it: the engine pins
    UTF8 again for the session at every step, so every step's text and every read after it are UTF-8."""
    files = {
        "0008": BASE["0008"] + "ALTER TABLE a ADD CONSTRAINT arrow CHECK (note <> '→ café');\nINSERT INTO a VALUES (1, 'naïve →');\n",
        "0009": BASE["0009"] + "ALTER TABLE b ADD CONSTRAINT arrow_b CHECK (note <> '← été');\n",
        "0010": BASE["0010"],
    }
    mset = _write(set_copy, admin, files)
    monkeypatch.setenv("PGCLIENTENCODING", "LATIN1")
    Engine(fresh_db, mset).apply()
    assert Engine(fresh_db, mset).verify().ok
    monkeypatch.delenv("PGCLIENTENCODING")
    with fresh_db.connect() as conn:
        assert conn.execute("SELECT note FROM a WHERE id = 1").fetchone() == ("naïve →",)
        defs = {r[0] for r in conn.execute("SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname IN ('arrow', 'arrow_b')")}
    assert defs == {"CHECK ((note <> '→ café'::text))", "CHECK ((note <> '← été'::text))"}
