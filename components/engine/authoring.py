"""Writing the next migration: its version and files (`migrate new`), a drizzle-kit file as its up file, and the
commit-time guard that an applied file stays as it was applied."""

from __future__ import annotations

import itertools
import json
import subprocess
from pathlib import Path
from typing import Any

from .errors import ChecksumMismatch, SetError
from .migset import _DOWN_SUFFIX, _UP_FILE, ScannedFile, scan, sha256_hex

DRIZZLE_BREAKPOINT = "--> statement-breakpoint"
UNREVIEWED = "unreviewed"

_UP_HEADER = """\
-- {label}: one change to the schema. Runs in one transaction with the engine's lock; `make preview` shows it.
-- Work that cannot run in a transaction (CREATE INDEX CONCURRENTLY): make the first line of this file
-- `-- migrate:no-transaction`; each statement then runs and is recorded on its own.
-- Once applied anywhere this file never changes: put the next change in a new migration (`make migration NAME=...`).

"""
_DOWN_HEADER = """\
-- {label}: undo what {up} does, newest first (`migrate rollback --to {previous}` runs it, in one transaction).
-- Leave this file out only for a change that cannot be undone.

"""
_SKELETON_HEADER = """\
-- migrate:unreviewed
-- {label}: generated from the objects that {up} creates, newest first. `check` refuses this file until a person
-- has read it: add what it misses (ALTERs of existing objects, data), then delete the `migrate:unreviewed` line.

"""

# pglast statement kinds that create one object, and the DROP that undoes it.
_CREATES = {
    "CreateStmt": "TABLE",
    "CreateEnumStmt": "TYPE",
    "CompositeTypeStmt": "TYPE",
    "CreateRangeStmt": "TYPE",
    "CreateDomainStmt": "DOMAIN",
    "IndexStmt": "INDEX",
    "CreateSeqStmt": "SEQUENCE",
    "ViewStmt": "VIEW",
    "CreateSchemaStmt": "SCHEMA",
    "CreateFunctionStmt": "FUNCTION",
    "CreateTableAsStmt": "TABLE",
    "CreateExtensionStmt": "EXTENSION",
}


def _name_problem(name: str) -> str | None:
    """Why `NNNN_<name>.sql` would not match the set's naming rule, or None."""
    if not name:
        return "the name is empty"
    if len(name) > 60:
        return f"the name is {len(name)} characters long: keep it to 60 (a file name and a ledger label, not a description)"
    if _UP_FILE.match(f"0000_{name}.sql"):
        head = name.split("_", 1)[0]
        if head.isdigit() and len(head) >= 4 and "_" in name:
            return f"{name!r} starts with a version: give the name without its version, `new` picks the next one"
        return None
    bad = sorted({c for c in name if not ((c.islower() and c.isascii()) or c.isdigit() or c == "_")}, key=name.index)
    return f"{name!r} holds {', '.join(repr(c) for c in bad)}: the set's files are named NNNN_name.sql with a name of a-z, 0-9 and _"


def _next_version(files: list[ScannedFile], directory: Path) -> str:
    versions = [int(f.version) for f in files]
    for (prev, cur), f in zip(itertools.pairwise(versions), files[1:], strict=False):
        if cur != prev + 1:
            width = len(f.version)
            missing = ", ".join(str(v).zfill(width) for v in range(prev + 1, cur))
            raise SetError(
                f"versions jump from {str(prev).zfill(width)} to {f.version}: {missing} is missing in {directory} ({f.up.name}).",
                f"if {f.up.name} was never applied anywhere, rename it (and its down file) to the missing version and run "
                "`make snapshot`; if it was applied, restore the missing file from git.",
            )
    width = max([4, *(len(f.version) for f in files)])
    return str(versions[-1] + 1 if versions else 1).zfill(width)


