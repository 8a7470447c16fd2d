"""Run a module as `python -m` would and write the process's peak RSS (VmHWM, KiB) to a file.

`ru_maxrss` from wait4 is no good here: Linux keeps the peak of the memory the child had before exec, which is the
bench's own (a fork or vfork of a process holding a thousand catalogs). VmHWM belongs to the program after exec.
Usage: `python -m bench.peak OUT MODULE [ARGS...]`.
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path


def _vm_hwm_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return -1


def main() -> None:
    out, module, *args = sys.argv[1:]
    sys.argv = [module, *args]
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    finally:
        Path(out).write_text(str(_vm_hwm_kib()))


if __name__ == "__main__":
    main()
