"""Timing for `enginesmith bench` (torch-free): warm-up, then timed calls until a minimum time.

- `time_calls(call, profile)` warms up (at least `warmup_iterations` calls and `warmup_s` seconds),
  then times single calls until both `min_iterations` calls and `min_time_s` seconds are done (or
  `max_iterations`); it returns the per-call wall times in milliseconds.
- `summarize(samples_ms, batch)` -> TimingStats: mean, std (population, ddof=0), min, max and the
  50/90/99th percentiles (numpy's default linear interpolation), and throughput
  fps = batch * 1000 / mean_ms (images per second over all timed calls, not at the median).
- `openvino_throughput(...)`: OpenVINO's throughput mode (PERFORMANCE_HINT THROUGHPUT: several CPU
  streams) driven by an AsyncInferQueue with the plugin's optimal number of requests.

evaluation/latency.py (the build's own latency check) stops at a time *budget*; this module is the
benchmark's, with spread (std) and raw samples, and a minimum time rather than a maximum.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from enginesmith.backends.base import first_line
from enginesmith.errors import EnginesmithError

PERCENTILES = (50, 90, 99)


@dataclass(frozen=True)
class TimingProfile:
    """How long to measure. `quick()` is for CI: a few calls, a fraction of a second per engine."""

    warmup_iterations: int = 2
    warmup_s: float = 0.5
    min_iterations: int = 5
    min_time_s: float = 3.0
    max_iterations: int = 100_000
    throughput_s: float = 3.0  # OpenVINO throughput mode: seconds of async requests
    e2e_images: int = 32  # distinct real images cycled through by the end-to-end loop

    def __post_init__(self) -> None:
        if self.min_iterations < 1 or self.max_iterations < self.min_iterations:
            raise EnginesmithError(f"timing needs 1 <= min_iterations <= max_iterations, got {self.min_iterations}, "
                                   f"{self.max_iterations}")
        if self.min_time_s < 0 or self.warmup_s < 0 or self.throughput_s < 0:
            raise EnginesmithError("timing durations cannot be negative; give --min-time >= 0")

    @classmethod
    def quick(cls) -> "TimingProfile":
        return cls(warmup_iterations=1, warmup_s=0.0, min_iterations=3, min_time_s=0.2, throughput_s=0.3,
                   e2e_images=8)

    def with_min_time(self, seconds: float | None) -> "TimingProfile":
        """The same profile timed for `seconds` (also the throughput mode's duration); None: unchanged."""
        return self if seconds is None else replace(self, min_time_s=float(seconds), throughput_s=float(seconds))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class TimingStats:
    """Per-call wall latency in milliseconds over `iterations` timed calls of `batch` samples each."""

    iterations: int
    batch: int
    mean_ms: float
    std_ms: float
    min_ms: float
    max_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float

    @property
    def total_s(self) -> float:
        return self.mean_ms * self.iterations / 1000.0

    @property
    def fps(self) -> float:
        """Throughput over all timed calls: samples per second at the mean latency."""
        return 1000.0 * self.batch / self.mean_ms if self.mean_ms > 0 else float("inf")

    def to_dict(self) -> dict[str, float]:
        return {**asdict(self), "fps": self.fps}


def summarize(samples_ms: np.ndarray | list[float], batch: int) -> TimingStats:
    """Statistics of per-call times `samples_ms` [n] (milliseconds) for calls of `batch` samples."""
    a = np.asarray(samples_ms, dtype=np.float64)
    if a.ndim != 1 or not len(a):
        raise EnginesmithError("no timed calls to summarize; give min_iterations >= 1")
    p50, p90, p99 = (float(v) for v in np.percentile(a, PERCENTILES))
    return TimingStats(iterations=len(a), batch=int(batch), mean_ms=float(a.mean()), std_ms=float(a.std()),
                       min_ms=float(a.min()), max_ms=float(a.max()), p50_ms=p50, p90_ms=p90, p99_ms=p99)


def warm_up(call: Callable[[], object], profile: TimingProfile) -> int:
    """Call until both `warmup_iterations` calls and `warmup_s` seconds are done; return the call count."""
    n, start = 0, time.perf_counter()
    while n < profile.warmup_iterations or time.perf_counter() - start < profile.warmup_s:
        call()
        n += 1
    return n


def time_calls(call: Callable[[], object], profile: TimingProfile, warmup: bool = True) -> np.ndarray:
    """Per-call wall times in ms [n]: after warm-up, until min_iterations and min_time_s (or max_iterations)."""
    if warmup:
        warm_up(call, profile)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < profile.max_iterations:
        t0 = time.perf_counter()
        call()
        times.append((time.perf_counter() - t0) * 1000.0)
        if len(times) >= profile.min_iterations and time.perf_counter() - start >= profile.min_time_s:
            break
    return np.asarray(times)


def measure(call: Callable[[], object], batch: int, profile: TimingProfile) -> TimingStats:
    """time_calls + summarize."""
    return summarize(time_calls(call, profile), batch)


# --------------------------------------------------------------------------------------------- OpenVINO


def openvino_throughput(engine: Path, feed: np.ndarray, inference_precision: str, seconds: float,
                        streams: int | None = None, extra_config: dict[str, Any] | None = None) -> dict[str, Any]:
    """OpenVINO CPU throughput mode on `engine` (model.xml) with input `feed` [B, C, H, W] float32.

    Compiles with PERFORMANCE_HINT THROUGHPUT (and NUM_STREAMS when given; `extra_config` adds or
    overrides CPU properties), creates an AsyncInferQueue of the plugin's
    OPTIMAL_NUMBER_OF_INFER_REQUESTS, runs one warm-up round, then keeps every request busy for
    `seconds`. Returns {"fps", "streams", "requests", "calls", "seconds", "config"}; fps counts images
    (calls * B) over the wall time until the last request finished."""
    import openvino as ov

    config: dict[str, Any] = {"PERFORMANCE_HINT": "THROUGHPUT", "INFERENCE_PRECISION_HINT": inference_precision}
    if streams:
        config["NUM_STREAMS"] = int(streams)
    config.update(extra_config or {})
    try:
        core = ov.Core()
        compiled = core.compile_model(core.read_model(str(engine)), "CPU", config)
        requests = int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
        n_streams = int(str(compiled.get_property("NUM_STREAMS")))
        queue = ov.AsyncInferQueue(compiled, requests)
        name = compiled.inputs[0]
        x = np.ascontiguousarray(feed, dtype=np.float32)
        for _ in range(requests):  # warm-up: every request once
            queue.start_async({name: x}, share_inputs=True)
        queue.wait_all()
        calls, start = 0, time.perf_counter()
        while calls < requests or time.perf_counter() - start < seconds:
            queue.start_async({name: x}, share_inputs=True)  # blocks while every request is busy
            calls += 1
        queue.wait_all()
        elapsed = time.perf_counter() - start
    except Exception as e:  # a native error: say what was being done

        raise EnginesmithError(f"OpenVINO throughput mode failed on {engine}: {first_line(e)}; "
                               "rerun without it (--no-throughput) or rebuild the engine") from None
    return {"fps": calls * len(x) / elapsed, "streams": n_streams, "requests": requests, "calls": calls,
            "seconds": elapsed, "config": {k: str(v) for k, v in config.items()}}