def new_migration(directory: Path, name: str, *, up_sql: str | None = None, version: str | None = None) -> tuple[Path, Path]:
    """Write NNNN_name.sql and NNNN_name.down.sql with the next free version; refuse what the set would refuse."""
    problem = _name_problem(name)
    if problem:
        raise SetError(f"cannot name a migration {name!r}: {problem}.", "pass a lower-case name such as add_price_alerts.")
    directory.mkdir(parents=True, exist_ok=True)
    files = scan(directory)  # refuses a duplicate version or a stray file, naming them
    version = version or _next_version(files, directory)
    label = f"{version}_{name}"
    up, down = directory / f"{label}.sql", directory / f"{label}{_DOWN_SUFFIX}"
    for path in (up, down):
        if path.exists():
            raise SetError(f"{path} already exists.", "pick another name, or edit the existing file.")
    previous = files[-1].version if files else "0"
    if up_sql is None:
        up.write_text(_UP_HEADER.format(label=label))
        down.write_text(_DOWN_HEADER.format(label=label, up=up.name, previous=previous))
    else:
        down_text = down_skeleton(up_sql, up.name, label=label)
        up.write_bytes(up_sql.encode())
        down.write_text(down_text)
    return up, down


def from_drizzle(text: str) -> str:
    """A drizzle-kit generated file as an up migration: the breakpoint comments go, every other byte stays.

    Only comment tokens are removed (found by PostgreSQL's scanner), never the same characters inside a string.
    """
    from pglast.parser import scan  # lazily: only --from-drizzle pays for the parser

    bom = "\ufeff" if text.startswith("\ufeff") else ""  # kept as it was; the scanner does not expect it
    text = text.removeprefix(bom)
    try:
        tokens = scan(text)
    except Exception as exc:  # pglast's scanner error: name it, never a traceback
        raise SetError(f"the drizzle-kit file cannot be scanned as SQL: {exc}.", "pass the .sql file drizzle-kit wrote.") from None
    out, last = [], 0
    for token in tokens:  # offsets are character positions, end inclusive
        if token.name == "SQL_COMMENT" and text[token.start : token.end + 1].strip() == DRIZZLE_BREAKPOINT:
            out.append(text[last : token.start])
            last = token.end + 1
    return bom + "".join(out) + text[last:]


def read_drizzle(path: Path) -> str:
    try:
        return from_drizzle(path.read_bytes().decode())
    except FileNotFoundError:
        raise SetError(f"drizzle-kit file {path} does not exist.", "pass the path of a file that `drizzle-kit generate` wrote.") from None
    except UnicodeDecodeError as exc:
        raise SetError(f"drizzle-kit file {path} is not UTF-8 text ({exc}).", "pass the .sql file drizzle-kit wrote.") from None


def _qualified(node: Any) -> str:
    """A RangeVar or a name list, quoted as drizzle writes names."""
    if hasattr(node, "relname"):
        parts = [node.schemaname, node.relname] if node.schemaname else [node.relname]
    else:
        parts = [getattr(p, "sval", str(p)) for p in node]
    return ".".join(f'"{p}"' for p in parts)


def _created(stmt: Any) -> tuple[str, str] | None:
    kind = type(stmt).__name__
    what = _CREATES.get(kind)
    if what is None:
        return None
    if kind in ("CreateStmt", "CreateSeqStmt"):
        name = _qualified(stmt.relation if kind == "CreateStmt" else stmt.sequence)
    elif kind == "CreateTableAsStmt":
        name, what = _qualified(stmt.into.rel), "MATERIALIZED VIEW" if stmt.objtype.name == "OBJECT_MATVIEW" else "TABLE"
    elif kind == "ViewStmt":
        name = _qualified(stmt.view)
    elif kind == "IndexStmt":
        if not stmt.idxname:
            return None
        name = f'"{stmt.relation.schemaname}"."{stmt.idxname}"' if stmt.relation.schemaname else f'"{stmt.idxname}"'
    elif kind == "CompositeTypeStmt":
        name = _qualified(stmt.typevar)
    elif kind == "CreateSchemaStmt":
        name = f'"{stmt.schemaname}"'
    elif kind == "CreateExtensionStmt":
        name = f'"{stmt.extname}"'
    elif kind == "CreateFunctionStmt":
        args = ", ".join(
            f"{p.name + ' ' if p.name else ''}{'.'.join(n.sval for n in p.argType.names)}"
            for p in (stmt.parameters or ())
            if p.mode.name in ("FUNC_PARAM_IN", "FUNC_PARAM_DEFAULT", "FUNC_PARAM_INOUT", "FUNC_PARAM_VARIADIC")
        )
        name, what = f"{_qualified(stmt.funcname)}({args})", "PROCEDURE" if stmt.is_procedure else "FUNCTION"
    else:  # enum, range, domain: a name list
        name = _qualified(stmt.typeName if kind != "CreateDomainStmt" else stmt.domainname)
    return what, name


