"""SchemaMigration: a Pulumi dynamic resource that applies and verifies a migration set, a thin adapter over the engine.

The provider class lives in this importable module, so dill pickles it by reference; it keeps no state between calls
and opens its connections inside each method. Nothing here runs at import time. Its inputs are written once, in
`SchemaMigrationArgs` (plus the engine's `RunOptions`), and cross the wire through `to_props`/`from_props`.
"""

from __future__ import annotations

import os
import sys
import uuid
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pulumi
from pulumi.dynamic import CheckFailure, CheckResult, CreateResult, DiffResult, ReadResult, Resource, ResourceProvider, UpdateResult

from .engine import migset
from .engine.connection import ConnectionSettings, mask_dsn
from .engine.errors import ChecksumMismatch, ConnectFailed, ImportUnsupported, MigrationError
from .engine.options import RunOptions
from .engine.planner import Gate, parse_target, target_prop

if TYPE_CHECKING:  # the engine (and psycopg) load in the provider's process only, not in the Pulumi program's
    from .engine.engine import Engine, RunResult

UNKNOWN = "04da6b54-80e4-46f7-96ec-b56ff0331ba9"  # pulumi.runtime.rpc.UNKNOWN, kept literal to avoid importing rpc
OUTPUT_KEYS = ("applied_version", "applied", "fingerprint", "drift", "database_identity")
DERIVED_KEYS = ("migrations", "expected_fingerprint", "gate")  # computed from the set and the gate by to_props


@dataclass(frozen=True)
class SchemaMigrationArgs:
    """The resource's inputs, each written once; connection fields may be Outputs (e.g. the cluster endpoint)."""

    host: pulumi.Input[str]
    port: pulumi.Input[int]
    database: pulumi.Input[str]
    user: pulumi.Input[str]
    set_dir: str
    options: RunOptions = field(default_factory=RunOptions)
    # Where the provider reads the password when it runs (never an input, so never in state): a stack config key of
    # this project, then an environment variable. AWS stacks use IAM tokens instead (auth="iam").
    password_config_key: str | None = None
    password_env: str | None = None
    sslmode: str = "require"
    sslrootcert: str | None = None
    connect_timeout: int = 10
    auth: str = "password"
    region: str | None = None
    target_version: str = "latest"
    allow_rollback: bool = False
    destroy_drops_schema: bool = False  # dev only: `pulumi destroy` rolls the schema back
    gate_stack: str | None = None
    gate_applied: pulumi.Input[Any] | None = None  # the gate stack's applied_migrations output

    def to_props(self, mset: migset.MigrationSet) -> dict[str, Any]:
        """Flat properties: the plain fields, the run options, and what is derived from the set on disk."""
        plain = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("options", "gate_stack", "gate_applied")}
        target = parse_target(mset, self.target_version)
        return {
            **plain,
            **self.options.to_props(),
            "target_version": target_prop(target),
            "migrations": mset.manifest(),
            "expected_fingerprint": mset.get(target).fingerprint if target else None,
            "gate": None if self.gate_stack is None else {"stack": self.gate_stack, "applied": self.gate_applied},
        }

    @classmethod
    def from_props(cls, props: dict[str, Any]) -> SchemaMigrationArgs:
        """The inputs back from properties (state or the wire); missing keys keep their defaults."""
        names = {f.name for f in fields(cls)} - {"options", "gate_stack", "gate_applied"}
        given = {k: props[k] for k in names if props.get(k) is not None}
        for key in ("port", "connect_timeout"):  # Pulumi sends numbers as floats
            if isinstance(given.get(key), float):
                given[key] = int(given[key])
        gate = props.get("gate") or {}
        return replace(
            cls(host="", port=0, database="", user="", set_dir=""),
            **given,
            options=RunOptions.from_props(props),
            gate_stack=gate.get("stack"),
            gate_applied=gate.get("applied"),
        )


def input_keys() -> tuple[str, ...]:
    """Every property the resource takes as input (outputs excluded)."""
    names = [f.name for f in fields(SchemaMigrationArgs) if f.name not in ("options", "gate_stack", "gate_applied")]
    return (*names, *(f.name for f in fields(RunOptions)), *DERIVED_KEYS)


