"""Operator CLI over the migration engine: `python -m components.migrate <command> [options]`.

Imports only the engine (no Pulumi SDK, no SQL parser until a command needs it), so it starts about as fast as a bare
psycopg script. Each verb calls one engine method and prints its result.

Why one module of ~480 lines: eleven verbs, each a subparser and a short handler, read best side by side, and
every module split off would be imported by `--help` too (the start-up budget counts imports).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from .engine import migset
from .engine.connection import ConnectionSettings, mask_dsn
from .engine.engine import Engine, RunResult, VerifyReport
from .engine.errors import MigrationError, PromotionBlocked, SetError, UsageError
from .engine.ledger import LedgerState
from .engine.options import RunOptions
from .engine.planner import Gate, Plan, parse_target

VERSION = "0.2.0"
EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_DIFFERS = 0, 1, 2, 3
EXIT_CODES = "exit codes: 0 success; 1 error (one line `error: ...` on stderr); 2 usage; 3 verify/drift found differences"
DEFAULTS = RunOptions()

Handler = Callable[[argparse.Namespace], int]
NO_DSN = "Without --dsn or PGHOST it uses the local dev cluster of `make db-up`, starting it if needed."


def _connection_options() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("connection and set")
    g.add_argument("--dsn", default=None, help="libpq DSN or URL; unset parts come from PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE")
    g.add_argument("--set", dest="set_dir", default="migrations/app", help="migration set directory (default: migrations/app)")
    g.add_argument("--json", action="store_true", help="machine-readable output")
    g.add_argument("--quiet", action="store_true", help="no progress lines")
    return p


def _run_options() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("run options (default: the stack file's with --stack, else RunOptions())")
    g.add_argument(
        "--stack",
        default=None,
        metavar="NAME",
        help="the Pulumi stack that owns the database (dev, staging, prod): reads Pulumi.NAME.yaml for strict lint, lock waits, "
        "timeouts and the promotion gate; required to write to a database a stack owns",
    )
    g.add_argument("--project-dir", type=Path, default=Path("."), help="where Pulumi.yaml and Pulumi.NAME.yaml are (default: .)")
    g.add_argument("--ledger-schema", default=None, help=f"(default {DEFAULTS.ledger_schema})")
    g.add_argument(
        "--lock-wait", type=int, default=None, metavar="MS", help=f"wait for another applier's lock (default {DEFAULTS.lock_wait_ms})"
    )
    g.add_argument(
        "--lock-timeout",
        type=int,
        default=None,
        metavar="MS",
        help=f"DDL lock_timeout: how long a statement may queue for a table lock before a retry (default {DEFAULTS.lock_timeout_ms})",
    )
    g.add_argument(
        "--ddl-retries", type=int, default=None, metavar="N", help=f"retries after a DDL lock timeout (default {DEFAULTS.ddl_retries})"
    )
    g.add_argument("--statement-timeout", type=int, default=None, metavar="MS", help="per-statement limit (default 0 = none)")
    g.add_argument("--strict-lint", action="store_const", const=True, default=None, help="refuse unacknowledged lint findings (prod does)")
    return p


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m components.migrate",
        description="Apply, verify and roll back a PostgreSQL migration set.",
        epilog=EXIT_CODES,
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {VERSION}")
    conn, run = _connection_options(), _run_options()
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def verb(name: str, handler: Handler, help_: str, *parents: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_, description=help_, parents=list(parents), epilog=EXIT_CODES)
        sp.set_defaults(handler=handler)
        return sp

    sp = verb("new", _new, "write the next migration's up and down files (NNNN_NAME.sql, NNNN_NAME.down.sql)", conn)
    sp.add_argument("name", help="lower-case name: a-z, 0-9 and _ (the version is picked for you)")
    sp.add_argument("--from-drizzle", type=Path, default=None, metavar="FILE.sql", help="a drizzle-kit generated file as the up file")
    sp = verb(
        "check",
        _check,
        "check the set: files, journal, snapshots, statements; then replay it on a throwaway database and compare "
        f"every snapshot (no --dsn: on the dev cluster, started if needed). {NO_DSN}",
        conn,
    )
    sp.add_argument("files", nargs="*", type=Path, help="lint these migration files (what the pre-commit hook passes)")
    sp.add_argument("--offline", action="store_true", help="files only: connect to nothing, replay nothing")
    sp.add_argument(
        "--applied-ref", default=None, metavar="REF", help="git ref whose journal lists applied versions: their files must not change"
    )
    sp.add_argument("--strict-lint", action="store_true", help="refuse unacknowledged lint findings in FILES (what prod does)")
    verb("snapshot", _snapshot, f"apply the set to a throwaway database and write meta/ (the role needs CREATEDB). {NO_DSN}", conn)
    verb("status", _status, "what is applied, by whom, and what is pending or interrupted", conn, run)
    sp = verb("plan", _plan, "what apply (or rollback) would run, with its measured locks, live sizes and lint; no writes", conn, run)
    sp.add_argument("--to", dest="target", default=None, help="target version (default: latest; 0 = before the first)")
    sp.add_argument(
        "--format",
        choices=("text", "markdown", "json"),
        default="text",
        help="markdown: for a pull request comment (SQL, lock trace with live sizes, lint, drift, promotion gate); "
        "json: the same content for machines (--json is --format json)",
    )
    for name, help_ in (("verify", "compare the live schema with the snapshot of the applied version"), ("drift", "same as verify")):
        verb(name, _verify, help_, conn, run)
    sp = verb("apply", _apply, "apply pending migrations, each verified; resumes an interrupted one", conn, run)
    sp.add_argument("--to", dest="target", default=None, help="apply up to this version (default: latest)")
    sp = verb("rollback", _rollback, "run down migrations to a version (0 = before the first)", conn, run)
    sp.add_argument("--to", dest="target", required=True, help="the version to keep (0 = none)")
    sp = verb("resolve", _resolve, "clear the interrupted mark of a migration repaired by hand", conn, run)
    sp.add_argument("version", help="the interrupted version")
    sp = verb("adopt", _adopt, "record versions as applied without running them, if the schema matches their snapshot", conn, run)
    sp.add_argument("version", help="the version whose snapshot the database matches")
    sp.add_argument("--drizzle-dir", type=Path, default=None, help="the drizzle-kit migrations folder whose hashes the database recorded")
    return p


def _masked(value: Any) -> Any:
    """Every string of a payload with passwords masked (statements and literals can hold one)."""
    if isinstance(value, str):
        return mask_dsn(value)
    if isinstance(value, dict):
        return {k: _masked(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_masked(v) for v in value]
    return value


def _emit(args: argparse.Namespace, payload: dict[str, Any], text: str) -> None:
    print(json.dumps(_masked(payload), indent=2, default=str) if args.json else mask_dsn(text))


def _engine(args: argparse.Namespace, *, writes: bool = False) -> Engine:
    """The engine for one command: the stack file's rules when --stack is given, flags on top."""
    progress = None if (args.quiet or args.json) else (lambda msg: print(mask_dsn(msg), file=sys.stderr, flush=True))
    base, gate = RunOptions(), None
    if args.stack is not None:
        from .config import stack_file_settings

        settings = stack_file_settings(args.project_dir, args.stack)
        base = settings.migrations.options
        if settings.migrations.require_applied_in and writes:
            gate = _gate(args.project_dir, settings.migrations.require_applied_in)
    flags = {
        "ledger_schema": args.ledger_schema,
        "lock_wait_ms": args.lock_wait,
        "lock_timeout_ms": args.lock_timeout,
        "ddl_retries": args.ddl_retries,
        "statement_timeout_ms": args.statement_timeout,
        "strict_lint": args.strict_lint,
    }
    given = {k: v for k, v in flags.items() if v is not None}
    if args.stack is not None:
        _refuse_weaker(base, given, args.stack)
    options = replace(base, **given)
    # Not parsed at load: the plan parses the files it will run (all of them before any runs), an up-to-date run none.
    mset = migset.load(Path(args.set_dir), parse=False)
    return Engine(ConnectionSettings.from_dsn(args.dsn), mset, options, gate=gate, progress=progress)


