"""Adopt a database whose schema already exists (by hand or by drizzle-kit): verify, then record without running."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import SetError

if TYPE_CHECKING:
    import psycopg

DRIZZLE_TABLE = "drizzle.__drizzle_migrations"


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
        rows = conn.execute(f"SELECT hash FROM {DRIZZLE_TABLE} ORDER BY id").fetchall()
    except psycopg.errors.UndefinedTable:
        return DrizzleCheck(0, len(files), (f"{DRIZZLE_TABLE} does not exist: this database was not migrated by drizzle-kit",))
    recorded = [str(r[0]) for r in rows]
    by_hash = {h: tag for tag, h in files.items()}
    problems = [
        f"recorded hash {h[:12]} matches no file in {directory} (edited or unknown migration)" for h in recorded if h not in by_hash
    ]
    problems += [f"{tag}.sql is not recorded in {DRIZZLE_TABLE} (never applied?)" for tag, h in files.items() if h not in set(recorded)]
    return DrizzleCheck(len(recorded), len(files), tuple(problems))
