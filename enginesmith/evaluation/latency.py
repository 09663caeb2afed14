"""Latency timing: warm up, then time single calls until an iteration or time budget runs out; or two callables
timed in interleaved pairs (`measure_pair`), so load on a shared machine hits both alike."""

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
    return latency_stats(times, batch)


def latency_stats(times_ms: list[float], batch: int) -> LatencyStats:
    """LatencyStats of per-call wall times in milliseconds."""
    a = np.asarray(times_ms, dtype=np.float64)
    return LatencyStats(
        iterations=len(a),
        batch=batch,
        mean_ms=float(a.mean()),
        p50_ms=float(np.percentile(a, 50)),
        p90_ms=float(np.percentile(a, 90)),
        p99_ms=float(np.percentile(a, 99)),
        min_ms=float(a.min()),
    )


@dataclass(frozen=True)
class PairedLatency:
    """Two callables timed in `pairs` interleaved pairs: each one's LatencyStats and the per-pair ratio
    reference / engine (p10, p50, p90: its spread under the load of the moment)."""

    engine: LatencyStats
    reference: LatencyStats
    pairs: int
    seconds: float
    ratio_p10: float
    ratio_p50: float
    ratio_p90: float

    @property
    def speedup(self) -> float:
        """The reference's median latency over the engine's."""
        return self.reference.p50_ms / self.engine.p50_ms


def measure_pair(
    engine: Callable[[], object],
    reference: Callable[[], object],
    batch: int,
    min_time_s: float = 8.0,
    min_pairs: int = 15,
    max_pairs: int = 500,
    max_time_s: float | None = None,
    warmup: int = 2,
) -> PairedLatency:
    """Time `engine()` and `reference()` in alternating pairs (which goes first alternates too) after `warmup`
    calls of each, until both `min_pairs` pairs and `min_time_s` seconds are done, or `max_pairs` pairs, or
    `max_time_s` (default 2.5 x min_time_s) once 3 pairs are: slow models get fewer pairs, never a longer wait."""
    limit = 2.5 * min_time_s if max_time_s is None else max_time_s
    for _ in range(warmup):
        engine()
        reference()
    times: dict[str, list[float]] = {"engine": [], "reference": []}
    calls = {"engine": engine, "reference": reference}
    start = time.perf_counter()
    while True:
        n = len(times["engine"])
        for name in (("engine", "reference") if n % 2 == 0 else ("reference", "engine")):
            t0 = time.perf_counter()
            calls[name]()
            times[name].append((time.perf_counter() - t0) * 1000.0)
        n, elapsed = n + 1, time.perf_counter() - start
        if (n >= min_pairs and elapsed >= min_time_s) or n >= max_pairs or (n >= 3 and elapsed >= limit):
            break
    ratios = np.asarray(times["reference"]) / np.maximum(np.asarray(times["engine"]), 1e-9)
    p10, p50, p90 = (float(v) for v in np.percentile(ratios, [10, 50, 90]))
    return PairedLatency(latency_stats(times["engine"], batch), latency_stats(times["reference"], batch), n,
                         time.perf_counter() - start, p10, p50, p90)
