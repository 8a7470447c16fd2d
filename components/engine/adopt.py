"""Adopt a database whose schema already exists (by hand or by drizzle-kit): verify, then record without running."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from psycopg import sql

from . import catalog as cat
from .errors import SetError, UsageError, VerifyFailed
from .guards import preflight
from .planner import Step
from .runner import whoami

if TYPE_CHECKING:
    import psycopg

    from .engine import Engine, RunResult

DRIZZLE_SCHEMA, DRIZZLE_LEDGER = "drizzle", "__drizzle_migrations"
DRIZZLE_TABLE = f"{DRIZZLE_SCHEMA}.{DRIZZLE_LEDGER}"


@dataclass(frozen=True)
class DrizzleCheck:
    recorded: int
    files: int
    problems: tuple[str, ...]


def drizzle_hashes(directory: Path) -> dict[str, str]:
    """tag -> sha256 of each journal-listed .sql, computed as drizzle's migrator does (whole file text)."""
    journal = directory / "meta" / "_journal.json"
    try:
        entries = json.loads(journal.read_text())["entries"]
    except (OSError, KeyError, ValueError) as exc:
        raise SetError(
            f"cannot read the drizzle journal {journal}: {exc}.", "pass --drizzle-dir with the drizzle migrations folder."
        ) from None
    out: dict[str, str] = {}
    for entry in entries:
        path = directory / f"{entry['tag']}.sql"
        try:
            out[str(entry["tag"])] = hashlib.sha256(path.read_text().encode()).hexdigest()
        except OSError:
            raise SetError(
                f"drizzle journal lists {entry['tag']} but {path} is missing.", "restore the drizzle folder as it was deployed."
            ) from None
    return out


def check_drizzle(conn: psycopg.Connection[Any], directory: Path) -> DrizzleCheck:
    """Every recorded hash must be a file of the folder and every file must be recorded (membership, not the newest row)."""
    import psycopg

    files = drizzle_hashes(directory)
    try:
        rows = conn.execute(sql.SQL("SELECT hash FROM {} ORDER BY id").format(sql.Identifier(DRIZZLE_SCHEMA, DRIZZLE_LEDGER))).fetchall()
    except psycopg.errors.UndefinedTable:
        return DrizzleCheck(0, len(files), (f"{DRIZZLE_TABLE} does not exist: this database was not migrated by drizzle-kit",))
    recorded = [str(r[0]) for r in rows]
    by_hash = {h: tag for tag, h in files.items()}
    problems = [
        f"recorded hash {h[:12]} matches no file in {directory} (edited or unknown migration)" for h in recorded if h not in by_hash
    ]
    problems += [f"{tag}.sql is not recorded in {DRIZZLE_TABLE} (never applied?)" for tag, h in files.items() if h not in set(recorded)]
    return DrizzleCheck(len(recorded), len(files), tuple(problems))


def adopt(engine: Engine, version: str | None, drizzle_dir: Path | None = None) -> RunResult:
    """Record versions up to `version` as applied without running them, if the live schema is exactly their snapshot."""
    from .engine import RunResult

    if version is None:
        raise UsageError("adopt needs a version to adopt (e.g. 0007).", "name the version whose snapshot the database matches.")
    mset = engine.mset
    with engine.connect() as conn:
        state = engine.read_state(conn)
        engine.refuse_unnamed_writer(state)
        if state.rows:
            raise UsageError(
                f"{state.database} already has applied versions ({', '.join(r.version for r in state.rows)}): nothing to adopt.",
                "use `apply`; adopt is for a database that has the schema but no ledger.",
            )
        if engine.gate is not None:  # adoption records versions: the promotion gate applies as it does to apply
            engine.gate.enforce(tuple(Step(m, "up") for m in mset.up_to(version)))
        problems: list[str] = []
        if drizzle_dir is not None:
            problems += check_drizzle(conn, drizzle_dir).problems
        live = cat.introspect(conn, mset.schema)
        problems += [d.describe() for d in cat.compare(mset.expected_catalog(version), live)]
        if problems:
            raise VerifyFailed(
                f"{state.database} cannot be adopted at {version}; nothing was recorded: " + "; ".join(problems) + ".",
                "make the database match (or pick the version it matches), then adopt again.",
            )
        preflight(conn, engine.settings, mset.schema, engine.ledger.schema)
        with engine.locked(conn):
            engine.ledger.ensure(conn)
            state = engine.read_state(conn)
            result = RunResult(None)
            stack = engine.options.stack
            with conn.transaction():
                if stack is not None and state.owner is None:
                    engine.ledger.claim(conn, stack, state.system_identifier, state.database)
                for m in mset.up_to(version):
                    engine.ledger.record(
                        conn,
                        version=m.version,
                        name=m.name,
                        checksum=m.checksum,
                        applied_by=f"{engine.settings.user} ({whoami()}, adopted)",
                        duration_ms=0,
                        stack=stack,
                        database_identity=state.identity,
                        fingerprint=cat.fingerprint(live),
                    )
                    result.ran.append({"version": m.version, "name": m.name, "direction": "adopt", "duration_ms": 0})
            result.current, result.fingerprint, result.ledger = version, cat.fingerprint(live), engine.ledger.read(conn)
            return result
