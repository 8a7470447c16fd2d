"""The pulumi CLI stops its plugins with SIGINT, then kills them after 5 s. A shell starts background jobs with SIGINT
ignored, and an ignored signal stays ignored across exec: every plugin (and the Python program) would then wait the
5 s out at each command. Project.run starts pulumi with SIGINT at its default."""

from __future__ import annotations

import signal
import subprocess
import sys

CODE = (
    "import signal, subprocess\n"
    "from devtools.pulumi_project import default_signals\n"
    "signal.signal(signal.SIGINT, signal.SIG_IGN)  # as in a job started with & by a non-interactive shell\n"
    "for fn in (None, default_signals):\n"
    "    status = subprocess.run(['cat', '/proc/self/status'], capture_output=True, text=True, preexec_fn=fn).stdout\n"
    "    mask = int(next(l for l in status.splitlines() if l.startswith('SigIgn:')).split()[1], 16)\n"
    "    print(bool(mask & (1 << (signal.SIGINT - 1))))\n"
)


def test_pulumi_starts_with_sigint_at_its_default_even_when_the_caller_ignores_it() -> None:
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["True", "False"], out  # inherited as ignored; restored for pulumi
    assert signal.SIGINT == 2