def _refuse_weaker(rules: RunOptions, flags: dict[str, Any], stack: str) -> None:
    """With --stack, a flag may make a run stricter than the stack's rules, never looser."""
    looser = [
        f"--{name.replace('_ms', '').replace('_', '-')} {value} (the stack says {getattr(rules, name)})"
        for name, value in flags.items()
        if (name == "ledger_schema" and value != rules.ledger_schema)
        or (name in ("lock_timeout_ms", "lock_wait_ms") and value > getattr(rules, name))
        or (name == "statement_timeout_ms" and rules.statement_timeout_ms and not 0 < value <= rules.statement_timeout_ms)
    ]
    if looser:
        raise UsageError(
            f"--stack {stack}: {'; '.join(looser)} would loosen the stack's rules (Pulumi.{stack}.yaml). Nothing was run.",
            f"drop the flag, or change wishlist:migrations in Pulumi.{stack}.yaml through review.",
        )


def _gate(project_dir: Path, stack: str) -> Gate:
    """The promotion gate from the gate stack's `applied_migrations` output, read with the pulumi CLI."""
    cmd = ["pulumi", "stack", "output", "applied_migrations", "--stack", stack, "--json", "--non-interactive"]
    applied: Any = None
    try:
        proc = subprocess.run(cmd, cwd=project_dir, capture_output=True, text=True, timeout=120)
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        reason = lines[-1] if lines else f"exit {proc.returncode}"
        if proc.returncode == 0:
            applied = json.loads(proc.stdout)
    except (OSError, subprocess.TimeoutExpired, json.JSONDecodeError) as exc:
        reason = f"{type(exc).__name__}: {exc}"
    if not isinstance(applied, list):
        raise PromotionBlocked(
            f"this stack requires versions to be applied in stack {stack!r} first, and its outputs cannot be read "
            f"(`{' '.join(cmd)}`: {reason}). Nothing was run.",
            "run from the project directory with the Pulumi backend and passphrase of that stack configured (. ./scripts/env.sh), "
            "so that the promotion gate can be checked.",
        )
    return Gate(stack, {str(a["version"]): str(a["checksum"]) for a in applied if isinstance(a, dict)})


