"""The live catalog of one schema: read in a single round trip, compared object by object, fingerprinted."""

from __future__ import annotations

import bisect
import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .connection import PIN_SESSION, pin_settings

if TYPE_CHECKING:
    import psycopg

# A catalog maps "kind:name" to a JSON-able definition. Flat, so that a diff is a set comparison.
Catalog = dict[str, dict[str, Any]]

# One statement, one round trip. Extension members are left out (they belong to the extension).
# The full read and the scoped read (only what changed since a horizon) share every line below `rels`, `types`
# and `procs`, so that both produce the same entries for the same object.
_EXT = "ext AS (SELECT classid, objid, refobjid FROM pg_catalog.pg_depend WHERE refclassid OPERATOR(pg_catalog.=) 'pg_catalog.pg_extension'::pg_catalog.regclass AND deptype OPERATOR(pg_catalog.=) 'e')"

_FULL_HEAD = f"""
WITH ns AS (SELECT oid FROM pg_catalog.pg_namespace WHERE nspname OPERATOR(pg_catalog.=) %(schema)s),
{_EXT},
rels AS (
  SELECT c.oid, c.relname, c.relkind, c.relpersistence, c.relrowsecurity, c.relforcerowsecurity, c.relispartition, c.relpartbound, c.relreplident, c.reloptions, c.relacl, c.relowner, c.relnamespace FROM pg_catalog.pg_class c, ns
  WHERE c.relnamespace OPERATOR(pg_catalog.=) ns.oid AND NOT (c.oid OPERATOR(pg_catalog.=) ANY (SELECT objid FROM ext))
),
types AS (
  SELECT t.oid, t.typname, t.typtype FROM pg_catalog.pg_type t, ns
  WHERE t.typnamespace OPERATOR(pg_catalog.=) ns.oid AND t.typtype OPERATOR(pg_catalog.=) ANY ('{{e,d}}'::pg_catalog."char"[]) AND NOT (t.oid OPERATOR(pg_catalog.=) ANY (SELECT objid FROM ext))
),
procs AS (
  SELECT p.oid FROM pg_catalog.pg_proc p, ns WHERE p.pronamespace OPERATOR(pg_catalog.=) ns.oid AND NOT (p.oid OPERATOR(pg_catalog.=) ANY (SELECT objid FROM ext))
),"""

# Every catalog a definition is printed from, with what each row says was changed. A row written by a transaction at
# or after the horizon has age(xmin) <= age(horizon) (frozen rows have the largest age). A catalog this transaction
# wrote no row of is not scanned: changes by other sessions are caught by the full read that ends every run.
_WRITTEN_BY: dict[str, list[tuple[str, str]]] = {
    "pg_class": [("pg_class", "x.oid")],
    "pg_attribute": [("pg_class", "x.attrelid")],
    "pg_attrdef": [("pg_class", "x.adrelid"), ("pg_attrdef", "x.oid")],
    "pg_index": [("pg_class", "x.indexrelid"), ("pg_class", "x.indrelid")],
    "pg_constraint": [("pg_constraint", "x.oid"), ("pg_class", "x.conrelid"), ("pg_type", "x.contypid")],
    "pg_rewrite": [("pg_rewrite", "x.oid"), ("pg_class", "x.ev_class")],
    "pg_type": [("pg_type", "x.oid")],
    "pg_trigger": [("pg_class", "x.tgrelid")],
    "pg_policy": [("pg_class", "x.polrelid")],
    "pg_sequence": [("pg_class", "x.seqrelid")],
    "pg_enum": [("pg_type", "x.enumtypid")],
    "pg_proc": [("pg_proc", "x.oid")],
    "pg_namespace": [("pg_namespace", "x.oid")],
}
# Where a catalog's rows of one relation are found by index: (the set of OIDs to look up, the indexed column). A
# relation's catalog rows are written under a lock on that relation, so this transaction's rows are usually found from
# the relations it locked; the proof does not rely on that: see _SCOPED_HEAD.
_BY_LOCK: dict[str, tuple[str, str]] = {
    "pg_class": ("locked", "oid"),
    "pg_attribute": ("locked", "attrelid"),
    "pg_attrdef": ("locked", "adrelid"),
    "pg_index": ("locked", "indexrelid"),
    "pg_constraint": ("locked", "conrelid"),
    "pg_rewrite": ("locked", "ev_class"),
    "pg_type": ("locked_types", "oid"),
    "pg_trigger": ("locked", "tgrelid"),
    "pg_policy": ("locked", "polrelid"),
    "pg_sequence": ("locked", "seqrelid"),
}
# Catalogs a step writes as a side effect of what the scoped proof follows (dependencies, statistics, privileges of
# extension objects): nothing the model prints comes from them.
_IGNORED = ("pg_depend", "pg_shdepend", "pg_statistic", "pg_statistic_ext_data", "pg_init_privs")
# Catalogs whose deleted rows mean a dropped object (which leaves no row to read).
_DROPS = ("pg_class", "pg_constraint", "pg_type", "pg_proc", "pg_trigger", "pg_policy", "pg_rewrite")


def _writes(table: str) -> str:
    t = f"'pg_catalog.{table}'::pg_catalog.regclass"
    return (
        f"pg_catalog.pg_stat_get_xact_tuples_inserted({t}) OPERATOR(pg_catalog.+) pg_catalog.pg_stat_get_xact_tuples_updated({t})"
        f" OPERATOR(pg_catalog.+) pg_catalog.pg_stat_get_xact_tuples_deleted({t})"
    )


def _deletes(table: str) -> str:
    return f"pg_catalog.pg_stat_get_xact_tuples_deleted('pg_catalog.{table}'::pg_catalog.regclass)"


# Rows this backend wrote in each catalog and has not reported yet (stats are reported only between transactions):
# read at the start of a transaction and again at its verification, the difference is what the transaction did.
XACT_WRITES = (
    "CASE WHEN pg_catalog.current_setting('track_counts') OPERATOR(pg_catalog.=) 'on' THEN pg_catalog.json_build_object("
    + ", ".join(f"'{t}', {_writes(t)}" for t in _WRITTEN_BY)
    + ", "
    + ", ".join(f"'del:{t}', {_deletes(t)}" for t in dict.fromkeys((*_DROPS, *_BY_LOCK)))
    # Writes to any other catalog (text search, casts, triggers, comments, ...): the scoped proof cannot follow them,
    # so any change there sends the step to the whole read.
    + ", 'other', (SELECT coalesce(pg_catalog.sum("
    + _writes("x").replace("'pg_catalog.x'::pg_catalog.regclass", "c.oid")
    + "), 0)"
    # (the system catalogs were made by initdb, below the first user OID: read on pg_class's OID index)
    " FROM pg_catalog.pg_class c WHERE c.oid OPERATOR(pg_catalog.<) 16384 AND c.relnamespace OPERATOR(pg_catalog.=) 'pg_catalog'::pg_catalog.regnamespace AND c.relkind OPERATOR(pg_catalog.=) 'r'"
    " AND c.relname OPERATOR(pg_catalog.<>) ALL (ARRAY[" + ", ".join(f"'{t}'" for t in (*_WRITTEN_BY, *_IGNORED)) + "]))" + ") END"
)


# The write counts taken at BEGIN (WRITES_AT_BEGIN, guards.timeouts_query), as JSON; NULL when not taken.
_SEEN = (
    "(CASE WHEN pg_catalog.current_setting('wishlist.xact_writes', true) OPERATOR(pg_catalog.=) '' THEN NULL"
    " ELSE pg_catalog.current_setting('wishlist.xact_writes', true) END)::pg_catalog.json"
)


