"""The migration set on disk: NNNN_name.sql (+ .down.sql), meta/_journal.json, meta/NNNN_snapshot.json and NNNN_trace.json."""

from __future__ import annotations

import bisect
import hashlib
import json
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from .catalog import Catalog, Fingerprints, fingerprint
from .errors import ChecksumMismatch, SetError, TransactionControl, UnknownVersion
from .sqltext import Statement, header_markers, is_transaction_control, split_statements
from .trace import Trace

JOURNAL_FORMAT = 1
_UP_FILE = re.compile(r"^(?P<version>\d{4,})_(?P<name>[a-z0-9_]+)\.sql$")
_DOWN_SUFFIX = ".down.sql"
NO_TRANSACTION = "no-transaction"
SNAPSHOT_HINT = "run `python -m components.migrate snapshot --set {set_dir}` to regenerate meta/ (never for an applied file)."


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_statements(path: str, sql: str, *, transactional: bool = True) -> list[Statement]:
    """The statements of one migration file; transaction control is refused, because the engine owns transactions."""
    statements = split_statements(sql, path)
    for stmt in statements:
        if is_transaction_control(stmt):
            shown = " ".join(stmt.text.split())[:80]
            raise TransactionControl(
                f"{path} line {stmt.line}: `{shown}` controls the transaction, which the engine owns.",
                f"the engine runs each file in its own transaction; remove `{shown}`; for work that must run outside a transaction, "
                "mark the file `-- migrate:no-transaction`."
                if transactional
                else f"a `-- migrate:no-transaction` file runs each statement on its own, outside any transaction; remove `{shown}`, "
                "and put work that must be atomic in a file without that marker (the engine runs it in one transaction).",
            )
        if stmt.kind == "IndexStmt" and "CONCURRENTLY" in stmt.text.upper():
            from .statement_kinds import concurrent_index

            op = concurrent_index(stmt.text)
            if op is not None and op.action == "create" and not op.names:
                raise SetError(
                    f"{path} line {stmt.line}: `CREATE INDEX CONCURRENTLY` has no index name.",
                    "name the index (CREATE INDEX CONCURRENTLY idx_... ON ...): an interrupted build leaves an invalid index "
                    "that a resumed run must find by name to drop and build again.",
                )
    return statements


@dataclass(frozen=True)
class Migration:
    version: str
    name: str
    up_file: str
    up_sql: str
    checksum: str
    down_file: str | None
    down_sql: str | None
    down_checksum: str | None
    markers: dict[str, list[str]] = field(default_factory=dict)
    # The snapshot as stored: the whole catalog after this version (`snapshot_base` None), or only the entries that
    # differ from the previous version's snapshot (`snapshot_base` names it; None as a value: the entry is gone).
    snapshot_changes: dict[str, dict[str, Any] | None] | None = None
    down_markers: dict[str, list[str]] = field(default_factory=dict)
    trace: Trace | None = None  # what each up statement locked, rewrote and scanned on the snapshot's database
    snapshot_base: str | None = None
    stored_fingerprint: str | None = None  # the snapshot's fingerprint (sha256 of its whole catalog), as meta/ records it

    @property
    def label(self) -> str:
        return f"{self.version}_{self.name}"

    @property
    def transactional(self) -> bool:
        return NO_TRANSACTION not in self.markers

    @property
    def down_transactional(self) -> bool:
        return NO_TRANSACTION not in self.down_markers

    def runs_in_transaction(self, direction: str) -> bool:
        return self.transactional if direction == "up" else self.down_transactional

    @property
    def acknowledged(self) -> frozenset[str]:
        """Lint rules this file explicitly accepts (`-- migrate:allow <rule>`)."""
        return frozenset(v for v in self.markers.get("allow", []) if v)

    @property
    def fingerprint(self) -> str | None:
        """What meta/ records (checked against the catalog at load for a whole snapshot; for a stored delta, whenever the
        catalog is compared whole, and by `check`)."""
        return self.stored_fingerprint

    @cached_property
    def _up_statements(self) -> tuple[Statement, ...]:
        return tuple(file_statements(self.up_file, self.up_sql, transactional=self.transactional))

    @cached_property
    def _down_statements(self) -> tuple[Statement, ...]:
        return tuple(file_statements(self.down_file or f"{self.label}.down.sql", self.down_sql or ""))  # downs run in a transaction

    def statements(self) -> list[Statement]:
        return list(self._up_statements)

    def down_statements(self) -> list[Statement]:
        return list(self._down_statements)


