"""Labelled migrations for the lint benchmark: each runs after BASE, on tables that hold rows (ROWS) unless it says empty.

"danger": it blocks the application for a time that grows with the table, or destroys data or breaks running code.
"safe": it does not, though a text-based linter may think so. `audit` is the one empty table.
"""

from __future__ import annotations

from dataclasses import dataclass

BASE = """\
CREATE TYPE mood AS ENUM ('happy', 'sad');
CREATE DOMAIN posint AS int;
CREATE TABLE accounts (id bigint PRIMARY KEY, email text NOT NULL, name varchar(50), created_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE orders (
  id bigint PRIMARY KEY, account_id bigint NOT NULL, total int, qty posint, status text, note varchar(20),
  price numeric(10, 2), placed_at timestamptz, CONSTRAINT status_present CHECK (status IS NOT NULL)
);
ALTER TABLE orders ADD CONSTRAINT total_nonneg CHECK (total >= 0) NOT VALID;
CREATE INDEX orders_status_idx ON orders (status);
CREATE TABLE events (id bigint NOT NULL, kind text);
CREATE UNIQUE INDEX events_id_uidx ON events (id);
CREATE UNIQUE INDEX accounts_email_uidx ON accounts (email);
CREATE TABLE audit (id bigint, payload text, size varchar(10));
"""

ROWS = [
    "INSERT INTO accounts SELECT i, 'a' || i || '@x.org', 'name ' || i FROM generate_series(1, 20000) i",
    "INSERT INTO orders SELECT i, 1 + i % 20000, i % 500, 1, 'new', 'n', i % 100, now() FROM generate_series(1, 50000) i",
    "INSERT INTO events SELECT i, 'k' FROM generate_series(1, 20000) i",
    "ANALYZE",
]

NT = "-- migrate:no-transaction\n"


@dataclass(frozen=True)
class Case:
    name: str
    label: str  # "danger" | "safe"
    sql: str
    why: str = ""


