"""Timing for `enginesmith bench` (torch-free): warm-up, then timed calls until a minimum time.

- `time_calls(call, profile)` warms up (at least `warmup_iterations` calls and `warmup_s` seconds),
  then times single calls until both `min_iterations` calls and `min_time_s` seconds are done (or
  `max_iterations`); it returns the per-call wall times in milliseconds.
- `summarize(samples_ms, batch)` -> TimingStats: mean, std (population, ddof=0), min, max and the
  50/90/99th percentiles (numpy's default linear interpolation), and throughput
  fps = batch * 1000 / mean_ms (images per second over all timed calls, not at the median).
- `openvino_throughput(...)`: OpenVINO's throughput mode (PERFORMANCE_HINT THROUGHPUT: several CPU
  streams) driven by an AsyncInferQueue with the plugin's optimal number of requests.
- `cpu_peak()`: the machine's peak multiply-accumulate rate per precision, and how it was estimated.

evaluation/latency.py (the build's own latency check) stops at a time *budget*; this module is the
benchmark's, with spread (std) and raw samples, and a minimum time rather than a maximum.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from enginesmith.backends.base import first_line
from enginesmith.backends.targets import engine_precision
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


# ------------------------------------------------------------------------------------------- peak MAC/s

# Multiply-accumulates per cycle per FMA pipe for one vector instruction, by the widest ISA present.
# fp32: one MAC per 32-bit lane. int8 with VNNI (vpdpbusd): 4 u8 x s8 products per 32-bit lane. Without
# VNNI the AVX2/AVX-512 int8 path is vpmaddubsw + vpmaddwd + vpaddd: 4 products per 32-bit lane in 3
# instructions. AMX (per core, not per pipe): TMUL does 1024 int8 or 512 bf16 MACs per cycle.
AMX_INT8_MACS_PER_CYCLE = 1024
AMX_BF16_MACS_PER_CYCLE = 512


@dataclass(frozen=True)
class PeakEstimate:
    """Peak GMAC/s of this CPU per precision, with the assumptions spelled out in `basis`."""

    cores: int
    ghz: float
    clock_source: str
    fma_units: int
    fp32_lanes: int
    fp32_gmacs: float
    fp16_gmacs: float
    int8_gmacs: float
    isa: str
    basis: str

    def for_precision(self, precision: str) -> float | None:
        """The peak a `precision` engine can reach: fp16 -> fp16, int8/mixed -> int8, bf16 -> None (not estimated:
        AVX512-BF16 and AMX-BF16 differ too much to assume one), else fp32."""
        if engine_precision(precision) == "bf16":
            return None
        return {"fp16": self.fp16_gmacs, "int8": self.int8_gmacs}.get(engine_precision(precision), self.fp32_gmacs)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _cpuinfo_field(text: str, key: str) -> str | None:
    m = re.search(rf"^{re.escape(key)}\s*:\s*(.*)$", text, re.MULTILINE)
    return m.group(1).strip() if m else None


def _clock_ghz(cpuinfo: str, max_freq_khz: str | None) -> tuple[float, str]:
    """(GHz, where it came from): cpufreq's maximum, else the model name's '@ X.XXGHz', else 'cpu MHz'."""
    if max_freq_khz and max_freq_khz.strip().isdigit() and int(max_freq_khz) > 0:
        return int(max_freq_khz) / 1e6, "cpufreq cpuinfo_max_freq (maximum turbo)"
    name = _cpuinfo_field(cpuinfo, "model name") or ""
    m = re.search(r"@\s*([\d.]+)\s*GHz", name)
    if m:
        return float(m.group(1)), "the model name's nominal (base) clock"
    mhz = _cpuinfo_field(cpuinfo, "cpu MHz")
    if mhz:
        try:
            return float(mhz) / 1000.0, "/proc/cpuinfo 'cpu MHz' (the current or, under a hypervisor, the nominal clock)"
        except ValueError:
            pass
    return 0.0, "unknown (no clock in /proc/cpuinfo)"


def estimate_peak(cpuinfo: str, logical_cpus: int, max_freq_khz: str | None = None, fma_units: int = 2) -> PeakEstimate:
    """Peak MAC rates from /proc/cpuinfo text, the logical CPUs this process may use, and cpufreq's max.

    cores = logical CPUs / threads per core (cpuinfo 'siblings' / 'cpu cores'; hyper-threads share the
    FMA pipes). fp32 = cores x GHz x fma_units x lanes (16 with avx512f, 8 with avx2+fma, 4 otherwise).
    fp16 = twice fp32 with avx512_fp16 (OpenVINO runs f16 there), else fp32 (f16 is executed as f32).
    int8 = AMX's 1024 MACs/cycle/core with amx_int8; else 4 products per 32-bit lane per pipe with
    avx512_vnni (512-bit) or avx_vnni (256-bit), else that rate / 3 (the 3-instruction pre-VNNI path).
    Assumptions: `fma_units` pipes per core (2: Intel cores since Haswell for 256-bit, Xeon Scalable
    Gold/Platinum for 512-bit; some Xeon Silver/Bronze and client parts have one 512-bit pipe - halve
    the peak there); the clock is sustained (heavy AVX-512/AMX code often runs below it).
    """
    flags = set((_cpuinfo_field(cpuinfo, "flags") or "").split())
    siblings, per_socket = _cpuinfo_field(cpuinfo, "siblings"), _cpuinfo_field(cpuinfo, "cpu cores")
    threads_per_core = 1
    if siblings and per_socket and siblings.isdigit() and per_socket.isdigit() and int(per_socket) > 0:
        threads_per_core = max(1, int(siblings) // int(per_socket))
    cores = max(1, int(logical_cpus) // threads_per_core)
    ghz, clock_source = _clock_ghz(cpuinfo, max_freq_khz)
    if "avx512f" in flags:
        lanes, isa = 16, "AVX-512"
    elif "avx2" in flags and "fma" in flags:
        lanes, isa = 8, "AVX2+FMA"
    else:
        lanes, isa = 4, "SSE"
    cycle = cores * ghz  # G cycles per second over all cores
    fp32 = cycle * fma_units * lanes
    fp16 = 2 * fp32 if "avx512_fp16" in flags else fp32
    if "amx_int8" in flags:
        int8, int8_isa = cycle * AMX_INT8_MACS_PER_CYCLE, "AMX-INT8 (1024 MACs/cycle/core)"
    elif "avx512_vnni" in flags and lanes == 16:
        int8, int8_isa = cycle * fma_units * 16 * 4, "AVX512-VNNI (4 MACs per 32-bit lane)"
    elif "avx_vnni" in flags or "avx512_vnni" in flags:
        int8, int8_isa = cycle * fma_units * 8 * 4, "AVX-VNNI 256-bit (4 MACs per 32-bit lane)"
    else:
        int8, int8_isa = cycle * fma_units * lanes * 4 / 3, f"{isa} without VNNI (vpmaddubsw path, 3 instructions)"
    if "amx_bf16" in flags:
        fp16_note = f"fp16 {'2x fp32 (AVX512-FP16)' if 'avx512_fp16' in flags else '= fp32'}; AMX-BF16 would give " \
                    f"{cycle * AMX_BF16_MACS_PER_CYCLE:.0f} GMAC/s but no fp16 engine here runs bf16"
    else:
        fp16_note = f"fp16 {'2x fp32 (AVX512-FP16)' if 'avx512_fp16' in flags else '= fp32 (f16 executed as f32)'}"
    basis = (f"{cores} cores ({logical_cpus} logical CPUs / {threads_per_core} thread(s) per core) x {ghz:.2f} GHz "
             f"[{clock_source}] x {fma_units} FMA pipes/core (assumed) x {lanes} fp32 lanes ({isa}) = "
             f"{fp32:.0f} GMAC/s fp32; {fp16_note}; int8 {int8:.0f} GMAC/s by {int8_isa}. A MAC is one "
             "multiply-add (2 FLOPs); the clock is taken as sustained, which heavy vector code often is not")
    return PeakEstimate(cores=cores, ghz=ghz, clock_source=clock_source, fma_units=fma_units, fp32_lanes=lanes,
                        fp32_gmacs=fp32, fp16_gmacs=fp16, int8_gmacs=int8, isa=isa, basis=basis)


def cpu_peak(fma_units: int = 2) -> PeakEstimate:
    """estimate_peak for this machine (/proc/cpuinfo, the CPUs this process may run on, cpufreq)."""
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        cpuinfo = ""
    try:
        logical = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        logical = os.cpu_count() or 1
    try:
        max_freq = Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq").read_text()
    except OSError:
        max_freq = None
    return estimate_peak(cpuinfo, logical, max_freq, fma_units)
