"""wishlist-infra: the wishlist database of one environment, from the cluster down to the last index.

Thin on purpose: read the validated stack config, wire the components, export. See README.md.
"""

import pulumi

from components import config as stack_config
from components.access import DatabaseAccess, DatabaseAccessArgs, TableGrants, TableGrantsArgs
from components.db_target import database_target
from components.schema_migration import SchemaMigration, SchemaMigrationArgs

cfg = stack_config.load()
target = database_target(cfg)
pg_opts = pulumi.ResourceOptions(provider=target.provider)

access = DatabaseAccess(
    "access",
    DatabaseAccessArgs(
        database=cfg.db.name,
        schema="public",
        ledger_schema="migration_ledger",
        iam_auth=cfg.is_aws,
        protect=cfg.protect,
        # Only where destroy rolls the schema back (destroyDropsSchema, dev only): the ledger's tables go with it.
        # Elsewhere destroy keeps the roles, grants and ledger that the schema needs (retain_on_delete).
        drop_cascade=cfg.migrations.destroy_drops_schema,
        retain=not cfg.migrations.destroy_drops_schema,
        passwords=cfg.role_passwords,
    ),
    opts=pg_opts,
)

# Promotion gate: only versions the required stack (prod: staging) already applied, with the same checksum.
gate_stack = cfg.migrations.require_applied_in
gate_applied = (
    pulumi.StackReference(f"{pulumi.get_organization() or 'organization'}/{cfg.project}/{gate_stack}").get_output("applied_migrations")
    if gate_stack
    else None
)

migration = SchemaMigration(
    "wishlist-schema",
    SchemaMigrationArgs(
        host=target.host,
        port=target.port,
        database=cfg.db.name,
        user=access.migrator_name,
        set_dir=cfg.migrations.set_dir,
        options=cfg.migrations.options,
        # dev: the provider reads the password when it runs (config secret, else the environment); never in state.
        password_config_key=None if cfg.is_aws else "wishlist:migratorPassword",
        password_env=None if cfg.is_aws else "WISHLIST_MIGRATOR_PASSWORD",
        auth="iam" if cfg.is_aws else "password",
        region=cfg.region,
        sslmode=cfg.db.sslmode,
        sslrootcert=cfg.db.sslrootcert,
        target_version=cfg.migrations.target,
        allow_rollback=cfg.migrations.allow_rollback,
        destroy_drops_schema=cfg.migrations.destroy_drops_schema,
        gate_stack=gate_stack,
        gate_applied=gate_applied,
    ),
    opts=pulumi.ResourceOptions(depends_on=[*target.ready, *access.ready], protect=cfg.protect),
)

TableGrants(
    "table-grants",
    TableGrantsArgs(
        database=cfg.db.name,
        schema="public",
        tables=["wishlist_items"],
        roles={"app": access.roles["app"].name, "readonly": access.roles["readonly"].name},
        protect=cfg.protect,
        retain=not cfg.migrations.destroy_drops_schema,
    ),
    opts=pulumi.ResourceOptions(provider=target.provider, depends_on=[migration]),
)

pulumi.export("environment", cfg.environment)
pulumi.export("endpoint", target.host)
pulumi.export("reader_endpoint", target.reader_host)
pulumi.export("proxy_endpoint", target.proxy_host)
pulumi.export("port", target.port)
pulumi.export("database", cfg.db.name)
pulumi.export("master_secret_arn", target.secret_arn)
pulumi.export("roles", {key: role.name for key, role in access.roles.items()})
pulumi.export("schema_version", migration.applied_version)
pulumi.export("schema_fingerprint", migration.fingerprint)
pulumi.export("applied_migrations", migration.applied)
