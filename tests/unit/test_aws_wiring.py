"""What AWS and PostgreSQL will do with the AWS stacks' graph, under mocks: order, network paths, logins, protection, TLS."""

from __future__ import annotations

import json

import pytest

from components.config import ConfigError
from tests.unit.pulumi_mocks import Program, Registration, iter_strings, run_program, stack_config

AWS_STACKS = ("staging", "prod")
MIGRATION = "pulumi-python:dynamic/db:SchemaMigration"
BOOTSTRAP = "pulumi-python:dynamic/db:MasterIamLogin"
DB_OBJECTS = (
    "postgresql:index/role:Role",
    "postgresql:index/grantRole:GrantRole",
    "postgresql:index/schema:Schema",
    "postgresql:index/grant:Grant",
    "postgresql:index/defaultPrivileges:DefaultPrivileges",
)


def _connectors(p: Program) -> list[Registration]:
    """Everything that opens a database connection: the postgresql provider and the dynamic resources."""
    return [*p.of_type("pulumi:providers:postgresql"), *p.of_type(MIGRATION), *p.of_type(BOOTSTRAP)]


# 1. Nothing connects before a writer instance exists.


@pytest.mark.parametrize("stack", AWS_STACKS)
def test_no_connection_is_opened_before_every_instance_exists(programs: dict[str, Program], stack: str) -> None:
    p = programs[stack]
    instances = {i.urn for i in p.of_type("aws:rds/clusterInstance:ClusterInstance")}
    assert len(instances) == {"staging": 1, "prod": 2}[stack]
    connectors = _connectors(p)
    assert {c.type for c in connectors} >= {"pulumi:providers:postgresql", MIGRATION}
    for c in connectors:
        missing = instances - set(c.dependencies)
        assert not missing, f"{c.name} may connect before {sorted(missing)} exist"
    # Every database object goes through that provider, so it waits too.
    provider = p.one("pulumi:providers:postgresql")
    for r in p.registrations:
        if r.type.startswith("postgresql:index/"):
            assert r.provider.startswith(provider.urn + "::"), r.name


# 2. The RDS Proxy reaches the cluster, and logs in no admin.


@pytest.mark.parametrize("stack", AWS_STACKS)
def test_proxy_reaches_the_cluster_on_5432_and_nothing_else(programs: dict[str, Program], stack: str) -> None:
    p = programs[stack]
    (cluster_sg,) = p.one("aws:rds/cluster:Cluster").inputs["vpcSecurityGroupIds"]
    (proxy_sg,) = p.one("aws:rds/proxy:Proxy").inputs["vpcSecurityGroupIds"]
    assert cluster_sg != proxy_sg
    egress = [r.inputs for r in p.of_type("aws:vpc/securityGroupEgressRule:SecurityGroupEgressRule")]
    # Bridged providers drop AWS's default allow-all egress: this rule is the proxy's only way out.
    assert [(e["securityGroupId"], e.get("referencedSecurityGroupId"), e["ipProtocol"], e["fromPort"], e["toPort"]) for e in egress] == [
        (proxy_sg, cluster_sg, "tcp", 5432, 5432)
    ]
    assert all("cidrIpv4" not in e and "cidrIpv6" not in e for e in egress)
    ingress = [r.inputs for r in p.of_type("aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule")]
    assert all(r["ipProtocol"] == "tcp" and r["fromPort"] == r["toPort"] == 5432 for r in ingress)
    into_cluster = {r.get("referencedSecurityGroupId") or r.get("cidrIpv4") for r in ingress if r["securityGroupId"] == cluster_sg}
    into_proxy = {r.get("referencedSecurityGroupId") or r.get("cidrIpv4") for r in ingress if r["securityGroupId"] == proxy_sg}
    aurora = stack_config(stack)["wishlist:aurora"]
    clients = set(aurora["allowedSecurityGroupIds"]) | set(aurora.get("allowedCidrs", []))
    assert into_cluster == clients | {proxy_sg}
    assert into_proxy == clients
    for sg in p.of_type("aws:ec2/securityGroup:SecurityGroup"):
        assert not sg.inputs.get("egress") and not sg.inputs.get("ingress"), f"{sg.name} has inline rules"


@pytest.mark.parametrize("stack", AWS_STACKS)
def test_proxy_logs_in_each_application_role_by_iam_and_never_the_master(programs: dict[str, Program], stack: str) -> None:
    p = programs[stack]
    proxy = p.one("aws:rds/proxy:Proxy")
    master_secret = "arn:aws:secretsmanager:us-east-1:123456789012:secret:rds!db-cluster"
    assert master_secret not in list(iter_strings(proxy.inputs))
    assert proxy.inputs["defaultAuthScheme"] == "IAM_AUTH" and not proxy.inputs.get("auths")
    role_arn = proxy.inputs["roleArn"]
    policies = [r for r in p.of_type("aws:iam/rolePolicy:RolePolicy") if role_arn.endswith("/" + r.inputs["role"].removesuffix("-id"))]
    assert len(policies) == 1
    statements = json.loads(policies[0].inputs["policy"])["Statement"]
    assert [s["Action"] for s in statements] == ["rds-db:connect"]
    prefix = "arn:aws:rds-db:us-east-1:123456789012:dbuser:cluster-DB-CLUSTERRESOURCEID/"
    assert sorted(statements[0]["Resource"]) == [prefix + "wishlist_app", prefix + "wishlist_readonly"]
    assert not any("secretsmanager" in s for s in iter_strings(statements))


# 3. Nothing cascades; database objects are protected where the stack protects.