def _written(table: str) -> str:
    """True when this transaction wrote `table` (a one-time filter: the plan skips what follows otherwise)."""
    return f"(SELECT {_writes(table)}) OPERATOR(pg_catalog.<>) ({_SEEN} OPERATOR(pg_catalog.->>) '{table}')::bigint"


def _inserted_or_updated(table: str) -> str:
    """Rows this transaction inserted or updated in `table` (each leaves one new row version with its xid)."""
    return f"((({_writes(table)}) OPERATOR(pg_catalog.-) {_deletes(table)}) OPERATOR(pg_catalog.-) (({_SEEN} OPERATOR(pg_catalog.->>) '{table}')::bigint OPERATOR(pg_catalog.-) ({_SEEN} OPERATOR(pg_catalog.->>) 'del:{table}')::bigint))"


# Per catalog found by lock: the rows of the locked relations written since the horizon, and whether that is provably
# every row this transaction wrote there. It is when the rows carrying this transaction's own xid number as many as the
# row versions the transaction created (inserts + updates, counted by the server): every version is then one of them.
# A version made in a subtransaction, written twice, or written outside the locked relations makes the counts differ,
# and that catalog is scanned whole as before.
_LOOKUPS = ",\n".join(
    f"by_{table} AS (SELECT x.*, x.xmin OPERATOR(pg_catalog.=) me.x AS mine FROM {source} l CROSS JOIN LATERAL"
    f" (SELECT x.*, x.xmin FROM pg_catalog.{table} x WHERE x.{key} OPERATOR(pg_catalog.=) l.oid OFFSET 0) x, me, hz"
    f" WHERE {_written(table)} AND pg_catalog.age(x.xmin) OPERATOR(pg_catalog.<=) hz.a)"
    for table, (source, key) in _BY_LOCK.items()
)
_COMPLETE = (
    "complete AS (SELECT "
    + ", ".join(
        f"(SELECT pg_catalog.count(*) FROM by_{t} WHERE mine) OPERATOR(pg_catalog.=) {_inserted_or_updated(t)} AS {t}" for t in _BY_LOCK
    )
    + ")"
)


def _touched_rows(table: str, cls: str, expr: str) -> str:
    scan = f"SELECT 'pg_catalog.{cls}'::pg_catalog.regclass::pg_catalog.oid, {expr} FROM pg_catalog.{table} x, hz WHERE {_written(table)}"
    if table not in _BY_LOCK:
        return f"{scan} AND pg_catalog.age(x.xmin) OPERATOR(pg_catalog.<=) hz.a"
    return (
        f"SELECT 'pg_catalog.{cls}'::pg_catalog.regclass::pg_catalog.oid, {expr} FROM by_{table} x WHERE (SELECT {table} FROM complete)\n"
        f"  UNION {scan} AND NOT (SELECT {table} FROM complete) AND pg_catalog.age(x.xmin) OPERATOR(pg_catalog.<=) hz.a"
    )


_TOUCHED = "\n  UNION ".join(_touched_rows(table, cls, expr) for table, pairs in _WRITTEN_BY.items() for cls, expr in pairs)

_SCOPED_HEAD = f"""
WITH RECURSIVE ns AS (SELECT oid FROM pg_catalog.pg_namespace WHERE nspname OPERATOR(pg_catalog.=) %(schema)s),
{_EXT},
hz AS (SELECT pg_catalog.age(%(since)s::pg_catalog.text::pg_catalog.xid) AS a),
me AS (SELECT pg_catalog.pg_current_xact_id()::pg_catalog.xid AS x),
-- the user relations this transaction locked for more than reading (user OIDs start at 16384), and their row types;
-- a write elsewhere makes the counts differ (see `complete`), never goes unread
locked AS (SELECT DISTINCT l.relation AS oid FROM pg_catalog.pg_locks l WHERE l.locktype OPERATOR(pg_catalog.=) 'relation'
  AND l.pid OPERATOR(pg_catalog.=) pg_catalog.pg_backend_pid() AND l.relation OPERATOR(pg_catalog.>=) 16384 AND l.mode OPERATOR(pg_catalog.<>) 'AccessShareLock'
  AND l.database OPERATOR(pg_catalog.=) (SELECT d.oid FROM pg_catalog.pg_database d WHERE d.datname OPERATOR(pg_catalog.=) pg_catalog.current_database())),
locked_types AS (SELECT c.reltype AS oid FROM locked l CROSS JOIN LATERAL (SELECT c.reltype FROM pg_catalog.pg_class c
    WHERE c.oid OPERATOR(pg_catalog.=) l.oid OFFSET 0) c WHERE c.reltype OPERATOR(pg_catalog.<>) 0
  UNION SELECT t.typarray FROM locked l CROSS JOIN LATERAL (SELECT t.typarray FROM pg_catalog.pg_class c
    JOIN pg_catalog.pg_type t ON t.oid OPERATOR(pg_catalog.=) c.reltype WHERE c.oid OPERATOR(pg_catalog.=) l.oid OFFSET 0) t WHERE t.typarray OPERATOR(pg_catalog.<>) 0),
{_LOOKUPS},
{_COMPLETE},
touched(classid, objid) AS (
  {_TOUCHED}
),
-- whatever depends on a changed object may print differently (a renamed column in an index definition)
closure(classid, objid) AS (
  SELECT classid, objid FROM touched
  -- OFFSET 0 keeps the lookup per row on pg_depend's index (the estimate of `touched` is far too high for a hash join)
  UNION SELECT d.classid, d.objid FROM closure c, LATERAL (SELECT d.classid, d.objid FROM pg_catalog.pg_depend d
    WHERE d.refclassid OPERATOR(pg_catalog.=) c.classid AND d.refobjid OPERATOR(pg_catalog.=) c.objid OFFSET 0) d
),
cand AS (
  SELECT objid AS oid FROM closure WHERE classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_class'::pg_catalog.regclass
  -- per closure row on the catalogs' indexes (OFFSET 0): the closure holds a few objects, not the whole catalog
  UNION SELECT x.indrelid FROM closure c CROSS JOIN LATERAL (SELECT x.indrelid FROM pg_catalog.pg_index x
    WHERE x.indexrelid OPERATOR(pg_catalog.=) c.objid OFFSET 0) x WHERE c.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_class'::pg_catalog.regclass
  UNION SELECT d.adrelid FROM closure c CROSS JOIN LATERAL (SELECT d.adrelid FROM pg_catalog.pg_attrdef d
    WHERE d.oid OPERATOR(pg_catalog.=) c.objid OFFSET 0) d WHERE c.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_attrdef'::pg_catalog.regclass
  UNION SELECT k.conrelid FROM closure c CROSS JOIN LATERAL (SELECT k.conrelid FROM pg_catalog.pg_constraint k
    WHERE k.oid OPERATOR(pg_catalog.=) c.objid OFFSET 0) k WHERE c.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_constraint'::pg_catalog.regclass
  UNION SELECT r.ev_class FROM closure c CROSS JOIN LATERAL (SELECT r.ev_class FROM pg_catalog.pg_rewrite r
    WHERE r.oid OPERATOR(pg_catalog.=) c.objid OFFSET 0) r WHERE c.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_rewrite'::pg_catalog.regclass
  UNION SELECT t.typrelid FROM closure c CROSS JOIN LATERAL (SELECT t.typrelid FROM pg_catalog.pg_type t
    WHERE t.oid OPERATOR(pg_catalog.=) c.objid OFFSET 0) t WHERE c.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_type'::pg_catalog.regclass
  UNION SELECT g.tgrelid FROM closure c CROSS JOIN LATERAL (SELECT g.tgrelid FROM pg_catalog.pg_trigger g
    WHERE g.oid OPERATOR(pg_catalog.=) c.objid OFFSET 0) g WHERE c.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_trigger'::pg_catalog.regclass
  UNION SELECT y.polrelid FROM closure c CROSS JOIN LATERAL (SELECT y.polrelid FROM pg_catalog.pg_policy y
    WHERE y.oid OPERATOR(pg_catalog.=) c.objid OFFSET 0) y WHERE c.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_policy'::pg_catalog.regclass
  UNION SELECT c.oid FROM pg_catalog.pg_class c, ns WHERE c.relnamespace OPERATOR(pg_catalog.=) ns.oid AND c.relname OPERATOR(pg_catalog.=) ANY(%(names)s::pg_catalog.text[])
  UNION SELECT x.indrelid FROM pg_catalog.pg_class c JOIN pg_catalog.pg_index x ON x.indexrelid OPERATOR(pg_catalog.=) c.oid, ns
    WHERE c.relnamespace OPERATOR(pg_catalog.=) ns.oid AND c.relname OPERATOR(pg_catalog.=) ANY(%(names)s::pg_catalog.text[])
),
rels AS (
  SELECT c.oid, c.relname, c.relkind, c.relpersistence, c.relrowsecurity, c.relforcerowsecurity, c.relispartition, c.relpartbound, c.relreplident, c.reloptions, c.relacl, c.relowner, c.relnamespace FROM (SELECT DISTINCT oid FROM cand) k
    CROSS JOIN LATERAL (SELECT c.oid, c.relname, c.relkind, c.relpersistence, c.relrowsecurity, c.relforcerowsecurity, c.relispartition, c.relpartbound, c.relreplident, c.reloptions, c.relacl, c.relowner, c.relnamespace
      FROM pg_catalog.pg_class c WHERE c.oid OPERATOR(pg_catalog.=) k.oid OFFSET 0) c, ns
  WHERE c.relnamespace OPERATOR(pg_catalog.=) ns.oid AND NOT (c.oid OPERATOR(pg_catalog.=) ANY (SELECT objid FROM ext))
),
types AS (
  SELECT t.oid, t.typname, t.typtype FROM (SELECT objid AS oid FROM closure WHERE classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_type'::pg_catalog.regclass
      UNION SELECT n.oid FROM pg_catalog.pg_type n, ns WHERE n.typname OPERATOR(pg_catalog.=) ANY(%(names)s::pg_catalog.text[]) AND n.typnamespace OPERATOR(pg_catalog.=) ns.oid
      -- a domain whose CHECK depends on what changed (a function renamed)
      UNION SELECT k.contypid FROM closure c CROSS JOIN LATERAL (SELECT k.contypid FROM pg_catalog.pg_constraint k
        WHERE k.oid OPERATOR(pg_catalog.=) c.objid OFFSET 0) k
        WHERE c.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_constraint'::pg_catalog.regclass AND k.contypid OPERATOR(pg_catalog.<>) 0) k
    CROSS JOIN LATERAL (SELECT t.oid, t.typname, t.typtype, t.typnamespace FROM pg_catalog.pg_type t WHERE t.oid OPERATOR(pg_catalog.=) k.oid OFFSET 0) t, ns
  WHERE t.typnamespace OPERATOR(pg_catalog.=) ns.oid AND t.typtype OPERATOR(pg_catalog.=) ANY ('{{e,d}}'::pg_catalog."char"[]) AND NOT (t.oid OPERATOR(pg_catalog.=) ANY (SELECT objid FROM ext))
),
procs AS (
  SELECT p.oid FROM (SELECT objid AS oid FROM closure WHERE classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_proc'::pg_catalog.regclass
      UNION SELECT n.oid FROM pg_catalog.pg_proc n, ns WHERE n.proname OPERATOR(pg_catalog.=) ANY(%(names)s::pg_catalog.text[]) AND n.pronamespace OPERATOR(pg_catalog.=) ns.oid) k
    CROSS JOIN LATERAL (SELECT p.oid, p.pronamespace FROM pg_catalog.pg_proc p WHERE p.oid OPERATOR(pg_catalog.=) k.oid OFFSET 0) p, ns
  WHERE p.pronamespace OPERATOR(pg_catalog.=) ns.oid AND NOT (p.oid OPERATOR(pg_catalog.=) ANY (SELECT objid FROM ext))
),"""