@dataclass(frozen=True)
class MigrationSet:
    directory: Path
    name: str
    schema: str
    migrations: tuple[Migration, ...]

    @property
    def versions(self) -> list[str]:
        return [m.version for m in self.migrations]

    @property
    def latest(self) -> str | None:
        return self.migrations[-1].version if self.migrations else None

    @cached_property
    def _positions(self) -> dict[str, int]:
        return {m.version: i for i, m in enumerate(self.migrations)}

    @cached_property
    def _materialized(self) -> list[tuple[int, Catalog, list[str]]]:
        """The last catalog built from stored deltas and its sorted keys (a set is walked forward: each step costs its
        delta and one copy)."""
        return []

    def get(self, version: str) -> Migration:
        position = self._positions.get(version)
        if position is not None:
            return self.migrations[position]
        raise UnknownVersion(
            f"version {version!r} is not in the migration set {self.directory} (known: {', '.join(self.versions) or 'none'}).",
            "name one of the known versions, or 0 for 'before the first migration'.",
        )

    def up_to(self, target: str | None) -> list[Migration]:
        return [] if target is None else [m for m in self.migrations if int(m.version) <= int(target)]

    def expected_catalog(self, version: str | None) -> Catalog:
        """The snapshot after `version` (empty before the first migration); a new dict, whose entries are shared."""
        if version is None:
            return {}
        target = self._positions.get(version)
        if target is None:
            self.get(version)  # raises UnknownVersion
            raise AssertionError("unreachable")
        chain: list[Migration] = []  # back to the nearest whole snapshot, or to the catalog built last time
        position, catalog, order = target, None, []
        while catalog is None:
            if self._materialized and self._materialized[0][0] == position:
                catalog, order = dict(self._materialized[0][1]), list(self._materialized[0][2])
                break
            m = self.migrations[position]
            if m.snapshot_changes is None:
                raise SetError(
                    f"no snapshot for version {m.version} in {self.directory / 'meta'}.", SNAPSHOT_HINT.format(set_dir=self.directory)
                )
            chain.append(m)
            if m.snapshot_base is None:
                catalog = {}
            position -= 1  # a delta's base is the version before it (checked at load)
        for m in reversed(chain):
            assert m.snapshot_changes is not None
            if m.snapshot_base is None:
                catalog = {k: v for k, v in m.snapshot_changes.items() if v is not None}
                order = sorted(catalog)
                continue
            for key, entry in m.snapshot_changes.items():
                if entry is None:
                    if catalog.pop(key, None) is not None:
                        del order[bisect.bisect_left(order, key)]
                else:
                    if key not in catalog:
                        bisect.insort(order, key)
                    catalog[key] = entry
        self._materialized[:] = [(target, catalog, order)]
        return dict(catalog)

    def expected_keys(self, version: str | None) -> list[str]:
        """The keys of expected_catalog(version), sorted (kept up to date as deltas are applied, never sorted again)."""
        if version is None:
            return []
        if not (self._materialized and self._materialized[0][0] == self._positions.get(version)):
            self.expected_catalog(version)
        return self._materialized[0][2]

    def changed_keys(self, version: str) -> frozenset[str]:
        """The entries whose definition differs between the snapshot before `version` and the one after it."""
        m = self.get(version)
        if m.snapshot_base is not None and m.snapshot_changes is not None:
            return frozenset(m.snapshot_changes)
        position = self._positions[version]
        before = self.expected_catalog(self.migrations[position - 1].version) if position else {}
        after = self.expected_catalog(version)
        return frozenset(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))

    def manifest(self) -> list[dict[str, Any]]:
        """What the Pulumi resource takes as input: every version with its checksums (which bind the SQL).

        No SQL: `pulumi preview --diff` would print every applied version's; the provider logs the pending SQL instead."""
        return [
            {
                "version": m.version,
                "name": m.name,
                "checksum": m.checksum,
                "down_checksum": m.down_checksum,
                "transactional": m.transactional,
            }
            for m in self.migrations
        ]


