"""The database target of a stack: the local server for dev, an Aurora cluster for staging and prod, and the admin
postgresql provider that connects to it (only once there is something to connect to)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pulumi
import pulumi_postgresql as postgresql

from .access import PROXY_ROLES
from .config import StackConfig


@dataclass(frozen=True)
class DatabaseTarget:
    host: pulumi.Input[str]
    port: pulumi.Input[int]
    admin_user: str
    provider: postgresql.Provider  # the admin connection every postgresql resource uses
    ready: Sequence[pulumi.Resource] = ()  # what any other connection (the migration) must wait for
    reader_host: pulumi.Input[str] | None = None
    proxy_host: pulumi.Input[str] | None = None
    secret_arn: pulumi.Input[str] | None = None


def database_target(cfg: StackConfig) -> DatabaseTarget:
    """Build the cluster when the stack has one. AWS: admin login by IAM token (no password in state); dev: password."""
    if cfg.aurora is None:
        assert cfg.db.host is not None and cfg.admin_password is not None
        provider = postgresql.Provider(
            "pg",
            host=cfg.db.host,
            port=cfg.db.port,
            database=cfg.db.name,
            username=cfg.db.admin_user,
            password=cfg.admin_password,
            sslmode=cfg.db.sslmode,
            sslrootcert=cfg.db.sslrootcert,
            superuser=False,  # our local admin is not a superuser, like the RDS master
            connect_timeout=15,
        )
        return DatabaseTarget(host=cfg.db.host, port=cfg.db.port, admin_user=cfg.db.admin_user, provider=provider)

    from .aurora import PORT, AuroraCluster, AuroraClusterArgs  # only AWS stacks load the AWS SDK
    from .master_iam import MasterIamLogin, MasterIamLoginArgs

    assert cfg.region is not None
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
            region=cfg.region,
            proxy_users=PROXY_ROLES,
        ),
    )
    # Secrets Manager rotates the master password: only this resource reads it, at run time, to grant rds_iam.
    iam_login = MasterIamLogin(
        "db-master-iam-login",
        MasterIamLoginArgs(
            host=cluster.endpoint,
            port=PORT,
            database=cfg.db.name,
            user=cfg.db.admin_user,
            secret_arn=cluster.secret_arn,
            region=cfg.region,
            sslmode=cfg.db.sslmode,
            sslrootcert=cfg.db.sslrootcert,
        ),
        opts=pulumi.ResourceOptions(depends_on=cluster.instances, protect=cfg.protect, retain_on_delete=cfg.protect),
    )
    ready: list[pulumi.Resource] = [*cluster.instances, iam_login]
    provider = postgresql.Provider(
        "pg",
        host=cluster.endpoint,
        port=PORT,
        database=cfg.db.name,
        username=cfg.db.admin_user,
        aws_rds_iam_auth=True,  # a fresh token each run: refresh and destroy survive a password rotation
        aws_rds_iam_region=cfg.region,
        sslmode=cfg.db.sslmode,
        sslrootcert=cfg.db.sslrootcert,
        superuser=False,  # the RDS master is not a real superuser
        connect_timeout=15,
        opts=pulumi.ResourceOptions(depends_on=ready),
    )
    return DatabaseTarget(
        host=cluster.endpoint,
        port=PORT,
        admin_user=cfg.db.admin_user,
        provider=provider,
        ready=ready,
        reader_host=cluster.reader_endpoint,
        proxy_host=cluster.proxy_endpoint,
        secret_arn=cluster.secret_arn,
    )
