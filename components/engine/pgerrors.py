"""One translator from psycopg errors to the engine's errors: first line of the message, password masked, a fix."""

from __future__ import annotations

from .connection import ConnectionSettings, mask_dsn
from .errors import DatabaseError, MigrationError

# SQLSTATEs whose cause we can name, with the fix to suggest.
STATE_FIXES = {
    "42P07": "an object of that name already exists (made by hand or by another tool): drop or rename it, "
    "or adopt the database (`python -m components.migrate adopt`, docs/runbook.md).",
    "42710": "an object of that name already exists: drop or rename it, or adopt the database (docs/runbook.md).",
    "42501": "the role lacks a privilege: grant it (the access component grants CREATE on the schema to the migrator).",
    "25006": "the connection is read-only: connect to the primary/writer endpoint.",
    "57014": "a statement ran past statement_timeout: raise --statement-timeout, or split the migration.",
    "55P03": "a lock was not granted within lock_timeout: retry when the table is quiet, or raise --lock-timeout.",
    "40P01": "a deadlock with another session: retry.",
}
DEFAULT_FIX = "check `python -m components.migrate status`, fix the cause, and run again."


def first_line(exc: BaseException, settings: ConnectionSettings | None = None) -> str:
    """The primary message of an error, one line, with any password masked."""
    diag = getattr(exc, "diag", None)
    text = str(getattr(diag, "message_primary", None) or exc).strip()
    return mask(text.splitlines()[0] if text else type(exc).__name__, settings)


def mask(text: str, settings: ConnectionSettings | None = None) -> str:
    """Mask a known password and anything DSN-shaped."""
    if settings is not None and settings.password:
        text = text.replace(settings.password, "***")
    return mask_dsn(text)


def sqlstate(exc: BaseException) -> str:
    return str(getattr(exc, "sqlstate", None) or "")


def fix_for(exc: BaseException, default: str = DEFAULT_FIX) -> str:
    return STATE_FIXES.get(sqlstate(exc), default)


def translate(exc: BaseException, settings: ConnectionSettings, claim: str) -> MigrationError:
    """A database error nobody named, with `claim`: what is true of the database now (e.g. what was committed)."""
    return DatabaseError(f"{settings.describe()}: {first_line(exc, settings)} [SQLSTATE {sqlstate(exc) or '?'}]; {claim}", fix_for(exc))