@dataclass(frozen=True)
class ScannedFile:
    version: str
    name: str
    up: Path
    down: Path | None


def scan(directory: Path) -> list[ScannedFile]:
    """The migration files in `directory`, ordered by version; duplicates and strays are errors."""
    if not directory.is_dir():
        raise SetError(f"migration set directory {directory} does not exist.", "pass --set with the path of a set, e.g. migrations/app.")
    found: dict[str, ScannedFile] = {}
    for path in sorted(directory.iterdir()):
        if path.is_dir() or path.name.endswith(_DOWN_SUFFIX) or not path.name.endswith(".sql"):
            continue
        m = _UP_FILE.match(path.name)
        if not m:
            raise SetError(
                f"{path} is not named NNNN_name.sql.",
                "rename it to a 4-digit version, an underscore and a lower-case name, e.g. 0008_add_wishlist_notes.sql.",
            )
        version = m.group("version")
        if version in found:
            raise SetError(
                f"version {version} is used twice: {found[version].up.name} and {path.name}.",
                "give the newer file the next free version number.",
            )
        down = path.with_name(path.name[: -len(".sql")] + _DOWN_SUFFIX)
        found[version] = ScannedFile(version, m.group("name"), path, down if down.exists() else None)
    return [found[v] for v in sorted(found, key=int)]


