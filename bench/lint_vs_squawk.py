"""Our lint (parse tree + measured trace + live sizes) against squawk-cli on bench/lint_corpus.py: `python -m bench.lint_vs_squawk`.

Each case runs after the corpus's base migration on a database whose tables hold rows (one stays empty), exactly as
`plan` would see it in production. squawk reads the same SQL text; transactional files are linted with
`--assume-in-transaction`, as the engine runs them. Prints a table per case and the totals, and writes them to
bench/results/lint.md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import tempfile
from collections import Counter
from pathlib import Path

from psycopg import sql

from bench.lint_corpus import BASE, CASES, NT, ROWS, Case
from components.engine import migset
from components.engine.connection import ConnectionSettings
from components.engine.engine import Engine
from components.engine.errors import MigrationError
from components.engine.snapshot import generate
from devtools import localpg

REPO = Path(__file__).resolve().parent.parent
# squawk rules left out of the comparison: the engine sets lock_timeout/statement_timeout itself and owns
# transactions; the others are style or idempotency advice, not locking or online safety.
EXCLUDED = frozenset(
    {
        "require-timeout-settings",
        "require-lock-timeout",
        "require-statement-timeout",
        "transaction-nesting",
        "prefer-robust-stmts",
        "prefer-text-field",
        "prefer-bigint-over-int",
        "prefer-bigint-over-smallint",
        "prefer-big-int",
        "prefer-identity",
        "prefer-timestamptz",
        "ban-char-field",
        "require-table-schema",
    }
)


def ours(admin: ConnectionSettings, base_dir: Path, work: Path, case: Case) -> list[str]:
    """Rules our lint raises for the case on a database with rows (or why the engine refuses the file outright)."""
    set_dir = work / case.name
    shutil.copytree(base_dir, set_dir)
    (set_dir / "0002_case.sql").write_text(case.sql + "\n")
    try:
        generate(admin, set_dir)
    except MigrationError as exc:
        return [f"refused by snapshot ({exc.problem.split(': ', 1)[-1][:60]})"]
    name = f"lint_{case.name}"[:60]
    with admin.connect() as conn:
        conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE lint_template").format(sql.Identifier(name)))
    try:
        plan = Engine(admin.with_database(name), migset.load(set_dir)).plan("0002")
        return sorted({f.rule for f in plan.findings})
    finally:
        with admin.connect() as conn:
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


def squawk(binary: str, work: Path) -> tuple[dict[str, list[str]], Counter[str]]:
    """Rules squawk raises per case (excluded ones removed), and every rule it raised with its count."""
    files = work / "squawk"
    files.mkdir()
    groups: dict[bool, list[str]] = {True: [], False: []}
    for case in CASES:
        path = files / f"{case.name}.sql"
        path.write_text(case.sql + "\n")
        groups[not case.sql.startswith(NT)].append(str(path))
    found: dict[str, list[str]] = {c.name: [] for c in CASES}
    seen: Counter[str] = Counter()
    for in_txn, paths in groups.items():
        cmd = [binary, "--reporter", "json", "--pg-version", "15", *(["--assume-in-transaction"] if in_txn else []), *paths]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
        for item in json.loads(proc.stdout or "[]"):
            rule, case_name = item["rule_name"], Path(item["file"]).stem
            seen[rule] += 1
            if rule not in EXCLUDED and rule not in found[case_name]:
                found[case_name].append(rule)
    return found, seen


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.lint_vs_squawk", description=__doc__)
    p.add_argument("--squawk", default="squawk", help="the squawk binary (PyPI squawk-cli)")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "lint.md")
    args = p.parse_args(argv)
    version = subprocess.run([args.squawk, "--version"], capture_output=True, text=True, check=True).stdout.strip()
    work = Path(tempfile.mkdtemp(prefix="wishlist-lint-bench-"))
    with localpg.temp_cluster("wishlist-lint-bench-pg-") as cluster:
        admin = ConnectionSettings.from_dsn(cluster.admin_dsn())
        base_dir = work / "base"
        base_dir.mkdir()
        (base_dir / "0001_base.sql").write_text(BASE)
        generate(admin, base_dir)
        with admin.connect() as conn:
            conn.execute("CREATE DATABASE lint_template")
        template = admin.with_database("lint_template")
        Engine(template, migset.load(base_dir)).apply()
        with template.connect() as conn:
            for statement in ROWS:
                conn.execute(statement.encode())
        results = {case.name: ours(admin, base_dir, work, case) for case in CASES}
    theirs, seen = squawk(args.squawk, work)
    shutil.rmtree(work, ignore_errors=True)

    lines = [
        f"{len(CASES)} cases ({sum(c.label == 'danger' for c in CASES)} dangerous, {sum(c.label == 'safe' for c in CASES)} safe); "
        f"{version}; PostgreSQL {localpg.pg_bindir()}",
        "",
        "| case | label | our lint | squawk |",
        "|---|---|---|---|",
    ]
    totals = Counter[str]()
    for case in CASES:
        a, b = results[case.name], theirs[case.name]
        for who, flagged in (("ours", bool(a)), ("squawk", bool(b))):
            if case.label == "danger":
                totals[f"{who} caught"] += flagged
            else:
                totals[f"{who} false alarms"] += flagged
        lines.append(f"| {case.name} | {case.label} | {', '.join(a) or '-'} | {', '.join(b) or '-'} |")
    danger = sum(c.label == "danger" for c in CASES)
    safe = len(CASES) - danger
    summary = [
        "",
        "| | our lint | squawk |",
        "|---|---|---|",
        f"| dangerous caught (of {danger}) | {totals['ours caught']} ({100 * totals['ours caught'] / danger:.0f} %) | "
        f"{totals['squawk caught']} ({100 * totals['squawk caught'] / danger:.0f} %) |",
        f"| false alarms (of {safe} safe) | {totals['ours false alarms']} | {totals['squawk false alarms']} |",
        "",
        "squawk rules seen (count; excluded ones marked): "
        + ", ".join(f"{r} {n}{' (excluded)' if r in EXCLUDED else ''}" for r, n in sorted(seen.items())),
    ]
    text = "\n".join(lines + summary)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
