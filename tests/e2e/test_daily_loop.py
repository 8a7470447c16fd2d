"""The README's "Add the next migration", run as written in a fresh copy of the project: its own pulumi backend and
its own dev cluster (WISHLIST_PGROOT / WISHLIST_DEV_PGPORT), never the shared one on 55432."""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from components.engine import migset
from devtools import localpg
from devtools.pulumi_project import Copy, loop_copy

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
    # The diff shows the new version and its checksum; the provider's messages (stderr under --diff) show its SQL.
    assert '"0008"' in out.stdout and "  | CREATE TABLE wishlist_price_alerts (" in out.stderr, out.stdout + out.stderr
    print("\n".join(f"{cmd}: {seconds:.2f} s" for cmd, seconds in timings.items()))