_BODY = """
cols AS (
  SELECT r.relname, a.attname,
         pg_catalog.row_number() OVER (PARTITION BY r.oid ORDER BY a.attnum) AS position,
         pg_catalog.format_type(a.atttypid, a.atttypmod) AS type,
         a.attnotnull AS not_null,
         pg_catalog.pg_get_expr(d.adbin, d.adrelid) AS default_expr,
         a.attidentity::pg_catalog.text AS identity, a.attgenerated::pg_catalog.text AS generated,
         -- the collation only where it is not the type's own (the common case prints nothing)
         CASE WHEN a.attcollation OPERATOR(pg_catalog.<>) (SELECT y.typcollation FROM pg_catalog.pg_type y
                                                            WHERE y.oid OPERATOR(pg_catalog.=) a.atttypid)
              THEN a.attcollation::pg_catalog.regcollation::pg_catalog.text END AS collation_name,
         -- storage and compression only where not the type's own / the default
         CASE WHEN a.attstorage OPERATOR(pg_catalog.<>) (SELECT y.typstorage FROM pg_catalog.pg_type y
                                                          WHERE y.oid OPERATOR(pg_catalog.=) a.atttypid)
              THEN a.attstorage::pg_catalog.text END AS storage_mode,
         CASE WHEN a.attcompression::pg_catalog.text OPERATOR(pg_catalog.<>) '' THEN a.attcompression::pg_catalog.text END AS compression_method,
         (SELECT pg_catalog.string_agg(x.privilege_type, ',' ORDER BY x.privilege_type) FROM pg_catalog.aclexplode(a.attacl) x
          WHERE x.grantee OPERATOR(pg_catalog.=) 0) AS public_column_privileges
  FROM rels r
  -- per relation on pg_attribute's index (OFFSET 0): a scoped read holds a few relations, not the whole catalog
  CROSS JOIN LATERAL (SELECT * FROM pg_catalog.pg_attribute a
                      WHERE a.attrelid OPERATOR(pg_catalog.=) r.oid AND a.attnum OPERATOR(pg_catalog.>) 0 AND NOT a.attisdropped OFFSET 0) a
  LEFT JOIN pg_catalog.pg_attrdef d ON d.adrelid OPERATOR(pg_catalog.=) a.attrelid AND d.adnum OPERATOR(pg_catalog.=) a.attnum
  WHERE r.relkind OPERATOR(pg_catalog.=) ANY ('{{r,p,v,m,f,c}}'::pg_catalog."char"[])
)
SELECT pg_catalog.json_build_object(
  'relations', (SELECT coalesce(pg_catalog.json_agg(pg_catalog.json_build_array(relname, relkind::pg_catalog.text,
                  CASE WHEN relkind OPERATOR(pg_catalog.=) ANY ('{{v,m}}'::pg_catalog."char"[]) THEN pg_catalog.pg_get_viewdef(oid) END,
                  -- what is not the default only: an ordinary table prints {{}}
                  pg_catalog.json_strip_nulls(pg_catalog.json_build_object(
                    'unlogged', CASE WHEN relpersistence OPERATOR(pg_catalog.=) 'u' THEN true END,
                    'row_security', CASE WHEN relrowsecurity THEN true END,
                    'force_row_security', CASE WHEN relforcerowsecurity THEN true END,
                    'replica_identity', CASE WHEN relkind OPERATOR(pg_catalog.=) ANY ('{{r,p}}'::pg_catalog."char"[])
                      AND relreplident OPERATOR(pg_catalog.<>) 'd' THEN relreplident::pg_catalog.text END,
                    'options', reloptions,
                    'inherits', CASE WHEN NOT relispartition THEN (SELECT pg_catalog.json_agg(i.inhparent::pg_catalog.regclass::pg_catalog.text
                      ORDER BY i.inhseqno) FROM pg_catalog.pg_inherits i WHERE i.inhrelid OPERATOR(pg_catalog.=) rels.oid) END,
                    'partition_of', CASE WHEN relispartition THEN (SELECT i.inhparent::pg_catalog.regclass::pg_catalog.text
                      FROM pg_catalog.pg_inherits i WHERE i.inhrelid OPERATOR(pg_catalog.=) rels.oid) END,
                    'bound', CASE WHEN relispartition THEN pg_catalog.pg_get_expr(relpartbound, rels.oid) END,
                    'partition_key', CASE WHEN relkind OPERATOR(pg_catalog.=) 'p' THEN pg_catalog.pg_get_partkeydef(rels.oid) END,
                    -- a sequence's definition (not its state: nextval, setval and RESTART leave pg_sequence alone)
                    'sequence', (SELECT pg_catalog.json_build_object('type', pg_catalog.format_type(q.seqtypid, NULL),
                        'start', q.seqstart, 'increment', q.seqincrement, 'min', q.seqmin, 'max', q.seqmax, 'cache', q.seqcache,
                        'cycle', q.seqcycle) FROM pg_catalog.pg_sequence q WHERE q.seqrelid OPERATOR(pg_catalog.=) rels.oid),
                    -- privileges granted to PUBLIC (the access component grants to named roles only)
                    -- privileges granted to PUBLIC (the access component grants to named roles only; a database whose
                    -- default privileges grant PUBLIC is refused by the preflight: guards.preflight_check)
                    'public_privileges', (SELECT pg_catalog.string_agg(a.privilege_type, ',' ORDER BY a.privilege_type)
                      FROM pg_catalog.aclexplode(relacl) a WHERE a.grantee OPERATOR(pg_catalog.=) 0))))), '[]')
                FROM rels WHERE relkind OPERATOR(pg_catalog.=) ANY ('{{r,p,v,m,f,S,c}}'::pg_catalog."char"[])),
  'columns', (SELECT coalesce(pg_catalog.json_agg(pg_catalog.json_build_array(relname, attname, position, type, not_null,
                  default_expr, identity, generated, collation_name, storage_mode, compression_method, public_column_privileges)), '[]') FROM cols),
  'enums', (SELECT coalesce(pg_catalog.json_agg(pg_catalog.json_build_array(t.typname,
                  (SELECT pg_catalog.json_agg(e.enumlabel ORDER BY e.enumsortorder) FROM pg_catalog.pg_enum e
                   WHERE e.enumtypid OPERATOR(pg_catalog.=) t.oid))), '[]')
            FROM types t WHERE t.typtype OPERATOR(pg_catalog.=) 'e'),
  'domains', (SELECT coalesce(pg_catalog.json_agg(pg_catalog.json_build_array(t.typname,
                  pg_catalog.format_type(d.typbasetype, d.typtypmod), d.typnotnull, d.typdefault,
                  CASE WHEN d.typcollation OPERATOR(pg_catalog.<>) b.typcollation THEN d.typcollation::pg_catalog.regcollation::pg_catalog.text END,
                  (SELECT pg_catalog.json_agg(pg_catalog.json_build_array(k.conname, pg_catalog.pg_get_constraintdef(k.oid)) ORDER BY k.conname)
                   FROM pg_catalog.pg_constraint k WHERE k.contypid OPERATOR(pg_catalog.=) t.oid))), '[]')
              FROM types t JOIN pg_catalog.pg_type d ON d.oid OPERATOR(pg_catalog.=) t.oid
                JOIN pg_catalog.pg_type b ON b.oid OPERATOR(pg_catalog.=) d.typbasetype
              WHERE t.typtype OPERATOR(pg_catalog.=) 'd'),
  'indexes', (SELECT coalesce(pg_catalog.json_agg(pg_catalog.json_build_array(i.relname, t.relname,
                  pg_catalog.pg_get_indexdef(x.indexrelid), x.indisvalid)), '[]')
              {indexes_of_rels}),
  'constraints', (SELECT coalesce(pg_catalog.json_agg(pg_catalog.json_build_array(t.relname, c.conname, c.contype::pg_catalog.text,
                  pg_catalog.pg_get_constraintdef(c.oid))), '[]')
                  {constraints_of_rels}),
  'functions', (SELECT coalesce(pg_catalog.json_agg(pg_catalog.json_build_array(
                  p.proname OPERATOR(pg_catalog.||) '(' OPERATOR(pg_catalog.||) pg_catalog.pg_get_function_identity_arguments(p.oid) OPERATOR(pg_catalog.||) ')',
                  -- an SQL-standard body (BEGIN ATOMIC) is kept parsed, with prosrc empty
                  p.prokind::pg_catalog.text, pg_catalog.md5(coalesce(pg_catalog.pg_get_function_sqlbody(p.oid), p.prosrc)),
                  pg_catalog.pg_get_function_result(p.oid), pg_catalog.pg_get_function_arguments(p.oid),
                  (SELECT l.lanname FROM pg_catalog.pg_language l WHERE l.oid OPERATOR(pg_catalog.=) p.prolang),
                  -- what is not the default only
                  pg_catalog.json_strip_nulls(pg_catalog.json_build_object(
                    'security_definer', CASE WHEN p.prosecdef THEN true END,
                    'strict', CASE WHEN p.proisstrict THEN true END,
                    'leakproof', CASE WHEN p.proleakproof THEN true END,
                    'volatility', CASE WHEN p.provolatile OPERATOR(pg_catalog.<>) 'v' THEN p.provolatile::pg_catalog.text END,
                    'parallel', CASE WHEN p.proparallel OPERATOR(pg_catalog.<>) 'u' THEN p.proparallel::pg_catalog.text END,
                    'config', p.proconfig,
                    -- PUBLIC may execute a function unless revoked (proacl NULL is the default, which grants it)
                    'public_execute', CASE WHEN p.proacl IS NOT NULL AND NOT EXISTS (SELECT FROM pg_catalog.aclexplode(p.proacl) x
                      WHERE x.grantee OPERATOR(pg_catalog.=) 0 AND x.privilege_type OPERATOR(pg_catalog.=) 'EXECUTE') THEN false END,
                    'aggregate', (SELECT pg_catalog.json_build_object('sfunc', g.aggtransfn::pg_catalog.regproc::pg_catalog.text,
                        'stype', pg_catalog.format_type(g.aggtranstype, NULL), 'final', g.aggfinalfn::pg_catalog.regproc::pg_catalog.text,
                        'combine', g.aggcombinefn::pg_catalog.regproc::pg_catalog.text, 'init', g.agginitval, 'kind', g.aggkind::pg_catalog.text,
                        'sortop', g.aggsortop::pg_catalog.regoperator::pg_catalog.text)
                      FROM pg_catalog.pg_aggregate g WHERE g.aggfnoid OPERATOR(pg_catalog.=) p.oid))))), '[]')
                FROM pg_catalog.pg_proc p JOIN procs ON procs.oid OPERATOR(pg_catalog.=) p.oid),
  'triggers', (SELECT coalesce(pg_catalog.json_agg(pg_catalog.json_build_array(t.relname, g.tgname,
                  pg_catalog.pg_get_triggerdef(g.oid), g.tgenabled::pg_catalog.text)), '[]')
               FROM rels t CROSS JOIN LATERAL (SELECT g.oid, g.tgname, g.tgenabled FROM pg_catalog.pg_trigger g
                 WHERE g.tgrelid OPERATOR(pg_catalog.=) t.oid AND NOT g.tgisinternal OFFSET 0) g),
  'collations', {collations},
  'operators', {operators},
  'statistics', {statistics},
  'ts_configs', {ts_configs},
  'ts_dictionaries', {ts_dictionaries},
  'rules', (SELECT coalesce(pg_catalog.json_agg(pg_catalog.json_build_array(t.relname, r.rulename,
                  pg_catalog.pg_get_ruledef(r.oid), r.ev_enabled::pg_catalog.text)), '[]')
               FROM rels t CROSS JOIN LATERAL (SELECT r.oid, r.rulename, r.ev_enabled FROM pg_catalog.pg_rewrite r
                 WHERE r.ev_class OPERATOR(pg_catalog.=) t.oid AND r.rulename OPERATOR(pg_catalog.<>) '_RETURN' OFFSET 0) r),
  'policies', (SELECT coalesce(pg_catalog.json_agg(pg_catalog.json_build_array(t.relname, y.polname, y.polcmd::pg_catalog.text,
                  y.polpermissive,
                  ARRAY(SELECT CASE WHEN r OPERATOR(pg_catalog.=) 0 THEN 'public' ELSE pg_catalog.pg_get_userbyid(r)::pg_catalog.text END
                        FROM pg_catalog.unnest(y.polroles) r ORDER BY 1),
                  pg_catalog.pg_get_expr(y.polqual, y.polrelid), pg_catalog.pg_get_expr(y.polwithcheck, y.polrelid))), '[]')
               FROM rels t CROSS JOIN LATERAL (SELECT y.* FROM pg_catalog.pg_policy y
                 WHERE y.polrelid OPERATOR(pg_catalog.=) t.oid OFFSET 0) y),
  -- objects of the schema that belong to an extension: left out of everything above, listed here by identity, so that
  -- an object added to an extension (ALTER EXTENSION ... ADD) does not vanish from the comparison
  'extension_members', (SELECT coalesce(pg_catalog.json_agg(pg_catalog.json_build_array(
                  pg_catalog.pg_describe_object(e.classid, e.objid, 0), x.extname)), '[]')
                FROM ext e JOIN pg_catalog.pg_extension x ON x.oid OPERATOR(pg_catalog.=) e.refobjid, ns
                WHERE (e.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_class'::pg_catalog.regclass AND EXISTS (SELECT FROM pg_catalog.pg_class c
                         WHERE c.oid OPERATOR(pg_catalog.=) e.objid AND c.relnamespace OPERATOR(pg_catalog.=) ns.oid))
                   OR (e.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_type'::pg_catalog.regclass AND EXISTS (SELECT FROM pg_catalog.pg_type y
                         WHERE y.oid OPERATOR(pg_catalog.=) e.objid AND y.typnamespace OPERATOR(pg_catalog.=) ns.oid))
                   OR (e.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_proc'::pg_catalog.regclass AND EXISTS (SELECT FROM pg_catalog.pg_proc p
                         WHERE p.oid OPERATOR(pg_catalog.=) e.objid AND p.pronamespace OPERATOR(pg_catalog.=) ns.oid))),
  -- the oldest transaction this read could not see: every later catalog change has xmin at or after it
  'horizon', pg_catalog.txid_snapshot_xmin(pg_catalog.txid_current_snapshot())::pg_catalog.text,
  -- what else decides what the read returns: the settings definitions are printed under, extension membership
  'session', pg_catalog.md5(pg_catalog.concat_ws('|', pg_catalog.current_setting('search_path'), pg_catalog.current_setting('quote_all_identifiers'),
                 pg_catalog.current_setting('extra_float_digits'), pg_catalog.current_setting('DateStyle'), pg_catalog.current_setting('IntervalStyle'),
                 pg_catalog.current_setting('TimeZone'), pg_catalog.current_setting('bytea_output'), pg_catalog.current_setting('standard_conforming_strings'),
                 pg_catalog.current_setting('xmloption'), pg_catalog.current_setting('lc_monetary'), (SELECT pg_catalog.string_agg(objid::pg_catalog.text, ',' ORDER BY objid) FROM ext))){extra}
)
"""

