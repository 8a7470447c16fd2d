"""Property: generated statements joined into one file split back into the same statements, lines and kinds."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from components.engine.sqltext import is_transaction_control, split_statements

_TEXT = st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")
_WORD = st.text(st.sampled_from("abcdefghijklmnopqrstuvwxyz0123456789_éßж"), min_size=1, max_size=8)
_SPACE = st.sampled_from([" ", "\t", "\n", "\r\n", "  \n  "])

identifier = st.one_of(
    _WORD.map(lambda w: f"t_{w}"),  # "t_" is no keyword's prefix
    st.text(_TEXT, min_size=1, max_size=10).map(lambda s: '"' + s.replace('"', '""') + '"'),
)
line_comment = st.text(_TEXT.filter(lambda c: c not in "\r\n"), max_size=12).map(lambda s: f"--{s}\n")
block_body = st.text(_TEXT.filter(lambda c: c not in "*/"), max_size=12)
block_comment = st.one_of(
    block_body.map(lambda s: f"/*{s}*/"),
    st.tuples(block_body, block_body, block_body).map(lambda p: f"/*{p[0]}/*{p[1]};*/{p[2]}*/"),  # nested
)
gap = st.one_of(_SPACE, st.tuples(_SPACE, st.one_of(line_comment, block_comment), _SPACE).map("".join))

plain_string = st.text(_TEXT, max_size=12).map(lambda s: "'" + s.replace("'", "''") + "'")
escape_string = st.lists(
    st.one_of(st.text(_TEXT.filter(lambda c: c not in "'\\"), min_size=1, max_size=4), st.sampled_from(["\\\\", "\\'", "''", "\\n", ";"])),
    max_size=6,
).map(lambda parts: "E'" + "".join(parts) + "'")


@st.composite
def dollar_string(draw: st.DrawFn) -> str:
    tag = draw(st.sampled_from(["", "body", "x_1", "é"]))
    delim = f"${tag}$"
    body = draw(st.text(st.one_of(_TEXT, st.sampled_from(list(";$'\"-/*\n"))), max_size=20))
    body = draw(st.just(body).filter(lambda b: (b + delim).find(delim) == len(b)))  # the first delimiter closes it
    return f"{delim}{body}{delim}"


literal = st.one_of(st.integers(0, 10**6).map(str), plain_string, escape_string, dollar_string())


@st.composite
def statement(draw: st.DrawFn) -> tuple[str, str]:
    """One statement without its semicolon, tokens separated by whitespace and comments, and its parse-tree kind."""
    g = lambda: draw(gap)  # noqa: E731
    kind = draw(st.sampled_from(["select", "create", "comment", "function", "atomic", "insert", "transaction"]))
    if kind == "select":
        items = draw(st.lists(literal, min_size=1, max_size=3))
        return "SELECT" + g() + ("," + g()).join(items), "SelectStmt"
    if kind == "create":
        cols = draw(st.lists(st.tuples(identifier, literal), min_size=1, max_size=3))
        body = ("," + g()).join(f"{c}{g()}text{g()}DEFAULT{g()}{v}" for c, v in cols)
        return f"CREATE{g()}TABLE{g()}{draw(identifier)}{g()}({body})", "CreateStmt"
    if kind == "comment":
        return f"COMMENT{g()}ON{g()}TABLE{g()}{draw(identifier)}{g()}IS{g()}{draw(plain_string)}", "CommentStmt"
    if kind == "function":
        return f"CREATE FUNCTION {draw(identifier)}(){g()}RETURNS text LANGUAGE sql AS{g()}{draw(dollar_string())}", "CreateFunctionStmt"
    if kind == "atomic":
        selects = [f"SELECT{g()}{v};" for v in draw(st.lists(literal, min_size=1, max_size=3))]
        return f"CREATE FUNCTION {draw(identifier)}() RETURNS int LANGUAGE sql{g()}BEGIN ATOMIC{g()}{g().join(selects)}{g()}END", (
            "CreateFunctionStmt"
        )
    if kind == "insert":
        return f"INSERT INTO{g()}{draw(identifier)}{g()}VALUES{g()}({draw(literal)})", "InsertStmt"
    text = draw(st.sampled_from(["BEGIN", "COMMIT", "END", "ROLLBACK", "ABORT", "START TRANSACTION", "SAVEPOINT s", "RELEASE s"]))
    return text, "TransactionStmt"


@st.composite
def sql_file(draw: st.DrawFn) -> tuple[str, list[tuple[str, int, str]]]:
    """A file of generated statements and, for each, its text, 1-based line and kind."""
    maybe_gap = st.one_of(st.just(""), gap)
    out = draw(st.sampled_from(["", "\ufeff"])) + draw(maybe_gap)
    expected: list[tuple[str, int, str]] = []
    stmts = draw(st.lists(statement(), min_size=1, max_size=5))
    for i, (text, kind) in enumerate(stmts):
        expected.append((text, out.count("\n") + 1, kind))
        out += text
        if i < len(stmts) - 1 or draw(st.booleans()):
            out += draw(maybe_gap) + ";" + draw(st.sampled_from(["", ";", " ; "]))  # empty statements are dropped
        out += draw(maybe_gap)
    return out, expected


@settings(max_examples=300, deadline=None)
@given(sql_file())
def test_split_returns_the_generated_statements(case: tuple[str, list[tuple[str, int, str]]]) -> None:
    sql, expected = case
    got = split_statements(sql)
    assert [(s.text, s.line, s.kind) for s in got] == expected
    assert [is_transaction_control(s) for s in got] == [kind == "TransactionStmt" for _, _, kind in expected]
