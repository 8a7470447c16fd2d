"""The daily loop against real PostgreSQL: snapshot and check without a DSN, the commit hook, a drizzle-kit file."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from components.engine import catalog as cat
from components.engine import migset
from components.engine.connection import ConnectionSettings
from components.engine.engine import Engine
from components.engine.snapshot import generate
from devtools import localpg
from tests.conftest import APP_SET, REPO
from tests.dbs import drop_database
from tests.unit.test_new_migration import DRIZZLE

PRICE_ALERTS = "CREATE TABLE wishlist_price_alerts (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), target numeric(10,2) NOT NULL);\n"


def cli(*args: str, env: dict[str, str], cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "components.migrate", *args], cwd=cwd, env=env, text=True, capture_output=True, timeout=120
    )


@pytest.fixture(scope="module")
def dev_env() -> Iterator[dict[str, str]]:
    """An environment whose `dev cluster` is a private one on a free port, never the shared 55432."""
    root = Path(tempfile.mkdtemp(prefix="wishlist-devpg-"))  # not under /tmp/pytest-of-root: the postgres user must reach it
    root.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "WISHLIST_"))}
    env |= {"WISHLIST_PGROOT": str(root), "WISHLIST_DEV_PGPORT": str(localpg.free_port())}
    try:
        yield env
    finally:
        localpg.Cluster(root / "dev", int(env["WISHLIST_DEV_PGPORT"]), "").destroy()
        shutil.rmtree(root, ignore_errors=True)


def test_snapshot_and_check_need_no_dsn_they_start_the_dev_cluster(dev_env: dict[str, str], set_copy: Path) -> None:
    (set_copy / "0008_wishlist_price_alerts.sql").write_text(PRICE_ALERTS)
    snap = cli("snapshot", "--set", str(set_copy), env=dev_env)
    assert snap.returncode == 0, snap.stderr
    assert migset.load(set_copy).latest == "0008"
    ok = cli("check", "--set", str(set_copy), env=dev_env)
    assert ok.returncode == 0 and "replay on a fresh database" in ok.stdout, ok.stderr
    # Only throwaway databases were made: the dev database holds nothing of the set.
    port, pw = dev_env["WISHLIST_DEV_PGPORT"], localpg.dev_secrets(Path(dev_env["WISHLIST_PGROOT"]) / "dev")["WISHLIST_ADMIN_PASSWORD"]
    with ConnectionSettings.from_dsn(f"host=127.0.0.1 port={port} dbname=wishlist user=wishlist_admin password={pw}").connect() as conn:
        assert conn.execute("SELECT to_regclass('wishlist_items')").fetchone() == (None,)
        assert conn.execute("SELECT count(*) FROM pg_database WHERE datname LIKE 'wishlist_snapshot_%'").fetchone() == (0,)


def test_check_replays_and_names_a_stale_snapshot(admin: ConnectionSettings, set_copy: Path) -> None:
    """A snapshot whose journal hash was redone by hand no longer matches what the files give."""
    import json

    snap_path = set_copy / "meta/0007_snapshot.json"
    snap = json.loads(snap_path.read_text())
    snap["catalog"].pop(next(iter(snap["catalog"])))
    snap["fingerprint"] = cat.fingerprint(snap["catalog"])
    snap_path.write_text(json.dumps(snap))
    journal = json.loads((set_copy / "meta/_journal.json").read_text())
    journal["entries"][0]["snapshot"]["sha256"] = migset.sha256_hex(snap_path.read_bytes())
    (set_copy / "meta/_journal.json").write_text(json.dumps(journal))
    env = {**os.environ, "PGPASSWORD": admin.password or ""}
    dsn = f"host=127.0.0.1 port={admin.port} dbname=wishlist user={admin.user} sslmode=disable"
    proc = cli("check", "--set", str(set_copy), "--dsn", dsn, env=env)
    assert proc.returncode == 1 and "the snapshot of 0007 is not what the files give" in proc.stderr, proc.stderr


def _hook_entry() -> list[str]:
    config = yaml.safe_load((REPO / ".pre-commit-config.yaml").read_text())
    (hook,) = [h for repo in config["repos"] for h in repo["hooks"] if h["id"] == "migrations"]
    assert hook["language"] == "system" and hook["files"] == "^migrations/"
    return shlex.split(hook["entry"])


@pytest.fixture
def clone(tmp_path: Path) -> Path:
    """A git repository holding the project's set, with 0007 committed on `main` (applied there)."""
    repo = tmp_path / "repo"
    shutil.copytree(APP_SET, repo / "migrations/app")
    for name in ("components", "devtools", "scripts", "versions.env", "requirements.lock", "pyproject.toml", ".pre-commit-config.yaml"):
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, repo / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(src, repo / name)
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run([*git, "init", "-q", "-b", "main"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "0007"], check=True)
    return repo


