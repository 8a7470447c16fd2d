"""Start and stop throwaway PostgreSQL clusters on loopback, with an RDS-like non-superuser admin role.

Used by the dev stack (`make up`), the test fixtures and the benchmarks. As root the server runs as the
`postgres` OS user (initdb refuses root), so its files live where that user can reach them.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

IS_ROOT = os.geteuid() == 0
RUN_AS = "postgres" if IS_ROOT else None
_ROOT_FOR_ROOT = "/var/tmp/wishlist-infra-pg"  # noqa: S108 -- must be reachable by the postgres user, unlike /root
_CACHE = Path(os.environ.get("WISHLIST_CACHE", Path.home() / ".cache/wishlist-infra"))
DEFAULT_ROOT = Path(os.environ.get("WISHLIST_PGROOT", _ROOT_FOR_ROOT if IS_ROOT else str(_CACHE / "pg")))
ADMIN_USER = "wishlist_admin"

# Settings for disposable clusters: fast, loopback only, small.
_FAST = ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]


def pg_bindir() -> Path:
    """Directory of initdb/pg_ctl: $PG_BINDIR, else the newest Debian install, else PATH."""
    if os.environ.get("PG_BINDIR"):
        return Path(os.environ["PG_BINDIR"])
    lib = Path("/usr/lib/postgresql")
    if lib.is_dir():
        versions = sorted((p for p in lib.iterdir() if (p / "bin/initdb").exists()), key=lambda p: int(p.name))
        if versions:
            return versions[-1] / "bin"
    found = shutil.which("initdb")
    if not found:
        raise SystemExit("PostgreSQL server binaries not found: run scripts/setup.sh (installs Debian's postgresql).")
    return Path(found).parent


def _run(cmd: list[str], *, check: bool = True, capture: bool = True) -> subprocess.CompletedProcess[str]:
    if RUN_AS:
        cmd = ["runuser", "-u", RUN_AS, "--", *cmd]
    return subprocess.run(cmd, check=check, text=True, capture_output=capture)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Cluster:
    root: Path
    port: int
    admin_password: str

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def socket_dir(self) -> Path:
        return self.root / "run"

    @property
    def log(self) -> Path:
        return self.root / "server.log"

    def admin_dsn(self, dbname: str = "wishlist") -> str:
        return f"host=127.0.0.1 port={self.port} dbname={dbname} user={ADMIN_USER} password={self.admin_password} sslmode=disable"

    def superuser_psql(self, sql: str, dbname: str = "postgres") -> str:
        """Run SQL as the bootstrap superuser over the private socket (trust auth, dir mode 0700)."""
        out = _run(
            [
                str(pg_bindir() / "psql"),
                "-X",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                str(self.socket_dir),
                "-p",
                str(self.port),
                "-U",
                "postgres",
                "-d",
                dbname,
                "-Atc",
                sql,
            ]
        )
        return out.stdout

    def running(self) -> bool:
        return _run([str(pg_bindir() / "pg_ctl"), "-D", str(self.data), "status"], check=False).returncode == 0

    def start(self, *, fast: bool = True, extra: list[str] | None = None) -> None:
        if self.running():
            return
        opts = [
            "-p",
            str(self.port),
            "-k",
            str(self.socket_dir),
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            "max_connections=60",
            *(_FAST if fast else []),
            *(extra or []),
        ]
        result = _run(
            [str(pg_bindir() / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "-o", " ".join(opts), "start"],
            check=False,
        )
        if result.returncode != 0:
            tail = self.log.read_text()[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"PostgreSQL did not start on 127.0.0.1:{self.port}: {result.stderr.strip()}\n{tail}")

    def stop(self, mode: str = "fast") -> None:
        if self.data.exists():
            _run([str(pg_bindir() / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop"], check=False)

    def destroy(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


def _prepare_dir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    if RUN_AS:
        shutil.chown(path, RUN_AS, RUN_AS)
    path.chmod(0o700)


def init_cluster(root: Path, port: int, admin_password: str, dbname: str = "wishlist") -> Cluster:
    """initdb + start + an RDS-like admin (LOGIN CREATEROLE CREATEDB, not superuser) owning `dbname`."""
    cluster = Cluster(root, port, admin_password)
    root.mkdir(parents=True, exist_ok=True)
    if RUN_AS:
        root.chmod(0o755)
        shutil.chown(root, RUN_AS, RUN_AS)
    _prepare_dir(cluster.socket_dir)
    if not (cluster.data / "PG_VERSION").exists():
        _prepare_dir(cluster.data)
        _run(
            [
                str(pg_bindir() / "initdb"),
                "-D",
                str(cluster.data),
                "-U",
                "postgres",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
                "--no-sync",
            ]
        )
    cluster.start()
    exists = cluster.superuser_psql(f"SELECT 1 FROM pg_roles WHERE rolname = '{ADMIN_USER}'").strip()
    verb = "ALTER" if exists else "CREATE"
    # The password is generated here (hex), so quoting it as a literal is safe.
    cluster.superuser_psql(f"{verb} ROLE {ADMIN_USER} WITH LOGIN CREATEROLE CREATEDB PASSWORD '{admin_password}'")
    if not cluster.superuser_psql(f"SELECT 1 FROM pg_database WHERE datname = '{dbname}'").strip():
        cluster.superuser_psql(f"CREATE DATABASE {dbname} OWNER {ADMIN_USER}")
    return cluster


@contextmanager
def temp_cluster(prefix: str = "wishlist-pg-") -> Iterator[Cluster]:
    """A throwaway cluster on a free loopback port, destroyed afterwards."""
    import tempfile

    root = Path(tempfile.mkdtemp(prefix=prefix))
    cluster = init_cluster(root, free_port(), secrets.token_hex(12))
    try:
        yield cluster
    finally:
        cluster.destroy()


def base_backup(primary: Cluster, replica: Cluster) -> None:
    """Make `replica` a streaming hot standby of `primary` (pg_basebackup -R)."""
    replica.root.mkdir(parents=True, exist_ok=True)
    if RUN_AS:
        shutil.chown(replica.root, RUN_AS, RUN_AS)
    _prepare_dir(replica.socket_dir)
    _run(
        [
            str(pg_bindir() / "pg_basebackup"),
            "-D",
            str(replica.data),
            "-h",
            str(primary.socket_dir),
            "-p",
            str(primary.port),
            "-U",
            "postgres",
            "-R",
            "-X",
            "stream",
            "--no-sync",
            "-c",
            "fast",
        ]
    )


# ---- the dev stack's long-lived cluster -------------------------------------------------------

DEV_PORT = int(os.environ.get("WISHLIST_DEV_PGPORT", "55432"))  # a test or benchmark points `make` at its own cluster with these two
SECRET_NAMES = ("WISHLIST_ADMIN_PASSWORD", "WISHLIST_MIGRATOR_PASSWORD", "WISHLIST_APP_PASSWORD", "WISHLIST_READONLY_PASSWORD")


def dev_secrets(root: Path) -> dict[str, str]:
    """Passwords of the dev cluster, generated once and kept outside git (mode 0600)."""
    path = root / "secrets.env"
    values: dict[str, str] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            key, _, value = line.partition("=")
            values[key.removeprefix("export ").strip()] = value.strip()
    if not all(values.get(k) for k in SECRET_NAMES):
        values = {k: values.get(k) or secrets.token_hex(16) for k in SECRET_NAMES}
        root.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(f"export {k}={v}\n" for k, v in values.items()))
        path.chmod(0o600)
    return values


def dev_up(root: Path = DEFAULT_ROOT / "dev") -> Cluster:
    values = dev_secrets(root)
    return init_cluster(root, DEV_PORT, values["WISHLIST_ADMIN_PASSWORD"])


def dev_cluster(root: Path = DEFAULT_ROOT / "dev") -> Cluster:
    """The dev cluster, started (and created) if needed; cheap when it already runs."""
    values = dev_secrets(root)
    cluster = Cluster(root, DEV_PORT, values["WISHLIST_ADMIN_PASSWORD"])
    if (cluster.data / "PG_VERSION").exists() and cluster.running():
        return cluster
    return dev_up(root)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.localpg", description=__doc__)
    parser.add_argument("command", choices=["up", "down", "status", "destroy", "env"])
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT / "dev")
    args = parser.parse_args(argv)
    if args.command == "up":
        cluster = dev_up(args.root)
        print(f"dev PostgreSQL on 127.0.0.1:{cluster.port} (data {cluster.data}, admin {ADMIN_USER})", file=sys.stderr)
    elif args.command == "env":
        print((args.root / "secrets.env").read_text() if (args.root / "secrets.env").exists() else "", end="")
    else:
        cluster = Cluster(args.root, DEV_PORT, "")
        if args.command == "status":
            print("running" if cluster.running() else "stopped")
            return 0 if cluster.running() else 3
        if args.command == "down":
            cluster.stop()
        else:
            cluster.destroy()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
