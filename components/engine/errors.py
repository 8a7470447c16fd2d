"""Errors of the migration engine: each says what went wrong, where, and how to fix it."""

from __future__ import annotations


class MigrationError(Exception):
    """Base of every error the engine raises on purpose."""

    code = "migration-error"

    def __init__(self, problem: str, fix: str = "") -> None:
        self.problem = problem
        self.fix = fix
        super().__init__(f"{problem} Fix: {fix}" if fix else problem)


class SetError(MigrationError):
    """The migration set on disk is malformed (journal, files, snapshots)."""

    code = "bad-migration-set"


class TransactionControl(SetError):
    """A migration file controls transactions itself (BEGIN, COMMIT, SAVEPOINT, ...); the engine owns them."""

    code = "transaction-control"


class ChecksumMismatch(SetError):
    """A file differs from the journal, or an applied file differs from the ledger."""

    code = "checksum-mismatch"


class UnknownVersion(MigrationError):
    code = "unknown-version"


class ConnectFailed(MigrationError):
    """No session: `refused` when the server (or the credentials) said no, not merely unreachable."""

    code = "connect-failed"

    def __init__(self, problem: str, fix: str = "", *, refused: bool = False) -> None:
        super().__init__(problem, fix)
        self.refused = refused


class NotWritable(MigrationError):
    """Read-only session or hot standby: refused before any write."""

    code = "not-writable"


class PermissionMissing(MigrationError):
    code = "permission-missing"


class LockTimeout(MigrationError):
    code = "lock-timeout"


class StatementFailed(MigrationError):
    """A statement of a migration failed; its transaction was rolled back."""

    code = "statement-failed"


class VerifyFailed(MigrationError):
    """The live catalog does not match the expected snapshot."""

    code = "verify-failed"


class DriftDetected(MigrationError):
    """The live schema differs from the snapshot of the latest applied version."""

    code = "drift"


class WrongDatabase(MigrationError):
    """The database is owned by another stack."""

    code = "wrong-database"


class OutOfOrder(MigrationError):
    code = "out-of-order"


class IncompleteMigration(MigrationError):
    """A non-transactional migration failed part-way and left work to repair."""

    code = "incomplete-migration"


class LintRefused(MigrationError):
    code = "lint-refused"


class PromotionBlocked(MigrationError):
    code = "promotion-blocked"


class RollbackRefused(MigrationError):
    """The target is below the applied version and the caller did not allow a rollback."""

    code = "rollback-refused"


class DatabaseError(MigrationError):
    """A database error outside any migration step (ledger, lock or catalog query)."""

    code = "database-error"


class UsageError(MigrationError):
    """A request that cannot be carried out as asked (wrong direction, nothing to resolve or adopt, unknown stack)."""

    code = "usage"


class ImportUnsupported(MigrationError):
    """A SchemaMigration cannot be imported from an id alone."""

    code = "import-unsupported"
