"""Latency timing: warm up, then time single calls until an iteration or time budget runs out."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np


@dataclass(frozen=True)
class LatencyStats:
    """Per-call wall latency in milliseconds over `iterations` timed calls of `batch` samples."""

    iterations: int
    batch: int
    mean_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    min_ms: float

    @property
    def fps(self) -> float:
        """Samples per second at the median latency."""
        return 1000.0 * self.batch / self.p50_ms if self.p50_ms > 0 else float("inf")

    def to_dict(self) -> dict[str, float]:
        return {**asdict(self), "fps": self.fps}


def measure_latency(
    call: Callable[[], object],
    batch: int,
    warmup: int = 2,
    min_iterations: int = 5,
    max_iterations: int = 200,
    budget_s: float = 10.0,
) -> LatencyStats:
    """Time `call()` after `warmup` calls; stop after `max_iterations` or once `budget_s` is spent
    (but never before `min_iterations`)."""
    for _ in range(warmup):
        call()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < max_iterations:
        t0 = time.perf_counter()
        call()
        times.append((time.perf_counter() - t0) * 1000.0)
        if len(times) >= min_iterations and time.perf_counter() - start > budget_s:
            break
    a = np.asarray(times)
    return LatencyStats(
        iterations=len(a),
        batch=batch,
        mean_ms=float(a.mean()),
        p50_ms=float(np.percentile(a, 50)),
        p90_ms=float(np.percentile(a, 90)),
        p99_ms=float(np.percentile(a, 99)),
        min_ms=float(a.min()),
    )
