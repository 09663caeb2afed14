"""Where an OpenVINO engine spends its time: the CPU plugin's per-layer counters (PERF_COUNT), summed.

    python -m enginesmith.benchmarks.openvino_profile ENGINE_DIR [ENGINE_DIR ...] [--calls 30] [--rounds 1]
        [--top 15] [--probe] [--out FILE.md]

Each engine folder (as `build-engine` writes it) is compiled with the Runner the bench uses (the precision's
INFERENCE_PRECISION_HINT, PERFORMANCE_HINT LATENCY) plus PERF_COUNT, fed one offline photo preprocessed as its
manifest says, warmed up, then run `--calls` times per round (rounds interleave the engines, so a load burst hits
each); each layer's time is its median over every call (a call the machine preempted does not move it). The
executable graph (`get_runtime_model()`) gives each layer's fused original layers and shapes, so every
Convolution's MACs are counted (output elements x input channels per group x kernel taps) and its GMAC/s is known.
Printed (and written with --out, with the machine header): time by layer type and kernel (exec type, e.g.
brgconv_avx512_I8 vs jit_avx512_f32 or ref_any_f32: layers left in float, Reorders, Converts), the weighted
layers' MACs and time by kernel precision, the convolutions by kernel and output size, and the slowest layers.
With --probe, the roofline probe (benchmarks/roofline.py) of each engine's precision is measured in the same
run. PERF_COUNT adds a little time per layer: the wall time per call is printed beside the counters' sum.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from enginesmith.backends.targets import TARGETS
from enginesmith.benchmarks.machine import run_header
from enginesmith.benchmarks.roofline import Roofline, load_average
from enginesmith.benchmarks.timing import TimingProfile
from enginesmith.errors import EnginesmithError
from enginesmith.files import write_text_atomic

OPENVINO = "openvino"
WEIGHTED = ("Convolution", "FullyConnected", "MatMul", "Deconvolution")
INT8_TAGS = ("i8", "u8")


@dataclass
class Layer:
    """One layer of the executable graph: its kernel, time per call (the median over the profiled calls: a call
    the machine preempted does not move it) and MACs."""

    name: str
    layer_type: str
    exec_type: str
    ms: float = 0.0
    mean_ms: float = 0.0
    macs: int = 0
    runtime_precision: str = ""
    shape: str = ""
    original: str = ""

    @property
    def kernel_precision(self) -> str:
        """The precision of the kernel that ran: the exec type's last token (brgconv_avx512_I8 -> int8)."""
        tag = self.exec_type.rsplit("_", 1)[-1].lower()
        return "int8" if tag in INT8_TAGS else tag if tag not in ("undef", "") else "-"

    @property
    def reference(self) -> bool:
        """A reference (unoptimised) kernel: exec types starting 'ref'."""
        return self.exec_type.startswith("ref")


@dataclass
class EngineProfile:
    engine: str
    model: str
    precision: str
    input_shape: list[int]
    calls: int
    wall_ms: list[float]
    layers: list[Layer] = field(default_factory=list)
    round_medians: list[float] = field(default_factory=list)  # wall median of each round (the spread under load)

    @property
    def wall_p50_ms(self) -> float:
        return float(np.median(self.wall_ms))

    @property
    def counted_ms(self) -> float:
        """The layers' medians, summed."""
        return sum(layer.ms for layer in self.layers)

    @property
    def executed(self) -> int:
        return sum(1 for layer in self.layers if layer.mean_ms > 0)

    @property
    def macs(self) -> int:
        return sum(layer.macs for layer in self.layers)


def _rt(op: Any, key: str) -> str:
    info = op.get_rt_info()
    return info[key].astype(str) if key in info else ""


def _dims(shape: Any) -> list[int]:
    return [int(d.get_length()) if d.is_static else -1 for d in shape]


def layer_macs(layer_type: str, op: Any) -> int:
    """MACs of one weighted layer of the executable graph; 0 for the rest.

    Convolution: output elements x input channels per group x kernel taps, from the weights input ([O, I, kh, kw],
    or [G, O/G, I/G, kh, kw] grouped). Deconvolution: input elements x output channels per group x taps (weights
    [I, O, kh, kw] or [G, I/G, O/G, kh, kw]). FullyConnected / MatMul: output elements x the reduced dimension."""
    if layer_type not in WEIGHTED or op.get_input_size() < 2:
        return 0
    out, x, w = (_dims(op.get_output_partial_shape(0)), _dims(op.get_input_partial_shape(0)),
                 _dims(op.get_input_partial_shape(1)))
    if min(out + x + w) < 0:
        return 0
    if layer_type == "Convolution":
        return int(np.prod(out)) * (w[-3] if len(w) == 5 else w[1]) * int(np.prod(w[-2:]))
    if layer_type == "Deconvolution":
        return int(np.prod(x)) * w[-3] * int(np.prod(w[-2:]))
    return int(np.prod(out)) * x[-1]


