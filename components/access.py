"""Roles and grants through pulumi-postgresql: a migrator that owns the schema, an app role (DML), a read-only role."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import pulumi
import pulumi_postgresql as postgresql

MIGRATOR, APP, READONLY = "wishlist_migrator", "wishlist_app", "wishlist_readonly"
APP_TABLE_PRIVILEGES = ["DELETE", "INSERT", "SELECT", "UPDATE"]  # sorted: the provider stores them sorted
READONLY_TABLE_PRIVILEGES = ["SELECT"]
TABLE_PRIVILEGES = {"app": APP_TABLE_PRIVILEGES, "readonly": READONLY_TABLE_PRIVILEGES}
# A later serial column: the app's INSERT calls nextval() (USAGE); currval()/reads need SELECT. Sorted, like the provider.
SEQUENCE_PRIVILEGES = {"app": ["SELECT", "USAGE"], "readonly": ["SELECT"]}
DEFAULT_PRIVILEGES = {"table": TABLE_PRIVILEGES, "sequence": SEQUENCE_PRIVILEGES}
PROXY_ROLES = (APP, READONLY)  # who may log in through the RDS Proxy


R = TypeVar("R", bound=pulumi.Resource)


def guarded(protect: bool, retain: bool = False) -> pulumi.ResourceOptions:
    """Where the stack protects: no delete or replace through Pulumi; where it protects or keeps the schema on
    destroy, leaving the stack keeps the object (a role that owns the schema cannot be dropped anyway)."""
    return pulumi.ResourceOptions(protect=protect, retain_on_delete=protect or retain)


class Serial:
    """PostgreSQL fails concurrent GRANTs on one object ("tuple concurrently updated"): chain them one after another."""

    def __init__(self, parent: pulumi.Resource, guard: pulumi.ResourceOptions) -> None:
        self.parent = parent
        self.guard = guard
        self.last: pulumi.Resource | None = None

    def opts(self) -> pulumi.ResourceOptions:
        return pulumi.ResourceOptions.merge(
            self.guard, pulumi.ResourceOptions(parent=self.parent, depends_on=[self.last] if self.last else None)
        )

    def add(self, resource: R) -> R:
        self.last = resource
        return resource


@dataclass(frozen=True)
class DatabaseAccessArgs:
    database: str
    schema: str
    ledger_schema: str
    iam_auth: bool  # AWS: login through IAM (rds_iam); local: passwords
    protect: bool = False  # protect and retain_on_delete on every role, grant, schema and default privilege
    drop_cascade: bool = False  # DROP SCHEMA ... CASCADE on the ledger: only where destroy rolls the schema back (dev)
    retain: bool = False  # destroy keeps roles, grants and the ledger (the schema they own stays too)
    passwords: dict[str, pulumi.Output[str]] = field(default_factory=dict)  # role key -> secret, local only
    password_version: str = "1"  # noqa: S105 -- a version counter, not a password; bump to rotate the write-only passwords


class DatabaseAccess(pulumi.ComponentResource):
    """Roles, schema privileges, the ledger schema and default privileges: everything the migration needs first."""

    def __init__(self, name: str, args: DatabaseAccessArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("wishlist:db:DatabaseAccess", name, None, opts)
        guard = guarded(args.protect, args.retain)
        child = pulumi.ResourceOptions.merge(guard, pulumi.ResourceOptions(parent=self))
        self.roles: dict[str, postgresql.Role] = {}
        self.iam_grants: list[postgresql.GrantRole] = []
        for key, role_name in (("migrator", MIGRATOR), ("app", APP), ("readonly", READONLY)):
            password = None if args.iam_auth else args.passwords.get(key)
            self.roles[key] = postgresql.Role(
                f"{name}-{key}",
                name=role_name,
                login=True,
                inherit=True,
                create_database=False,
                create_role=False,
                superuser=False,
                connection_limit=20 if key != "migrator" else 5,
                # Write-only for the provider (never read back); the input itself is kept in state as an encrypted secret.
                password_wo=password,
                password_wo_version=None if password is None else args.password_version,
                # Deleting a role fails while it still owns something, instead of REASSIGN OWNED + DROP OWNED.
                skip_reassign_owned=True,
                opts=child,
            )
            if args.iam_auth:
                self.iam_grants.append(
                    postgresql.GrantRole(f"{name}-{key}-rds-iam", role=self.roles[key].name, grant_role="rds_iam", opts=child)
                )

        serial = Serial(self, guard)
        migrator = self.roles["migrator"].name
        schema_privileges = {"migrator": ["CREATE", "USAGE"], "app": ["USAGE"], "readonly": ["USAGE"]}
        self.schema_grants = [
            serial.add(
                postgresql.Grant(
                    f"{name}-{key}-schema",
                    database=args.database,
                    schema=args.schema,
                    role=self.roles[key].name,
                    object_type="schema",
                    privileges=privileges,
                    opts=serial.opts(),
                )
            )
            for key, privileges in schema_privileges.items()
        ]
        # PostgreSQL 14 still grants PUBLIC CREATE on `public`; nobody but the named roles gets anything there.
        self.schema_grants.append(
            serial.add(
                postgresql.Grant(
                    f"{name}-public-schema",
                    database=args.database,
                    schema=args.schema,
                    role="public",
                    object_type="schema",
                    privileges=[],
                    opts=serial.opts(),
                )
            )
        )
        # PUBLIC keeps CONNECT on the database and loses TEMPORARY: no role makes objects the schema does not know.
        self.schema_grants.append(
            serial.add(
                postgresql.Grant(
                    f"{name}-public-database",
                    database=args.database,
                    role="public",
                    object_type="database",
                    privileges=["CONNECT"],
                    opts=serial.opts(),
                )
            )
        )
        # The migrator owns the ledger, so it needs no CREATE on the database.
        self.ledger_schema = serial.add(
            postgresql.Schema(
                f"{name}-ledger",
                name=args.ledger_schema,
                database=args.database,
                owner=migrator,
                drop_cascade=args.drop_cascade,
                opts=serial.opts(),
            )
        )
        # Tables and sequences that later migrations create (as the migrator) get the same grants without another change.
        self.default_privileges = [
            serial.add(
                postgresql.DefaultPrivileges(
                    f"{name}-{key}-defaults" if object_type == "table" else f"{name}-{key}-{object_type}-defaults",
                    database=args.database,
                    schema=args.schema,
                    owner=migrator,
                    role=self.roles[key].name,
                    object_type=object_type,
                    privileges=privileges,
                    opts=serial.opts(),
                )
            )
            for object_type, by_role in DEFAULT_PRIVILEGES.items()
            for key, privileges in by_role.items()
        ]
        self.migrator_name: pulumi.Output[str] = migrator
        self.register_outputs({"roles": {k: r.name for k, r in self.roles.items()}})

    @property
    def ready(self) -> Sequence[pulumi.Resource]:
        """What the migration resource must wait for."""
        return [*self.roles.values(), *self.iam_grants, *self.schema_grants, self.ledger_schema, *self.default_privileges]


@dataclass(frozen=True)
class TableGrantsArgs:
    database: str
    schema: str
    tables: Sequence[str]
    roles: dict[str, pulumi.Input[str]]
    protect: bool = False
    retain: bool = False  # destroy keeps the grants (the tables stay too)


class TableGrants(pulumi.ComponentResource):
    """Grants on the tables a migration created; created after the migration resource (depends_on)."""

    def __init__(self, name: str, args: TableGrantsArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("wishlist:db:TableGrants", name, None, opts)
        # One Grant per (role, schema, object type): two would fight over the same privileges.
        serial = Serial(self, guarded(args.protect, args.retain))
        self.grants = [
            serial.add(
                postgresql.Grant(
                    f"{name}-{key}-tables",
                    database=args.database,
                    schema=args.schema,
                    role=args.roles[key],
                    object_type="table",
                    objects=list(args.tables),
                    privileges=privileges,
                    opts=serial.opts(),
                )
            )
            for key, privileges in TABLE_PRIVILEGES.items()
        ]
        self.register_outputs({})
