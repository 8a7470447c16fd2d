"""The CLI cannot bypass what `pulumi up` enforces (issue #11 item 10): a stack's rules come from its stack file."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from components.engine import migset
from components.engine.connection import ConnectionSettings
from components.engine.engine import Engine
from components.engine.options import RunOptions
from components.engine.snapshot import generate
from tests.conftest import REPO
from tests.integration.test_wishlist_items_migration import ledger_rows, q


def _project(tmp_path: Path) -> Path:
    project = tmp_path / "project"
    project.mkdir()
    for name in ("Pulumi.yaml", "Pulumi.dev.yaml", "Pulumi.staging.yaml", "Pulumi.prod.yaml"):
        shutil.copy(REPO / name, project / name)
    return project


def _cli(db: ConnectionSettings, set_dir: Path, project: Path, *args: str, path: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PGPASSWORD": db.password or "", "PATH": path or os.environ["PATH"], "PYTHONPATH": str(REPO)}
    dsn = f"host={db.host} port={db.port} dbname={db.dbname} user={db.user} sslmode=disable"
    return subprocess.run(
        [sys.executable, "-m", "components.migrate", *args, "--dsn", dsn, "--set", str(set_dir), "--project-dir", str(project)],
        cwd=REPO,
        env=env,
        text=True,
        capture_output=True,
        timeout=120,
    )


def _owned_with_pending_index(db: ConnectionSettings, admin: ConnectionSettings, set_copy: Path, owner: str) -> None:
    Engine(db, migset.load(set_copy), RunOptions(stack=owner)).apply()
    with db.connect() as conn:
        conn.execute("INSERT INTO wishlist_items (user_id, title, store) VALUES ('u', 't', 'LEGO')")
    (set_copy / "0008_index_title.sql").write_text("CREATE INDEX idx_title ON wishlist_items (title);\n")
    generate(admin, set_copy)


def test_a_write_to_a_stack_owned_database_needs_the_stack(
    fresh_db: ConnectionSettings, admin: ConnectionSettings, set_copy: Path, tmp_path: Path
) -> None:
    project = _project(tmp_path)
    _owned_with_pending_index(fresh_db, admin, set_copy, "wishlist-infra/staging")
    bare = _cli(fresh_db, set_copy, project, "apply")
    assert bare.returncode == 1 and "owned by stack 'wishlist-infra/staging'" in bare.stderr and "--stack staging" in bare.stderr
    assert [r[0] for r in ledger_rows(fresh_db)] == ["0007"]
    wrong = _cli(fresh_db, set_copy, project, "apply", "--stack", "dev")
    assert wrong.returncode == 1 and "owned by stack 'wishlist-infra/staging'" in wrong.stderr
    ok = _cli(fresh_db, set_copy, project, "apply", "--stack", "staging")
    assert ok.returncode == 0, ok.stderr
    assert [r[0] for r in ledger_rows(fresh_db)] == ["0007", "0008"]


def test_stack_prod_brings_strict_lint_and_the_promotion_gate(
    fresh_db: ConnectionSettings, admin: ConnectionSettings, set_copy: Path, tmp_path: Path
) -> None:
    project = _project(tmp_path)
    _owned_with_pending_index(fresh_db, admin, set_copy, "wishlist-infra/prod")
    # Without a readable gate stack, prod refuses before anything runs.
    empty_bin = tmp_path / "empty-bin"
    empty_bin.mkdir()
    no_gate = _cli(fresh_db, set_copy, project, "apply", "--stack", "prod", path=f"{empty_bin}:/usr/bin:/bin")
    assert no_gate.returncode == 1 and "requires versions to be applied in stack 'staging' first" in no_gate.stderr, no_gate.stderr
    # A pulumi that reports staging's outputs: 0008 applied there with the same checksum clears the gate...
    stub = tmp_path / "stub-bin"
    stub.mkdir()
    applied = [{"version": m.version, "checksum": m.checksum} for m in migset.load(set_copy).migrations]
    (stub / "pulumi").write_text(f"#!/bin/sh\necho '{json.dumps(applied)}'\n")
    (stub / "pulumi").chmod(0o755)
    strict = _cli(fresh_db, set_copy, project, "apply", "--stack", "prod", path=f"{stub}:/usr/bin:/bin")
    # ...and prod's strict lint (from Pulumi.prod.yaml) refuses the plain index on a table with rows.
    assert strict.returncode == 1 and "require-concurrent-index-creation" in strict.stderr, strict.stderr
    assert [r[0] for r in ledger_rows(fresh_db)] == ["0007"]
    # Reads need no stack.
    assert _cli(fresh_db, set_copy, project, "status").returncode == 0


def test_an_unknown_stack_is_one_clear_line(fresh_db: ConnectionSettings, set_copy: Path, tmp_path: Path) -> None:
    proc = _cli(fresh_db, set_copy, _project(tmp_path), "apply", "--stack", "qa")
    assert proc.returncode == 1 and proc.stderr.startswith("error: --stack qa: cannot read") and proc.stderr.count("\n") == 1


def test_flags_cannot_loosen_a_stacks_rules_and_bad_values_are_refused(
    fresh_db: ConnectionSettings, admin: ConnectionSettings, set_copy: Path, tmp_path: Path
) -> None:
    project = _project(tmp_path)
    _owned_with_pending_index(fresh_db, admin, set_copy, "wishlist-infra/staging")
    for flags, said in (
        (("--lock-timeout", "60000"), "--lock-timeout 60000 (the stack says 1000) would loosen"),
        (("--ledger-schema", "shadow_ledger"), "--ledger-schema shadow_ledger (the stack says migration_ledger)"),
        (("--lock-timeout", "0"), "run option lock_timeout_ms is 0, outside 1..60000"),
        (("--ddl-retries", "-1"), "run option ddl_retries is -1, outside 0..20"),
    ):
        proc = _cli(fresh_db, set_copy, project, "apply", "--stack", "staging", *flags)
        assert proc.returncode == 1 and said in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
    assert [r[0] for r in ledger_rows(fresh_db)] == ["0007"]
    assert q(fresh_db, "SELECT to_regnamespace('shadow_ledger')") == [(None,)]
    stricter = _cli(fresh_db, set_copy, project, "apply", "--stack", "staging", "--lock-timeout", "500")
    assert stricter.returncode == 0, stricter.stderr
