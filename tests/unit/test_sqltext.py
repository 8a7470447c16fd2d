"""Statement splitting (pure)."""

from __future__ import annotations

from components.engine.sqltext import header_markers, split_statements


def test_split_respects_quotes_dollar_quotes_and_comments() -> None:
    sql = (
        "-- a comment; with a semicolon\n"
        "CREATE TABLE t (a text DEFAULT 'x;y', \"b;c\" int);\n"
        "/* block; /* nested; */ still */\n"
        "CREATE FUNCTION f() RETURNS int AS $body$ SELECT 1; $body$ LANGUAGE sql;\n"
        "SELECT $$;$$;\n"
        "SELECT E'it\\'s;';\n"
        "   ;  \n"
    )
    stmts = split_statements(sql)
    assert [s.text.split()[0] for s in stmts] == ["CREATE", "CREATE", "SELECT", "SELECT"]
    assert stmts[0].line == 2 and stmts[1].line == 4
    assert stmts[1].text.endswith("LANGUAGE sql")


def test_header_markers_stop_at_the_first_statement() -> None:
    sql = "-- migrate:no-transaction\n-- migrate:allow drop-table\nDROP TABLE t;\n-- migrate:allow drop-column\n"
    assert header_markers(sql) == {"no-transaction": [""], "allow": ["drop-table"]}
