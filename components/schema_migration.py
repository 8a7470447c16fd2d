"""SchemaMigration: a Pulumi dynamic resource that applies and verifies a migration set, a thin adapter over the engine.

The provider class lives in this importable module, so dill pickles it by reference; it keeps no state and opens
its connections inside each method. Nothing here runs at import time.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pulumi
from pulumi.dynamic import CheckFailure, CheckResult, CreateResult, DiffResult, ReadResult, Resource, ResourceProvider, UpdateResult

from .engine import migset
from .engine.catalog import Difference
from .engine.connection import ConnectionSettings
from .engine.engine import Engine, Gate, RunResult
from .engine.errors import ChecksumMismatch, ConnectFailed, MigrationError

UNKNOWN = "04da6b54-80e4-46f7-96ec-b56ff0331ba9"  # pulumi.runtime.rpc.UNKNOWN, kept literal to avoid importing rpc

CONNECTION_KEYS = ("host", "port", "database", "user", "password", "sslmode", "connect_timeout", "auth", "region")
INPUT_KEYS = (
    *CONNECTION_KEYS,
    "set_dir",
    "migrations",
    "target_version",
    "expected_fingerprint",
    "allow_rollback",
    "stack",
    "ledger_schema",
    "lock_timeout_ms",
    "statement_timeout_ms",
    "strict_lint",
    "gate",
)
OUTPUT_KEYS = ("applied_version", "applied", "fingerprint", "drift", "database_identity")


def _log(message: str) -> None:
    # pulumi.log does not work inside a dynamic provider; the engine passes plugin stderr through.
    print(f"[schema-migration] {message}", file=sys.stderr, flush=True)


def _has_unknowns(props: dict[str, Any]) -> bool:
    def walk(value: Any) -> bool:
        if value == UNKNOWN:
            return True
        if isinstance(value, dict):
            return any(walk(v) for v in value.values())
        if isinstance(value, list):
            return any(walk(v) for v in value)
        return False

    return any(walk(props.get(k)) for k in INPUT_KEYS)


def settings_from(props: dict[str, Any]) -> ConnectionSettings:
    password = props.get("password")
    if props.get("auth") == "iam":
        password = _iam_token(str(props["host"]), int(props["port"]), str(props["user"]), str(props.get("region") or ""))
    return ConnectionSettings(
        host=str(props["host"]),
        port=int(props["port"]),
        dbname=str(props["database"]),
        user=str(props["user"]),
        password=None if password is None else str(password),
        sslmode=str(props.get("sslmode") or "require"),
        connect_timeout=int(props.get("connect_timeout") or 10),
        application_name="wishlist-pulumi",
    )


def _iam_token(host: str, port: int, user: str, region: str) -> str:
    """A 15-minute RDS IAM auth token, signed locally with the ambient AWS credentials."""
    import boto3  # type: ignore[import-untyped]

    return str(boto3.client("rds", region_name=region or None).generate_db_auth_token(DBHostname=host, Port=port, DBUsername=user))


def load_set(props: dict[str, Any]) -> migset.MigrationSet:
    """The set on disk, which must be exactly what the program saw (what was previewed is what runs)."""
    mset = migset.load(Path(str(props["set_dir"])))
    declared = {m["version"]: m["checksum"] for m in props.get("migrations") or []}
    on_disk = {m.version: m.checksum for m in mset.migrations}
    if declared and declared != on_disk:
        changed = sorted(v for v in set(declared) | set(on_disk) if declared.get(v) != on_disk.get(v))
        raise ChecksumMismatch(
            f"the migration set {props['set_dir']} changed on disk since the program read it (versions {', '.join(changed)}).",
            "run `pulumi preview` again and review the new plan.",
        )
    return mset


def engine_for(props: dict[str, Any], mset: migset.MigrationSet | None = None) -> Engine:
    return Engine(
        settings_from(props),
        mset or load_set(props),
        stack=props.get("stack") or None,
        ledger_schema=str(props.get("ledger_schema") or "migration_ledger"),
        lock_timeout_ms=int(props.get("lock_timeout_ms") or 60_000),
        statement_timeout_ms=int(props.get("statement_timeout_ms") or 0),
        strict_lint=bool(props.get("strict_lint")),
        gate=gate_from(props.get("gate")),
        progress=_log,
    )


def gate_from(raw: Any) -> Gate | None:
    """The promotion gate input: {"stack": name, "applied": [{version, checksum}, ...] or None}."""
    if not raw:
        return None
    applied = raw.get("applied") or []
    return Gate(str(raw["stack"]), {str(a["version"]): str(a["checksum"]) for a in applied if isinstance(a, dict)})


def provider_inputs(settings: ConnectionSettings, mset: migset.MigrationSet, **extra: Any) -> dict[str, Any]:
    """The provider's inputs for a plain connection and a loaded set, as the engine would get them (tests, bench)."""
    return {
        "host": settings.host,
        "port": settings.port,
        "database": settings.dbname,
        "user": settings.user,
        "password": settings.password,
        "sslmode": settings.sslmode,
        "connect_timeout": settings.connect_timeout,
        "auth": "password",
        "region": None,
        "set_dir": str(mset.directory),
        "migrations": mset.manifest(),
        "target_version": mset.latest,
        "expected_fingerprint": mset.get(mset.latest).fingerprint if mset.latest else None,
        "allow_rollback": False,
        "stack": None,
        "ledger_schema": "migration_ledger",
        "lock_timeout_ms": 60_000,
        "statement_timeout_ms": 0,
        **extra,
    }


