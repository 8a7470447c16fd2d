"""Where the admin connection comes from: the local server for dev, an Aurora cluster for staging and prod."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, cast

import pulumi

from .config import StackConfig


@dataclass(frozen=True)
class AdminConnection:
    host: pulumi.Input[str]
    port: pulumi.Input[int]
    admin_user: str
    admin_password: pulumi.Output[str]
    reader_host: pulumi.Input[str] | None = None
    proxy_host: pulumi.Input[str] | None = None
    secret_arn: pulumi.Input[str] | None = None


def admin_connection(cfg: StackConfig) -> AdminConnection:
    """Build the cluster when the stack has one; the password is always a secret Output."""
    if cfg.aurora is None:
        assert cfg.db.host is not None and cfg.admin_password is not None
        return AdminConnection(host=cfg.db.host, port=cfg.db.port, admin_user=cfg.db.admin_user, admin_password=cfg.admin_password)

    import pulumi_aws as aws  # only AWS stacks load the AWS SDK

    from .aurora import PORT, AuroraCluster, AuroraClusterArgs

    cluster = AuroraCluster(
        "db",
        AuroraClusterArgs(
            config=cfg.aurora,
            environment=cfg.environment,
            stack=cfg.stack,
            database=cfg.db.name,
            master_username=cfg.db.admin_user,
            protect=cfg.protect,
            tags=cfg.tags,
        ),
    )
    secret = aws.secretsmanager.get_secret_version_output(secret_id=cluster.secret_arn)
    plain = secret.secret_string.apply(lambda s: str(json.loads(s)["password"]))
    password = cast(pulumi.Output[str], pulumi.Output.secret(cast(Any, plain)))  # secret_string is secret already; be explicit
    return AdminConnection(
        host=cluster.endpoint,
        port=PORT,
        admin_user=cfg.db.admin_user,
        admin_password=password,
        reader_host=cluster.reader_endpoint,
        proxy_host=cluster.proxy_endpoint,
        secret_arn=cluster.secret_arn,
    )
