"""The resource graph of each stack file, under Pulumi mocks: policy-like assertions on what gets registered."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from components.config import ConfigError
from tests.unit.pulumi_mocks import DEV_PASSWORDS, MASTER_PASSWORD, Program, iter_strings, run_program, stack_config

AWS_STACKS = ("staging", "prod")


def test_dev_registers_no_aws_resource(programs: dict[str, Program]) -> None:
    types = {r.type for r in programs["dev"].registrations}
    assert not any(t.startswith("aws:") or t.startswith("pulumi:providers:aws") for t in types)
    assert "pulumi-python:dynamic/db:SchemaMigration" in types


@pytest.mark.parametrize("stack", AWS_STACKS)
def test_cluster_is_secure_by_default(programs: dict[str, Program], stack: str) -> None:
    p = programs[stack]
    cluster = p.one("aws:rds/cluster:Cluster").inputs
    assert cluster["engine"] == "aurora-postgresql" and cluster["engineMode"] == "provisioned"
    assert cluster["engineVersion"] == "16.4"
    assert cluster["storageEncrypted"] is True
    assert cluster["manageMasterUserPassword"] is True and "masterPassword" not in cluster
    assert cluster["iamDatabaseAuthenticationEnabled"] is True
    assert cluster["deletionProtection"] is True
    assert cluster["copyTagsToSnapshot"] is True
    assert cluster["skipFinalSnapshot"] is False and cluster["finalSnapshotIdentifier"] == f"wishlist-{stack}-final-snapshot"
    assert cluster["backupRetentionPeriod"] >= {"staging": 7, "prod": 14}[stack]
    assert cluster["enabledCloudwatchLogsExports"] == ["postgresql"]
    assert cluster["serverlessv2ScalingConfiguration"]["minCapacity"] <= cluster["serverlessv2ScalingConfiguration"]["maxCapacity"]
    assert len(cluster["availabilityZones"]) == 3

    params = p.one("aws:rds/clusterParameterGroup:ClusterParameterGroup").inputs
    assert params["family"] == "aurora-postgresql16"
    assert {"name": "rds.force_ssl", "value": "1", "applyMethod": "immediate"} in params["parameters"]
    assert len(p.one("aws:rds/subnetGroup:SubnetGroup").inputs["subnetIds"]) >= 2

    # Network paths and proxy logins: tests/unit/test_aws_wiring.py.
    proxy = p.one("aws:rds/proxy:Proxy").inputs
    assert proxy["requireTls"] is True and proxy["engineFamily"] == "POSTGRESQL"
    assert p.one("aws:rds/proxyTarget:ProxyTarget").inputs["targetGroupName"] == "default"
    for inst in p.of_type("aws:rds/clusterInstance:ClusterInstance"):
        assert inst.inputs["instanceClass"] == "db.serverless" and inst.inputs["publiclyAccessible"] is False


def test_instances_per_environment(programs: dict[str, Program]) -> None:
    staging = programs["staging"].of_type("aws:rds/clusterInstance:ClusterInstance")
    prod = programs["prod"].of_type("aws:rds/clusterInstance:ClusterInstance")
    assert len(staging) == 1
    assert len(prod) >= 2 and len({i.inputs["availabilityZone"] for i in prod}) == len(prod)
    assert all(i.inputs["performanceInsightsEnabled"] is True for i in prod)
    assert all(i.inputs["performanceInsightsKmsKeyId"].startswith("arn:aws:kms:") for i in prod)


def test_prod_has_a_rotating_customer_managed_key_used_everywhere(programs: dict[str, Program]) -> None:
    p = programs["prod"]
    key = p.one("aws:kms/key:Key")
    assert key.inputs["enableKeyRotation"] is True
    cluster = p.one("aws:rds/cluster:Cluster").inputs
    assert cluster["kmsKeyId"] == cluster["masterUserSecretKmsKeyId"] == "arn:aws:kms:us-east-1:123456789012:key/db-key"
    assert programs["staging"].of_type("aws:kms/key:Key") == []


def test_prod_key_cluster_instances_are_protected_and_retained(programs: dict[str, Program]) -> None:
    p = programs["prod"]
    guarded = p.of_type("aws:kms/key:Key") + p.of_type("aws:rds/cluster:Cluster") + p.of_type("aws:rds/clusterInstance:ClusterInstance")
    assert len(guarded) >= 4
    assert all(r.protect and r.retain_on_delete for r in guarded), [(r.name, r.protect, r.retain_on_delete) for r in guarded]
    assert p.one("pulumi-python:dynamic/db:SchemaMigration").protect
    staging_cluster = programs["staging"].one("aws:rds/cluster:Cluster")
    assert staging_cluster.protect and not staging_cluster.retain_on_delete
    assert not any(r.protect for r in programs["dev"].registrations)


def _grants(p: Program) -> dict[tuple[str, str], list[str]]:
    out: dict[tuple[str, str], list[str]] = {}
    for g in p.of_type("postgresql:index/grant:Grant"):
        key = (g.inputs["role"], g.inputs["objectType"] + (":" + ",".join(g.inputs["objects"]) if g.inputs.get("objects") else ""))
        assert key not in out, f"two Grants for {key} would fight"
        out[key] = sorted(g.inputs["privileges"])
    return out


@pytest.mark.parametrize("stack", ("dev", "staging", "prod"))
def test_roles_have_exactly_their_privileges(programs: dict[str, Program], stack: str) -> None:
    p = programs[stack]
    roles = {r.inputs["name"]: r.inputs for r in p.of_type("postgresql:index/role:Role")}
    assert set(roles) == {"wishlist_migrator", "wishlist_app", "wishlist_readonly"}
    assert all(
        r["login"] is True and r["superuser"] is False and r["createRole"] is False and r["createDatabase"] is False for r in roles.values()
    )
    assert _grants(p) == {
        ("wishlist_migrator", "schema"): ["CREATE", "USAGE"],
        ("wishlist_app", "schema"): ["USAGE"],
        ("wishlist_readonly", "schema"): ["USAGE"],
        ("wishlist_app", "table:wishlist_items"): ["DELETE", "INSERT", "SELECT", "UPDATE"],
        ("wishlist_readonly", "table:wishlist_items"): ["SELECT"],
        # PostgreSQL 14 still lets PUBLIC create in `public`: revoked, with anything else PUBLIC held there.
        ("public", "schema"): [],
        # PUBLIC keeps CONNECT on the database and loses TEMPORARY.
        ("public", "database"): ["CONNECT"],
    }
    defaults = {
        (d.inputs["role"], d.inputs["owner"], d.inputs["objectType"]): sorted(d.inputs["privileges"])
        for d in p.of_type("postgresql:index/defaultPrivileges:DefaultPrivileges")
    }
    assert defaults == {
        ("wishlist_app", "wishlist_migrator", "table"): ["DELETE", "INSERT", "SELECT", "UPDATE"],
        ("wishlist_readonly", "wishlist_migrator", "table"): ["SELECT"],
        # A later serial column: nextval() needs USAGE, currval() SELECT.
        ("wishlist_app", "wishlist_migrator", "sequence"): ["SELECT", "USAGE"],
        ("wishlist_readonly", "wishlist_migrator", "sequence"): ["SELECT"],
    }
    assert p.one("postgresql:index/schema:Schema").inputs["owner"] == "wishlist_migrator"
    iam = {g.inputs["role"] for g in p.of_type("postgresql:index/grantRole:GrantRole") if g.inputs["grantRole"] == "rds_iam"}
    if stack == "dev":
        assert iam == set()
        assert all(
            "passwordWo" in r.secret_inputs and r.inputs["passwordWoVersion"] == "1" for r in p.of_type("postgresql:index/role:Role")
        )
    else:
        assert iam == set(roles)
        assert all("passwordWo" not in r.inputs and "password" not in r.inputs for r in p.of_type("postgresql:index/role:Role"))
    provider = p.one("pulumi:providers:postgresql")
    assert provider.inputs["superuser"] in (False, "false")  # how it logs in: tests/unit/test_aws_wiring.py


@pytest.mark.parametrize("stack", ("dev", "staging", "prod"))
def test_migration_connects_as_the_migrator_after_access_and_before_table_grants(programs: dict[str, Program], stack: str) -> None:
    p = programs[stack]
    mig = p.one("pulumi-python:dynamic/db:SchemaMigration")
    assert mig.inputs["user"] == "wishlist_migrator"
    assert mig.inputs["auth"] == ("password" if stack == "dev" else "iam")
    assert mig.inputs["set_dir"] == "migrations/app" and mig.inputs["target_version"] == "0007"
    assert mig.inputs["stack"] == f"wishlist-infra/{stack}"
    assert [m["version"] for m in mig.inputs["migrations"]] == ["0007"]
    assert mig.inputs["expected_fingerprint"].startswith("sha256:")
    # The provider was pickled under mocks, by reference (a small pickle naming the importable class), as a secret.
    pickled = base64.b64decode(mig.inputs["__provider"]["value"])
    assert b"components.schema_migration" in pickled and b"SchemaMigrationProvider" in pickled and len(pickled) < 200
    assert "__provider" in mig.secret_inputs
    # No password crosses into the resource's state: dev names where the provider reads it when it runs.
    assert "password" not in mig.inputs
    assert all(not str(v).startswith("dev-") for v in mig.inputs.values())
    if stack == "dev":
        assert (mig.inputs["password_config_key"], mig.inputs["password_env"]) == (
            "wishlist:migratorPassword",
            "WISHLIST_MIGRATOR_PASSWORD",
        )
    else:
        assert mig.inputs.get("password_config_key") is None and mig.inputs.get("password_env") is None
    access = {r.urn for r in p.registrations if r.type.startswith("postgresql:index/") and "table-grants" not in r.name}
    assert access <= set(mig.dependencies)
    for grant in p.of_type("postgresql:index/grant:Grant"):
        if grant.inputs.get("objects"):
            parent = next(r for r in p.registrations if r.urn == grant.parent)
            assert mig.urn in parent.dependencies
    assert mig.inputs["allow_rollback"] is (stack == "dev")


@pytest.mark.parametrize("stack", ("dev", "staging", "prod"))
def test_no_password_in_plaintext_inputs(programs: dict[str, Program], stack: str) -> None:
    secrets = set(DEV_PASSWORDS.values()) | {MASTER_PASSWORD}
    for r in programs[stack].registrations:
        for key, value in r.inputs.items():
            if key in r.secret_inputs:
                continue
            leaked = [s for s in iter_strings(value) if any(pw in s for pw in secrets)]
            assert not leaked, f"{r.name}.{key} holds a password in plaintext"


def _with(stack: str, path: str, value: Any) -> dict[str, Any]:
    cfg = stack_config(stack)
    *parents, leaf = path.split(".")
    node = cfg
    for part in parents:
        node[part] = dict(node[part]) if isinstance(node.get(part), dict) else node.get(part, {})
        node = node[part]
    if value is None:
        node.pop(leaf, None)
    else:
        node[leaf] = value
    return cfg


@pytest.mark.parametrize(
    ("stack", "path", "value", "key"),
    [
        ("dev", "wishlist:environment", "qa", "environment"),
        ("dev", "wishlist:db.target", "cloud", "db.target"),
        ("dev", "wishlist:db.host", "10.1.2.3", "db.host"),
        ("staging", "wishlist:aurora.minCapacity", 8, "aurora.minCapacity"),
        ("staging", "wishlist:aurora.subnetIds", ["subnet-0aa11bb22cc33dd44"], "aurora.subnetIds"),
        ("staging", "wishlist:aurora.allowedCidrs", ["0.0.0.0/0"], "aurora.allowedCidrs"),
        ("prod", "wishlist:aurora.backupRetentionDays", 7, "aurora.backupRetentionDays"),
        ("prod", "wishlist:aurora.deletionProtection", False, "aurora.deletionProtection"),
        ("prod", "wishlist:aurora.instances", 1, "aurora.instances"),
        ("prod", "wishlist:migrations.allowRollback", True, "migrations.allowRollback"),
        ("prod", "wishlist:aurora.engineVersion", "latest", "aurora.engineVersion"),
        ("staging", "wishlist:aurora.vpcId", None, "aurora.vpcId"),
    ],
)
def test_bad_config_fails_naming_the_key(stack: str, path: str, value: Any, key: str) -> None:
    top, _, rest = path.partition(".")
    cfg = _with(stack, path, value) if rest else {**stack_config(stack), top: value}
    with pytest.raises(ConfigError) as err:
        run_program(stack, cfg)
    assert f"wishlist:{key}" in str(err.value) and "allowed:" in str(err.value)


def test_dev_without_passwords_says_where_to_put_them() -> None:
    with pytest.raises(ConfigError, match=r"wishlist:adminPassword is missing \(and \$WISHLIST_ADMIN_PASSWORD is not set\)"):
        run_program("dev", environ={})


def test_prod_is_gated_on_staging_and_lints_strictly(programs: dict[str, Program]) -> None:
    prod = programs["prod"].one("pulumi-python:dynamic/db:SchemaMigration").inputs
    assert prod["gate"] == {"stack": "staging", "applied": [{"version": "0007", "checksum": "from-staging"}]}
    assert prod["strict_lint"] is True
    ref = programs["prod"].one("pulumi:pulumi:StackReference")
    assert ref.inputs["name"] == "organization/wishlist-infra/staging"
    for stack in ("dev", "staging"):
        inputs = programs[stack].one("pulumi-python:dynamic/db:SchemaMigration").inputs
        assert inputs.get("gate") is None and inputs["strict_lint"] is False
