"""Lint of pending migrations on PostgreSQL's parse tree (pglast) and the measured lock trace.

Rules carry squawk's names where squawk has the rule; the engine keeps a finding only for a table that exists on the
target and holds rows (Engine.assess), and this module is silent about tables the same migration creates.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .migset import Migration
from .sqltext import Statement
from .trace import StatementTrace

# rule -> (what goes wrong, the safe recipe)
RULES: dict[str, tuple[str, str]] = {
    "require-concurrent-index-creation": (
        "CREATE INDEX without CONCURRENTLY blocks writes to the table for the whole build",
        "CREATE INDEX CONCURRENTLY in a `-- migrate:no-transaction` file",
    ),
    "require-concurrent-index-deletion": (
        "DROP INDEX without CONCURRENTLY takes ACCESS EXCLUSIVE on the table",
        "DROP INDEX CONCURRENTLY in a `-- migrate:no-transaction` file",
    ),
    "constraint-missing-not-valid": (
        "adding a CHECK constraint validates every row under ACCESS EXCLUSIVE",
        "ADD CONSTRAINT ... NOT VALID, then VALIDATE CONSTRAINT in a later migration (SHARE UPDATE EXCLUSIVE)",
    ),
    "adding-foreign-key-constraint": (
        "adding a FOREIGN KEY validates every row while blocking writes to both tables",
        "ADD CONSTRAINT ... FOREIGN KEY ... NOT VALID, then VALIDATE CONSTRAINT in a later migration",
    ),
    "adding-not-nullable-field": (
        "a NOT NULL column without a default fails on a table with rows, and SET NOT NULL scans it under ACCESS EXCLUSIVE",
        "add a CHECK (col IS NOT NULL) NOT VALID, VALIDATE it in a later migration, then SET NOT NULL (PostgreSQL 12+ skips the scan)",
    ),
    "adding-field-with-default": (
        "ADD COLUMN with a volatile DEFAULT rewrites the table under ACCESS EXCLUSIVE",
        "add the column without a default (or with a constant one), backfill in batches, then SET DEFAULT",
    ),
    "adding-serial-primary-key-field": (
        "adding a serial or PRIMARY KEY column builds its index (and may rewrite) under ACCESS EXCLUSIVE",
        "add the column, build a UNIQUE index CONCURRENTLY, then ADD CONSTRAINT ... PRIMARY KEY USING INDEX",
    ),
    "changing-column-type": (
        "ALTER COLUMN ... TYPE rewrote (or scanned) the table under ACCESS EXCLUSIVE",
        "add a new column, backfill it in batches, switch readers, then drop the old column",
    ),
    "renaming-column": (
        "renaming a column breaks code that still uses the old name",
        "add the new column (or a view), deploy code that uses it, then drop the old one",
    ),
    "renaming-table": (
        "renaming a table breaks code that still uses the old name",
        "create a view with the new name (or deploy code that reads both), then rename",
    ),
    "ban-drop-table": ("DROP TABLE destroys data", "stop using the table in code first, keep a backup, drop in a later release"),
    "ban-drop-column": (
        "DROP COLUMN destroys data and breaks code still reading it",
        "stop reading the column in a deployed release first, then drop it",
    ),
    "disallowed-unique-constraint": (
        "adding a UNIQUE constraint builds its index under ACCESS EXCLUSIVE",
        "CREATE UNIQUE INDEX CONCURRENTLY, then ADD CONSTRAINT ... UNIQUE USING INDEX",
    ),
    "ban-concurrent-index-creation-in-transaction": (
        "CREATE INDEX CONCURRENTLY cannot run inside a transaction",
        "put it in a file marked `-- migrate:no-transaction`",
    ),
    "ban-alter-domain-with-add-constraint": (
        "ALTER DOMAIN ... ADD CONSTRAINT validates every column of the domain, in every table, under lock",
        "add the constraint NOT VALID and VALIDATE it in a later migration, or use a table CHECK constraint",
    ),
    "ban-create-domain-with-constraint": (
        "a domain constraint cannot be changed later without scanning every table that uses it",
        "use a CHECK constraint on the table columns instead",
    ),
    "enum-add-value-in-transaction": (
        "a value added by ALTER TYPE ... ADD VALUE cannot be used in the same transaction",
        "add the value in a `-- migrate:no-transaction` file (or an earlier migration), use it in a later one",
    ),
    "cluster": ("CLUSTER rewrites the table under ACCESS EXCLUSIVE", "use pg_repack, or skip the reordering"),
    "reindex-without-concurrently": (
        "REINDEX without CONCURRENTLY blocks writes (and reads that use the index)",
        "REINDEX ... CONCURRENTLY in a `-- migrate:no-transaction` file",
    ),
    "vacuum-full": ("VACUUM FULL rewrites the table under ACCESS EXCLUSIVE", "plain VACUUM, or pg_repack"),
    "lock-table": ("LOCK TABLE blocks the application for the rest of the migration", "remove it; rely on the statements' own locks"),
    "truncate": ("TRUNCATE destroys data and takes ACCESS EXCLUSIVE", "DELETE in batches, or drop in a later release"),
    "update-in-ddl-transaction": (
        "a whole-table UPDATE/DELETE in the same transaction as DDL holds the DDL's lock for the whole backfill",
        "backfill in batches in a separate `-- migrate:no-transaction` migration",
    ),
    "table-rewrite": (
        "the trace shows this statement rewrote the table under ACCESS EXCLUSIVE",
        "find a form that does not rewrite (constant default, a new column plus backfill)",
    ),
    "table-scan": (
        "the trace shows this statement scanned the whole table while holding its lock",
        "split it: add NOT VALID, then VALIDATE in a later migration",
    ),
}

# Names before the parse-tree lint: accepted in `-- migrate:allow` so that reviewed files stay acknowledged.
ALIASES = {
    "index-without-concurrently": "require-concurrent-index-creation",
    "add-column-not-null-without-default": "adding-not-nullable-field",
    "column-type-change": "changing-column-type",
    "drop-table": "ban-drop-table",
    "drop-column": "ban-drop-column",
}
_DML = frozenset({"UpdateStmt", "DeleteStmt", "InsertStmt", "SelectStmt"})
_WRITE_BLOCKING = frozenset({"ShareLock", "ShareRowExclusiveLock", "ExclusiveLock", "AccessExclusiveLock"})
_SERIAL = frozenset({"serial", "bigserial", "smallserial", "serial2", "serial4", "serial8"})


@dataclass(frozen=True)
class Finding:
    version: str
    rule: str
    table: str | None
    line: int
    statement: str
    acknowledged: bool

    def describe(self) -> str:
        ack = " (acknowledged)" if self.acknowledged else ""
        where = f" on {self.table}" if self.table else ""
        problem, recipe = RULES[self.rule]
        return f"{self.version} line {self.line}{where}: {self.rule}: {problem}; safe: {recipe}{ack}"


def acknowledged_rules(migration: Migration) -> frozenset[str]:
    return frozenset(ALIASES.get(r, r) for r in migration.acknowledged)


def lint(migration: Migration) -> list[Finding]:
    """Findings for one up migration, from its parse tree and (when meta/ has it) its measured trace."""
    statements = migration.statements()
    trace = migration.trace
    traces: list[StatementTrace | None] = (
        list(trace.statements) if trace is not None and len(trace.statements) == len(statements) else [None] * len(statements)
    )
    # Tables made by an EARLIER statement of this migration (measured when the trace exists): a table a statement only
    # claims to create (IF NOT EXISTS on an existing one), or creates after dropping the old one, keeps its findings.
    created: set[str] = set()
    ack = acknowledged_rules(migration)
    has_ddl = any(s.kind not in _DML for s in statements)
    findings: list[Finding] = []
    added_values: list[tuple[str, int]] = []
    held: set[str] = set()  # tables an earlier statement of the transaction locked against writes: held to its end
    for stmt, st in zip(statements, traces, strict=True):
        if not migration.transactional:
            held = set()
        found = _statement_rules(stmt, st, migration.transactional, has_ddl, added_values, held)
        for rule, table in found:
            if table is not None and table in created:
                continue
            findings.append(Finding(migration.version, rule, table, stmt.line, " ".join(stmt.text.split())[:120], rule in ack))
        created |= set(st.created) if st is not None else _created_by(stmt)
    if migration.transactional:
        for value, line in added_values:
            literal = "'" + value.replace("'", "''") + "'"
            if any(literal in s.text and s.kind != "AlterEnumStmt" for s in statements):
                rule = "enum-add-value-in-transaction"
                findings.append(
                    Finding(migration.version, rule, None, line, f"ADD VALUE {literal} then used in the same file", rule in ack)
                )
    return findings


_OWN_DML_RULES = frozenset({"UpdateStmt", "DeleteStmt", "InsertStmt"})


def _created_by(stmt: Statement) -> set[str]:
    """Without a trace: the table a CREATE TABLE makes, unless IF NOT EXISTS (it may exist already)."""
    from pglast import ast, parse_sql

    try:
        (raw,) = parse_sql(stmt.text)
    except Exception:
        return set()
    node = raw.stmt
    if isinstance(node, ast.CreateStmt) and node.relation is not None and not node.if_not_exists:
        return {str(node.relation.relname)}
    return set()


def _statement_rules(
    stmt: Statement,
    st: StatementTrace | None,
    transactional: bool,
    has_ddl: bool,
    added_values: list[tuple[str, int]],
    held: set[str],
) -> list[tuple[str, str | None]]:
    from pglast import ast, enums, parse_sql

    try:
        (raw,) = parse_sql(stmt.text)
    except Exception:
        return []
    node = raw.stmt
    out: list[tuple[str, str | None]] = []
    rewrites = set(st.rewrites) if st else set()
    scans = set(st.scans) if st else set()
    own_blocking = {lk.relation for lk in st.locks if lk.mode in _WRITE_BLOCKING} if st else set()
    earlier = set(held)

    if isinstance(node, ast.IndexStmt) and node.relation is not None:
        table = str(node.relation.relname)
        if node.concurrent and transactional:
            out.append(("ban-concurrent-index-creation-in-transaction", table))
        elif not node.concurrent:
            out.append(("require-concurrent-index-creation", table))
    elif isinstance(node, ast.DropStmt):
        if node.removeType == enums.ObjectType.OBJECT_INDEX and not node.concurrent:
            locked = [lk.relation for lk in st.locks if lk.kind == "table"] if st else []
            out += [("require-concurrent-index-deletion", t) for t in locked] or [("require-concurrent-index-deletion", None)]
        elif node.removeType == enums.ObjectType.OBJECT_TABLE:
            out += [("ban-drop-table", str(parts[-1].sval)) for parts in node.objects or ()]
    elif isinstance(node, ast.AlterTableStmt) and node.relation is not None:
        table = str(node.relation.relname)
        for cmd in node.cmds or ():
            out += [(rule, table) for rule in _alter_rules(cmd, table, rewrites, scans, st is not None, table in earlier)]
        if st is None:
            own_blocking.add(table)  # without a trace, assume the ALTER's usual ACCESS EXCLUSIVE
    elif isinstance(node, ast.RenameStmt) and node.relation is not None:
        if node.renameType == enums.ObjectType.OBJECT_COLUMN:
            out.append(("renaming-column", str(node.relation.relname)))
        elif node.renameType == enums.ObjectType.OBJECT_TABLE:
            out.append(("renaming-table", str(node.relation.relname)))
    elif isinstance(node, ast.AlterDomainStmt) and node.subtype == "C":
        out += [("ban-alter-domain-with-add-constraint", t) for t in sorted(scans)] or [("ban-alter-domain-with-add-constraint", None)]
    elif isinstance(node, ast.CreateDomainStmt) and any(c.contype == enums.ConstrType.CONSTR_CHECK for c in node.constraints or ()):
        out.append(("ban-create-domain-with-constraint", None))
    elif isinstance(node, ast.AlterEnumStmt) and node.newVal is not None and not node.oldVal:
        added_values.append((str(node.newVal), stmt.line))
    elif isinstance(node, ast.ClusterStmt):
        out.append(("cluster", None if node.relation is None else str(node.relation.relname)))
    elif isinstance(node, ast.ReindexStmt) and not any(p.defname == "concurrently" for p in node.params or ()):
        out.append(("reindex-without-concurrently", None if node.relation is None else str(node.relation.relname)))
    elif isinstance(node, ast.VacuumStmt) and any(p.defname == "full" for p in node.options or ()):
        out += [("vacuum-full", str(r.relation.relname)) for r in node.rels or () if r.relation is not None] or [("vacuum-full", None)]
    elif isinstance(node, ast.LockStmt):
        out += [("lock-table", str(r.relname)) for r in node.relations or ()]
    elif isinstance(node, ast.TruncateStmt):
        out += [("truncate", str(r.relname)) for r in node.relations or ()]
    elif isinstance(node, ast.UpdateStmt | ast.DeleteStmt) and node.relation is not None:
        table = str(node.relation.relname)
        whole = node.whereClause is None or table in scans
        if transactional and has_ddl and whole:
            out.append(("update-in-ddl-transaction", table))

    if st is not None and stmt.kind not in _OWN_DML_RULES:
        # (a SELECT is measured too: a function or a data-modifying CTE can rewrite or scan under a strong lock)
        # Measured work no rule above names, under a lock that stops writes (VALIDATE's SHARE UPDATE EXCLUSIVE does not).
        explained = {t for _, t in out}
        blocking = own_blocking | earlier
        out += [("table-rewrite", t) for t in sorted((rewrites - explained) & blocking)]
        out += [("table-scan", t) for t in sorted((scans - rewrites - explained) & blocking) if stmt.kind != "IndexStmt"]
    if transactional:
        held |= own_blocking
    return out


def _alter_rules(cmd: Any, table: str, rewrites: set[str], scans: set[str], traced: bool, locked_earlier: bool) -> list[str]:
    from pglast import ast, enums

    if not isinstance(cmd, ast.AlterTableCmd):
        return []
    at = enums.AlterTableType
    sub = cmd.subtype
    rules: list[str] = []
    if sub == at.AT_AddColumn and isinstance(cmd.def_, ast.ColumnDef):
        col = cmd.def_
        constraints = list(col.constraints or ())
        kinds = {c.contype for c in constraints}
        ct = enums.ConstrType
        type_name = str(col.typeName.names[-1].sval).lower() if col.typeName is not None and col.typeName.names else ""
        has_default = ct.CONSTR_DEFAULT in kinds or ct.CONSTR_IDENTITY in kinds or ct.CONSTR_GENERATED in kinds
        if (ct.CONSTR_NOTNULL in kinds or ct.CONSTR_PRIMARY in kinds) and not has_default and type_name not in _SERIAL:
            rules.append("adding-not-nullable-field")
        if type_name in _SERIAL or ct.CONSTR_PRIMARY in kinds:
            rules.append("adding-serial-primary-key-field")
        elif ct.CONSTR_UNIQUE in kinds:
            rules.append("disallowed-unique-constraint")
        if ct.CONSTR_FOREIGN in kinds:
            rules.append("adding-foreign-key-constraint")
        if ct.CONSTR_CHECK in kinds:
            rules.append("constraint-missing-not-valid")
        volatile = table in rewrites if traced else _volatile_default(constraints)
        if volatile and "adding-serial-primary-key-field" not in rules:
            rules.append("adding-field-with-default")
    elif sub == at.AT_AddConstraint and isinstance(cmd.def_, ast.Constraint):
        c = cmd.def_
        ct = enums.ConstrType
        if c.contype == ct.CONSTR_FOREIGN and not c.skip_validation:
            rules.append("adding-foreign-key-constraint")
        elif c.contype == ct.CONSTR_CHECK and not c.skip_validation:
            rules.append("constraint-missing-not-valid")
        elif c.contype == ct.CONSTR_UNIQUE and not c.indexname:
            rules.append("disallowed-unique-constraint")
        elif c.contype == ct.CONSTR_PRIMARY and not c.indexname:
            rules.append("adding-serial-primary-key-field")
    elif sub == at.AT_AlterColumnType:
        if not traced or table in rewrites or table in scans:
            rules.append("changing-column-type")
    elif sub == at.AT_SetNotNull:
        if not traced or table in scans:
            rules.append("adding-not-nullable-field")
    elif sub == at.AT_DropColumn:
        rules.append("ban-drop-column")
    elif sub == at.AT_ValidateConstraint and locked_earlier:
        rules.append("constraint-missing-not-valid")  # VALIDATE scans while the ADD's ACCESS EXCLUSIVE is still held
    return rules


def _volatile_default(constraints: list[Any]) -> bool:
    """Without a trace: a default that is not a constant, a cast of one, or now()/CURRENT_TIMESTAMP may rewrite."""
    from pglast import ast, enums

    for c in constraints:
        if c.contype != enums.ConstrType.CONSTR_DEFAULT or c.raw_expr is None:
            continue
        expr = c.raw_expr
        while isinstance(expr, ast.TypeCast):
            expr = expr.arg
        if isinstance(expr, ast.A_Const | ast.SQLValueFunction):
            continue
        if (
            isinstance(expr, ast.FuncCall)
            and expr.funcname
            and str(expr.funcname[-1].sval).lower()
            in (
                "now",
                "statement_timestamp",
                "transaction_timestamp",
            )
        ):
            continue
        return True
    return False