@pytest.mark.parametrize("stack", ("dev", "staging", "prod"))
def test_nothing_cascades_and_database_objects_are_guarded_where_the_stack_protects(programs: dict[str, Program], stack: str) -> None:
    p = programs[stack]
    schema = p.one("postgresql:index/schema:Schema")
    # Only where destroy rolls the schema back (destroyDropsSchema, dev only) does the ledger go with its schema.
    drops = bool(stack_config(stack)["wishlist:migrations"].get("destroyDropsSchema", False))
    assert drops is (stack == "dev")
    assert schema.inputs.get("dropCascade", False) is drops, "DROP SCHEMA ... CASCADE would take the ledger with it"
    for role in p.of_type("postgresql:index/role:Role"):
        # Deleting a role must fail while it owns something, never REASSIGN OWNED + DROP OWNED it away.
        assert role.inputs.get("skipReassignOwned") is True, role.name
    guarded = stack_config(stack).get("wishlist:protect", False)
    objects = [r for t in DB_OBJECTS for r in p.of_type(t)]
    assert len(objects) >= 12
    wrong = [(r.name, r.protect, r.retain_on_delete) for r in objects if (r.protect, r.retain_on_delete) != (guarded, guarded)]
    assert not wrong, wrong
    assert guarded is (stack != "dev")


@pytest.mark.parametrize("stack", ("dev", "staging"))
def test_a_stack_whose_destroy_keeps_the_schema_keeps_what_it_needs(stack: str) -> None:
    """destroyDropsSchema off (and staging even unprotected): no CASCADE, and roles, grants and ledger are retained."""
    cfg = stack_config(stack)
    cfg["wishlist:migrations"] = {**cfg["wishlist:migrations"], "destroyDropsSchema": False, "allowRollback": True}
    cfg["wishlist:protect"] = False
    p = run_program(stack, cfg)
    assert p.one("postgresql:index/schema:Schema").inputs.get("dropCascade", False) is False
    objects = [r for t in DB_OBJECTS for r in p.of_type(t)]
    assert objects and all(r.retain_on_delete for r in objects), [r.name for r in objects if not r.retain_on_delete]


# 5. Credentials survive rotation.


@pytest.mark.parametrize("stack", AWS_STACKS)
def test_stored_admin_login_survives_a_master_password_rotation(stack: str) -> None:
    before = run_program(stack, master_password="before-rotation-pw-1")
    after = run_program(stack, master_password="after-rotation-pw-2")  # Secrets Manager rotated in between
    provider_before = before.one("pulumi:providers:postgresql").inputs
    provider_after = after.one("pulumi:providers:postgresql").inputs
    # refresh and destroy run on this stored config: it must not change with, or embed, the password.
    assert provider_before == provider_after
    assert "password" not in provider_after
    assert provider_after["awsRdsIamAuth"] in (True, "true") and provider_after["awsRdsIamRegion"] == "us-east-1"
    assert provider_after["username"] == "wishlist_admin"
    for program, password in ((before, "before-rotation-pw-1"), (after, "after-rotation-pw-2")):
        held = [r.name for r in program.registrations if any(password in s for s in iter_strings(r.inputs))]
        assert not held, f"{held} hold the master password (secret or not)"
    # The master logs in through IAM: one resource grants it rds_iam, reading the current secret when it runs.
    bootstrap = after.one(BOOTSTRAP)
    assert bootstrap.inputs["user"] == "wishlist_admin"
    assert bootstrap.inputs["secret_arn"] == "arn:aws:secretsmanager:us-east-1:123456789012:secret:rds!db-cluster"
    assert bootstrap.urn in after.one("pulumi:providers:postgresql").dependencies


def test_dev_needs_no_bootstrap_and_keeps_its_password_login(programs: dict[str, Program]) -> None:
    assert programs["dev"].of_type(BOOTSTRAP) == []
    provider = programs["dev"].one("pulumi:providers:postgresql")
    assert "password" in provider.secret_inputs and provider.inputs.get("awsRdsIamAuth") in (None, False, "false")


# 6. TLS is verified.


@pytest.mark.parametrize("stack", AWS_STACKS)
def test_aws_connections_verify_the_server_against_the_rds_ca_bundle(programs: dict[str, Program], stack: str) -> None:
    p = programs[stack]
    provider = p.one("pulumi:providers:postgresql").inputs
    assert provider["sslmode"] == "verify-full" and provider["sslrootcert"] == "certs/rds-ca-bundle.pem"
    migration = p.one(MIGRATION).inputs
    assert migration["sslmode"] == "verify-full" and migration["sslrootcert"] == "certs/rds-ca-bundle.pem"
    bootstrap = p.one(BOOTSTRAP).inputs
    assert bootstrap["sslmode"] == "verify-full" and bootstrap["sslrootcert"] == "certs/rds-ca-bundle.pem"


def test_dev_stays_without_tls(programs: dict[str, Program]) -> None:
    provider = programs["dev"].one("pulumi:providers:postgresql").inputs
    assert provider["sslmode"] == "disable" and "sslrootcert" not in provider


@pytest.mark.parametrize(
    ("db", "problem"),
    [
        ({"sslmode": "verify-full", "sslrootcert": "certs/missing.pem"}, "does not exist"),
        ({"sslmode": "require"}, "is require for an Aurora stack"),
    ],
)
def test_tls_settings_that_would_not_verify_fail_naming_the_key(db: dict[str, str], problem: str) -> None:
    cfg = stack_config("staging")
    cfg["wishlist:db"] = {k: v for k, v in {**cfg["wishlist:db"], **db}.items() if k != "sslrootcert" or "sslrootcert" in db}
    with pytest.raises(ConfigError) as err:
        run_program("staging", cfg)
    assert problem in str(err.value) and "allowed:" in str(err.value)
    assert err.value.key in ("db.sslrootcert", "db.sslmode")
