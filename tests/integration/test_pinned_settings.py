"""The pinned settings (connection.PINNED) hold after the statements that pin them, whatever a migration set before, for
the session (catalog.START_OVER) and for the verifying read's transaction (catalog.RESET_PRINT_SETTINGS); and a setting
already at its pinned value is not set again (issue #14: setting all of them at every step, and reading pg_settings for
the search_path, cost about 1 ms a step). The last test failed on the code before that change."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from psycopg import sql

from components.engine import catalog as cat
from components.engine.connection import PIN_SESSION, PINNED, ConnectionSettings

# A value other than the pinned one for each setting (default_table_access_method: heap is the only one built in).
OTHER = {
    "TimeZone": "Asia/Tokyo",
    "DateStyle": "SQL, DMY",
    "IntervalStyle": "iso_8601",
    "extra_float_digits": "3",
    "bytea_output": "escape",
    "standard_conforming_strings": "off",
    "quote_all_identifiers": "on",
    "xmloption": "document",
    "lc_monetary": "POSIX",
    "client_encoding": "LATIN1",
    "array_nulls": "off",
    "timezone_abbreviations": "Australia",
    "transform_null_equals": "on",
    "backslash_quote": "on",
    "xmlbinary": "hex",
}


def _current(conn: psycopg.Connection[Any]) -> dict[str, str]:
    return {name: str(conn.execute("SELECT pg_catalog.current_setting(%s)", (name,)).fetchone()[0]) for name, _ in PINNED}  # type: ignore[index]


def _set_all(conn: psycopg.Connection[Any], *, local: bool) -> None:
    for name, value in OTHER.items():
        conn.execute(sql.SQL("SET {} {} = {}").format(sql.SQL("LOCAL" if local else "SESSION"), sql.Identifier(name), sql.Literal(value)))
    conn.execute(sql.SQL("SET {} search_path = pg_temp, public, pg_catalog").format(sql.SQL("LOCAL" if local else "SESSION")))


def test_every_setting_a_migration_changed_for_the_session_is_pinned_again_at_the_next_step(fresh_db: ConnectionSettings) -> None:
    with fresh_db.connect() as conn:
        started_path = conn.execute("SHOW search_path").fetchone()[0]  # type: ignore[index]
        _set_all(conn, local=False)
        assert all(_current(conn)[name] != dict(PINNED)[name] for name in OTHER), "the test's SETs did not take"
        for query in cat.START_OVER:
            conn.execute(query)
        assert _current(conn) == dict(PINNED)
        assert conn.execute("SHOW search_path").fetchone()[0] == started_path  # type: ignore[index]


def test_every_setting_a_migration_changed_in_its_transaction_is_pinned_for_the_read(fresh_db: ConnectionSettings) -> None:
    with fresh_db.connect() as conn:
        started_path = conn.execute("SHOW search_path").fetchone()[0]  # type: ignore[index]
        for local in (True, False):  # SET LOCAL, and a session SET made inside the step's transaction
            with conn.transaction():
                _set_all(conn, local=local)
                for query in cat.RESET_PRINT_SETTINGS:
                    conn.execute(query)
                assert _current(conn) == dict(PINNED), f"local={local}"
                assert conn.execute("SHOW search_path").fetchone()[0] == started_path, f"local={local}"  # type: ignore[index]
            for query in cat.START_OVER:
                conn.execute(query)


def test_a_session_that_started_under_pgtz_is_pinned_by_the_session_pin(
    fresh_db: ConnectionSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PGTZ", "Asia/Tokyo")
    monkeypatch.setenv("PGDATESTYLE", "SQL, DMY")
    with fresh_db.connect() as conn:
        conn.execute("RESET ALL")  # back to what libpq sent at start: PGTZ's zone
        assert conn.execute("SHOW TimeZone").fetchone()[0] == "Asia/Tokyo"  # type: ignore[index]
        for query in cat.START_OVER:
            conn.execute(query)
        assert _current(conn) == dict(PINNED)


def test_a_setting_already_at_its_pinned_value_is_not_set_again(fresh_db: ConnectionSettings) -> None:
    with fresh_db.connect() as conn:
        assert conn.execute(PIN_SESSION).fetchall() == [], "PIN_SESSION set settings that were already pinned"
        with conn.transaction():
            conn.execute("SET LOCAL TimeZone = 'Asia/Tokyo'")
            assert len(conn.execute(cat.RESET_PRINT_SETTINGS[0]).fetchall()) == 1  # only the one that differs
            assert conn.execute("SHOW TimeZone").fetchone()[0] == "UTC"  # type: ignore[index]
