"""Tally of injected faults and bad inputs, printed at the end of the run and saved for docs/reliability.md."""

from __future__ import annotations

import json
import os
from collections import Counter, defaultdict
from pathlib import Path

_TALLY: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
SOAK: Counter[str] = Counter()  # the fault soak's figures: schedules, faults by kind, claims checked by kind, failures


def record(fault: str, detail: str, *, survived: bool) -> None:
    entry = _TALLY[(fault, detail)]
    entry[0] += 1
    entry[1] += int(survived)


def summary_lines() -> list[str]:
    lines = []
    if _TALLY:
        lines += ["| fault or bad input | detail | injected | survived |", "|---|---|---|---|"]
        lines += [f"| {fault} | {detail} | {n} | {ok} |" for (fault, detail), (n, ok) in sorted(_TALLY.items())]
    if SOAK:
        lines += ["", "| fault soak | count |", "|---|---|"]
        lines += [f"| {key} | {n} |" for key, n in sorted(SOAK.items())]
    return lines


def save() -> Path | None:
    if not _TALLY and not SOAK:
        return None
    path = Path(os.environ.get("WISHLIST_CACHE", Path.home() / ".cache/wishlist-infra")) / "reliability-latest.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    faults = [{"fault": f, "detail": d, "injected": n, "survived": ok} for (f, d), (n, ok) in sorted(_TALLY.items())]
    path.write_text(json.dumps({"faults": faults, "soak": dict(sorted(SOAK.items()))}, indent=2))
    return path
