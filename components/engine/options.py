"""How a run behaves: one frozen options object, each default written once, parsed at the edges, passed down whole."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

from .errors import UsageError

DEFAULT_LEDGER_SCHEMA = "migration_ledger"  # here, not in ledger.py: the Pulumi program reads it without importing psycopg

# The sane range of each number, checked once for every caller (stack config, CLI flags, provider inputs).
LIMITS = {
    "lock_wait_ms": (1, 3_600_000),
    "lock_timeout_ms": (1, 60_000),
    "ddl_retries": (0, 20),
    "statement_timeout_ms": (0, 86_400_000),
}


class InvalidOption(UsageError):
    """A run option outside its range."""

    code = "invalid-option"

    def __init__(self, name: str, value: object, low: int, high: int) -> None:
        super().__init__(f"run option {name} is {value!r}, outside {low}..{high}.", f"give {name} a value from {low} to {high}.")
        self.name = name


@dataclass(frozen=True)
class RunOptions:
    """Everything an engine run needs besides the connection, the set and the target.

    To add an option: add a field here (with its default), parse it in `components/config.py` (MigrationsConfig)
    and read it where it is used. The CLI flags and the Pulumi resource's inputs follow from these fields.
    """

    stack: str | None = None  # owner identity recorded in the ledger; a database owned by another stack is refused
    ledger_schema: str = DEFAULT_LEDGER_SCHEMA
    lock_wait_ms: int = 60_000  # how long to wait for the migration lock (another applier) before giving up
    lock_timeout_ms: int = 1_000  # DDL lock_timeout: how long a statement may queue for a table lock before a retry
    ddl_retries: int = 5  # attempts after a DDL lock timeout, each in a fresh transaction, with backoff
    statement_timeout_ms: int = 0  # 0 = no limit
    strict_lint: bool = False  # prod: unacknowledged lint findings refuse the apply

    def __post_init__(self) -> None:
        for name, (low, high) in LIMITS.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise InvalidOption(name, value, low, high)

    def to_props(self) -> dict[str, Any]:
        """The options as flat, JSON-able properties (Pulumi inputs, --json output)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_props(cls, props: dict[str, Any]) -> RunOptions:
        """Options from flat properties; a missing or null key keeps its default."""
        defaults = cls()
        given: dict[str, Any] = {}
        for f in fields(cls):
            value = props.get(f.name)
            if value is None:
                continue
            default = getattr(defaults, f.name)
            # Pulumi sends every number as a float (60000.0): coerce to the type of the default.
            given[f.name] = int(value) if isinstance(default, int) and not isinstance(default, bool) else value
        return replace(defaults, **given)
