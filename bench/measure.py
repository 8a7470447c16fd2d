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
