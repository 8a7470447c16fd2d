"""The live catalog of one schema: read in a single round trip, compared object by object, fingerprinted."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import psycopg

# A catalog maps "kind:name" to a JSON-able definition. Flat, so that a diff is a set comparison.
Catalog = dict[str, dict[str, Any]]

# One statement, one round trip. Extension members are left out (they belong to the extension).
_INTROSPECT = """
WITH ns AS (SELECT oid FROM pg_catalog.pg_namespace WHERE nspname = %(schema)s),
ext AS (SELECT objid FROM pg_catalog.pg_depend WHERE deptype = 'e'),
rels AS (
  SELECT c.oid, c.relname, c.relkind FROM pg_catalog.pg_class c, ns
  WHERE c.relnamespace = ns.oid AND c.oid NOT IN (SELECT objid FROM ext)
),
cols AS (
  SELECT r.relname, a.attname,
         row_number() OVER (PARTITION BY r.oid ORDER BY a.attnum) AS position,
         pg_catalog.format_type(a.atttypid, a.atttypmod) AS type,
         a.attnotnull AS not_null,
         pg_catalog.pg_get_expr(d.adbin, d.adrelid) AS default_expr,
         a.attidentity::text AS identity, a.attgenerated::text AS generated
  FROM rels r
  JOIN pg_catalog.pg_attribute a ON a.attrelid = r.oid AND a.attnum > 0 AND NOT a.attisdropped
  LEFT JOIN pg_catalog.pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
  WHERE r.relkind IN ('r', 'p', 'v', 'm', 'f')
)
SELECT json_build_object(
  'relations', (SELECT coalesce(json_agg(json_build_array(relname, relkind::text,
                  CASE WHEN relkind IN ('v', 'm') THEN pg_catalog.pg_get_viewdef(oid) END)), '[]')
                FROM rels WHERE relkind IN ('r', 'p', 'v', 'm', 'f', 'S')),
  'columns', (SELECT coalesce(json_agg(json_build_array(relname, attname, position, type, not_null,
                  default_expr, identity, generated)), '[]') FROM cols),
  'enums', (SELECT coalesce(json_agg(json_build_array(t.typname,
                  (SELECT json_agg(e.enumlabel ORDER BY e.enumsortorder) FROM pg_catalog.pg_enum e
                   WHERE e.enumtypid = t.oid))), '[]')
            FROM pg_catalog.pg_type t, ns
            WHERE t.typnamespace = ns.oid AND t.typtype = 'e' AND t.oid NOT IN (SELECT objid FROM ext)),
  'indexes', (SELECT coalesce(json_agg(json_build_array(i.relname, t.relname,
                  pg_catalog.pg_get_indexdef(x.indexrelid), x.indisvalid)), '[]')
              FROM pg_catalog.pg_index x
              JOIN pg_catalog.pg_class i ON i.oid = x.indexrelid
              JOIN rels t ON t.oid = x.indrelid),
  'constraints', (SELECT coalesce(json_agg(json_build_array(t.relname, c.conname, c.contype::text,
                  pg_catalog.pg_get_constraintdef(c.oid))), '[]')
                  FROM pg_catalog.pg_constraint c JOIN rels t ON t.oid = c.conrelid),
  'functions', (SELECT coalesce(json_agg(json_build_array(
                  p.proname || '(' || pg_catalog.pg_get_function_identity_arguments(p.oid) || ')',
                  p.prokind::text, md5(p.prosrc))), '[]')
                FROM pg_catalog.pg_proc p, ns
                WHERE p.pronamespace = ns.oid AND p.oid NOT IN (SELECT objid FROM ext))
)
"""


def parse_rows(raw: Mapping[str, Any]) -> Catalog:
    """Turn the introspection query's JSON into the flat catalog."""
    catalog: Catalog = {}
    kinds = {"r": "table", "p": "table", "v": "view", "m": "materialized_view", "f": "foreign_table", "S": "sequence"}
    for name, relkind, viewdef in raw["relations"]:
        entry: dict[str, Any] = {}
        if viewdef is not None:
            entry["definition"] = viewdef
        catalog[f"{kinds[relkind]}:{name}"] = entry
    for table, column, position, typ, not_null, default, identity, generated in raw["columns"]:
        catalog[f"column:{table}.{column}"] = {
            "position": position,
            "type": typ,
            "not_null": not_null,
            "default": default,
            **({"identity": identity} if identity else {}),
            **({"generated": generated} if generated else {}),
        }
    for name, labels in raw["enums"]:
        catalog[f"enum:{name}"] = {"labels": labels or []}
    for name, table, definition, valid in raw["indexes"]:
        catalog[f"index:{name}"] = {"table": table, "definition": definition, "valid": valid}
    for table, name, contype, definition in raw["constraints"]:
        catalog[f"constraint:{table}.{name}"] = {"type": contype, "definition": definition}
    for signature, kind, body_md5 in raw["functions"]:
        catalog[f"function:{signature}"] = {"kind": kind, "body_md5": body_md5}
    return dict(sorted(catalog.items()))


def introspect(conn: psycopg.Connection[Any], schema: str) -> Catalog:
    """Read the catalog of `schema` in one round trip."""
    row = conn.execute(_INTROSPECT, {"schema": schema}).fetchone()
    assert row is not None
    return parse_rows(row[0])


def fingerprint(catalog: Catalog) -> str:
    """A stable hash of a catalog: equal catalogs, equal fingerprints."""
    canonical = json.dumps(catalog, sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


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