# The pre-check's read also lists every relation, enum and function of the schema by OID, so that a later scoped
# read can tell a renamed or moved object from a new one.
_OWNERS = """,
  'owners', (SELECT coalesce(pg_catalog.json_object_agg(k, v), '{}') FROM (
               SELECT 'c:' OPERATOR(pg_catalog.||) oid, relname FROM rels
               UNION ALL SELECT 't:' OPERATOR(pg_catalog.||) oid, typname FROM types
               UNION ALL SELECT 'p:' OPERATOR(pg_catalog.||) p.oid, p.proname FROM pg_catalog.pg_proc p JOIN procs ON procs.oid OPERATOR(pg_catalog.=) p.oid) o(k, v))"""

# What the scoped read needs besides the entries: the objects whose own row was written since the horizon (by OID,
# wherever they are now), and the catalog rows this transaction deleted (a dropped object leaves no row to read).
_SCOPED_EXTRA = (
    """,
  'owners', (SELECT coalesce(pg_catalog.json_agg(pg_catalog.json_build_array(k, v, here)), '[]') FROM (
               SELECT 'c:' OPERATOR(pg_catalog.||) c.oid, c.relname, c.relnamespace OPERATOR(pg_catalog.=) ns.oid FROM pg_catalog.pg_class c, ns
                 WHERE c.oid OPERATOR(pg_catalog.=) ANY (SELECT objid FROM touched WHERE classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_class'::pg_catalog.regclass)
                   AND c.relnamespace OPERATOR(pg_catalog.<>) 'pg_toast'::pg_catalog.regnamespace
               UNION ALL SELECT 't:' OPERATOR(pg_catalog.||) t.oid, t.typname, t.typnamespace OPERATOR(pg_catalog.=) ns.oid FROM pg_catalog.pg_type t, ns
                 WHERE t.oid OPERATOR(pg_catalog.=) ANY (SELECT objid FROM touched WHERE classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_type'::pg_catalog.regclass) AND t.typtype OPERATOR(pg_catalog.=) ANY ('{e,d}'::pg_catalog."char"[])
               UNION ALL SELECT 'p:' OPERATOR(pg_catalog.||) p.oid, p.proname, p.pronamespace OPERATOR(pg_catalog.=) ns.oid FROM pg_catalog.pg_proc p, ns
                 WHERE p.oid OPERATOR(pg_catalog.=) ANY (SELECT objid FROM touched WHERE classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_proc'::pg_catalog.regclass)) o(k, v, here)),
  'writes', """
    + XACT_WRITES
    # the write counts this read compared with, as the transaction's setting holds them: a migration can change a
    # setting, so scoped_result accepts the read only if they are the counts taken at BEGIN
    + """,
  'seen', """
    + _SEEN
    # what changed reaches an object only the whole read prints (an operator whose function was renamed): refuse
    + """,
  'unprinted', EXISTS (SELECT FROM closure WHERE classid OPERATOR(pg_catalog.=) ANY (ARRAY['pg_catalog.pg_operator'::pg_catalog.regclass,
    'pg_catalog.pg_collation'::pg_catalog.regclass, 'pg_catalog.pg_statistic_ext'::pg_catalog.regclass,
    'pg_catalog.pg_ts_config'::pg_catalog.regclass, 'pg_catalog.pg_ts_dict'::pg_catalog.regclass]::pg_catalog.oid[]))"""
)

