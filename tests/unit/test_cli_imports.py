"""The operator CLI stays a thin, fast front end: it never loads the Pulumi SDK."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO


def test_cli_does_not_import_pulumi() -> None:
    code = "import sys, runpy; sys.argv = ['migrate', 'check']; import components.migrate as m; m.main(['check', '--offline']); print(sorted(k for k in sys.modules if k.split('.')[0] in ('pulumi', 'pulumi_aws', 'pulumi_postgresql', 'grpc')))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, text=True, capture_output=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]", out


def test_cli_help_does_not_import_the_sql_parser() -> None:
    """pglast costs tens of milliseconds to import: only commands that read SQL may pay for it."""
    code = "import sys, contextlib, io\nimport components.migrate as m\nwith contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()): m.main(['--help'])\nprint(sorted(k for k in sys.modules if k.split('.')[0] == 'pglast'))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, text=True, capture_output=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]", out


def test_new_and_offline_check_load_no_more_than_they_need(tmp_path: Path) -> None:
    """`new` writes two files: no SQL parser, no dev tools. `check --offline` reads files: no dev tools."""
    code = (
        "import sys\nimport components.migrate as m\n"
        f"m.main(['new', 'quick', '--set', {str(tmp_path / 'set')!r}])\n"
        "print(sorted(k for k in sys.modules if k.split('.')[0] in ('pglast', 'devtools')))\n"
        "m.main(['check', '--offline'])\n"
        "print(sorted(k for k in sys.modules if k.split('.')[0] == 'devtools'))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, text=True, capture_output=True, check=True).stdout
    assert [line for line in out.splitlines() if line.startswith("[")] == ["[]", "[]"], out


def test_the_pulumi_program_does_not_import_the_database_driver_or_the_sql_parser() -> None:
    """The program only declares resources (it runs twice per `pulumi up`); psycopg loads in the provider's process,
    and the files are parsed by the provider's plan (the pending ones), not by the program."""
    code = (
        "import sys\n"
        "import components.config, components.access, components.db_target, components.schema_migration as sm\n"
        "args = sm.SchemaMigrationArgs('h', 5432, 'd', 'u', 'migrations/app')\n"
        "args.to_props(sm.declared_set(args))\n"
        "print(sorted({k.split('.')[0] for k in sys.modules if k.split('.')[0] in ('psycopg', 'psycopg_binary', 'pglast')}))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, text=True, capture_output=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]", out