def down_skeleton(up_sql: str, up_name: str, *, label: str | None = None) -> str:
    """A down file that drops what `up_sql` creates, newest first, marked for a person to review."""
    from pglast import parse_sql  # lazily: only --from-drizzle pays for the parser
    from pglast.parser import ParseError

    drops = []
    try:
        parsed = parse_sql(up_sql.removeprefix("\ufeff"))
    except ParseError as exc:
        raise SetError(
            f"{up_name} is not valid SQL: {exc}.", "fix the SQL (or the drizzle schema it came from) and run `new` again."
        ) from None
    for raw in parsed:
        created = _created(raw.stmt)
        if created:
            drops.append(f"DROP {created[0]} {created[1]};")
    label = label or up_name.removesuffix(".sql")
    body = "\n".join(reversed(drops)) if drops else "-- the up file creates nothing this generator knows: write the undo by hand."
    return _SKELETON_HEADER.format(label=label, up=up_name) + body + "\n"


def refuse_unreviewed(files: list[ScannedFile]) -> None:
    """A generated down file must have been read by a person before it is committed."""
    from .sqltext import header_markers

    for f in files:
        if f.down is not None and UNREVIEWED in header_markers(f.down.read_text()):
            raise SetError(
                f"{f.down} is a generated skeleton nobody has reviewed (`-- migrate:{UNREVIEWED}`).",
                f"read it against {f.up.name}, complete it, delete the `-- migrate:{UNREVIEWED}` line, then `make snapshot`.",
            )


def applied_journal(directory: Path, ref: str) -> dict[str, Any] | None:
    """The set's journal as committed at git `ref`, or None when the set did not exist there."""
    top = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=directory, text=True, capture_output=True)
    if top.returncode != 0:
        raise SetError(f"{directory} is not in a git work tree: {top.stderr.strip()}.", "run the check from a clone of the repository.")
    rel = (directory.resolve() / "meta" / "_journal.json").relative_to(Path(top.stdout.strip()).resolve())
    if subprocess.run(["git", "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"], cwd=directory, capture_output=True).returncode:
        raise SetError(
            f"git has no commit {ref!r} to read the applied versions from.",
            "pass --applied-ref with the branch that deploys (e.g. main or origin/main), or set WISHLIST_APPLIED_REF for the hook.",
        )
    shown = subprocess.run(["git", "show", f"{ref}:{rel.as_posix()}"], cwd=directory, capture_output=True)
    if shown.returncode != 0:
        return None
    journal: dict[str, Any] = json.loads(shown.stdout)
    return journal


def refuse_edits_of_applied(directory: Path, ref: str) -> list[str]:
    """Every version in `ref`'s journal counts as applied: its files must hash as they did there. Returns those versions."""
    journal = applied_journal(directory, ref)
    if journal is None:
        return []
    files = {f.version: f for f in scan(directory)}
    applied = []
    for entry in journal.get("entries", []):
        version = entry["version"]
        applied.append(version)
        f = files.get(version)
        if f is None:
            raise SetError(
                f"{directory} has no {version}_*.sql, but version {version} is in {ref}'s journal: it was applied.",
                f"restore it: `git checkout {ref} -- {directory}/{entry['up']['file']}`; applied migrations are never deleted.",
            )
        for path, recorded in ((f.up, entry["up"]), (f.down, entry.get("down"))):
            now = None if path is None else sha256_hex(path.read_bytes())
            if (recorded or {}).get("sha256") != now:
                shown = path or directory / recorded["file"]
                raise ChecksumMismatch(
                    f"{shown} was edited, but version {version} is in {ref}'s journal: it was applied, and an applied "
                    "file never changes (the engine would refuse it on the next deploy).",
                    f"restore it (`git checkout {ref} -- {shown}`) and put the change in a new migration: `make migration NAME=...`.",
                )
    return applied
