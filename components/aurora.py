"""Aurora PostgreSQL (Serverless v2) for staging and prod: secure by default, prod guarded against deletion."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_aws as aws

from .config import AuroraConfig

PORT = 5432


@dataclass(frozen=True)
class AuroraClusterArgs:
    config: AuroraConfig
    environment: str
    stack: str
    database: str
    master_username: str
    protect: bool
    tags: dict[str, str]
    region: str = ""
    proxy_users: tuple[str, ...] = ()  # database roles that may log in through the RDS Proxy (IAM); never the master


class AuroraCluster(pulumi.ComponentResource):
    """Cluster, instances, parameter and subnet groups, security group, optional CMK and an RDS Proxy."""

    endpoint: pulumi.Output[str]
    reader_endpoint: pulumi.Output[str]
    proxy_endpoint: pulumi.Output[str] | None
    secret_arn: pulumi.Output[str]

    def __init__(self, name: str, args: AuroraClusterArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("wishlist:db:AuroraCluster", name, None, opts)
        c = args.config
        child = pulumi.ResourceOptions(parent=self)
        prod = args.environment == "prod"
        # protect blocks deletes and replacements; retain_on_delete keeps the AWS object if it leaves the stack.
        guarded = pulumi.ResourceOptions(parent=self, protect=args.protect, retain_on_delete=prod)
        tags = {**args.tags, "component": name}

        self.key: aws.kms.Key | None = None
        if c.customer_managed_key:
            self.key = aws.kms.Key(
                f"{name}-key",
                description=f"wishlist {args.stack}: Aurora storage, master secret, Performance Insights",
                enable_key_rotation=True,
                deletion_window_in_days=30,
                tags=tags,
                opts=guarded,
            )
            aws.kms.Alias(f"{name}-key-alias", name=f"alias/wishlist-{args.stack}-db", target_key_id=self.key.key_id, opts=child)
        key_arn = self.key.arn if self.key else None

        self.subnet_group = aws.rds.SubnetGroup(f"{name}-subnets", subnet_ids=list(c.subnet_ids), tags=tags, opts=child)
        # Two groups: clients -> proxy -> cluster. Bridged providers drop AWS's default allow-all egress, so every path is a rule.
        self.security_group = aws.ec2.SecurityGroup(
            f"{name}-sg",
            vpc_id=c.vpc_id,
            description=f"wishlist {args.stack} PostgreSQL: 5432 from allowed clients only",
            tags=tags,
            opts=child,
        )
        self.proxy_security_group = (
            aws.ec2.SecurityGroup(
                f"{name}-proxy-sg",
                vpc_id=c.vpc_id,
                description=f"wishlist {args.stack} RDS Proxy: 5432 from allowed clients, out to the cluster only",
                tags=tags,
                opts=child,
            )
            if c.proxy
            else None
        )
        clients: list[tuple[str, dict[str, Any]]] = [
            *((f"sg-{i}", {"referenced_security_group_id": sg}) for i, sg in enumerate(c.allowed_security_group_ids)),
            *((f"cidr-{i}", {"cidr_ipv4": cidr}) for i, cidr in enumerate(c.allowed_cidrs)),
        ]
        rules: list[tuple[str, pulumi.Output[str], dict[str, Any]]] = [(f"in-{k}", self.security_group.id, v) for k, v in clients]
        if self.proxy_security_group is not None:
            proxy_sg = self.proxy_security_group.id
            rules += [("in-proxy", self.security_group.id, {"referenced_security_group_id": proxy_sg})]
            rules += [(f"proxy-in-{k}", proxy_sg, v) for k, v in clients]
            aws.vpc.SecurityGroupEgressRule(
                f"{name}-proxy-out-cluster",
                security_group_id=proxy_sg,
                referenced_security_group_id=self.security_group.id,
                ip_protocol="tcp",
                from_port=PORT,
                to_port=PORT,
                opts=child,
            )
        for suffix, group, source in rules:
            aws.vpc.SecurityGroupIngressRule(
                f"{name}-{suffix}", security_group_id=group, ip_protocol="tcp", from_port=PORT, to_port=PORT, opts=child, **source
            )

        self.parameter_group = aws.rds.ClusterParameterGroup(
            f"{name}-params",
            family=f"aurora-postgresql{c.engine_major}",
            description=f"wishlist {args.stack}: TLS required",
            parameters=[aws.rds.ClusterParameterGroupParameterArgs(name="rds.force_ssl", value="1", apply_method="immediate")],
            tags=tags,
            opts=child,
        )

        self.cluster = aws.rds.Cluster(
            f"{name}-cluster",
            engine=aws.rds.EngineType.AURORA_POSTGRESQL,
            engine_mode="provisioned",
            engine_version=c.engine_version,
            database_name=args.database,
            master_username=args.master_username,
            manage_master_user_password=True,  # RDS keeps it in Secrets Manager: no password in state
            master_user_secret_kms_key_id=key_arn,
            storage_encrypted=True,
            kms_key_id=key_arn,
            iam_database_authentication_enabled=True,
            deletion_protection=c.deletion_protection,
            copy_tags_to_snapshot=True,
            skip_final_snapshot=False,
            final_snapshot_identifier=f"wishlist-{args.stack}-final-snapshot",
            backup_retention_period=c.backup_retention_days,
            preferred_backup_window=c.preferred_backup_window,
            preferred_maintenance_window=c.preferred_maintenance_window,
            enabled_cloudwatch_logs_exports=["postgresql"],
            serverlessv2_scaling_configuration=aws.rds.ClusterServerlessv2ScalingConfigurationArgs(
                min_capacity=c.min_capacity, max_capacity=c.max_capacity
            ),
            db_subnet_group_name=self.subnet_group.name,
            vpc_security_group_ids=[self.security_group.id],
            db_cluster_parameter_group_name=self.parameter_group.name,
            availability_zones=list(c.availability_zones),
            apply_immediately=not prod,
            tags=tags,
            # Minor upgrades are automatic; without this the pinned version would diff (a downgrade) after each one.
            opts=pulumi.ResourceOptions.merge(guarded, pulumi.ResourceOptions(ignore_changes=["engineVersion"])),
        )

        self.instances = [
            aws.rds.ClusterInstance(
                f"{name}-instance-{i}",
                cluster_identifier=self.cluster.id,
                instance_class="db.serverless",
                engine=aws.rds.EngineType.AURORA_POSTGRESQL,
                availability_zone=c.availability_zones[i % len(c.availability_zones)],  # writer and readers in different AZs
                db_subnet_group_name=self.subnet_group.name,
                publicly_accessible=False,
                promotion_tier=i,
                performance_insights_enabled=c.performance_insights,
                performance_insights_retention_period=7 if c.performance_insights else None,
                performance_insights_kms_key_id=key_arn if c.performance_insights else None,
                auto_minor_version_upgrade=True,
                apply_immediately=not prod,
                tags=tags,
                opts=guarded,
            )
            for i in range(c.instances)
        ]

        self.secret_arn = self.cluster.master_user_secrets.apply(lambda s: (s[0].secret_arn or "") if s else "")
        # Just after the cluster exists there is no instance to connect to: the endpoint resolves (and every input made
        # from it depends) only once all instances are up.
        self.endpoint = pulumi.Output.all(self.cluster.endpoint, *(i.id for i in self.instances)).apply(lambda a: str(a[0]))
        self.reader_endpoint = self.cluster.reader_endpoint
        self.proxy_endpoint = self._proxy(name, args, tags, child).endpoint if c.proxy else None
        self.register_outputs(
            {
                "endpoint": self.endpoint,
                "reader_endpoint": self.reader_endpoint,
                "proxy_endpoint": self.proxy_endpoint,
                "secret_arn": self.secret_arn,
            }
        )

    def _proxy(self, name: str, args: AuroraClusterArgs, tags: dict[str, str], child: pulumi.ResourceOptions) -> aws.rds.Proxy:
        """RDS Proxy for connection pooling: TLS required, IAM auth from the client through to the database."""
        role = aws.iam.Role(
            f"{name}-proxy-role",
            assume_role_policy=json.dumps(
                {
                    "Version": "2012-10-17",
                    "Statement": [{"Effect": "Allow", "Principal": {"Service": "rds.amazonaws.com"}, "Action": "sts:AssumeRole"}],
                }
            ),
            tags=tags,
            opts=child,
        )
        # End-to-end IAM: the proxy logs in to the database as the client's own role with an IAM token, so it holds no
        # secret at all, and its role may connect as the application roles only (not the master, not the migrator).
        identity = aws.get_caller_identity_output()
        partition = aws.get_partition_output()
        policy = pulumi.Output.all(partition.partition, identity.account_id, self.cluster.cluster_resource_id).apply(
            lambda a: json.dumps(
                {
                    "Version": "2012-10-17",
                    "Statement": [
                        {
                            "Effect": "Allow",
                            "Action": "rds-db:connect",
                            "Resource": [f"arn:{a[0]}:rds-db:{args.region}:{a[1]}:dbuser:{a[2]}/{user}" for user in args.proxy_users],
                        }
                    ],
                }
            )
        )
        aws.iam.RolePolicy(f"{name}-proxy-connect", role=role.id, policy=policy, opts=child)
        assert self.proxy_security_group is not None
        proxy = aws.rds.Proxy(
            f"{name}-proxy",
            engine_family="POSTGRESQL",
            require_tls=True,
            role_arn=role.arn,
            vpc_subnet_ids=list(args.config.subnet_ids),
            vpc_security_group_ids=[self.proxy_security_group.id],
            default_auth_scheme="IAM_AUTH",
            idle_client_timeout=1800,
            debug_logging=False,
            tags=tags,
            opts=child,
        )
        aws.rds.ProxyDefaultTargetGroup(
            f"{name}-proxy-targets",
            db_proxy_name=proxy.name,
            connection_pool_config=aws.rds.ProxyDefaultTargetGroupConnectionPoolConfigArgs(
                max_connections_percent=80, max_idle_connections_percent=40, connection_borrow_timeout=120
            ),
            opts=child,
        )
        aws.rds.ProxyTarget(
            f"{name}-proxy-target", db_proxy_name=proxy.name, target_group_name="default", db_cluster_identifier=self.cluster.id, opts=child
        )
        return proxy
