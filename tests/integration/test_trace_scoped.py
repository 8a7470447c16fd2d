"""The lock trace reads only the relations a transaction locks, and records exactly what a read of the whole schema
before and after each statement records (the reference below): locks, rewrites, scans, created relations.

A relation's file (rewrite), its name, schema and existence change only under a lock its transaction keeps to the end,
and a scan takes one too: what no lock names did not change. These tests hold the tracker to that, statement by
statement, over the lint corpus (72 migrations of every kind) and over committed transactions in a row.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from bench.lint_corpus import BASE, CASES, NT
from components.engine.connection import ConnectionSettings
from components.engine.sqltext import split_statements
from components.engine.trace import RelationTracker, StatementTrace, _compare, _held, _relations

SCHEMA = "public"


def _reference(conn: psycopg.Connection[Any], tracker: RelationTracker, text: str) -> tuple[StatementTrace, StatementTrace]:
    """The tracker's trace of one statement, and the trace the whole schema read before and after gives."""
    (stmt,) = split_statements(text)
    before, held = _relations(conn, SCHEMA), _held(conn)
    traced = tracker.trace(conn, stmt)
    return traced, _compare(stmt, before, _relations(conn, SCHEMA), _held(conn) - held, measured=True, scans=True)


@pytest.fixture
def base_db(fresh_db: ConnectionSettings) -> Iterator[psycopg.Connection[Any]]:
    with fresh_db.connect(autocommit=True, search_path=SCHEMA) as conn:
        conn.execute(BASE.encode())
        conn.execute("INSERT INTO accounts SELECT i, 'a' || i || '@x.org', 'n' || i FROM generate_series(1, 50) i")
        conn.execute("INSERT INTO orders SELECT i, 1 + i % 50, i % 5, 1, 'new', 'n', 1, now() FROM generate_series(1, 50) i")
        conn.execute("INSERT INTO events SELECT i, 'k' FROM generate_series(1, 50) i")
        yield conn


TRANSACTIONAL = [c for c in CASES if not c.sql.startswith(NT)]


# Corpus cases PostgreSQL refuses here (on purpose: they show what a linter must catch): they fail under both traces.
REFUSED = {"add_not_null_no_default": psycopg.errors.NotNullViolation, "cic_in_transaction": psycopg.errors.ActiveSqlTransaction}


@pytest.mark.parametrize("case", TRANSACTIONAL, ids=[c.name for c in TRANSACTIONAL])
def test_each_statement_of_the_corpus_is_traced_as_the_whole_read_traces_it(base_db: psycopg.Connection[Any], case: Any) -> None:
    conn = base_db
    tracker = RelationTracker(conn, SCHEMA)
    conn.execute("BEGIN")
    try:
        tracker.begin(conn)
        for stmt in split_statements(case.sql):
            if case.name in REFUSED:
                with pytest.raises(REFUSED[case.name]):
                    tracker.trace(conn, stmt)
                return
            traced, reference = _reference(conn, tracker, stmt.text)
            assert traced == reference, stmt.text
    finally:
        conn.execute("ROLLBACK")


FILES = [
    # each list is one committed transaction; together they rename, move, drop and recreate, rewrite and scan
    [
        "CREATE TABLE a (id int PRIMARY KEY, v text)",
        "CREATE INDEX a_v ON a (v)",
        "INSERT INTO a SELECT i, 'x' FROM generate_series(1, 20) i",
    ],
    ["UPDATE a SET v = 'y'", "ALTER TABLE a ALTER COLUMN v TYPE varchar(10)", "ALTER TABLE a RENAME TO b"],
    ["CREATE SCHEMA other", "ALTER TABLE b SET SCHEMA other", "CREATE TABLE b (id int)", "CREATE VIEW bv AS SELECT id FROM b"],
    ["DROP VIEW bv", "DROP TABLE b"],
    ["ALTER TABLE other.b SET SCHEMA public", "TRUNCATE b", "CREATE SEQUENCE s", "CREATE MATERIALIZED VIEW m AS SELECT count(*) FROM b"],
    ["REFRESH MATERIALIZED VIEW m", "SELECT count(*) FROM b", "ALTER TABLE b ADD CONSTRAINT pos CHECK (id > 0)"],
    [
        "DO $$ BEGIN EXECUTE 'CREATE TABLE made_by_do (id int)'; EXECUTE 'ALTER TABLE b ADD COLUMN w int DEFAULT 1'; END $$",
        "CREATE TABLE parted (id int) PARTITION BY RANGE (id)",
        "CREATE TABLE part1 (id int)",
        "ALTER TABLE parted ATTACH PARTITION part1 FOR VALUES FROM (0) TO (10)",
    ],
    ["DROP SCHEMA other CASCADE", "DROP TABLE parted, made_by_do", "CREATE INDEX b_id ON b (id)", "CLUSTER b USING b_id"],
    # owned sequences (serial, identity) move with their table; a sequence made free of its table stays
    [
        "CREATE SCHEMA other",
        "CREATE TABLE s1 (id bigserial PRIMARY KEY, n int GENERATED ALWAYS AS IDENTITY)",
        "ALTER TABLE s1 SET SCHEMA other",
    ],
    [
        "CREATE SEQUENCE other.free OWNED BY other.s1.id",
        "ALTER SEQUENCE other.free OWNED BY NONE",
        "ALTER TABLE other.s1 SET SCHEMA public",
    ],
    [
        "CREATE TABLE l (LIKE s1 INCLUDING ALL)",
        "CREATE TABLE inh (extra int) INHERITS (l)",
        "ALTER TABLE l RENAME TO l2",
        "DROP TABLE l2 CASCADE",
    ],
    [
        "CREATE VIEW v1 AS SELECT id FROM s1",
        "CREATE MATERIALIZED VIEW mv1 AS SELECT id FROM v1",
        "CREATE INDEX mv1_id ON mv1 (id)",
        "ALTER TABLE s1 SET SCHEMA other",
    ],
]


def test_committed_transactions_in_a_row_are_traced_as_the_whole_read_traces_them(fresh_db: ConnectionSettings) -> None:
    with fresh_db.connect(autocommit=True, search_path=SCHEMA) as conn:
        tracker = RelationTracker(conn, SCHEMA)
        for statements in FILES:
            with conn.transaction():
                tracker.begin(conn)
                for text in statements:
                    traced, reference = _reference(conn, tracker, text)
                    assert traced == reference, text
        # what it holds at the end is the schema (scan counts are per transaction: compared without them)
        assert {oid: rel[:3] for oid, rel in tracker.relations.items()} == {oid: rel[:3] for oid, rel in _relations(conn, SCHEMA).items()}