def _feed(manifest: dict[str, Any]) -> np.ndarray:
    """One offline photo, preprocessed as the engine's manifest says, at the engine's batch."""
    from enginesmith.data.offline_photos import offline_photos
    from enginesmith.runtime.preprocess import PreprocessSpec, preprocess

    spec = PreprocessSpec.from_dict(manifest["preprocess"])
    batch = int(manifest["input"]["shape"][0]) if manifest["input"]["shape"][0] not in (None, -1) else 1
    image = next(iter(offline_photos(1, seed=0)))
    return np.stack([preprocess(image, spec)[0]] * batch).astype(np.float32)


class Profiler:
    """One engine folder compiled with PERF_COUNT; `run(calls)` adds calls (several rounds may interleave engines,
    so a load burst hits each of them); `result()` gives each layer's median over every call."""

    def __init__(self, engine_dir: Path, warmup: int = 3) -> None:
        self.engine_dir = Path(engine_dir)
        self.manifest = json.loads((self.engine_dir / "manifest.json").read_text())
        if self.manifest.get("target") != OPENVINO:
            raise EnginesmithError(f"{engine_dir} is a {self.manifest.get('target')} engine; this profiles OpenVINO "
                                   "engines")
        self.precision = self.manifest["precision"]
        self.feed = {self.manifest["input"]["name"]: _feed(self.manifest)}
        self.runner = TARGETS[OPENVINO].runner(self.engine_dir / self.manifest["engine"], self.precision,
                                               perf_count=True)
        self.runner.activate()
        for _ in range(warmup):
            self.runner.infer(self.feed)
        self.per_layer: dict[str, list[float]] = defaultdict(list)
        self.kinds: dict[str, tuple[str, str]] = {}
        self.wall: list[float] = []
        self.rounds: list[float] = []  # each run's wall median

    def run(self, calls: int) -> None:
        wall = []
        for _ in range(calls):
            t0 = time.perf_counter()
            self.runner.infer(self.feed)
            wall.append((time.perf_counter() - t0) * 1000.0)
            for p in self.runner.profiling_info():
                self.per_layer[p.node_name].append(p.real_time.total_seconds() * 1000.0)
                self.kinds[p.node_name] = (p.node_type, p.exec_type)
        self.wall += wall
        self.rounds.append(float(np.median(wall)))

    def result(self) -> EngineProfile:
        graph = {op.get_friendly_name(): op for op in self.runner.runtime_model().get_ordered_ops()}
        layers = []
        for node, times in self.per_layer.items():
            layer_type, exec_type = self.kinds[node]
            layer = Layer(node, layer_type, exec_type, ms=float(np.median(times)), mean_ms=float(np.mean(times)))
            op = graph.get(node)
            if op is not None:
                layer.macs = layer_macs(layer_type, op)
                layer.runtime_precision = _rt(op, "runtimePrecision")
                layer.original = _rt(op, "originalLayersNames")
                if layer.macs:
                    layer.shape = f"{_dims(op.get_output_partial_shape(0))} w{_dims(op.get_input_partial_shape(1))}"
            layers.append(layer)
        model = self.manifest.get("model")
        return EngineProfile(str(self.engine_dir), model["name"] if isinstance(model, dict) else str(model),
                             self.precision, list(self.manifest["input"]["shape"]), len(self.wall), self.wall, layers,
                             self.rounds)

    def close(self) -> None:
        self.runner.deactivate()


def profile_engine(engine_dir: Path, calls: int = 30, warmup: int = 3) -> EngineProfile:
    """Run an OpenVINO engine folder `calls` times with PERF_COUNT; each layer's median time per call."""
    profiler = Profiler(engine_dir, warmup)
    try:
        profiler.run(calls)
        return profiler.result()
    finally:
        profiler.close()


# ---------------------------------------------------------------------------------------------- tables


def _pct(part: float, whole: float) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "—"