CASES = [
    # ---- dangerous on a table with rows
    Case("index_plain", "danger", "CREATE INDEX orders_total_idx ON orders (total);"),
    Case("unique_index_plain", "danger", "CREATE UNIQUE INDEX accounts_name_uidx ON accounts (id, name);"),
    Case("drop_index_plain", "danger", "DROP INDEX orders_status_idx;"),
    Case("add_not_null_no_default", "danger", "ALTER TABLE orders ADD COLUMN region text NOT NULL;", "fails on rows"),
    Case("set_not_null", "danger", "ALTER TABLE accounts ALTER COLUMN name SET NOT NULL;", "scans under ACCESS EXCLUSIVE"),
    Case("default_clock", "danger", "ALTER TABLE orders ADD COLUMN seen timestamptz DEFAULT clock_timestamp();"),
    Case("default_uuid", "danger", "ALTER TABLE orders ADD COLUMN token uuid DEFAULT gen_random_uuid();"),
    Case("default_random", "danger", "ALTER TABLE orders ADD COLUMN r int DEFAULT (random() * 10)::int;"),
    Case("add_bigserial", "danger", "ALTER TABLE events ADD COLUMN seq bigserial;"),
    Case("add_primary_key", "danger", "ALTER TABLE events ADD PRIMARY KEY (id);"),
    Case("check_validated", "danger", "ALTER TABLE orders ADD CONSTRAINT qty_small CHECK (qty < 1000);"),
    Case(
        "fk_validated", "danger", "ALTER TABLE orders ADD CONSTRAINT orders_account_fk FOREIGN KEY (account_id) REFERENCES accounts (id);"
    ),
    Case("unique_constraint", "danger", "ALTER TABLE accounts ADD CONSTRAINT accounts_name_unique UNIQUE (id, name);"),
    Case("int_to_bigint", "danger", "ALTER TABLE orders ALTER COLUMN total TYPE bigint;"),
    Case("varchar_shrink", "danger", "ALTER TABLE orders ALTER COLUMN note TYPE varchar(10);"),
    Case("text_to_varchar", "danger", "ALTER TABLE accounts ALTER COLUMN email TYPE varchar(200);", "rewrites (measured)"),
    Case("bigint_to_text", "danger", "ALTER TABLE orders ALTER COLUMN account_id TYPE text USING account_id::text;"),
    Case("numeric_scale", "danger", "ALTER TABLE orders ALTER COLUMN price TYPE numeric(12, 4);", "scale change rewrites"),
    Case("rename_column", "danger", "ALTER TABLE accounts RENAME COLUMN name TO full_name;", "breaks running code"),
    Case("rename_table", "danger", "ALTER TABLE orders RENAME TO purchases;", "breaks running code"),
    Case("drop_table", "danger", "DROP TABLE events;", "destroys data"),
    Case("drop_column", "danger", "ALTER TABLE orders DROP COLUMN note;", "destroys data"),
    Case("alter_domain_check", "danger", "ALTER DOMAIN posint ADD CONSTRAINT posint_positive CHECK (VALUE > 0);"),
    Case("cic_in_transaction", "danger", "CREATE INDEX CONCURRENTLY orders_placed_idx ON orders (placed_at);", "fails"),
    Case("cluster", "danger", "CLUSTER orders USING orders_pkey;"),
    Case("reindex_plain", "danger", "REINDEX TABLE orders;"),
    Case("vacuum_full", "danger", NT + "VACUUM FULL orders;"),
    Case("lock_table", "danger", "LOCK TABLE orders IN ACCESS EXCLUSIVE MODE;\nALTER TABLE orders ADD COLUMN flag boolean;"),
    Case("truncate", "danger", "TRUNCATE orders;"),
    Case("update_in_ddl_txn", "danger", "ALTER TABLE orders ADD COLUMN region text;\nUPDATE orders SET region = 'eu';"),
    Case("delete_in_ddl_txn", "danger", "ALTER TABLE events ADD COLUMN old boolean;\nDELETE FROM events;"),
    Case("generated_stored", "danger", "ALTER TABLE orders ADD COLUMN total2 int GENERATED ALWAYS AS (total * 2) STORED;", "rewrite"),
    Case("exclusion_constraint", "danger", "ALTER TABLE events ADD CONSTRAINT events_excl EXCLUDE USING btree (id WITH =);", "scan"),
    Case("set_unlogged", "danger", "ALTER TABLE events SET UNLOGGED;", "rewrite"),
    Case(
        "validate_same_txn",
        "danger",
        "ALTER TABLE orders ADD CONSTRAINT qty_pos CHECK (qty > 0) NOT VALID;\nALTER TABLE orders VALIDATE CONSTRAINT qty_pos;",
        "VALIDATE scans while the ADD's ACCESS EXCLUSIVE is still held",
    ),
    Case("check_is_not_null", "danger", "ALTER TABLE accounts ADD CONSTRAINT n CHECK (name IS NOT NULL);"),
    Case("add_column_unique", "danger", "ALTER TABLE orders ADD COLUMN code text UNIQUE;"),
    Case("bigint_to_int", "danger", "ALTER TABLE events ALTER COLUMN id TYPE int;"),
    # ---- safe
    Case("cic", "safe", NT + "CREATE INDEX CONCURRENTLY orders_total_idx ON orders (total);"),
    Case("drop_index_concurrently", "safe", NT + "DROP INDEX CONCURRENTLY orders_status_idx;"),
    Case("add_nullable", "safe", "ALTER TABLE orders ADD COLUMN region text;"),
    Case("add_constant_default_not_null", "safe", "ALTER TABLE orders ADD COLUMN region text NOT NULL DEFAULT 'eu';"),
    Case("add_default_now", "safe", "ALTER TABLE orders ADD COLUMN seen timestamptz DEFAULT now();", "now() is stable: no rewrite"),
    Case("check_not_valid", "safe", "ALTER TABLE orders ADD CONSTRAINT qty_small CHECK (qty < 1000) NOT VALID;"),
    Case(
        "fk_not_valid",
        "safe",
        "ALTER TABLE orders ADD CONSTRAINT orders_account_fk FOREIGN KEY (account_id) REFERENCES accounts (id) NOT VALID;",
    ),
    Case("validate_later", "safe", "ALTER TABLE orders VALIDATE CONSTRAINT total_nonneg;", "SHARE UPDATE EXCLUSIVE"),
    Case("varchar_widen", "safe", "ALTER TABLE accounts ALTER COLUMN name TYPE varchar(100);", "no rewrite"),
    Case("varchar_to_text", "safe", "ALTER TABLE orders ALTER COLUMN note TYPE text;", "no rewrite"),
    Case("varchar_unbounded", "safe", "ALTER TABLE orders ALTER COLUMN note TYPE varchar;", "no rewrite"),
    Case("numeric_precision_up", "safe", "ALTER TABLE orders ALTER COLUMN price TYPE numeric(14, 2);", "no rewrite"),
    Case("new_table_with_index", "safe", "CREATE TABLE tags (id int PRIMARY KEY, name text);\nCREATE INDEX tags_name_idx ON tags (name);"),
    Case("new_table_fk", "safe", "CREATE TABLE notes (id int PRIMARY KEY, order_id bigint REFERENCES orders (id));"),
    Case("empty_index", "safe", "CREATE INDEX audit_payload_idx ON audit (payload);", "empty table"),
    Case("empty_not_null", "safe", "ALTER TABLE audit ADD COLUMN kind text NOT NULL;", "empty table"),
    Case("empty_type_change", "safe", "ALTER TABLE audit ALTER COLUMN id TYPE int;", "empty table"),
    Case("empty_set_not_null", "safe", "ALTER TABLE audit ALTER COLUMN payload SET NOT NULL;", "empty table"),
    Case("empty_check", "safe", "ALTER TABLE audit ADD CONSTRAINT audit_id_pos CHECK (id > 0);", "empty table"),
    Case("empty_unique", "safe", "ALTER TABLE audit ADD CONSTRAINT audit_id_unique UNIQUE (id);", "empty table"),
    Case("empty_varchar_shrink", "safe", "ALTER TABLE audit ALTER COLUMN size TYPE varchar(5);", "empty table"),
    Case("set_not_null_after_check", "safe", "ALTER TABLE orders ALTER COLUMN status SET NOT NULL;", "a valid CHECK proves it"),
    Case("pk_using_index", "safe", "ALTER TABLE events ADD CONSTRAINT events_pkey PRIMARY KEY USING INDEX events_id_uidx;"),
    Case("unique_using_index", "safe", "ALTER TABLE accounts ADD CONSTRAINT accounts_email_key UNIQUE USING INDEX accounts_email_uidx;"),
    Case("enum_add_value", "safe", NT + "ALTER TYPE mood ADD VALUE 'calm';"),
    Case("batched_backfill", "safe", "UPDATE orders SET status = 'old' WHERE id BETWEEN 1 AND 1000;"),
    Case("set_default", "safe", "ALTER TABLE orders ALTER COLUMN status SET DEFAULT 'new';"),
    Case("drop_not_null", "safe", "ALTER TABLE accounts ALTER COLUMN email DROP NOT NULL;"),
    Case("comment", "safe", "COMMENT ON TABLE orders IS 'orders placed';"),
    Case("fillfactor", "safe", "ALTER TABLE orders SET (fillfactor = 90);"),
    Case("reindex_concurrently", "safe", NT + "REINDEX INDEX CONCURRENTLY orders_status_idx;"),
    Case("create_view", "safe", "CREATE VIEW big_orders AS SELECT * FROM orders WHERE total > 400;"),
    Case("drop_default", "safe", "ALTER TABLE accounts ALTER COLUMN created_at DROP DEFAULT;"),
    Case("new_table_serial", "safe", "CREATE TABLE counters (id bigserial PRIMARY KEY, n int NOT NULL);"),
]
