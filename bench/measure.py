"""Timing helpers shared by the bench sections (no section imports another)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any


def timed(fn: Callable[[], Any], repeat: int, setup: Callable[[], Any] | None = None) -> list[float]:
    samples = []
    for _ in range(repeat):
        if setup:
            setup()
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1000)
    return samples


def fmt(samples: list[float]) -> str:
    return f"{statistics.median(samples):8.1f} ms (min {min(samples):.1f}, max {max(samples):.1f})"


# Issue #14's goals, filled by the sections that measure them and printed at the end of the run:
# (goal, floor name, floor ms, measured ms, target ratio) and (goal, round trips, most allowed).
GOALS: list[tuple[str, str, float, float, float]] = []
COUNTS: list[tuple[str, int, int]] = []


def goal(name: str, floor_name: str, floor: list[float], measured: list[float], target: float) -> None:
    GOALS.append((name, floor_name, statistics.median(floor), statistics.median(measured), target))
