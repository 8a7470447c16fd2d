"""The SchemaMigration provider's properties for a plain connection and a loaded set (tests and the bench)."""

from __future__ import annotations

import os
from dataclasses import fields, replace
from typing import Any

from components.engine.connection import ConnectionSettings
from components.engine.migset import MigrationSet
from components.engine.options import RunOptions
from components.schema_migration import SchemaMigrationArgs

PASSWORD_ENV = "WISHLIST_PROVIDER_TEST_PASSWORD"


def provider_inputs(settings: ConnectionSettings, mset: MigrationSet, **extra: Any) -> dict[str, Any]:
    """As the program would pass them; the password goes to an environment variable the provider reads when it runs."""
    if settings.password is not None:
        os.environ[PASSWORD_ENV] = settings.password
    option_names = {f.name for f in fields(RunOptions)}
    options = replace(RunOptions(), **{k: v for k, v in extra.items() if k in option_names})
    args = SchemaMigrationArgs(
        host=settings.host,
        port=settings.port,
        database=settings.dbname,
        user=settings.user,
        set_dir=str(mset.directory),
        options=options,
        password_env=PASSWORD_ENV,
        **{
            "sslmode": settings.sslmode,
            "connect_timeout": settings.connect_timeout,
            **{k: v for k, v in extra.items() if k not in option_names},
        },
    )
    return args.to_props(mset)