def _log(message: str) -> None:
    # pulumi.log does not work inside a dynamic provider; the engine passes plugin stderr through. Masked: pending SQL,
    # lint snippets and other sessions' queries may hold a password literal.
    print(f"[schema-migration] {mask_dsn(message)}", file=sys.stderr, flush=True)


def _has_unknowns(props: dict[str, Any]) -> bool:
    def walk(value: Any) -> bool:
        if value == UNKNOWN:
            return True
        if isinstance(value, dict):
            return any(walk(v) for v in value.values())
        if isinstance(value, list):
            return any(walk(v) for v in value)
        return False

    return any(walk(props.get(k)) for k in input_keys())


def gate_from(raw: Any) -> Gate | None:
    """The promotion gate input: {"stack": name, "applied": [{version, checksum}, ...] or None}."""
    if not raw:
        return None
    applied = raw.get("applied") or []
    return Gate(str(raw["stack"]), {str(a["version"]): str(a["checksum"]) for a in applied if isinstance(a, dict)})


def _fail(exc: MigrationError) -> Exception:
    # Keep the traceback out of the CLI output; mask again: a message may quote a definition (drift in a view) that
    # holds a password.
    return Exception(mask_dsn(f"{type(exc).__name__}: {exc}"))


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

    def configure(self, req: Any) -> None:
        # Stack config of this project (secrets arrive decrypted), read in the provider process only.
        self._config = req.config

    def _password(self, args: SchemaMigrationArgs) -> str | None:
        config = getattr(self, "_config", None)
        if args.password_config_key and config is not None:
            value = config.get(args.password_config_key)
            if value:
                return str(value)
        if args.password_env:
            return os.environ.get(args.password_env) or None
        return None

    def settings(self, args: SchemaMigrationArgs) -> ConnectionSettings:
        password = self._password(args)
        if args.auth == "iam":
            password = _iam_token(str(args.host), int(float(str(args.port))), str(args.user), args.region or "")
        return ConnectionSettings(
            host=str(args.host),
            port=int(float(str(args.port))),
            dbname=str(args.database),
            user=str(args.user),
            password=password,
            sslmode=args.sslmode,
            sslrootcert=args.sslrootcert,
            connect_timeout=args.connect_timeout,
            application_name="wishlist-pulumi",
        )

    def engine(self, args: SchemaMigrationArgs, props: dict[str, Any]) -> Engine:
        from .engine.engine import Engine

        return Engine(self.settings(args), load_set(args, props), args.options, gate=gate_from(props.get("gate")), progress=_log)

    def check(self, _olds: dict[str, Any], news: dict[str, Any]) -> CheckResult:
        failures = []
        for key in ("host", "port", "database", "user", "set_dir"):
            if news.get(key) in (None, ""):
                failures.append(CheckFailure(key, f"{key} is required"))
        if news.get("auth") not in (None, "password", "iam"):
            failures.append(CheckFailure("auth", "auth must be 'password' or 'iam'"))
        if news.get("destroy_drops_schema") and not news.get("stack"):
            # Ownership (which resource may drop the schema on delete) is recorded per stack.
            failures.append(CheckFailure("destroy_drops_schema", "destroy_drops_schema needs a stack (RunOptions.stack)"))
        gate = None if _has_unknowns({"gate": news.get("gate")}) else gate_from(news.get("gate"))
        if gate is not None and not failures:
            # Judged from inputs alone (check never connects): which versions up to the target the gate stack has.
            target = int(news.get("target_version") or 0)
            wanted = [m for m in news.get("migrations") or [] if int(m["version"]) <= target]
            _log(gate.describe(*gate.split_items((m["version"], f"{m['version']}_{m['name']}", m["checksum"]) for m in wanted)))
        if not _olds and not failures and not _has_unknowns({"migrations": news.get("migrations")}):
            # A create is never diffed: show here the SQL it will run (the inputs carry checksums, not SQL).
            target = int(news.get("target_version") or 0)
            _log_pending_sql(
                SchemaMigrationArgs.from_props(news), [m["version"] for m in news.get("migrations") or [] if int(m["version"]) <= target]
            )
        return CheckResult(news, failures)

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        if _has_unknowns(news):
            return DiffResult(changes=True)
        tampered = tampered_in_state(olds, news)
        if tampered:
            raise _fail(
                ChecksumMismatch(f"{tampered} was edited after it was applied.", "revert the file and add a new migration instead.")
            )
        inputs_changed = any(_comparable(k, olds.get(k)) != _comparable(k, news.get(k)) for k in input_keys())
        args = SchemaMigrationArgs.from_props(news)
        try:
            engine = self.engine(args, news)
            plan, report = engine.observe(parse_target(engine.mset, args.target_version))
        except ConnectFailed as exc:
            if exc.refused:  # a wrong password or missing AWS credentials is an error, never "unchanged"
                raise _fail(exc) from None
            _log(f"WARNING: database not reachable during preview ({exc.problem}); diff judged from stack state only")
            target = int(args.target_version or 0)
            applied = {r["version"] for r in olds.get("applied") or []}
            pending = [m["version"] for m in news.get("migrations") or [] if m["version"] not in applied and int(m["version"]) <= target]
            undone = {v for v in applied if int(v) > target}  # a lower target rolls these back, newest first
            try:  # what the plan would parse: a bad pending file (up, or down for a rollback) still fails the preview
                for m in engine.mset.migrations:
                    if m.version in pending:
                        m.statements()
                    if m.version in undone:
                        m.down_statements()
            except MigrationError as bad:
                raise _fail(bad) from None
            _log_pending_sql(args, pending)
            return DiffResult(changes=inputs_changed or bool(pending))
        except MigrationError as exc:
            raise _fail(exc) from None
        if engine.gate is not None and plan.steps:
            _log(engine.gate.describe(*engine.gate.split(plan.steps)))
        for finding in plan.findings:
            _log(f"lint {'refused' if args.options.strict_lint and not finding.acknowledged else 'warning'}: {finding.describe()}")
        if plan.steps:
            _log(
                "plan: "
                + ", ".join(
                    f"{s.direction} {s.migration.label}" + (f" (resumes at statement {s.resume_from + 1})" if s.resuming else "")
                    for s in plan.steps
                )
            )
        for step in plan.steps:
            if step.direction == "up":
                _log_sql(step.migration.label, step.sql)
        for impact in plan.impacts:
            _log(f"trace: {impact.describe()}")
        drift = list(report.differences) if plan.current is not None else []
        for d in drift:
            _log(f"drift: {d.describe()}")
        return DiffResult(
            changes=inputs_changed or bool(plan.steps) or bool(drift) or bool(olds.get("drift")), replaces=[], delete_before_replace=True
        )

    def create(self, props: dict[str, Any]) -> CreateResult:
        # A fresh id per creation: the ledger records it as the owning resource, so deleting the old copy of a
        # renamed resource (created under another id) drops nothing.
        id_ = f"{props.get('stack') or 'cli'}:{uuid.uuid4().hex[:12]}"
        return CreateResult(id_=id_, outs=self._apply(props, id_))

    def update(self, id_: str, _olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        return UpdateResult(outs=self._apply(news, id_))

    def _apply(self, props: dict[str, Any], id_: str) -> dict[str, Any]:
        args = SchemaMigrationArgs.from_props(props)
        try:
            engine = self.engine(args, props)
            result = engine.migrate_to(
                parse_target(engine.mset, args.target_version),
                allow_rollback=args.allow_rollback,
                expected_fingerprint=props.get("expected_fingerprint"),
                owner_id=id_,
            )
        except MigrationError as exc:
            raise _fail(exc) from None
        return _outputs(props, result)

    def delete(self, id_: str, props: dict[str, Any]) -> None:
        args = SchemaMigrationArgs.from_props(props)
        if not args.destroy_drops_schema:
            _log("destroyDropsSchema is off: the schema and the ledger stay in the database (nothing was dropped)")
            return
        try:
            self.engine(args, props).tear_down(id_)
        except MigrationError as exc:
            raise _fail(exc) from None

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        if not props.get("set_dir"):
            raise _fail(
                ImportUnsupported(
                    f"a SchemaMigration cannot be imported from its id ({id_}): the id does not say which migration set, "
                    "database and credentials it uses.",
                    "adopt the existing schema with `python -m components.migrate adopt VERSION --stack STACK` "
                    "(docs/runbook.md), then run `pulumi up`: the resource is created and finds nothing to apply.",
                )
            )
        args = SchemaMigrationArgs.from_props(props)
        try:
            engine = self.engine(args, props)
            plan, report = engine.observe(engine.mset.latest)
        except MigrationError as exc:
            raise _fail(exc) from None
        from .engine.engine import RunResult

        outs = _outputs(props, RunResult(plan.current, [], report.fingerprint, plan.ledger), [d.describe() for d in report.differences])
        return ReadResult(id_=id_, outs=outs, inputs={k: props.get(k) for k in input_keys()})


def _comparable(key: str, value: Any) -> Any:
    """An input as diff compares it: states written before the manifest lost its SQL lines carry them; they are no change."""
    if key == "migrations" and isinstance(value, list):
        return [{k: v for k, v in m.items() if k != "sql"} if isinstance(m, dict) else m for m in value]
    return value


def _log_sql(label: str, text: str) -> None:
    """One message per version (the CLI spaces messages apart): its SQL, each line behind a bar."""
    _log(f"pending SQL of {label}:\n" + "\n".join(f"  | {line}" for line in text.rstrip().splitlines()))


def _log_pending_sql(args: SchemaMigrationArgs, versions: list[str]) -> None:
    """Without a database, the SQL of the versions the state does not list as applied, read from the set on disk."""
    try:
        mset = migset.load(Path(args.set_dir), parse=False)  # shown as written: the text needs no parse
    except MigrationError as exc:
        _log(f"the pending SQL cannot be shown: {exc.problem}")
        return
    for m in mset.migrations:
        if m.version in versions:
            _log_sql(m.label, m.up_sql)


def declared_set(args: SchemaMigrationArgs) -> migset.MigrationSet:
    """The set as the program declares it: a malformed journal or an edited file fails here, at preview, naming the
    file. Not parsed (the program runs twice per `pulumi up`): the provider's plan parses the pending files."""
    return migset.load(Path(args.set_dir), parse=False)


def load_set(args: SchemaMigrationArgs, props: dict[str, Any]) -> migset.MigrationSet:
    """The set on disk, which must be exactly what the program saw (what was previewed is what runs). Not parsed here:
    the plan parses the files it will run, before any runs."""
    mset = migset.load(Path(args.set_dir), parse=False)
    declared = {m["version"]: m["checksum"] for m in props.get("migrations") or []}
    on_disk = {m.version: m.checksum for m in mset.migrations}
    if declared and declared != on_disk:
        changed = sorted(v for v in set(declared) | set(on_disk) if declared.get(v) != on_disk.get(v))
        raise ChecksumMismatch(
            f"the migration set {args.set_dir} changed on disk since the program read it (versions {', '.join(changed)}).",
            "run `pulumi preview` again and review the new plan.",
        )
    return mset


def _iam_token(host: str, port: int, user: str, region: str) -> str:
    """A 15-minute RDS IAM auth token, signed locally with the ambient AWS credentials."""
    import boto3  # type: ignore[import-untyped]
    from botocore.exceptions import BotoCoreError, NoCredentialsError  # type: ignore[import-untyped]

    try:
        return str(boto3.client("rds", region_name=region or None).generate_db_auth_token(DBHostname=host, Port=port, DBUsername=user))
    except NoCredentialsError:
        raise ConnectFailed(
            f"no AWS credentials to sign an IAM token for {user}@{host}:{port}.",
            "export AWS credentials (AWS_PROFILE, or the pipeline's role) with rds-db:connect on this user, then run again.",
            refused=True,
        ) from None
    except BotoCoreError as exc:
        raise ConnectFailed(
            f"cannot sign an IAM token for {user}@{host}:{port}: {exc}.", "check the AWS region and credentials.", refused=True
        ) from None


def _outputs(props: dict[str, Any], result: RunResult, drift: list[str] | None = None) -> dict[str, Any]:
    state = result.ledger
    applied = [] if state is None else [{"version": r.version, "checksum": r.checksum} for r in state.rows if r.status == "applied"]
    return {
        **{k: props.get(k) for k in input_keys()},
        "applied_version": result.current,
        "applied": applied,
        "fingerprint": result.fingerprint,
        "drift": [mask_dsn(d) for d in drift or []],  # stack state: a drifted definition may hold a password
        "database_identity": None if state is None else state.identity,
    }


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
        mset = declared_set(args)
        props = {**args.to_props(mset), **{k: None for k in OUTPUT_KEYS}}
        super().__init__(SchemaMigrationProvider(), name, props, opts)
