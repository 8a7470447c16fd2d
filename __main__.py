"""wishlist-infra: the wishlist database of one environment, from the cluster down to the last index.

Thin on purpose: read the validated stack config, wire the components, export. See README.md.
"""

import pulumi
import pulumi_postgresql as postgresql

from components import config as stack_config
from components.access import DatabaseAccess, DatabaseAccessArgs, TableGrants, TableGrantsArgs
from components.schema_migration import SchemaMigration, SchemaMigrationArgs
from components.wiring import admin_connection

cfg = stack_config.load()
conn = admin_connection(cfg)

pg = postgresql.Provider(
    "pg",
    host=conn.host,
    port=conn.port,
    database=cfg.db.name,
    username=conn.admin_user,
    password=conn.admin_password,
    sslmode=cfg.db.sslmode,
    superuser=False,  # the RDS master (and our local admin) is not a real superuser
    connect_timeout=15,
)
pg_opts = pulumi.ResourceOptions(provider=pg)

access = DatabaseAccess(
    "access",
    DatabaseAccessArgs(
        database=cfg.db.name,
        schema="public",
        ledger_schema="migration_ledger",
        iam_auth=cfg.is_aws,
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
        host=conn.host,
        port=conn.port,
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
        target_version=cfg.migrations.target,
        allow_rollback=cfg.migrations.allow_rollback,
        destroy_drops_schema=cfg.migrations.destroy_drops_schema,
        gate_stack=gate_stack,
        gate_applied=gate_applied,
    ),
    opts=pulumi.ResourceOptions(depends_on=access.ready, protect=cfg.protect),
)

TableGrants(
    "table-grants",
    TableGrantsArgs(
        database=cfg.db.name,
        schema="public",
        tables=["wishlist_items"],
        roles={"app": access.roles["app"].name, "readonly": access.roles["readonly"].name},
    ),
    opts=pulumi.ResourceOptions(provider=pg, depends_on=[migration]),
)

pulumi.export("environment", cfg.environment)
pulumi.export("endpoint", conn.host)
pulumi.export("reader_endpoint", conn.reader_host)
pulumi.export("proxy_endpoint", conn.proxy_host)
pulumi.export("port", conn.port)
pulumi.export("database", cfg.db.name)
pulumi.export("master_secret_arn", conn.secret_arn)
pulumi.export("roles", {key: role.name for key, role in access.roles.items()})
pulumi.export("schema_version", migration.applied_version)
pulumi.export("schema_fingerprint", migration.fingerprint)
pulumi.export("applied_migrations", migration.applied)
