"""The operator CLI stays a thin, fast front end: it never loads the Pulumi SDK."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO


def test_cli_does_not_import_pulumi() -> None:
    code = "import sys, runpy; sys.argv = ['migrate', 'check']; import components.migrate as m; m.main(['check']); print(sorted(k for k in sys.modules if k.split('.')[0] in ('pulumi', 'pulumi_aws', 'pulumi_postgresql', 'grpc')))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, text=True, capture_output=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]", out