def _read_json(path: Path, what: str, set_dir: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise SetError(f"{what} {path} is missing.", SNAPSHOT_HINT.format(set_dir=set_dir)) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SetError(
            f"{what} {path} is not valid JSON ({exc}).", "restore it from git, or " + SNAPSHOT_HINT.format(set_dir=set_dir)
        ) from None


def _require(cond: bool, path: Path, what: str, set_dir: Path) -> None:
    if not cond:
        raise SetError(f"journal {path} is malformed: {what}.", "restore it from git, or " + SNAPSHOT_HINT.format(set_dir=set_dir))


def _check_order(entries: list[Any], journal_path: Path, directory: Path) -> None:
    """Entries are objects with a numeric version and an up checksum, each version once, ascending."""
    previous = -1
    for idx, entry in enumerate(entries):
        _require(isinstance(entry, dict), journal_path, f"entry {idx} is not an object", directory)
        version = entry.get("version")
        _require(isinstance(version, str) and version.isdigit(), journal_path, f"entry {idx} has no numeric 'version'", directory)
        up = entry.get("up")
        _require(isinstance(up, dict) and isinstance(up.get("sha256"), str), journal_path, f"entry {version} has no up.sha256", directory)
        if int(version) == previous:
            raise SetError(f"journal {journal_path} lists version {version} twice.", SNAPSHOT_HINT.format(set_dir=directory))
        if int(version) < previous:
            raise SetError(
                f"journal {journal_path} lists version {version} after a higher version: versions must ascend.",
                SNAPSHOT_HINT.format(set_dir=directory),
            )
        previous = int(version)


def _load_snapshot(path: Path, entry: dict[str, Any], set_dir: Path, previous: str | None) -> tuple[dict[str, Any], str | None, str]:
    """A snapshot whose bytes match the journal's sha256: (its entries, the version it is a delta against, its fingerprint).

    A whole snapshot's fingerprint is checked against its catalog here; a delta's when its catalog is compared whole
    (verify, drift, the pre-check and last step of a run) and by `check`, which rebuilds every version."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise SetError(f"snapshot {path} is missing.", SNAPSHOT_HINT.format(set_dir=set_dir)) from None
    recorded = (entry.get("snapshot") or {}).get("sha256")
    if recorded is None:
        raise SetError(
            f"journal entry {entry['version']} has no snapshot.sha256: the journal predates snapshot checksums.",
            SNAPSHOT_HINT.format(set_dir=set_dir),
        )
    if sha256_hex(data) != recorded:
        raise ChecksumMismatch(
            f"{path} was changed after the journal was written (sha256 {sha256_hex(data)[:12]} != journal {str(recorded)[:12]}): "
            "what was reviewed is not what would run.",
            "restore it from git (git checkout), or " + SNAPSHOT_HINT.format(set_dir=set_dir),
        )
    try:
        snap = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SetError(f"snapshot {path} is not valid JSON ({exc}).", SNAPSHOT_HINT.format(set_dir=set_dir)) from None
    if isinstance(snap, dict) and isinstance(snap.get("changes"), dict) and "base" in snap:
        changes = snap["changes"]
        if snap["base"] != previous or previous is None:
            raise SetError(
                f"snapshot {path} holds the changes since version {snap['base']}, but the version before it is {previous or 'none'}.",
                "restore meta/ from git, or " + SNAPSHOT_HINT.format(set_dir=set_dir),
            )
        if not all(isinstance(k, str) and (v is None or isinstance(v, dict)) for k, v in changes.items()):
            raise SetError(f"snapshot {path} is malformed: 'changes' maps names to objects or null.", SNAPSHOT_HINT.format(set_dir=set_dir))
        if not isinstance(snap.get("fingerprint"), str):
            raise SetError(f"snapshot {path} is malformed: no 'fingerprint'.", SNAPSHOT_HINT.format(set_dir=set_dir))
        return changes, previous, snap["fingerprint"]
    if not (isinstance(snap, dict) and isinstance(snap.get("catalog"), dict)):
        raise SetError(f"snapshot {path} is malformed: no 'catalog' object.", SNAPSHOT_HINT.format(set_dir=set_dir))
    catalog: Catalog = snap["catalog"]
    computed = fingerprint(catalog)
    if snap.get("fingerprint") != computed:
        raise ChecksumMismatch(
            f"snapshot {path} says fingerprint {str(snap.get('fingerprint'))[:12]} but its catalog hashes to {computed[:12]}.",
            "restore it from git, or " + SNAPSHOT_HINT.format(set_dir=set_dir),
        )
    return dict(catalog), None, computed


def _load_trace(path: Path, entry: dict[str, Any], set_dir: Path) -> Trace:
    """A lock trace whose bytes match the journal's sha256 (whether it is stale is `stale_traces`' question)."""
    recorded = (entry.get("trace") or {}).get("sha256")
    if recorded is None:
        raise SetError(
            f"journal entry {entry['version']} has no trace.sha256: meta/ predates the lock trace.", SNAPSHOT_HINT.format(set_dir=set_dir)
        )
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise SetError(f"lock trace {path} is missing.", SNAPSHOT_HINT.format(set_dir=set_dir)) from None
    if sha256_hex(data) != recorded:
        raise ChecksumMismatch(
            f"{path} was changed after the journal was written (sha256 {sha256_hex(data)[:12]} != journal {str(recorded)[:12]}).",
            "restore it from git (git checkout), or " + SNAPSHOT_HINT.format(set_dir=set_dir),
        )
    try:
        trace = Trace.from_dict(json.loads(data))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise SetError(f"lock trace {path} is malformed ({exc!r}).", SNAPSHOT_HINT.format(set_dir=set_dir)) from None
    return trace


def load(directory: Path | str, *, require_snapshots: bool = True, parse: bool = True, unjournaled_ok: bool = False) -> MigrationSet:
    """Load and check a set: every file must match the journal, every journal entry must have its file.

    `parse` (the default, for `check` and authoring): every file is parsed now, a syntax error or transaction control
    is refused here. `parse=False` (the run commands, the Pulumi program and provider): a file is parsed when a plan is
    about to run it (`planner.plan_steps` parses every pending file before anything runs); an up-to-date run parses
    nothing and never imports the SQL parser. `unjournaled_ok`: files the journal does not list yet are left out (what
    `snapshot` reuses of the meta/ it is about to rewrite), not refused."""
    directory = Path(directory)
    meta = directory / "meta"
    journal_path = meta / "_journal.json"
    journal = _read_json(journal_path, "journal", directory)
    _require(isinstance(journal, dict), journal_path, "top level is not an object", directory)
    _require(journal.get("format") == JOURNAL_FORMAT, journal_path, f"format is not {JOURNAL_FORMAT}", directory)
    entries = journal.get("entries")
    _require(isinstance(entries, list), journal_path, "'entries' is not a list", directory)
    schema = journal.get("schema")
    _require(isinstance(schema, str) and bool(schema), journal_path, "'schema' is missing", directory)
    files = {f.version: f for f in scan(directory)}

    _check_order(entries, journal_path, directory)
    migrations: list[Migration] = []
    for entry in entries:
        version = entry["version"]
        scanned = files.pop(version, None)
        if scanned is None:
            raise SetError(
                f"journal lists version {version} but {directory} has no {version}_*.sql file.",
                "restore the file from git; applied migrations must never be deleted.",
            )
        up_bytes = scanned.up.read_bytes()
        checksum = sha256_hex(up_bytes)
        if checksum != entry["up"]["sha256"]:
            raise ChecksumMismatch(
                f"{scanned.up} was changed after the journal was written (sha256 {checksum[:12]} != journal {entry['up']['sha256'][:12]}).",
                "revert the edit and put the change in a new migration; if this version was never applied anywhere, "
                + SNAPSHOT_HINT.format(set_dir=directory),
            )
        down_sql = down_checksum = None
        if scanned.down is not None:
            down_bytes = scanned.down.read_bytes()
            down_checksum = sha256_hex(down_bytes)
            recorded = (entry.get("down") or {}).get("sha256")
            if recorded != down_checksum:
                raise ChecksumMismatch(
                    f"{scanned.down} does not match the journal (sha256 {down_checksum[:12]} != journal {str(recorded)[:12]}).",
                    SNAPSHOT_HINT.format(set_dir=directory),
                )
            down_sql = down_bytes.decode()
        elif entry.get("down"):
            raise SetError(
                f"journal lists a down file for {version} but {scanned.up.name[:-4]}.down.sql is missing.", "restore it from git."
            )
        changes: dict[str, Any] | None = None
        base = snap_fingerprint = None
        snap_path = meta / f"{version}_snapshot.json"
        if snap_path.exists() or require_snapshots:
            changes, base, snap_fingerprint = _load_snapshot(snap_path, entry, directory, migrations[-1].version if migrations else None)
        trace: Trace | None = None
        trace_error: SetError | None = None  # raised after parsing: a file's own error is the one to fix first
        trace_path = meta / f"{version}_trace.json"
        if trace_path.exists() or require_snapshots:
            try:
                trace = _load_trace(trace_path, entry, directory)
            except SetError as exc:
                trace_error = exc
        up_sql = up_bytes.decode()
        migration = Migration(
            version=version,
            name=scanned.name,
            up_file=str(scanned.up),
            up_sql=up_sql,
            checksum=checksum,
            down_file=None if scanned.down is None else str(scanned.down),
            down_sql=down_sql,
            down_checksum=down_checksum,
            markers=header_markers(up_sql),
            snapshot_changes=changes,
            down_markers=header_markers(down_sql or ""),
            trace=trace,
            snapshot_base=base,
            stored_fingerprint=snap_fingerprint,
        )
        if parse or trace_error is not None:  # parsed now and kept: a file's own error (syntax, transaction control) is
            migration.statements()  # refused here, naming the file, and is the one to fix before its trace
            migration.down_statements()
        if trace_error is not None:
            raise trace_error
        migrations.append(migration)
    if files and not unjournaled_ok:
        stray = ", ".join(f.up.name for f in files.values())
        raise SetError(f"{stray} in {directory} is not in the journal.", SNAPSHOT_HINT.format(set_dir=directory))
    set_name = journal.get("set")
    _require(
        isinstance(set_name, str) and bool(set_name),
        journal_path,
        "'set' (the set's name: its identity in the ledger) is missing",
        directory,
    )
    return MigrationSet(directory=directory, name=str(set_name), schema=schema, migrations=tuple(migrations))


def stale_traces(mset: MigrationSet) -> list[str]:
    """Why a version's lock trace does not describe its file as it is now (measured on other bytes, or not measured)."""
    problems = []
    for m in mset.migrations:
        t = m.trace
        if t is None:
            continue
        if not t.measured:
            problems.append(f"{m.version}: its lock trace was never measured")
        elif t.up_sha256 != m.checksum:
            problems.append(f"{m.version}: its lock trace was measured on other bytes (sha256 {t.up_sha256[:12]} != {m.checksum[:12]})")
        elif [(s.line, s.kind) for s in t.statements] != [(s.line, s.kind) for s in m.statements()]:
            problems.append(f"{m.version}: its lock trace lists other statements than {Path(m.up_file).name}")
    return problems


