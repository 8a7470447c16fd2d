"""Section 8: the README's migration loop (new, snapshot, check, preview) in a copy of the project, with its own
pulumi backend and dev cluster, against the start-up every step pays (make + scripts/env.sh + python + psycopg)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.measure import fmt
from devtools import localpg
from devtools.pulumi_project import loop_copy, pulumi_bin

UP_SQL = "CREATE TABLE wishlist_price_alerts (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), target numeric(10,2) NOT NULL);\n"


def run_loop(repeat: int) -> Iterator[str]:

    if not (pulumi_bin() / "pulumi").exists():
        yield f"Not measured: {pulumi_bin()}/pulumi is not built on this machine (scripts/setup.sh builds it)."
        return
    root = Path(tempfile.mkdtemp(prefix="wishlist-bench-loop-"))
    root.chmod(0o755)
    copy = loop_copy(root)
    set_dir = copy.workdir / "migrations/app"
    try:
        copy.sh("make snapshot")  # creates and starts the copy's dev cluster once: a warm machine from here on
        samples: dict[str, list[float]] = {}

        def step(command: str) -> Any:
            proc, seconds = copy.sh(command)
            samples.setdefault(command, []).append(seconds * 1000)
            return proc

        floor = "bash -c '. ./scripts/env.sh && python -c \"import psycopg\"'"
        for _ in range(repeat):
            step(floor)
            step("make migration NAME=wishlist_price_alerts")
            up = set_dir / "0008_wishlist_price_alerts.sql"
            up.write_text(up.read_text() + UP_SQL)
            (set_dir / "0008_wishlist_price_alerts.down.sql").write_text("DROP TABLE wishlist_price_alerts;\n")
            step("make snapshot")
            step("make check")
            step("make preview")
            for path in set_dir.glob("0008_*"):
                path.unlink()
            (set_dir / "meta/0008_snapshot.json").unlink()
            copy.sh("make snapshot")
        base = sorted(samples[floor])[len(samples[floor]) // 2]
        yield "| what | median (min, max) | ratio to floor |\n|---|---|---|"
        for command, values in samples.items():
            ratio = "" if command == floor else f"{sorted(values)[len(values) // 2] / base:.2f}x"
            name = "floor: . scripts/env.sh && python -c 'import psycopg'" if command == floor else command
            yield f"| {name} | {fmt(values)} | {ratio} |"
    finally:
        localpg.Cluster(root / "pg" / "dev", int(copy.env["WISHLIST_DEV_PGPORT"]), "").destroy()
        shutil.rmtree(root, ignore_errors=True)
