"""A throwaway copy of the project with its own file backend, for the e2e tests and the end-to-end benchmark."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from devtools import localpg

REPO = Path(__file__).resolve().parent.parent
PROJECT_FILES = ("Pulumi.yaml", "Pulumi.dev.yaml", "__main__.py", "components", "migrations")
ROLES = ("wishlist_migrator", "wishlist_app", "wishlist_readonly")
LOOP_FILES = (*PROJECT_FILES, "Makefile", "scripts", "devtools", "versions.env", "requirements.lock", "pyproject.toml", "README.md")


def cache_dir() -> Path:
    return Path(os.environ.get("WISHLIST_CACHE", Path.home() / ".cache/wishlist-infra"))


def pulumi_version() -> str:
    """The CLI is built at the version of the `pulumi` package pinned in requirements.lock."""
    for line in (REPO / "requirements.lock").read_text().splitlines():
        if line.startswith("pulumi=="):
            return line.split("==", 1)[1].strip()
    raise RuntimeError("requirements.lock pins no pulumi version")


def pulumi_bin() -> Path:
    return cache_dir() / f"pulumi-{pulumi_version()}" / "bin"


@dataclass
class Project:
    """`pulumi` commands in a project directory, with an isolated backend and environment."""

    workdir: Path
    env: dict[str, str]
    stack: str = "dev"
    log: list[str] = field(default_factory=list)

    def run(self, *args: str, check: bool = True, timeout: int = 600, log: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            ["pulumi", *args, "--stack", self.stack, "--non-interactive", "--color", "never"],
            cwd=self.workdir,
            env=self.env,
            text=True,
            capture_output=True,
            timeout=timeout,
            preexec_fn=default_signals,
        )
        # log=False: output that reveals secrets on purpose (export --show-secrets) stays out of the shared log.
        self.log.append(f"$ pulumi {' '.join(args)}\n{proc.stdout if log else '(not logged)'}\n{proc.stderr}")
        if check and proc.returncode != 0:
            raise AssertionError(f"pulumi {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        return proc


def default_signals() -> None:
    """In the child before exec: SIGINT at its default. pulumi stops its plugins with SIGINT and kills them after 5 s;
    a job a non-interactive shell starts with `&` has SIGINT ignored, which exec keeps, so every plugin and the Python
    program would wait out the 5 s at each command."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def pulumi_env(root: Path, extra: dict[str, str]) -> dict[str, str]:
    bin_dir = pulumi_bin()
    if not (bin_dir / "pulumi").exists():
        raise FileNotFoundError(f"{bin_dir}/pulumi is missing: run scripts/setup.sh (make setup) first")
    (root / "state").mkdir(parents=True, exist_ok=True)
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith(("PULUMI_", "WISHLIST_"))},
        "PATH": f"{bin_dir}:{Path(sys.executable).parent}:{os.environ['PATH']}",
        "PULUMI_HOME": str(cache_dir() / "pulumi-home"),
        "PULUMI_BACKEND_URL": f"file://{root / 'state'}",
        "PULUMI_CONFIG_PASSPHRASE": secrets.token_hex(8),
        "PULUMI_SKIP_UPDATE_CHECK": "true",
        "PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION": "true",
        "PULUMI_PYTHON_CMD": sys.executable,
        **extra,
    }


def copy_project(source: Path, workdir: Path, names: tuple[str, ...] = PROJECT_FILES) -> None:
    """Copy the project files from `source` (the repo, or an older checkout) over `workdir`, replacing what was there."""
    for name in names:
        src, dst = source / name, workdir / name
        if dst.is_dir():
            shutil.rmtree(dst)
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(src, dst)


def dev_project(root: Path, *, port: int, dbname: str, admin_password: str, role_passwords: dict[str, str], source: Path = REPO) -> Project:
    """A copy of the project (from `source`) whose dev stack targets 127.0.0.1:`port`/`dbname`, stack initialised."""
    workdir = root / "project"
    workdir.mkdir(parents=True)
    copy_project(source, workdir)
    # The committed salt belongs to the dev passphrase of scripts/env.sh; this copy gets its own passphrase.
    stack_file = workdir / "Pulumi.dev.yaml"
    stack_file.write_text(
        "".join(line for line in stack_file.read_text().splitlines(keepends=True) if not line.startswith("encryptionsalt:"))
    )
    env = pulumi_env(
        root,
        {
            "WISHLIST_ADMIN_PASSWORD": admin_password,
            "WISHLIST_MIGRATOR_PASSWORD": role_passwords["wishlist_migrator"],
            "WISHLIST_APP_PASSWORD": role_passwords["wishlist_app"],
            "WISHLIST_READONLY_PASSWORD": role_passwords["wishlist_readonly"],
        },
    )
    project = Project(workdir, env)
    project.run("stack", "init")
    project.run("config", "set", "--path", "wishlist:db.port", str(port))
    project.run("config", "set", "--path", "wishlist:db.name", dbname)
    return project


@dataclass
class Copy:
    workdir: Path
    env: dict[str, str]

    def sh(self, command: str) -> tuple[subprocess.CompletedProcess[str], float]:
        t0 = time.perf_counter()
        proc = subprocess.run(
            ["bash", "-c", command], cwd=self.workdir, env=self.env, text=True, capture_output=True, timeout=600, preexec_fn=default_signals
        )
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