# How the body reaches the indexes and constraints of `rels`: by hash join when it holds the whole schema, by index
# lookup per relation (OFFSET 0) when it holds the few a step changed. The printed columns are the same.
_WHOLE = {
    "indexes_of_rels": "FROM pg_catalog.pg_index x JOIN pg_catalog.pg_class i ON i.oid OPERATOR(pg_catalog.=) x.indexrelid JOIN rels t ON t.oid OPERATOR(pg_catalog.=) x.indrelid",
    "constraints_of_rels": "FROM pg_catalog.pg_constraint c JOIN rels t ON t.oid OPERATOR(pg_catalog.=) c.conrelid",
}
_FEW = {
    "indexes_of_rels": "FROM rels t CROSS JOIN LATERAL (SELECT x.* FROM pg_catalog.pg_index x WHERE x.indrelid OPERATOR(pg_catalog.=) t.oid OFFSET 0) x"
    " JOIN pg_catalog.pg_class i ON i.oid OPERATOR(pg_catalog.=) x.indexrelid",
    "constraints_of_rels": "FROM rels t CROSS JOIN LATERAL (SELECT c.* FROM pg_catalog.pg_constraint c WHERE c.conrelid OPERATOR(pg_catalog.=) t.oid OFFSET 0) c",
}
# Objects of the schema that are not relations, types or functions: read whole (a few rows), and by the whole read only:
# the scoped read prints none, and a write to their catalogs ("other" in XACT_WRITES) sends it to the whole read.
_NOT_EXT = "NOT (o.oid OPERATOR(pg_catalog.=) ANY (SELECT objid FROM ext))"
_SCHEMA_OBJECTS = {
    "collations": "(SELECT coalesce(pg_catalog.json_agg(pg_catalog.json_build_array(o.collname, o.collprovider::pg_catalog.text,"
    " o.collisdeterministic, o.collcollate, o.collctype, coalesce(pg_catalog.to_jsonb(o) OPERATOR(pg_catalog.->>) 'colliculocale',"
    " pg_catalog.to_jsonb(o) OPERATOR(pg_catalog.->>) 'colllocale'))), '[]')"
    f" FROM pg_catalog.pg_collation o, ns WHERE o.collnamespace OPERATOR(pg_catalog.=) ns.oid AND {_NOT_EXT})",
    "operators": "(SELECT coalesce(pg_catalog.json_agg(pg_catalog.json_build_array(o.oid::pg_catalog.regoperator::pg_catalog.text,"
    " o.oprresult::pg_catalog.regtype::pg_catalog.text, o.oprcode::pg_catalog.regproc::pg_catalog.text,"
    " o.oprcom::pg_catalog.regoperator::pg_catalog.text, o.oprnegate::pg_catalog.regoperator::pg_catalog.text,"
    " o.oprrest::pg_catalog.regproc::pg_catalog.text, o.oprjoin::pg_catalog.regproc::pg_catalog.text, o.oprcanhash, o.oprcanmerge)), '[]')"
    f" FROM pg_catalog.pg_operator o, ns WHERE o.oprnamespace OPERATOR(pg_catalog.=) ns.oid AND {_NOT_EXT})",
    "statistics": "(SELECT coalesce(pg_catalog.json_agg(pg_catalog.json_build_array(o.stxname, pg_catalog.pg_get_statisticsobjdef(o.oid))), '[]')"
    f" FROM pg_catalog.pg_statistic_ext o, ns WHERE o.stxnamespace OPERATOR(pg_catalog.=) ns.oid AND {_NOT_EXT})",
    "ts_configs": "(SELECT coalesce(pg_catalog.json_agg(pg_catalog.json_build_array(o.cfgname,"
    " (SELECT r.prsname FROM pg_catalog.pg_ts_parser r WHERE r.oid OPERATOR(pg_catalog.=) o.cfgparser),"
    " (SELECT pg_catalog.json_agg(pg_catalog.json_build_array(m.maptokentype, m.mapseqno, m.mapdict::pg_catalog.regdictionary::pg_catalog.text)"
    " ORDER BY m.maptokentype, m.mapseqno) FROM pg_catalog.pg_ts_config_map m WHERE m.mapcfg OPERATOR(pg_catalog.=) o.oid))), '[]')"
    f" FROM pg_catalog.pg_ts_config o, ns WHERE o.cfgnamespace OPERATOR(pg_catalog.=) ns.oid AND {_NOT_EXT})",
    "ts_dictionaries": "(SELECT coalesce(pg_catalog.json_agg(pg_catalog.json_build_array(o.dictname,"
    " (SELECT t.tmplname FROM pg_catalog.pg_ts_template t WHERE t.oid OPERATOR(pg_catalog.=) o.dicttemplate), o.dictinitoption)), '[]')"
    f" FROM pg_catalog.pg_ts_dict o, ns WHERE o.dictnamespace OPERATOR(pg_catalog.=) ns.oid AND {_NOT_EXT})",
}
_NONE = dict.fromkeys(_SCHEMA_OBJECTS, "'[]'::pg_catalog.json")
_WHOLE = {**_WHOLE, **_SCHEMA_OBJECTS}
_FEW = {**_FEW, **_NONE}
_INTROSPECT = _FULL_HEAD + _BODY.format(extra="", **_WHOLE)