def _outputs(props: dict[str, Any], result: RunResult, drift: list[Difference] | None = None) -> dict[str, Any]:
    state = result.ledger
    applied = [] if state is None else [{"version": r.version, "checksum": r.checksum} for r in state.rows if r.status == "applied"]
    return {
        **{k: props.get(k) for k in INPUT_KEYS},
        "applied_version": result.current,
        "applied": applied,
        "fingerprint": result.fingerprint,
        "drift": [d.describe() for d in drift or []],
        "database_identity": None if state is None else state.identity,
    }


def _fail(exc: MigrationError) -> Exception:
    # The engine's messages already mask passwords; keep the traceback out of the CLI output.
    return Exception(f"{type(exc).__name__}: {exc}")


def tampered_in_state(olds: dict[str, Any], news: dict[str, Any]) -> str | None:
    """An applied version whose file checksum changed, judged from the stack state alone (no database)."""
    files = {m["version"]: m for m in news.get("migrations") or []}
    for row in olds.get("applied") or []:
        entry = files.get(row["version"])
        if entry is not None and entry["checksum"] != row["checksum"]:
            return f"{news['set_dir']}/{row['version']}_{entry['name']}.sql"
    return None


class SchemaMigrationProvider(ResourceProvider):
    """check/diff/create/update/delete/read for a migration set; each call opens its own connection."""

    def check(self, _olds: dict[str, Any], news: dict[str, Any]) -> CheckResult:
        failures = []
        for key in ("host", "port", "database", "user", "set_dir"):
            if news.get(key) in (None, ""):
                failures.append(CheckFailure(key, f"{key} is required"))
        if news.get("auth") not in (None, "password", "iam"):
            failures.append(CheckFailure("auth", "auth must be 'password' or 'iam'"))
        gate = None if _has_unknowns({"gate": news.get("gate")}) else gate_from(news.get("gate"))
        if gate is not None and not failures:
            # Judged from inputs alone (check never connects): which versions up to the target the gate stack has.
            target = int(news.get("target_version") or 0)
            wanted = [m for m in news.get("migrations") or [] if int(m["version"]) <= target]
            _log(gate.describe(*gate.split_items((m["version"], f"{m['version']}_{m['name']}", m["checksum"]) for m in wanted)))
        return CheckResult(news, failures)

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        if _has_unknowns(news):
            return DiffResult(changes=True)
        tampered = tampered_in_state(olds, news)
        if tampered:
            raise _fail(
                ChecksumMismatch(f"{tampered} was edited after it was applied.", "revert the file and add a new migration instead.")
            )
        inputs_changed = any(olds.get(k) != news.get(k) for k in INPUT_KEYS)
        try:
            engine = engine_for(news)
            plan, report = engine.observe(news.get("target_version") or "latest")
        except ConnectFailed as exc:
            _log(f"database not reachable during preview ({exc.problem}); diff judged from stack state only")
            applied = {r["version"] for r in olds.get("applied") or []}
            pending = [m["version"] for m in news.get("migrations") or [] if m["version"] not in applied]
            return DiffResult(changes=inputs_changed or bool(pending))
        except MigrationError as exc:
            raise _fail(exc) from None
        if engine.gate is not None and plan.steps:
            _log(engine.gate.describe(*engine.gate.split(plan.steps)))
        for finding in plan.findings:
            _log(f"lint {'refused' if engine.strict_lint and not finding.acknowledged else 'warning'}: {finding.describe()}")
        if plan.steps:
            _log(
                f"{'pending' if plan.steps[0].direction == 'up' else 'rollback'}: "
                + ", ".join(f"{s.direction} {s.migration.label}" for s in plan.steps)
            )
        drift = list(report.differences) if plan.current is not None else []
        for d in drift:
            _log(f"drift: {d.describe()}")
        return DiffResult(
            changes=inputs_changed or bool(plan.steps) or bool(drift) or bool(olds.get("drift")), replaces=[], delete_before_replace=True
        )

    def create(self, props: dict[str, Any]) -> CreateResult:
        outs = self._apply(props)
        return CreateResult(id_=f"{props.get('stack') or 'cli'}:{outs['database_identity']}", outs=outs)

    def update(self, _id: str, _olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        return UpdateResult(outs=self._apply(news))

    def _apply(self, props: dict[str, Any]) -> dict[str, Any]:
        try:
            engine = engine_for(props)
            target = engine.mset.resolve_target(props.get("target_version") or "latest")
            plan = engine.plan(target or "0")
            if plan.steps and plan.steps[0].direction == "down":
                if not props.get("allow_rollback"):
                    raise MigrationError(
                        f"target version {target or 'none'} is below the applied version {plan.current}: that is a rollback, "
                        "which destroys data and is not allowed for this stack.",
                        "set `allowRollback: true` under wishlist:migrations for this stack if that is really intended.",
                    )
                result = engine.rollback(target or "0")
            else:
                result = engine.apply(target or "0")
        except MigrationError as exc:
            raise _fail(exc) from None
        return _outputs(props, result)

    def delete(self, _id: str, props: dict[str, Any]) -> None:
        if not props.get("allow_rollback"):
            _log("allow_rollback is off: the schema and the ledger stay in the database (nothing was dropped)")
            return
        try:
            engine_for(props, migset.load(Path(str(props["set_dir"])))).rollback("0")
        except MigrationError as exc:
            raise _fail(exc) from None

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        try:
            engine = engine_for(props, migset.load(Path(str(props["set_dir"]))))
            plan, report = engine.observe(engine.mset.latest)
        except MigrationError as exc:
            raise _fail(exc) from None
        result = RunResult(plan.current, [], report.fingerprint, plan.ledger)
        outs = _outputs(props, result, list(report.differences))
        return ReadResult(id_=id_, outs=outs, inputs={k: props.get(k) for k in INPUT_KEYS})


@dataclass(frozen=True)
class SchemaMigrationArgs:
    host: pulumi.Input[str]
    port: pulumi.Input[int]
    database: pulumi.Input[str]
    user: pulumi.Input[str]
    password: pulumi.Input[str] | None
    set_dir: str
    stack: str
    sslmode: str = "require"
    auth: str = "password"
    region: str | None = None
    target_version: str = "latest"
    allow_rollback: bool = False
    ledger_schema: str = "migration_ledger"
    lock_timeout_ms: int = 60_000
    statement_timeout_ms: int = 0
    strict_lint: bool = False
    gate_stack: str | None = None
    gate_applied: pulumi.Input[Any] | None = None  # the gate stack's applied_migrations output
    connect_timeout: int = 10


class SchemaMigration(Resource, module="db", name="SchemaMigration"):
    """The applied, verified state of one migration set in one database."""

    applied_version: pulumi.Output[str | None]
    applied: pulumi.Output[list[dict[str, str]]]
    fingerprint: pulumi.Output[str]
    drift: pulumi.Output[list[str]]
    database_identity: pulumi.Output[str]
    target_version: pulumi.Output[str | None]
    expected_fingerprint: pulumi.Output[str]

    def __init__(self, name: str, args: SchemaMigrationArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        mset = migset.load(Path(args.set_dir))  # a malformed or edited set fails here, at preview, naming the file
        target = mset.resolve_target(args.target_version)
        expected = mset.get(target).fingerprint if target else None
        props: dict[str, Any] = {
            "host": args.host,
            "port": args.port,
            "database": args.database,
            "user": args.user,
            "password": None if args.password is None else pulumi.Output.secret(args.password),
            "sslmode": args.sslmode,
            "connect_timeout": args.connect_timeout,
            "auth": args.auth,
            "region": args.region,
            "set_dir": args.set_dir,
            "migrations": mset.manifest(),
            "target_version": target or "0",
            "expected_fingerprint": expected,
            "allow_rollback": args.allow_rollback,
            "stack": args.stack,
            "ledger_schema": args.ledger_schema,
            "lock_timeout_ms": args.lock_timeout_ms,
            "statement_timeout_ms": args.statement_timeout_ms,
            "strict_lint": args.strict_lint,
            "gate": None if args.gate_stack is None else {"stack": args.gate_stack, "applied": args.gate_applied},
            **{k: None for k in OUTPUT_KEYS},
        }
        secret_opts = pulumi.ResourceOptions(additional_secret_outputs=["password"])
        super().__init__(SchemaMigrationProvider(), name, props, pulumi.ResourceOptions.merge(secret_opts, opts))