def _gmacs(macs: int, ms: float) -> str:
    return f"{macs / (ms * 1e6):.0f}" if macs and ms > 0 else "—"


def by_type_and_kernel(p: EngineProfile) -> list[list[str]]:
    """Rows: layer type, exec type, layers, ms per call, share of the counted time, GMAC, GMAC/s; slowest first."""
    groups: dict[tuple[str, str], list[Layer]] = defaultdict(list)
    for layer in p.layers:
        if layer.ms > 0 or layer.macs:
            groups[(layer.layer_type, layer.exec_type)].append(layer)
    rows = sorted(groups.items(), key=lambda kv: -sum(la.ms for la in kv[1]))
    total = p.counted_ms
    return [[t, e, str(len(ls)), f"{sum(la.ms for la in ls):.2f}", _pct(sum(la.ms for la in ls), total),
             f"{sum(la.macs for la in ls) / 1e9:.2f}" if any(la.macs for la in ls) else "—",
             _gmacs(sum(la.macs for la in ls), sum(la.ms for la in ls))] for (t, e), ls in rows]


def by_kernel_precision(p: EngineProfile) -> list[list[str]]:
    """The weighted layers by the precision their kernel ran at: count, GMAC and its share, ms and its share, GMAC/s."""
    groups: dict[str, list[Layer]] = defaultdict(list)
    for layer in p.layers:
        if layer.macs:
            groups[layer.kernel_precision].append(layer)
    macs, total = p.macs, p.counted_ms
    return [[k, str(len(ls)), f"{sum(la.macs for la in ls) / 1e9:.2f}", _pct(sum(la.macs for la in ls), macs),
             f"{sum(la.ms for la in ls):.2f}", _pct(sum(la.ms for la in ls), total),
             _gmacs(sum(la.macs for la in ls), sum(la.ms for la in ls))]
            for k, ls in sorted(groups.items(), key=lambda kv: -sum(la.ms for la in kv[1]))]


def conv_classes(p: EngineProfile) -> list[list[str]]:
    """The int8 convolutions by kernel size and output channels: where the MACs run slower than elsewhere."""
    groups: dict[str, list[Layer]] = defaultdict(list)
    for layer in p.layers:
        if layer.macs and layer.layer_type == "Convolution":
            w = layer.shape.split(" w")[-1].strip("[]").split(",")
            kernel = f"{w[-2].strip()}x{w[-1].strip()}" if len(w) >= 4 else "?"
            out = layer.shape.split(" w")[0].strip("[]").split(",")
            size = f"{out[-2].strip()}x{out[-1].strip()}" if len(out) >= 4 else "?"
            groups[f"{kernel} conv, out {size}, {layer.kernel_precision}"].append(layer)
    macs, total = p.macs, p.counted_ms
    return [[k, str(len(ls)), f"{sum(la.macs for la in ls) / 1e9:.2f}", _pct(sum(la.macs for la in ls), macs),
             f"{sum(la.ms for la in ls):.2f}", _pct(sum(la.ms for la in ls), total),
             _gmacs(sum(la.macs for la in ls), sum(la.ms for la in ls))]
            for k, ls in sorted(groups.items(), key=lambda kv: -sum(la.ms for la in kv[1]))]


def top_layers(p: EngineProfile, n: int) -> list[list[str]]:
    total = p.counted_ms
    return [[la.name[:70], la.layer_type, la.exec_type, f"{la.ms:.3f}", _pct(la.ms, total), _gmacs(la.macs, la.ms),
             la.shape or "—"] for la in sorted(p.layers, key=lambda la: -la.ms)[:n]]


def _table(header: Sequence[str], rows: list[list[str]]) -> list[str]:
    esc = lambda c: str(c).replace("|", "\\|")  # noqa: E731
    return ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|",
            *["| " + " | ".join(esc(c) for c in row) + " |" for row in rows]]