def run_hook(repo: Path, env: dict[str, str], *files: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*_hook_entry(), *files], cwd=repo, env=env, text=True, capture_output=True, timeout=120)


def test_the_commit_hook_refuses_an_edit_of_an_applied_file_even_after_snapshot(clone: Path, dev_env: dict[str, str]) -> None:
    applied = clone / "migrations/app/0007_wishlist_items.sql"
    applied.write_text(applied.read_text() + "CREATE INDEX idx_extra ON wishlist_items (title);\n")
    assert cli("snapshot", env=dev_env, cwd=clone).returncode == 0  # the journal now agrees with the edit: only the hook can tell
    proc = run_hook(clone, dev_env, "migrations/app/0007_wishlist_items.sql")
    assert proc.returncode == 1, proc
    assert "0007_wishlist_items.sql was edited, but version 0007 is in main's journal" in proc.stderr, proc.stderr
    assert "git checkout main --" in proc.stderr and "make migration NAME=" in proc.stderr


def test_the_commit_hook_passes_a_new_migration_and_lints_it(clone: Path, dev_env: dict[str, str]) -> None:
    set_dir = clone / "migrations/app"
    (set_dir / "0008_wishlist_price_alerts.sql").write_text(PRICE_ALERTS)
    (set_dir / "0008_wishlist_price_alerts.down.sql").write_text("DROP TABLE wishlist_price_alerts;\n")
    stale = run_hook(clone, dev_env, "migrations/app/0008_wishlist_price_alerts.sql")
    assert stale.returncode == 1 and "not in the journal" in stale.stderr, stale.stderr  # forgot `make snapshot`
    assert cli("snapshot", env=dev_env, cwd=clone).returncode == 0
    ok = run_hook(clone, dev_env, "migrations/app/0008_wishlist_price_alerts.sql")
    assert ok.returncode == 0 and "applied at main, unchanged: 0007" in ok.stdout, ok.stderr
    (set_dir / "0009_title_idx.sql").write_text("CREATE INDEX idx_title ON wishlist_items (title);\n")
    assert cli("snapshot", env=dev_env, cwd=clone).returncode == 0
    risky = run_hook(clone, dev_env, "migrations/app/0009_title_idx.sql")
    assert risky.returncode == 1 and "require-concurrent-index-creation" in risky.stderr, risky.stderr


def drizzle_migrate(db: ConnectionSettings, text: str) -> None:
    """What drizzle-orm's node-postgres migrator does with one file: split on the breakpoint, run each part, one transaction."""
    with db.connect() as conn, conn.transaction():
        for part in text.split("--> statement-breakpoint"):
            if part.strip():
                conn.execute(part.encode(), prepare=False)


def test_a_drizzle_file_round_trips_through_us(set_copy: Path, admin: ConnectionSettings, fresh_db: ConnectionSettings) -> None:
    from components.engine.authoring import new_migration, read_drizzle

    src = set_copy.parent / "0000_brave_alerts.sql"
    src.write_text(DRIZZLE)
    _, down = new_migration(set_copy, "price_alerts", up_sql=read_drizzle(src))
    down.write_text("\n".join(line for line in down.read_text().splitlines() if "migrate:unreviewed" not in line) + "\n")  # reviewed
    generate(admin, set_copy)
    ours = Engine(fresh_db, migset.load(set_copy))
    ours.apply()
    with fresh_db.connect() as conn:
        through_us = cat.introspect(conn, "public")

    from psycopg import sql

    name = f"{fresh_db.dbname}_drizzle"
    with admin.connect(autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        theirs_db = admin.with_database(name)
        drizzle_migrate(theirs_db, (APP_SET / "0007_wishlist_items.sql").read_text())
        drizzle_migrate(theirs_db, DRIZZLE)
        with theirs_db.connect() as conn:
            through_drizzle = cat.introspect(conn, "public")
    finally:
        drop_database(admin, name)
    assert cat.compare(through_drizzle, through_us) == []
    assert cat.fingerprint(through_us) == migset.load(set_copy).get("0008").fingerprint
    ours.migrate_to("0007", allow_rollback=True, allow_forward=False)  # the reviewed skeleton undoes all of it
    with fresh_db.connect() as conn:
        assert cat.fingerprint(cat.introspect(conn, "public")) == migset.load(set_copy).get("0007").fingerprint