def _plan_text(plan: Plan) -> str:
    if not plan.steps:
        return f"nothing to do: at version {plan.current or 'none'}"
    lines = [f"current {plan.current or 'none'} -> target {plan.target or 'none'}: {len(plan.steps)} step(s)"]
    lines += [f"warning: {f.describe()}" for f in plan.findings]
    for step in plan.steps:
        resume = f", resumes at statement {step.resume_from + 1}" if step.resuming else ""
        lines.append(f"\n-- {step.direction} {step.migration.label}{'' if step.transactional else ' (outside a transaction)'}{resume}")
        lines.append(step.sql.rstrip())
        if step.direction == "up":
            lines += [f"-- lock: {i.describe()}" for i in plan.impacts if i.version == step.migration.version]
    return "\n".join(lines)


def interrupted_line(state: LedgerState, mset: migset.MigrationSet) -> list[str]:
    """One line per interrupted run outside a transaction: where it stopped and how apply resumes."""
    lines = []
    files = {m.version: m for m in mset.migrations}
    for r in state.started:
        m = files.get(r.version)
        total = len(m.statements() if r.direction == "up" else m.down_statements()) if m else 0
        lines.append(
            f"interrupted: {r.version}_{r.name} ({r.direction}, outside a transaction) stopped after statement "
            f"{r.statements_done}/{total}; statements 1-{r.statements_done} are committed; "
            f"`{'apply' if r.direction == 'up' else 'rollback'}` resumes at statement {r.statements_done + 1}"
        )
    return lines


