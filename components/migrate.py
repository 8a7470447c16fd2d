"""Operator CLI over the migration engine: `python -m components.migrate <command> --dsn DSN [--set DIR]`.

Imports only the engine (no Pulumi SDK), so it starts about as fast as a bare psycopg script.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .engine import migset
from .engine.connection import ConnectionSettings, mask_dsn
from .engine.engine import Engine, Plan, VerifyReport
from .engine.errors import MigrationError
from .engine.ledger import LedgerState
from .engine.snapshot import generate

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_DIFFERS = 0, 1, 2, 3
COMMANDS = ("check", "plan", "status", "apply", "verify", "rollback", "drift", "snapshot", "resolve", "adopt")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m components.migrate", description="Apply, verify and roll back a PostgreSQL migration set.")
    p.add_argument("command", choices=COMMANDS)
    p.add_argument("version", nargs="?", help="for `resolve`: the interrupted version; for `adopt`: the version the database matches")
    p.add_argument(
        "--drizzle-dir", type=Path, default=None, help="for `adopt`: the drizzle-kit migrations folder whose hashes the database recorded"
    )
    p.add_argument("--dsn", default=None, help="libpq DSN or URL; unset parts come from PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE")
    p.add_argument("--set", dest="set_dir", default="migrations/app", help="migration set directory (default: migrations/app)")
    p.add_argument(
        "--to", dest="target", default=None, help="target version: apply up to it, or roll back down to it (0 = before the first)"
    )
    p.add_argument(
        "--stack", default=None, help="owner identity recorded in the ledger (e.g. wishlist-infra/dev); refuses a database owned by another"
    )
    p.add_argument("--ledger-schema", default="migration_ledger")
    p.add_argument(
        "--lock-timeout", type=int, default=60_000, metavar="MS", help="wait at most this long for the migration lock and for table locks"
    )
    p.add_argument("--statement-timeout", type=int, default=0, metavar="MS", help="per-statement limit (0 = none)")
    p.add_argument("--strict-lint", action="store_true", help="refuse unacknowledged lint findings (what prod does)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    return p


def _emit(args: argparse.Namespace, payload: dict[str, Any], text: str) -> None:
    print(json.dumps(payload, indent=2, default=str) if args.json else text)


def _plan_text(plan: Plan) -> str:
    if not plan.steps:
        return f"nothing to do: at version {plan.current or 'none'}"
    lines = [f"current {plan.current or 'none'} -> target {plan.target or 'none'}: {len(plan.steps)} step(s)"]
    lines += [f"warning: {f.describe()}" for f in plan.findings]
    for step in plan.steps:
        m = step.migration
        body = m.up_sql if step.direction == "up" else (m.down_sql or "")
        lines.append(f"\n-- {step.direction} {m.label}{'' if m.transactional else ' (outside a transaction)'}")
        lines.append(body.rstrip())
    return "\n".join(lines)


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
        rows.append((step.migration.version, step.migration.name, "pending", "", "", "-"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    table = "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows)
    owner = f"owner stack: {state.owner.stack}" if state.owner else "owner stack: none"
    return f"database {state.identity}, {owner}\n{table}"


def _report_text(report: VerifyReport) -> str:
    if report.ok:
        return f"ok: live schema matches version {report.version or 'none'} ({report.fingerprint})"
    lines = [f"live schema differs from version {report.version or 'none'} in {len(report.differences)} object(s):"]
    lines += [f"  - {d.describe()}" for d in report.differences]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    set_dir = Path(args.set_dir)
    if args.command == "snapshot":
        settings = ConnectionSettings.from_dsn(args.dsn)
        path = generate(settings, set_dir)
        print(f"wrote {path} and {len(migset.scan(set_dir))} snapshot(s)")
        return EXIT_OK
    mset = migset.load(set_dir)
    if args.command == "check":
        _emit(
            args,
            {"ok": True, "versions": mset.versions},
            f"ok: {len(mset.migrations)} migration(s) match the journal and snapshots ({', '.join(mset.versions)})",
        )
        return EXIT_OK
    progress = None if (args.quiet or args.json) else (lambda msg: print(msg, file=sys.stderr, flush=True))
    engine = Engine(
        ConnectionSettings.from_dsn(args.dsn),
        mset,
        stack=args.stack,
        ledger_schema=args.ledger_schema,
        lock_timeout_ms=args.lock_timeout,
        statement_timeout_ms=args.statement_timeout,
        strict_lint=args.strict_lint,
        progress=progress,
    )
    if args.command == "status":
        state, plan = engine.status()
        payload = {
            "database": state.identity,
            "owner": state.owner.__dict__ if state.owner else None,
            "applied": [r.as_dict() for r in state.rows],
            "pending": plan.pending,
        }
        _emit(args, payload, _status_text(state, plan, mset))
        return EXIT_OK
    if args.command == "plan":
        plan = engine.plan(args.target or "latest")
        _emit(args, plan.as_dict(), _plan_text(plan))
        return EXIT_OK
    if args.command in ("verify", "drift"):
        report = engine.verify()
        _emit(args, report.as_dict(), _report_text(report))
        return EXIT_OK if report.ok else EXIT_DIFFERS
    if args.command == "apply":
        result = engine.apply(args.target or "latest")
        text = (
            f"applied {', '.join(r['version'] for r in result.ran)}; now at {result.current}"
            if result.ran
            else f"nothing to apply: at version {result.current or 'none'}"
        ) + f", verified ({result.fingerprint})"
        _emit(args, result.as_dict(), text)
        return EXIT_OK
    if args.command == "rollback":
        if args.target is None:
            raise MigrationError("rollback needs --to VERSION (0 = before the first migration).", "e.g. `rollback --to 0`.")
        result = engine.rollback(args.target)
        text = (
            f"rolled back {', '.join(r['version'] for r in result.ran)}; now at {result.current or 'none'}"
            if result.ran
            else f"nothing to roll back: at version {result.current or 'none'}"
        )
        _emit(args, result.as_dict(), text)
        return EXIT_OK
    if args.command == "adopt":
        if not args.version:
            raise MigrationError("adopt needs the VERSION whose snapshot the database matches.", "e.g. `adopt 0007`.")
        result = engine.adopt(args.version, args.drizzle_dir)
        _emit(
            args,
            result.as_dict(),
            f"adopted {', '.join(r['version'] for r in result.ran)} without running them; verified ({result.fingerprint})",
        )
        return EXIT_OK
    if args.command == "resolve":
        if not args.version:
            raise MigrationError("resolve needs the interrupted VERSION.", "e.g. `resolve 0008`.")
        engine.resolve(args.version)
        print(f"cleared the interrupted mark of {args.version}")
        return EXIT_OK
    raise AssertionError(args.command)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except MigrationError as exc:
        print(f"error: {mask_dsn(str(exc))}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("error: interrupted; a transactional migration in progress was rolled back by the server.", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
