"""Statement splitting (pure)."""

from __future__ import annotations

import pytest

from components.engine.errors import SetError
from components.engine.sqltext import header_markers, is_transaction_control, split_statements


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


def test_begin_atomic_body_is_one_statement() -> None:
    sql = "CREATE FUNCTION f() RETURNS int LANGUAGE sql\nBEGIN ATOMIC\n  SELECT 1;\n  SELECT 2;\nEND;\nSELECT f();\n"
    stmts = split_statements(sql)
    assert [(s.text, s.line) for s in stmts] == [(sql[: sql.index("END;") + 3], 1), ("SELECT f()", 6)]
    assert [s.kind for s in stmts] == ["CreateFunctionStmt", "SelectStmt"]


def test_byte_order_mark_and_crlf_line_ends() -> None:
    sql = "\ufeff-- migrate:no-transaction\r\n-- migrate:allow drop-table\r\nCREATE TABLE t (a text);\r\n\r\nDROP TABLE t;\r\n"
    assert [(s.text, s.line) for s in split_statements(sql)] == [("CREATE TABLE t (a text)", 3), ("DROP TABLE t", 5)]
    assert header_markers(sql) == {"no-transaction": [""], "allow": ["drop-table"]}


def test_non_ascii_text_keeps_statement_boundaries_and_lines() -> None:
    sql = "-- größe 😀\nCOMMENT ON TABLE t IS 'naïve ✓';\n/* é */ SELECT \"spalte_ä\" FROM t; SELECT 'ß' -- trailing é\n"
    stmts = split_statements(sql)
    assert [(s.text, s.line) for s in stmts] == [
        ("COMMENT ON TABLE t IS 'naïve ✓'", 2),
        ('SELECT "spalte_ä" FROM t', 3),
        ("SELECT 'ß'", 3),
    ]


def test_syntax_error_names_the_source_line_and_the_parser_message() -> None:
    sql = "CREATE TABLE t (a text);\n-- é\nCREATE TABLE u (a text,);\n"
    with pytest.raises(SetError, match=r"0008_x\.sql line 3: syntax error at or near \"\)\"") as err:
        split_statements(sql, source="0008_x.sql")
    assert "Fix:" in str(err.value)


def test_unterminated_input_is_reported_at_its_end() -> None:
    with pytest.raises(SetError, match=r"0008_x\.sql line 2: syntax error at end of input"):
        split_statements("SELECT 1;\nSELECT (1\n", source="0008_x.sql")


@pytest.mark.parametrize(
    "text",
    [
        "BEGIN",
        "BEGIN TRANSACTION ISOLATION LEVEL SERIALIZABLE",
        "START TRANSACTION",
        "COMMIT",
        "END",
        "ROLLBACK",
        "ABORT",
        "SAVEPOINT s",
        "RELEASE s",
        "RELEASE SAVEPOINT s",
        "ROLLBACK TO SAVEPOINT s",
        "PREPARE TRANSACTION 'x'",
        "COMMIT PREPARED 'x'",
        "ROLLBACK PREPARED 'x'",
    ],
)
def test_transaction_control_is_recognised(text: str) -> None:
    [stmt] = split_statements(f"{text};")
    assert is_transaction_control(stmt)


@pytest.mark.parametrize(
    "text",
    [
        "CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; END",
        "DO $$ BEGIN PERFORM 1; END $$",
        "SELECT 'COMMIT'",
        'CREATE TABLE "begin" ("commit" int)',
        "PREPARE q AS SELECT 1",
    ],
)
def test_other_statements_are_not_transaction_control(text: str) -> None:
    [stmt] = split_statements(f"{text};")
    assert not is_transaction_control(stmt)