_INTROSPECT_OWNERS = _FULL_HEAD + _BODY.format(extra=_OWNERS, **_WHOLE)
_SCOPED = _SCOPED_HEAD + _BODY.format(extra=_SCOPED_EXTRA, **_FEW)
SCOPED = _SCOPED  # prepared once per connection by the step runner


_RELATION_KINDS = {
    "r": "table",
    "p": "table",
    "v": "view",
    "m": "materialized_view",
    "f": "foreign_table",
    "S": "sequence",
    "c": "composite_type",
}


def parse_rows(raw: Mapping[str, Any]) -> Catalog:
    """Turn the introspection query's JSON into the flat catalog."""
    catalog: Catalog = {}
    for name, relkind, viewdef, flags in raw["relations"]:
        entry: dict[str, Any] = {}
        if viewdef is not None:
            entry["definition"] = viewdef
        catalog[f"{_RELATION_KINDS[relkind]}:{name}"] = {**entry, **flags}
    for table, column, position, typ, not_null, default, identity, generated, collation, storage, compression, public in raw["columns"]:
        catalog[f"column:{table}.{column}"] = {
            "position": position,
            "type": typ,
            "not_null": not_null,
            "default": default,
            **({"identity": identity} if identity else {}),
            **({"generated": generated} if generated else {}),
            **({"collation": collation} if collation else {}),
            **({"storage": storage} if storage else {}),
            **({"compression": compression} if compression else {}),
            **({"public_privileges": public} if public else {}),
        }
    for name, labels in raw["enums"]:
        catalog[f"enum:{name}"] = {"labels": labels or []}
    for name, table, definition, valid in raw["indexes"]:
        catalog[f"index:{name}"] = {"table": table, "definition": definition, "valid": valid}
    for table, name, contype, definition in raw["constraints"]:
        catalog[f"constraint:{table}.{name}"] = {"type": contype, "definition": definition}
    for signature, kind, body_md5, returns, arguments, language, flags in raw["functions"]:
        catalog[f"function:{signature}"] = {
            "kind": kind,
            "body_md5": body_md5,
            "returns": returns,
            "arguments": arguments,
            "language": language,
            **flags,
        }
    for table, name, definition, enabled in raw["rules"]:
        catalog[f"rule:{table}.{name}"] = {"definition": definition, **({"enabled": enabled} if enabled != "O" else {})}
    for name, base, not_null, default, collation, checks in raw["domains"]:
        catalog[f"domain:{name}"] = {
            "type": base,
            "not_null": not_null,
            "default": default,
            "constraints": {conname: definition for conname, definition in checks or []},
            **({"collation": collation} if collation else {}),
        }
    for table, name, definition, enabled in raw["triggers"]:
        catalog[f"trigger:{table}.{name}"] = {"definition": definition, **({"enabled": enabled} if enabled != "O" else {})}
    for table, name, command, permissive, roles, using, check in raw["policies"]:
        catalog[f"policy:{table}.{name}"] = {"command": command, "permissive": permissive, "roles": roles, "using": using, "check": check}
    for name, provider, deterministic, collate, ctype, locale in raw["collations"]:
        catalog[f"collation:{name}"] = {
            "provider": provider,
            "deterministic": deterministic,
            "collate": collate,
            "ctype": ctype,
            "locale": locale,
        }
    for signature, result, code, commutator, negator, restrict, join, hashes, merges in raw["operators"]:
        catalog[f"operator:{signature}"] = {
            "result": result,
            "function": code,
            "commutator": commutator,
            "negator": negator,
            "restrict": restrict,
            "join": join,
            "hashes": hashes,
            "merges": merges,
        }
    for name, definition in raw["statistics"]:
        catalog[f"statistics:{name}"] = {"definition": definition}
    for name, parser, mappings in raw["ts_configs"]:
        catalog[f"text_search_configuration:{name}"] = {"parser": parser, "mappings": mappings or []}
    for name, template, options in raw["ts_dictionaries"]:
        catalog[f"text_search_dictionary:{name}"] = {"template": template, "options": options}
    for identity, extension in raw["extension_members"]:
        catalog[f"extension_member:{identity}"] = {"extension": extension}
    return dict(sorted(catalog.items()))