def render(p: EngineProfile, top: int, probe: float | None = None) -> list[str]:
    """One engine's section: totals, then the tables."""
    not_counted = p.wall_p50_ms - p.counted_ms
    conv_ms = sum(la.ms for la in p.layers if la.macs)
    lines = [f"### {p.model} {'x'.join(map(str, p.input_shape[2:]))} OpenVINO {p.precision} (`{p.engine}`)", "",
             f"- {p.calls} profiled calls: wall median {p.wall_p50_ms:.2f} ms per call, mean {np.mean(p.wall_ms):.2f} "
             f"(PERF_COUNT on); the {p.executed} executed layers' medians sum to {p.counted_ms:.2f} ms "
             f"({_pct(p.counted_ms, p.wall_p50_ms)} of the wall median, {not_counted:.2f} ms outside any layer or in "
             f"calls slower than a layer's median), their means to {sum(la.mean_ms for la in p.layers):.2f} ms",
             f"- {p.macs / 1e9:.2f} GMAC in weighted layers: {_gmacs(p.macs, p.wall_p50_ms)} GMAC/s over the wall time, "
             f"{_gmacs(p.macs, conv_ms)} GMAC/s over the weighted layers' own time ({_pct(conv_ms, p.counted_ms)} of "
             "the counted time)" + (f"; the roofline probe measured {probe:.0f} GMAC/s in this run" if probe else ""),
             "", "By layer type and kernel (exec type):", "",
             *_table(("layer type", "exec type", "layers", "ms per call", "share", "GMAC", "GMAC/s"), by_type_and_kernel(p)),
             "", "Weighted layers by the precision their kernel ran at:", "",
             *_table(("kernel precision", "layers", "GMAC", "share of MACs", "ms per call", "share of time", "GMAC/s"),
                     by_kernel_precision(p)),
             "", "Convolutions by kernel and output size:", "",
             *_table(("convolutions", "layers", "GMAC", "share of MACs", "ms per call", "share of time", "GMAC/s"),
                     conv_classes(p)),
             "", f"The {top} slowest layers:", "",
             *_table(("layer", "type", "exec type", "ms per call", "share", "GMAC/s", "output, weights"), top_layers(p, top)),
             ""]
    return lines


def main(argv: Sequence[str] | None = None) -> list[EngineProfile]:
    """`python -m enginesmith.benchmarks.openvino_profile ENGINE_DIR...`: print (and --out: write) where each
    engine's time goes."""
    parser = argparse.ArgumentParser(prog="python -m enginesmith.benchmarks.openvino_profile", description=main.__doc__)
    parser.add_argument("engines", nargs="+", type=Path, help="OpenVINO engine folders written by build-engine")
    parser.add_argument("--calls", type=int, default=30, help="profiled calls per engine and round [default 30]")
    parser.add_argument("--rounds", type=int, default=1, help="rounds: every engine runs --calls calls per round, "
                        "engines interleaved, so a load burst hits each [default 1]")
    parser.add_argument("--top", type=int, default=15, help="slowest layers listed [default 15]")
    parser.add_argument("--probe", action="store_true", help="also measure the roofline probe of each precision")
    parser.add_argument("--out", type=Path, default=None, help="write the tables and the machine header here (.md)")
    args = parser.parse_args(argv)
    if args.calls < 1 or args.rounds < 1:
        parser.error("--calls and --rounds must be >= 1")
    before = load_average()
    profilers = [Profiler(e) for e in args.engines]
    try:
        for _ in range(args.rounds):
            for profiler in profilers:
                profiler.run(args.calls)
        profiles = [profiler.result() for profiler in profilers]
    finally:
        for profiler in profilers:
            profiler.close()
    probes: dict[str, float | None] = {}
    if args.probe:
        from enginesmith.benchmarks.bench import measure_isolated

        with Roofline(TimingProfile(), lambda job: measure_isolated(job, 900.0)) as roof:
            for p in profiles:
                probes[p.precision] = roof.ceiling(OPENVINO, p.precision)
    after = load_average()
    header = run_header()
    lines = ["# Where OpenVINO engines spend their time (PERF_COUNT)", "",
             f"- command: `{shlex.join(['python', '-m', 'enginesmith.benchmarks.openvino_profile', *sys.argv[1:]])}`"
             if argv is None else f"- command: `python -m enginesmith.benchmarks.openvino_profile {shlex.join(argv)}`",
             f"- date: {header['date']}, enginesmith commit {header['commit']}",
             f"- machine: {header['machine']}",
             f"- versions: {', '.join(f'{k} {v}' for k, v in sorted(header['versions'].items()))}",
             f"- load average (1/5/15 min) before: {before}, after: {after}", ""]
    for p in profiles:
        lines += render(p, args.top, probes.get(p.precision))
    text = "\n".join(lines)
    print(text)
    if args.out:
        write_text_atomic(args.out, text + "\n")
    return profiles


if __name__ == "__main__":
    main()
