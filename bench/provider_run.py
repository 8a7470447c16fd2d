"""The dynamic provider's create and diff in a process of their own, as `pulumi up` runs them (bench section 4's
peak RSS). Usage: `python -m bench.provider_run DSN SET_DIR` (the password comes from PGPASSWORD)."""

from __future__ import annotations

import sys

from components.engine import migset
from components.engine.connection import ConnectionSettings
from components.schema_migration import SchemaMigrationProvider
from devtools.provider_props import provider_inputs


def main(dsn: str, set_dir: str) -> None:
    settings = ConnectionSettings.from_dsn(dsn)  # the password: PGPASSWORD
    props = provider_inputs(settings, migset.load(set_dir), stack="bench/dev")
    provider = SchemaMigrationProvider()
    outs = provider.create(props).outs
    provider.diff("bench", outs, props)  # what the next preview does


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