def introspect(conn: psycopg.Connection[Any], schema: str) -> Catalog:
    """Read the catalog of `schema` in one round trip."""
    row = conn.execute(_INTROSPECT, {"schema": schema}).fetchone()
    assert row is not None
    return parse_rows(row[0])


@dataclass(frozen=True)
class Verified:
    """A catalog proven equal to the live schema at a horizon, with what a later read needs to prove the next one from
    what changed: `xmin`, the oldest transaction the read could not see; `session`, a digest of the settings definitions
    print under and of extension membership; `owners`, every relation, enum and function of the schema by OID."""

    catalog: Catalog
    xmin: str
    session: str
    owners: dict[str, str]


def verifiable_query(schema: str) -> tuple[str, dict[str, Any]]:
    """The whole read that also lists the schema's objects by OID (for a later scoped read): one statement."""
    return _INTROSPECT_OWNERS, {"schema": schema}


def verifiable_result(raw: Mapping[str, Any]) -> tuple[Catalog, Verified]:
    """The catalog of a whole read; the second item holds only once it is compared equal to what was expected."""
    live = parse_rows(raw)
    return live, Verified(live, raw["horizon"], raw["session"], raw["owners"])


def introspect_verifiable(conn: psycopg.Connection[Any], schema: str) -> tuple[Catalog, Verified]:
    """Read the catalog of `schema` in one round trip; the second item holds only once it is compared equal to what was expected."""
    row = conn.execute(*verifiable_query(schema)).fetchone()
    assert row is not None
    return verifiable_result(row[0])


