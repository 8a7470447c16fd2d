"""The fault soak: randomized schedules over random small migration sets (tests/integration/soak.py).

`make test` runs a short fixed set of seeds. `make soak` (WISHLIST_SOAK=1) runs random seeds for at most
WISHLIST_SOAK_SECONDS (default 300). WISHLIST_SOAK_SEED=<seed> replays one schedule.
"""

from __future__ import annotations

import os
import secrets
import time
from pathlib import Path

import pytest

from devtools import localpg
from tests.integration import soak

SOAK = os.environ.get("WISHLIST_SOAK") == "1"
REPLAY = os.environ.get("WISHLIST_SOAK_SEED")
BUDGET_S = float(os.environ.get("WISHLIST_SOAK_SECONDS", "300"))
# Chosen so that together they inject every fault kind (see test_fixed_seeds_cover_every_fault_kind).
FIXED_SEEDS = (4, 6, 8, 12)
SEEDS = (int(REPLAY),) if REPLAY else FIXED_SEEDS


def _run(cluster: localpg.Cluster, seed: int, workdir: Path) -> list[str]:
    schedule = soak.make_schedule(seed)
    result = soak.Runner(cluster, schedule, workdir).run()
    if not result.failures:
        return []
    return [f"fault soak seed {seed} (replay: WISHLIST_SOAK_SEED={seed} make soak)", *result.failures, schedule.describe(), *result.log]


@pytest.mark.parametrize("seed", SEEDS)
def test_fault_soak_schedule(dedicated_cluster: localpg.Cluster, tmp_path: Path, seed: int) -> None:
    failures = _run(dedicated_cluster, seed, tmp_path)
    assert not failures, "\n".join(failures)


def test_fixed_seeds_cover_every_fault_kind() -> None:
    kinds = {f.kind for seed in FIXED_SEEDS for p in soak.make_schedule(seed).phases for f in p.faults}
    commands = {p.command for seed in FIXED_SEEDS for p in soak.make_schedule(seed).phases}
    assert kinds >= {*soak.SIGNAL_FAULTS, "terminate", "restart", "hold_read", "hold_write", "duplicates"}, kinds
    assert commands == {"apply", "rollback"}


if SOAK and not REPLAY:

    def test_fault_soak_random_seeds(dedicated_cluster: localpg.Cluster, tmp_path: Path) -> None:
        """Random seeds until the time budget is spent; every failing seed is printed for replay."""
        deadline = time.monotonic() + BUDGET_S
        failures: list[str] = []
        ran = 0
        while time.monotonic() < deadline - soak.PHASE_LIMIT_S:
            seed = secrets.randbelow(10**6)
            failures += _run(dedicated_cluster, seed, tmp_path / str(seed))
            ran += 1
        soak.TALLY[f"random schedules run in a {BUDGET_S:.0f} s budget"] += ran
        print(f"\nfault soak: {ran} random schedules in {BUDGET_S:.0f} s budget, {len(failures)} failure line(s)")
        assert not failures, "\n".join(failures)