def set_name_of(directory: Path) -> str:
    """The set's name from its journal (its identity in the ledger); a new set takes its directory's name once."""
    try:
        name = json.loads((directory / "meta" / "_journal.json").read_text()).get("set")
    except (OSError, ValueError, AttributeError):
        name = None
    return name if isinstance(name, str) and name else directory.name


def write_meta(directory: Path, schema: str, snapshots: dict[str, Catalog], traces: dict[str, Trace] | None = None) -> Path:
    """Write the journal, one snapshot and one lock trace per version (used by the `snapshot` command).

    Without `traces` (tests that need no database) each trace is written empty and unmeasured: `check` replays it as stale."""
    meta = directory / "meta"
    set_name = set_name_of(directory)
    meta.mkdir(parents=True, exist_ok=True)
    entries = []
    previous: tuple[str, Catalog] | None = None
    fingerprint = Fingerprints()  # consecutive snapshots share most entries
    for f in scan(directory):
        entry: dict[str, Any] = {
            "version": f.version,
            "name": f.name,
            "up": {"file": f.up.name, "sha256": sha256_hex(f.up.read_bytes())},
            "down": None if f.down is None else {"file": f.down.name, "sha256": sha256_hex(f.down.read_bytes())},
            "transactional": NO_TRANSACTION not in header_markers(f.up.read_text()),
        }
        snap = snapshots[f.version]
        stored: dict[str, Any] = {"version": f.version, "schema": schema, "fingerprint": fingerprint(snap)}
        if previous is None:
            stored["catalog"] = snap  # the first version: the whole catalog
        else:  # later versions: what differs from the previous one, so that meta/ grows with the changes, not the history
            before = previous[1]
            stored["base"] = previous[0]
            stored["changes"] = {k: snap.get(k) for k in sorted(before.keys() | snap.keys()) if before.get(k) != snap.get(k)}
        previous = (f.version, snap)
        snap_bytes = (json.dumps(stored, indent=2, sort_keys=True) + "\n").encode()
        (meta / f"{f.version}_snapshot.json").write_bytes(snap_bytes)
        entry["snapshot"] = {"file": f"{f.version}_snapshot.json", "sha256": sha256_hex(snap_bytes)}
        up_sha = entry["up"]["sha256"]
        trace = (traces or {}).get(f.version) or Trace(f.version, up_sha, (), measured=False)
        trace_bytes = (json.dumps(trace.as_dict(), indent=2, sort_keys=True) + "\n").encode()
        (meta / f"{f.version}_trace.json").write_bytes(trace_bytes)
        entry["trace"] = {"file": f"{f.version}_trace.json", "sha256": sha256_hex(trace_bytes)}
        entries.append(entry)
    journal = {"format": JOURNAL_FORMAT, "set": set_name, "schema": schema, "entries": entries}
    path = meta / "_journal.json"
    path.write_text(json.dumps(journal, indent=2) + "\n")
    return path