def scoped_query(schema: str, prev: Verified, after: Catalog, delta: frozenset[str] | None = None) -> tuple[str, dict[str, Any]]:
    """The read of what this transaction changed since `prev` (see scoped_result). It compares the catalog rows written
    with the write counts taken at the start of the transaction (guards.timeouts_query keeps them in the transaction).
    `delta`, when given, names every entry that differs between `prev.catalog` and `after` (the stored snapshot delta)."""
    before = prev.catalog
    if delta is None:
        delta = frozenset(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    return _SCOPED, {"schema": schema, "since": str(int(prev.xmin) % 2**32), "names": sorted(_names(delta, before, after))}


def scoped_result(
    raw: Mapping[str, Any],
    prev: Verified,
    after: Catalog,
    writes: dict[str, int] | None,
    delta: frozenset[str] | None = None,
    order: list[str] | None = None,
) -> Verified | None:
    """Prove, from the scoped read `raw`, that the live catalog is `after`; `writes` is XACT_WRITES read at the start of
    this transaction (None: not counted, prove nothing).

    None when it cannot (then read everything). It holds because: an object none of whose catalog rows, nor those of
    anything it depends on, was written since the horizon prints as it did then: it is in `prev.catalog`, and, outside
    the snapshot delta, in `after`. The scoped read covers the written objects and every object the delta names. An
    entry can vanish unseen only if its object was dropped (a deleted catalog row: refused), renamed or moved (its
    owner's OID under another name: refused), or left out as an extension member or printed under other settings (the
    session digest: refused). Changes by other sessions are not looked for: the full read of a run's last step is.
    """
    if writes is None:
        return None
    before = prev.catalog
    if delta is None:
        delta = frozenset(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    ended = raw["writes"] or {}
    if (
        raw.get("unprinted")
        or raw.get("seen") != writes  # the counts the read compared with were not those taken at BEGIN (SET, RESET ALL)
        or raw["session"] != prev.session
        # any deleted row of a catalog the proof reads (a dropped rule leaves no row and need not touch its table's)
        or any(ended.get(k) != writes.get(k) for k in ended if k.startswith("del:"))
        # a schema created, renamed or dropped: the read finds the schema by name, and a swapped one would hold only
        # what the delta names
        or ended.get("pg_namespace") != writes.get("pg_namespace")
        or ended.get("other") != writes.get("other")
    ):
        return None
    for key, name, here in raw["owners"]:
        if key in prev.owners and (prev.owners[key] != name or not here):
            return None
    live = parse_rows(raw)
    keys = set(delta) | live.keys()
    order = order if order is not None else sorted(after)  # `after`'s keys, sorted
    for name, _kind, _def, _flags in raw["relations"]:
        keys.update(f"{kind}:{name}" for kind in _RELATION_KINDS.values())
        for prefix in ("column", "constraint", "trigger", "policy", "rule"):
            keys.update(_prefixed(order, f"{prefix}:{name}."))
    if any(after.get(k) != live.get(k) for k in keys):
        return None
    prev.owners.update((key, name) for key, name, here in raw["owners"] if here)
    return Verified(after, raw["horizon"], raw["session"], prev.owners)


def _prefixed(order: list[str], prefix: str) -> list[str]:
    start = bisect.bisect_left(order, prefix)
    end = start
    while end < len(order) and order[end].startswith(prefix):
        end += 1
    return order[start:end]


def _names(keys: Iterable[str], *catalogs: Catalog) -> set[str]:
    """The relation, type and function names that entries `keys` belong to (a superset: names may hold dots)."""
    out: set[str] = set()
    for key in keys:
        kind, _, name = key.partition(":")
        if kind in ("column", "constraint", "trigger", "policy", "rule"):
            out.update(name[:i] for i, ch in enumerate(name) if ch == ".")
        elif kind == "function":
            out.update(name[:i] for i, ch in enumerate(name) if ch == "(")
        else:
            out.add(name)
        if kind == "index":
            out.update(str(c[key]["table"]) for c in catalogs if key in c and "table" in c[key])
    return out


def fingerprint(catalog: Catalog) -> str:
    """A stable hash of a catalog: equal catalogs, equal fingerprints."""
    canonical = json.dumps(catalog, sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


class Fingerprints:
    """fingerprint() of many catalogs that share entries (a set's snapshots walked forward share all but what each
    version changed): each entry's canonical JSON is made once, and the hash is taken over the same bytes. It holds the
    entries it has seen (so an id is never reused while it lives); they must not change meanwhile (none is changed in
    place: catalogs are copied, entries replaced)."""

    def __init__(self) -> None:
        self._entries: dict[int, tuple[Any, str]] = {}
        self._keys: dict[str, str] = {}

    def __call__(self, catalog: Catalog) -> str:
        parts = []
        for key in sorted(catalog):
            entry = catalog[key]
            seen = self._entries.get(id(entry))
            if seen is None or seen[0] is not entry:
                seen = (entry, json.dumps(entry, sort_keys=True, separators=(",", ":")))
                self._entries[id(entry)] = seen
            name = self._keys.get(key)
            if name is None:
                name = self._keys[key] = json.dumps(key)
            parts.append(f"{name}:{seen[1]}")
        return "sha256:" + hashlib.sha256(("{" + ",".join(parts) + "}").encode()).hexdigest()


class RunningFingerprint:
    """fingerprint() of a catalog that a run changes a few entries at a time. Each entry's part of the canonical JSON is
    kept in key order; advancing from the catalog last hashed re-makes only the parts of the keys that changed, then
    hashes the joined parts (no sort, no JSON of the entries that did not change). Byte-identical to fingerprint()."""

    def __init__(self) -> None:
        self._last: Catalog | None = None
        self._keys: list[str] = []
        self._parts: dict[str, str] = {}

    @staticmethod
    def _part(key: str, entry: Any) -> str:
        return json.dumps(key) + ":" + json.dumps(entry, sort_keys=True, separators=(",", ":"))

    def __call__(self, catalog: Catalog, previous: Catalog | None = None, changed: Iterable[str] | None = None) -> str:
        """The fingerprint of `catalog`; `changed` names every key that differs between `previous` and `catalog`."""
        if previous is None or changed is None or previous is not self._last:
            self._keys = sorted(catalog)
            self._parts = {k: self._part(k, catalog[k]) for k in self._keys}
        else:
            for key in changed:
                if key in catalog:
                    if key not in self._parts:
                        bisect.insort(self._keys, key)
                    self._parts[key] = self._part(key, catalog[key])
                elif key in self._parts:
                    del self._parts[key]
                    del self._keys[bisect.bisect_left(self._keys, key)]
        self._last = catalog
        parts = self._parts
        return "sha256:" + hashlib.sha256(("{" + ",".join([parts[k] for k in self._keys]) + "}").encode()).hexdigest()


@dataclass(frozen=True)
class Difference:
    """One object that differs between the expected and the live catalog."""

    key: str
    change: str  # "missing" | "unexpected" | "changed"
    expected: dict[str, Any] | None
    actual: dict[str, Any] | None

    def describe(self) -> str:
        kind, _, name = self.key.partition(":")
        if self.change == "missing":
            return f"{kind} {name} is missing (expected {_brief(self.expected)})"
        if self.change == "unexpected":
            return f"{kind} {name} is not expected (found {_brief(self.actual)})"
        assert self.expected is not None and self.actual is not None
        fields = sorted(k for k in set(self.expected) | set(self.actual) if self.expected.get(k) != self.actual.get(k))
        details = "; ".join(f"{f}: expected {self.expected.get(f)!r}, found {self.actual.get(f)!r}" for f in fields)
        return f"{kind} {name} differs ({details})"

    def as_dict(self) -> dict[str, Any]:
        return {"object": self.key, "change": self.change, "expected": self.expected, "actual": self.actual}


def _brief(definition: Mapping[str, Any] | None) -> str:
    if not definition:
        return "it"
    if "definition" in definition:
        return str(definition["definition"])
    if "labels" in definition:
        return "labels " + ", ".join(definition["labels"])
    if "type" in definition:
        return str(definition["type"])
    return json.dumps(definition, sort_keys=True)


def compare(expected: Catalog, live: Catalog) -> list[Difference]:
    """Object-by-object difference of two catalogs, in a stable order."""
    out: list[Difference] = []
    for key in sorted(set(expected) | set(live)):
        want, have = expected.get(key), live.get(key)
        if want == have:
            continue
        change = "missing" if have is None else "unexpected" if want is None else "changed"
        out.append(Difference(key, change, want, have))
    return out


# The write counts at the start of a transaction, kept in it for the scoped read (the step runner sends the same with
# its timeouts: guards.timeouts_query).
WRITES_AT_BEGIN = (
    "SELECT pg_catalog.set_config('wishlist.xact_writes', coalesce(w::pg_catalog.text, 'null'), true), w FROM (SELECT "
    + XACT_WRITES
    + " AS w) x"
)


def writes_at_begin(conn: psycopg.Connection[Any]) -> dict[str, int] | None:
    """Run first in a transaction: the catalog rows this backend wrote so far (None: track_counts is off)."""
    row = conn.execute(WRITES_AT_BEGIN).fetchone()
    return None if row is None or row[-1] is None else {str(k): int(v) for k, v in row[-1].items()}


# The settings catalog definitions print under (the session digest above), pinned for the transaction: a migration
# may change them with SET LOCAL (or SET), and the session may have started under others (PGTZ): the verifying read
# prints under the engine's own, as any later read of the schema does (connection.PINNED).
RESET_PRINT_SETTINGS = (pin_settings(local=True), "SET LOCAL search_path TO DEFAULT")


# What a migration may leave on the session for the next one: settings (SET without LOCAL), the role (RESET ALL leaves
# it alone), temporary objects. Settings and role return to what the connection started with (its startup options).
RESET_SESSION = ("RESET ALL", "RESET ROLE", "DISCARD TEMP", "CLOSE ALL")
# ... and the engine's pinned settings for the session after it (RESET ALL returns to what the session started with,
# which PGTZ/PGCLIENTENCODING may have decided): what every migration, in apply and in snapshot, starts from.
START_OVER = (*RESET_SESSION, PIN_SESSION)

# A cursor declared WITH HOLD (at top level, or by EXECUTE in a function or trigger) is run to its end at COMMIT, after
# the verifying read: what its query calls would commit unverified. This query fails, naming them, while any is open.
HELD_CURSORS_OPEN = "cursors declared WITH HOLD are open at the end of the migration: "
HELD_CURSORS = (
    "SELECT CASE WHEN x.names IS NULL THEN 0 ELSE ('" + HELD_CURSORS_OPEN + "' OPERATOR(pg_catalog.||) x.names)::pg_catalog.int4 END"
    " FROM (SELECT pg_catalog.string_agg(pg_catalog.quote_ident(c.name), ', ' ORDER BY c.name) AS names"
    " FROM pg_catalog.pg_cursors c WHERE c.is_holdable) x"
)

# Whether user code may run at COMMIT, after the verifying read (see StepRunner._deferred_work_ran): any deferrable
# trigger, internal ones included (a deferrable unique or exclusion constraint's recheck evaluates its index
# expressions, which may call the user's functions).
USER_DEFERRABLE_TRIGGERS = "SELECT EXISTS (SELECT FROM pg_catalog.pg_trigger WHERE tgdeferrable)"

# Row versions this transaction wrote so far in every table, catalogs included: unchanged across a round of
# SET CONSTRAINTS ALL IMMEDIATE only if no deferred trigger that ran wrote a row (or changed the schema).
# Per table, not summed: a TRUNCATE of a table made in the transaction lowers its counts, and rows written elsewhere
# would balance a sum. NULL when track_counts is off (then nothing can be told: the caller refuses).
XACT_ROWS_WRITTEN = (
    "SELECT CASE WHEN pg_catalog.current_setting('track_counts') OPERATOR(pg_catalog.=) 'on' THEN"
    " coalesce(pg_catalog.json_object_agg(s.relid, ARRAY[s.n_tup_ins, s.n_tup_upd, s.n_tup_del, s.n_tup_hot_upd] ORDER BY s.relid)::pg_catalog.text, '')"
    " END FROM pg_catalog.pg_stat_xact_all_tables s"
    " WHERE s.n_tup_ins OPERATOR(pg_catalog.+) s.n_tup_upd OPERATOR(pg_catalog.+) s.n_tup_del OPERATOR(pg_catalog.>) 0"
)
