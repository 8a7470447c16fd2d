"""The README's "Add the next migration", run as written in a fresh copy of the project: its own pulumi backend and
its own dev cluster (WISHLIST_PGROOT / WISHLIST_DEV_PGPORT), never the shared one on 55432."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from components.engine import migset
from devtools import localpg
from devtools.pulumi_project import PROJECT_FILES, Project, cache_dir, pulumi_env
from tests.conftest import REPO

LOOP_FILES = (*PROJECT_FILES, "Makefile", "scripts", "devtools", "versions.env", "requirements.lock", "pyproject.toml", "README.md")
UP_SQL = (
    "CREATE TABLE wishlist_price_alerts (\n  id uuid PRIMARY KEY DEFAULT gen_random_uuid(),\n  target_price numeric(10, 2) NOT NULL\n);\n"
)
DOWN_SQL = "DROP TABLE wishlist_price_alerts;\n"


def readme_loop(readme: str) -> list[str]:
    """The commands of the README's "Add the next migration" block, comments dropped."""
    section = readme.split("### Add the next migration", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block, "the README's 'Add the next migration' section has no bash block"
    return [line.split("  #", 1)[0].strip() for line in block.group(1).splitlines() if line.strip()]


@dataclass
class Copy:
    workdir: Path
    env: dict[str, str]

    def sh(self, command: str) -> tuple[subprocess.CompletedProcess[str], float]:
        t0 = time.perf_counter()
        proc = subprocess.run(["bash", "-c", command], cwd=self.workdir, env=self.env, text=True, capture_output=True, timeout=600)
        elapsed = time.perf_counter() - t0
        assert proc.returncode == 0, f"`{command}` failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
        return proc, elapsed


def loop_copy(root: Path) -> Copy:
    """A copy of the project whose `make` targets use a private backend and a private dev cluster."""
    workdir = root / "project"
    workdir.mkdir(parents=True)
    for name in LOOP_FILES:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, workdir / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(src, workdir / name)
    stack_file = workdir / "Pulumi.dev.yaml"  # its salt belongs to scripts/env.sh's passphrase; this copy has its own
    stack_file.write_text(
        "".join(line for line in stack_file.read_text().splitlines(keepends=True) if not line.startswith("encryptionsalt:"))
    )
    pgroot = root / "pg"
    pgroot.mkdir()
    pgroot.chmod(0o755)
    port = localpg.free_port()
    env = pulumi_env(
        root,
        {
            "WISHLIST_CACHE": str(cache_dir()),
            "WISHLIST_PGROOT": str(pgroot),
            "WISHLIST_DEV_PGPORT": str(port),
            "WISHLIST_SKIP_SETUP": "1",  # setup.sh would rebuild the shared venv if this branch's requirements.lock differs
        },
    )
    project = Project(workdir, env)
    project.run("stack", "init")
    project.run("config", "set", "--path", "wishlist:db.port", str(port))
    return Copy(workdir, env)


@pytest.fixture(scope="module")
def copy() -> Iterator[Copy]:
    root = Path(tempfile.mkdtemp(prefix="wishlist-e2e-loop-"))  # the postgres user must reach the cluster's directory
    root.chmod(0o755)
    c = loop_copy(root)
    try:
        yield c
    finally:
        localpg.Cluster(root / "pg" / "dev", int(c.env["WISHLIST_DEV_PGPORT"]), "").destroy()
        shutil.rmtree(root, ignore_errors=True)


def test_the_readme_loop_new_edit_snapshot_check_preview(copy: Copy) -> None:
    commands = readme_loop((copy.workdir / "README.md").read_text())
    new, edit, snapshot, preview = commands
    assert new == "make migration NAME=wishlist_price_alerts"
    assert edit.startswith("$EDITOR migrations/app/0008_wishlist_price_alerts.sql")
    assert (snapshot, preview) == ("make snapshot", "make preview")
    timings: dict[str, float] = {}

    out, timings[new] = copy.sh(new)
    set_dir = copy.workdir / "migrations/app"
    up, down = set_dir / "0008_wishlist_price_alerts.sql", set_dir / "0008_wishlist_price_alerts.down.sql"
    assert up.exists() and down.exists(), out.stdout
    # The edit: what a person types under the generated header comments.
    up.write_text(up.read_text() + UP_SQL)
    down.write_text(down.read_text() + DOWN_SQL)

    _, timings[snapshot] = copy.sh(snapshot)
    assert migset.load(set_dir).latest == "0008"
    out, timings["make check"] = copy.sh("make check")  # what the commit hook runs; the README names it
    assert "0007, 0008" in out.stdout
    out, timings[preview] = copy.sh(preview)
    assert '"0008"' in out.stdout and "CREATE TABLE wishlist_price_alerts (" in out.stdout, out.stdout
    print("\n".join(f"{cmd}: {seconds:.2f} s" for cmd, seconds in timings.items()))
