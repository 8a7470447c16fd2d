"""MasterIamLogin: grants rds_iam to the RDS master user once, so every later admin login is an IAM token.

The pulumi-postgresql provider then stores no password, and `pulumi refresh`/`destroy`, which run on the provider
config saved in state, keep working after Secrets Manager rotates the master password. The grant itself reads the
*current* secret when it runs (create/update only); read and delete never connect. A dynamic provider in an importable
module: pickled by reference, no state on self, nothing at import time.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from typing import Any

import pulumi
from pulumi.dynamic import CreateResult, DiffResult, ReadResult, Resource, ResourceProvider, UpdateResult

from .engine.connection import ConnectionSettings
from .engine.errors import ConnectFailed

INPUT_KEYS = ("host", "port", "database", "user", "secret_arn", "region", "sslmode", "sslrootcert")
IDENTITY_KEYS = ("host", "database", "user")


def _log(message: str) -> None:
    print(f"[master-iam-login] {message}", file=sys.stderr, flush=True)


def current_password(secret_arn: str, region: str) -> str:
    """The master password as Secrets Manager holds it now (after any rotation)."""
    import boto3  # type: ignore[import-untyped]

    raw = boto3.client("secretsmanager", region_name=region or None).get_secret_value(SecretId=secret_arn)["SecretString"]
    return str(json.loads(raw)["password"])


def iam_token(props: dict[str, Any]) -> str:
    import boto3

    client = boto3.client("rds", region_name=str(props.get("region") or "") or None)
    return str(client.generate_db_auth_token(DBHostname=str(props["host"]), Port=int(props["port"]), DBUsername=str(props["user"])))


def settings_from(props: dict[str, Any], password: str) -> ConnectionSettings:
    return ConnectionSettings(
        host=str(props["host"]),
        port=int(props["port"]),
        dbname=str(props["database"]),
        user=str(props["user"]),
        password=password,
        sslmode=str(props.get("sslmode") or "verify-full"),
        sslrootcert=str(props["sslrootcert"]) if props.get("sslrootcert") else None,
        connect_timeout=15,
        application_name="wishlist-pulumi",
    )


def grant_rds_iam(props: dict[str, Any]) -> None:
    """GRANT rds_iam to the master with its current password; if that login is refused, it may already be IAM-only."""
    from psycopg import sql

    try:
        conn = settings_from(props, current_password(str(props["secret_arn"]), str(props.get("region") or ""))).connect()
    except ConnectFailed:
        # RDS refuses a password for a member of rds_iam: check over IAM that the grant is there, instead of failing.
        conn = settings_from(props, iam_token(props)).connect()
    with conn:
        if conn.execute("SELECT pg_has_role(current_user, 'rds_iam', 'member')").fetchone() == (True,):
            _log(f"{props['user']} already logs in through IAM")
            return
        conn.execute(sql.SQL("GRANT rds_iam TO {}").format(sql.Identifier(str(props["user"]))))
        _log(f"granted rds_iam to {props['user']}: it now logs in with IAM tokens only")


class MasterIamLoginProvider(ResourceProvider):
    def create(self, props: dict[str, Any]) -> CreateResult:
        grant_rds_iam(props)
        return CreateResult(id_=f"{props['user']}@{props['host']}/{props['database']}", outs={k: props.get(k) for k in INPUT_KEYS})

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        changed = [k for k in INPUT_KEYS if olds.get(k) != news.get(k)]
        return DiffResult(changes=bool(changed), replaces=[k for k in changed if k in IDENTITY_KEYS], delete_before_replace=True)

    def update(self, _id: str, _olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        grant_rds_iam(news)
        return UpdateResult(outs={k: news.get(k) for k in INPUT_KEYS})

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        # No connection: refresh must not depend on a password that may have rotated.
        return ReadResult(id_=id_, outs=props)

    def delete(self, _id: str, _props: dict[str, Any]) -> None:
        # Revoking rds_iam would lock the provider out; the grant outlives the resource on purpose.
        _log("rds_iam stays granted to the master (nothing was revoked)")


@dataclass(frozen=True)
class MasterIamLoginArgs:
    host: pulumi.Input[str]
    port: pulumi.Input[int]
    database: str
    user: str
    secret_arn: pulumi.Input[str]
    region: str
    sslmode: str
    sslrootcert: str | None


class MasterIamLogin(Resource, module="db", name="MasterIamLogin"):
    """The master user logs in through IAM (rds_iam granted)."""

    def __init__(self, name: str, args: MasterIamLoginArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        props: dict[str, Any] = {
            "host": args.host,
            "port": args.port,
            "database": args.database,
            "user": args.user,
            "secret_arn": args.secret_arn,
            "region": args.region,
            "sslmode": args.sslmode,
            "sslrootcert": args.sslrootcert,
        }
        super().__init__(MasterIamLoginProvider(), name, props, opts)