def _status_text(state: LedgerState, plan: Plan, mset: migset.MigrationSet) -> str:
    rows = [("version", "name", "applied at", "by", "ms", "checksum")]
    files = {m.version: m for m in mset.migrations}
    for r in state.rows:
        f = files.get(r.version)
        check = "missing file" if f is None else "ok" if f.checksum == r.checksum else "EDITED"
        rows.append(
            (r.version, r.name, r.applied_at[:19], r.applied_by, str(r.duration_ms), check if r.status == "applied" else "INTERRUPTED")
        )
    for step in plan.steps:
        if not step.resuming and step.direction == "up":
            rows.append((step.migration.version, step.migration.name, "pending", "", "", "-"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    table = "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows)
    owner = f"owner stack: {state.owner.stack}" if state.owner else "owner stack: none"
    return "\n".join([f"database {state.identity}, {owner}", table, *interrupted_line(state, mset)])


def _report_text(report: VerifyReport) -> str:
    if report.ok:
        return f"ok: live schema matches version {report.version or 'none'} ({report.fingerprint})"
    lines = [f"live schema differs from version {report.version or 'none'} in {len(report.differences)} object(s):"]
    lines += [f"  - {d.describe()}" for d in report.differences]
    return "\n".join(lines)


def _scratch_server(args: argparse.Namespace) -> ConnectionSettings:
    """Where snapshot and check make their throwaway database: --dsn or PG* if given, else the local dev cluster."""
    if args.dsn or os.environ.get("PGHOST") or os.environ.get("PGSERVICE"):
        return ConnectionSettings.from_dsn(args.dsn)
    try:
        from devtools import localpg  # only here: every other path starts without it
    except ImportError:
        raise MigrationError(
            "no --dsn, no PGHOST, and the dev tools (devtools/localpg.py) are not importable from here.",
            "run from the repository root for the local dev cluster, or pass --dsn for another server (the role needs CREATEDB).",
        ) from None
    try:
        cluster = localpg.dev_cluster()
    except (RuntimeError, OSError, SystemExit, subprocess.CalledProcessError) as exc:
        raise MigrationError(
            f"the local dev cluster did not start ({str(exc).strip().splitlines()[0] if str(exc).strip() else exc!r}).",
            "run `make db-up` and read its error, or pass --dsn for another server.",
        ) from None
    return ConnectionSettings.from_dsn(cluster.admin_dsn())


def _new(args: argparse.Namespace) -> int:
    from .engine.authoring import new_migration, read_drizzle

    up_sql = None if args.from_drizzle is None else read_drizzle(args.from_drizzle)
    up, down = new_migration(Path(args.set_dir), args.name, up_sql=up_sql)
    review = f"review {down.name}: it is a generated skeleton that `check` refuses until you do" if up_sql is not None else "edit both"
    _emit(
        args,
        {"up": str(up), "down": str(down)},
        f"wrote {up}\nwrote {down}\nnext: {review}, then `make snapshot`, `make check` and `make preview`.",
    )
    return EXIT_OK


def _check(args: argparse.Namespace) -> int:
    from .engine.authoring import refuse_edits_of_applied, refuse_unreviewed

    set_dir = Path(args.set_dir)
    applied = [] if args.applied_ref is None else refuse_edits_of_applied(set_dir, args.applied_ref)
    mset = migset.load(set_dir)  # parses every file: a syntax error or transaction control is refused here
    refuse_unreviewed(migset.scan(set_dir))
    findings = _lint_files(mset, args.files, strict=args.strict_lint)
    stale_traces = migset.stale_traces(mset)
    if stale_traces:
        raise SetError(
            "the lock trace in meta/ does not describe the files: " + "; ".join(stale_traces) + ".",
            migset.SNAPSHOT_HINT.format(set_dir=set_dir),
        )
    if not args.offline:
        from .engine.snapshot import replay

        stale = replay(_scratch_server(args), mset)
        if stale:
            raise SetError(
                f"the snapshot of {', '.join(stale)} is not what the files give on a fresh database.",
                migset.SNAPSHOT_HINT.format(set_dir=set_dir),
            )
    how = "files only" if args.offline else "and replay on a fresh database"
    text = f"ok: {len(mset.migrations)} migration(s) match the journal and snapshots, {how} ({', '.join(mset.versions)})"
    if applied:
        text += f"; applied at {args.applied_ref}, unchanged: {', '.join(applied)}"
    text = "\n".join([*(f"warning: {f}" for f in findings), text])
    _emit(args, {"ok": True, "versions": mset.versions, "applied": applied, "findings": findings}, text)
    return EXIT_OK


def _lint_files(mset: migset.MigrationSet, files: list[Path], *, strict: bool) -> list[str]:
    """Lint findings of the up files among `files`; with strict, an unacknowledged one is an error."""
    if not files:
        return []
    from .engine.errors import LintRefused
    from .engine.lint import lint

    wanted = {p.resolve() for p in files}
    findings = [f for m in mset.migrations if Path(m.up_file).resolve() in wanted for f in lint(m)]
    open_ = [f for f in findings if not f.acknowledged]
    if strict and open_:
        raise LintRefused(
            "; ".join(f.describe() for f in open_) + ".",
            "change the statement (see docs/runbook.md), or accept the risk with `-- migrate:allow <rule>` at the top of the file.",
        )
    return [f.describe() for f in findings]


def _snapshot(args: argparse.Namespace) -> int:
    from .engine.snapshot import generate

    set_dir = Path(args.set_dir)
    path = generate(_scratch_server(args), set_dir)
    print(f"wrote {path} and {len(migset.scan(set_dir))} snapshot(s)")
    return EXIT_OK


def _status(args: argparse.Namespace) -> int:
    engine = _engine(args)
    state, plan = engine.status()
    payload = {
        "database": state.identity,
        "owner": state.owner.__dict__ if state.owner else None,
        "applied": [r.as_dict() for r in state.rows],
        "pending": plan.pending,
        "interrupted": interrupted_line(state, engine.mset),
    }
    _emit(args, payload, _status_text(state, plan, engine.mset))
    return EXIT_OK


def _plan(args: argparse.Namespace) -> int:
    engine = _engine(args)
    target = parse_target(engine.mset, args.target)
    fmt = "json" if args.json else args.format
    if fmt == "text":
        print(mask_dsn(_plan_text(engine.plan(target))))
        return EXIT_OK
    from .engine.report import PlanReport

    plan, drift = engine.observe(target)
    gate, note = _plan_gate(args)
    report = PlanReport(engine.mset.name, plan, drift, gate, note)
    print(json.dumps(_masked(report.as_dict()), indent=2, default=str) if fmt == "json" else report.markdown())
    return EXIT_OK


def _plan_gate(args: argparse.Namespace) -> tuple[Gate | None, str | None]:
    """The promotion gate of --stack for the plan; when its outputs cannot be read, the plan says so instead of failing."""
    if args.stack is None:
        return None, None
    from .config import stack_file_settings

    required = stack_file_settings(args.project_dir, args.stack).migrations.require_applied_in
    if not required:
        return None, f"no promotion gate for stack {args.stack}"
    try:
        return _gate(args.project_dir, required), None
    except PromotionBlocked as exc:
        return None, f"not checked: {exc.problem}"


def _verify(args: argparse.Namespace) -> int:
    report = _engine(args).verify()
    _emit(args, report.as_dict(), _report_text(report))
    return EXIT_OK if report.ok else EXIT_DIFFERS


def _ran(result: RunResult, verb: str, idle: str) -> str:
    if not result.ran:
        return f"{idle}: at version {result.current or 'none'}"
    return f"{verb} {', '.join(r['version'] for r in result.ran)}; now at {result.current or 'none'}"


def _apply(args: argparse.Namespace) -> int:
    engine = _engine(args, writes=True)
    result = engine.migrate_to(parse_target(engine.mset, args.target))
    _emit(args, result.as_dict(), _ran(result, "applied", "nothing to apply") + f", verified ({result.fingerprint})")
    return EXIT_OK


def _rollback(args: argparse.Namespace) -> int:
    engine = _engine(args, writes=True)
    result = engine.migrate_to(parse_target(engine.mset, args.target), allow_rollback=True, allow_forward=False)
    _emit(args, result.as_dict(), _ran(result, "rolled back", "nothing to roll back"))
    return EXIT_OK


def _resolve(args: argparse.Namespace) -> int:
    _engine(args, writes=True).resolve(str(args.version))
    print(f"cleared the interrupted mark of {args.version}")
    return EXIT_OK


def _adopt(args: argparse.Namespace) -> int:
    from .engine.adopt import adopt

    engine = _engine(args, writes=True)
    result = adopt(engine, parse_target(engine.mset, args.version), args.drizzle_dir)
    _emit(
        args,
        result.as_dict(),
        f"adopted {', '.join(r['version'] for r in result.ran)} without running them; verified ({result.fingerprint})",
    )
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        handler: Handler = args.handler
        return handler(args)
    except MigrationError as exc:
        print(f"error: {mask_dsn(str(exc))}", file=sys.stderr)
        if getattr(args, "json", False):
            print(json.dumps({"ok": False, "code": exc.code, "problem": mask_dsn(exc.problem), "fix": exc.fix}))
        return EXIT_ERROR
    except Exception as exc:
        from .config import ConfigError

        if not isinstance(exc, ConfigError):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(
            "error: interrupted. A migration running in a transaction was rolled back by the server; one running outside a "
            "transaction stopped after its last completed statement: `status` shows where, and `apply` resumes it.",
            file=sys.stderr,
        )
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
