"""Section 7: the real pulumi CLI with nothing to do, against the same CLI on a stack with no resources."""

from __future__ import annotations

import json
import secrets
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from psycopg import sql

from bench.measure import fmt, goal
from devtools.pulumi_project import ROLES, Project, dev_project, pulumi_bin, pulumi_env


def _time(project: Project, args: tuple[str, ...], repeat: int) -> list[float]:
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        project.run(*args)
        samples.append((time.perf_counter() - t0) * 1000)
    return samples


def run_e2e(bench: Any, repeat: int) -> Iterator[str]:

    if not (pulumi_bin() / "pulumi").exists():
        yield f"Not measured: {pulumi_bin()}/pulumi is not built on this machine (scripts/setup.sh builds it)."
        return
    root = Path(tempfile.mkdtemp(prefix="wishlist-bench-e2e-"))
    db = bench.new_db()
    passwords = {r: secrets.token_hex(12) for r in ROLES}
    try:
        project = dev_project(
            root / "dev", port=db.port, dbname=db.dbname, admin_password=bench.cluster.admin_password, role_passwords=passwords
        )
        project.run("up", "--yes")
        empty_dir = root / "empty" / "project"
        empty_dir.mkdir(parents=True)
        (empty_dir / "Pulumi.yaml").write_text("name: empty\nruntime:\n  name: python\n")
        (empty_dir / "__main__.py").write_text("import pulumi  # noqa: F401\n")
        empty = Project(empty_dir, pulumi_env(root / "empty", {}))
        empty.run("stack", "init")
        empty.run("up", "--yes")
        resources = len(json.loads(project.run("stack", "export").stdout)["deployment"]["resources"])
        yield "| what | median (min, max) | ratio to floor |\n|---|---|---|"
        for verb in (("preview",), ("up", "--yes")):
            floor = _time(empty, verb, repeat)
            ours = _time(project, verb, repeat)
            yield f"| floor: pulumi {' '.join(verb)} on a stack with no resources | {fmt(floor)} | |"
            yield f"| pulumi {' '.join(verb)}, dev stack, nothing to do ({resources} resources in state) | {fmt(ours)} | {sorted(ours)[len(ours) // 2] / sorted(floor)[len(floor) // 2]:.2f}x |"
            goal(f"pulumi {verb[0]} with nothing to do", "the same on an empty stack", floor, ours, 1.5)
        project.run("destroy", "--yes")
    finally:
        with bench.admin.connect() as conn:
            for role in ROLES:
                conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))
        shutil.rmtree(root, ignore_errors=True)
