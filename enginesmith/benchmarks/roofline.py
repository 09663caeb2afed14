"""The roofline probe: the GMAC/s a backend reaches on plain 3x3 convolutions, measured in the bench's own run.

"Fraction of peak" once divided an engine's GMAC/s by a peak computed from assumed FMA pipes and a nominal
clock (INT8 5,325 GMAC/s on a 2-core AMX Xeon, which no engine came near). The ceiling here is measured
instead, on the same machine, in the same run, through the same backend, precision and quantizer as the
engines it is compared with:

- The probe network (`probe_onnx`): `convs` x (Conv 3x3, stride 1, pad 1 + ReLU) at C channels on HxW, batch
  1, written with onnx.helper (seeded He-normal weights). Two stacks at YOLO-like shapes (`STACKS`): 256
  channels at 52x52 and 512 at 26x26 (YOLOv3-416's stride-8 and stride-16 scales), 6.38 GMAC each.
- Built through the pipeline's own stages (`build_probe`): the precision stage of pipeline/quantize.py with the
  target's quantizer and default calibration method (NNCF for OpenVINO INT8, our ranges + Q/DQ for ONNX Runtime
  INT8) on 4 seeded non-negative samples (what a ReLU leaves), then the backend's `build`. A stage cache in a
  throwaway folder: nothing is kept across runs. The PyTorch CPU baseline ("torch") runs the same weights as
  an nn.Sequential (fp32).
- Measured in the engines' way (`measure_probe`, in the bench's child process): the target's Runner with its
  runner options for the precision (OpenVINO bf16: INFERENCE_PRECISION_HINT bf16), warm-up, then the bench's
  `time_calls`. GMAC/s = the stack's exact MACs / the median call time; the ceiling of a (target, precision) is
  the higher of the two stacks.

`Roofline` measures each (target, engine precision) once, when the bench first needs it; GPU targets have no
probe. `python -m enginesmith.benchmarks.roofline --targets openvino --precisions fp32,bf16,int8` measures the
probe alone (each measurement in its own process, as the bench does).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from enginesmith.backends.targets import TARGETS, engine_precision
from enginesmith.benchmarks.suite import BASELINES
from enginesmith.benchmarks.timing import TimingProfile, summarize, time_calls
from enginesmith.errors import EnginesmithError
from enginesmith.files import make_scratch

INPUT_NAME = "x"
OUTPUT_NAME = "y"
OPSET = 17  # pipeline.export.OPSET (not imported: that module imports torch)
SEED = 0
CALIBRATION_SAMPLES = 4
KERNEL = 3


@dataclass(frozen=True)
class ProbeStack:
    """`convs` x (Conv KxK, stride 1, pad K//2 + ReLU), `channels` in and out, on `size` x `size`, batch 1."""

    channels: int
    size: int
    convs: int = 4

    @property
    def name(self) -> str:
        return f"{self.convs}x conv3x3 {self.channels}ch {self.size}x{self.size}"

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (1, self.channels, self.size, self.size)

    @property
    def macs(self) -> int:
        """Multiply-accumulates of one call: per conv, output pixels x output channels x input channels x taps."""
        return self.convs * self.size * self.size * self.channels * self.channels * KERNEL * KERNEL


# YOLOv3-416's stride-8 (256 channels, 52x52) and stride-16 (512, 26x26) scales: 6.38 GMAC each.
STACKS = (ProbeStack(256, 52), ProbeStack(512, 26))


def probe_onnx(stack: ProbeStack, seed: int = SEED) -> Any:
    """The probe as an onnx.ModelProto: input `x` [1, C, H, W] -> `convs` x (Conv + Relu) -> output `y`."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    c = stack.channels
    nodes, inits = [], []
    prev = INPUT_NAME
    for i in range(stack.convs):
        w = (rng.standard_normal((c, c, KERNEL, KERNEL)) * np.sqrt(2.0 / (c * KERNEL * KERNEL))).astype(np.float32)
        b = (0.01 * rng.standard_normal(c)).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"conv{i}.weight"), numpy_helper.from_array(b, f"conv{i}.bias")]
        out = OUTPUT_NAME if i == stack.convs - 1 else f"relu{i}"
        nodes += [helper.make_node("Conv", [prev, f"conv{i}.weight", f"conv{i}.bias"], [f"conv{i}"], name=f"/conv{i}/Conv",
                                   kernel_shape=[KERNEL, KERNEL], pads=[KERNEL // 2] * 4, strides=[1, 1]),
                  helper.make_node("Relu", [f"conv{i}"], [out], name=f"/relu{i}/Relu")]
        prev = out
    graph = helper.make_graph(nodes, "roofline_probe",
                              [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, list(stack.shape))],
                              [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, list(stack.shape))], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="enginesmith-roofline")
    model.ir_version = 8  # what every backend here reads (onnx 1.23 would write 11)
    onnx.checker.check_model(model, full_check=True)
    return model


def probe_inputs(stack: ProbeStack, n: int, seed: int = SEED) -> list[np.ndarray]:
    """`n` seeded inputs [1, C, H, W]: |N(0, 1)|, non-negative as a ReLU's output is."""
    rng = np.random.default_rng(seed + 1)
    return [np.abs(rng.standard_normal(stack.shape)).astype(np.float32) for _ in range(n)]


@dataclass
class ProbeCalibration:
    """The calibration the precision stage takes (pipeline/quantize.Calibration's interface), on probe inputs."""

    stack: ProbeStack
    method: str
    samples: int = CALIBRATION_SAMPLES
    batch: int = 1
    feeds: Any = None

    def fingerprint(self) -> dict[str, object]:
        return {"probe": asdict(self.stack), "seed": SEED, "samples": self.samples, "method": self.method}

    def batches(self) -> Iterator[np.ndarray]:
        yield from probe_inputs(self.stack, self.samples)

    def __iter__(self) -> Iterator[np.ndarray]:
        return self.batches()

    def __len__(self) -> int:
        return self.samples


# ---------------------------------------------------------------------------------------------- build


def probe_targets(target: str) -> bool:
    """Whether (target) has a probe: the CPU engine targets and the PyTorch CPU baseline; GPU targets do not."""
    if target in TARGETS:
        return not TARGETS[target].needs_gpu
    return target in BASELINES and BASELINES[target].device == "cpu"


def build_probe(target: str, precision: str, stack: ProbeStack, folder: Path) -> Path:
    """The probe's engine for (target, precision) in `folder`, made by the pipeline's own precision stage and the
    backend's build; for the PyTorch baseline, the ONNX file its child turns into an nn.Sequential."""
    import onnx

    from enginesmith.pipeline.artifacts import Cache, StageResult
    from enginesmith.pipeline.build import engine_source
    from enginesmith.pipeline.quantize import precision_artifacts

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if target not in TARGETS:
        path = folder / "model.onnx"
        onnx.save(probe_onnx(stack), str(path))
        return path
    t = TARGETS[target]
    cache = Cache(folder / "cache", on_event=lambda stage, message: None)

    def write(tmp: Path) -> StageResult:
        onnx.save(probe_onnx(stack), str(tmp / "model.onnx"))
        return StageResult(["model.onnx"], {"probe": asdict(stack)})

    simplified = cache.run("probe", [], {"probe": asdict(stack), "seed": SEED}, write)
    calibration = ProbeCalibration(stack, t.default_calib_method)
    source = precision_artifacts(cache, target, precision, simplified, calibration, on_stage=lambda a: None)
    built = (source or simplified).file
    return Path(t.backend.build(engine_source(built), folder / "engine", engine_precision(precision)))


# ---------------------------------------------------------------------------------------------- measure


def probe_job(target: str, precision: str, engines: Sequence[tuple[ProbeStack, Path]],
              profile: TimingProfile) -> dict[str, Any]:
    """What the measuring process needs (bench.measure_isolated's job), as JSON: every stack's engine."""
    return {"key": f"roofline probe {target}/{precision}", "target": target, "precision": precision,
            "profile": profile.to_dict(),
            "probe": [{"stack": asdict(stack), "engine": str(engine)} for stack, engine in engines]}


def _torch_probe(onnx_path: Path) -> Any:
    """The PyTorch baseline's runner of the probe: the ONNX file's convolutions as an nn.Sequential (fp32, CPU)."""
    import onnx
    import torch
    from onnx import numpy_helper

    from enginesmith.backends.torch import TorchRunner

    model = onnx.load(str(onnx_path))
    weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    layers: list[Any] = []
    for node in model.graph.node:
        if node.op_type == "Conv":
            w, b = weights[node.input[1]], weights[node.input[2]]
            conv = torch.nn.Conv2d(w.shape[1], w.shape[0], w.shape[2], padding=w.shape[2] // 2)
            with torch.no_grad():
                conv.weight.copy_(torch.from_numpy(w.copy()))
                conv.bias.copy_(torch.from_numpy(b.copy()))
            layers.append(conv)
        elif node.op_type == "Relu":
            layers.append(torch.nn.ReLU())
    return TorchRunner(torch.nn.Sequential(*layers), INPUT_NAME, [OUTPUT_NAME])


def measure_probe(job: dict[str, Any]) -> dict[str, Any]:
    """Time each stack of the probe as `job` says (in the bench's child process, one after the other):
    {"stacks": [{"p50_ms", "gmacs_per_s", ...}, ...], "torch_imported"}."""
    profile = TimingProfile(**job["profile"])
    target, precision = job["target"], job["precision"]
    stacks = []
    for item in job["probe"]:
        stack, engine = ProbeStack(**item["stack"]), Path(item["engine"])
        runner = TARGETS[target].runner(engine, precision) if target in TARGETS else _torch_probe(engine)
        with runner:
            feed = {runner.input_names[0]: probe_inputs(stack, 1)[0]}
            stats = summarize(time_calls(lambda: runner.infer(feed), profile), 1)
            used = getattr(runner, "inference_precision", None) if target in TARGETS else None
        stacks.append({"p50_ms": stats.p50_ms, "mean_ms": stats.mean_ms, "p90_ms": stats.p90_ms,
                       "iterations": stats.iterations, "macs": stack.macs, "gmacs_per_s": stack.macs / (stats.p50_ms * 1e6),
                       "inference_precision": used})
    return {"stacks": stacks, "torch_imported": "torch" in sys.modules}


def probe_key(target: str, precision: str) -> str:
    """A (target, precision)'s probe: "openvino/int8"; "mixed" engines are INT8 engines (engine_precision)."""
    return f"{target}/{engine_precision(precision)}"


def load_average() -> list[float] | None:
    """The 1/5/15-minute load averages now (a busy machine slows every number)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def probe_command(targets: Sequence[str], precisions: Sequence[str], quick: bool) -> str:
    """The command that measures these probes alone."""
    return (f"python -m enginesmith.benchmarks.roofline --targets {','.join(targets)} --precisions "
            f"{','.join(precisions)}" + (" --quick" if quick else ""))


class Roofline:
    """Each (target, engine precision)'s probe, built and measured once, when first asked for (`ceiling`).

    measure(job) -> result: bench.measure_isolated (a child process per measurement) or bench.measure_job.
    Probe engines live in a temporary folder removed by `close()` (or leaving `with`)."""

    def __init__(self, profile: TimingProfile, measure: Callable[[dict[str, Any]], dict[str, Any]],
                 stacks: Sequence[ProbeStack] = STACKS, echo: Callable[[str], None] = lambda s: None) -> None:
        self.profile = profile
        self.measure = measure
        self.stacks = tuple(stacks)
        self.echo = echo
        self.probes: dict[str, dict[str, Any]] = {}
        self._tmp = make_scratch("es-roofline")

    def __enter__(self) -> "Roofline":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        shutil.rmtree(self._tmp, ignore_errors=True)

    def ceiling(self, target: str, precision: str) -> float | None:
        """GMAC/s of the (target, precision) probe, measuring it the first time; None: no probe (GPU) or it failed."""
        if not probe_targets(target):
            return None
        key = probe_key(target, precision)
        if key not in self.probes:
            self.probes[key] = self._probe(target, engine_precision(precision))
        return self.probes[key]["gmacs_per_s"]

    def _probe(self, target: str, precision: str) -> dict[str, Any]:
        entry: dict[str, Any] = {"target": target, "precision": precision, "gmacs_per_s": None, "stacks": [],
                                 "load_average": load_average(), "date": time.strftime("%Y-%m-%d %H:%M:%S"),
                                 "build_s": None, "error": None}
        try:
            t0 = time.perf_counter()
            engines = [(stack, build_probe(target, precision, stack, self._tmp / f"{target}-{precision}-{i}"))
                       for i, stack in enumerate(self.stacks)]
            entry["build_s"] = time.perf_counter() - t0
            measured = self.measure(probe_job(target, precision, engines, self.profile))
            entry["stacks"] = [{"stack": stack.name, **asdict(stack), **m} for stack, m in zip(self.stacks, measured["stacks"])]
            entry["gmacs_per_s"] = max(s["gmacs_per_s"] for s in entry["stacks"])
            runs = entry["stacks"][0].get("inference_precision")
            self.echo(f"roofline probe {target}/{precision}: {entry['gmacs_per_s']:.0f} GMAC/s ("
                      + ", ".join(f"{s['stack']}: {s['gmacs_per_s']:.0f}" for s in entry["stacks"]) + ")"
                      + (f", inference precision {runs}" if runs else ""))
        except Exception as e:  # the probe is a reference: its failure leaves the rows without a fraction, nothing more
            entry["error"] = str(e) if isinstance(e, EnginesmithError) else f"{type(e).__name__}: {e}"
            self.echo(f"FAILED roofline probe {target}/{precision}: {entry['error']}")
        return entry

    def ceilings(self) -> dict[str, float | None]:
        """probe_key -> GMAC/s (None where the probe failed) of every probe measured so far."""
        return {k: p["gmacs_per_s"] for k, p in self.probes.items()}

    def to_dict(self, quick: bool) -> dict[str, Any]:
        """What results.json's header records (roofline_header) of every probe measured so far."""
        return roofline_header(self.probes, quick, self.stacks)


def roofline_header(probes: dict[str, dict[str, Any]], quick: bool, stacks: Sequence[ProbeStack] = STACKS) -> dict[str, Any]:
    """What results.json's header records: the stacks, the command, and the probes (key -> Roofline entry)."""
    targets = list(dict.fromkeys(p["target"] for p in probes.values()))
    precisions = list(dict.fromkeys(p["precision"] for p in probes.values()))
    return {"stacks": [{"stack": s.name, **asdict(s), "macs": s.macs} for s in stacks],
            "seed": SEED, "calibration_samples": CALIBRATION_SAMPLES, "statistic": "median call",
            "command": probe_command(targets, precisions, quick) if probes else None, "probes": probes}


# ---------------------------------------------------------------------------------------------- command line


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """`python -m enginesmith.benchmarks.roofline`: measure the probe alone and print its GMAC/s per stack."""
    from enginesmith.benchmarks.bench import measure_isolated

    parser = argparse.ArgumentParser(prog="python -m enginesmith.benchmarks.roofline", description=main.__doc__)
    parser.add_argument("--targets", default="openvino,onnxruntime", help="comma-separated CPU targets (torch: PyTorch)")
    parser.add_argument("--precisions", default="fp32,int8", help="comma-separated precisions")
    parser.add_argument("--quick", action="store_true", help="the bench's --quick timing (0.2 s per stack)")
    parser.add_argument("--min-time", type=float, default=None, help="seconds of timed calls per stack [default 3]")
    args = parser.parse_args(argv)
    profile = (TimingProfile.quick() if args.quick else TimingProfile()).with_min_time(args.min_time)
    echo = lambda s: print(s, flush=True)  # noqa: E731
    with Roofline(profile, lambda job: measure_isolated(job, 900.0), echo=echo) as roof:
        for target in args.targets.split(","):
            if target not in TARGETS and target not in BASELINES:
                parser.error(f"unknown target {target!r}; choose among {', '.join([*TARGETS, *BASELINES])}")
            if not probe_targets(target):
                echo(f"skipped {target}: a GPU target has no probe")
                continue
            precisions = BASELINES[target].precisions[:1] if target in BASELINES else args.precisions.split(",")
            for precision in precisions:
                if target in TARGETS:
                    runs, why = TARGETS[target].precision_runs_here(engine_precision(precision))
                    if precision not in TARGETS[target].precisions or not runs:
                        echo(f"skipped {target}/{precision}: "
                             + (why or f"{TARGETS[target].display} does not build {precision}"))
                        continue
                roof.ceiling(target, precision)
        return roof.to_dict(args.quick)


if __name__ == "__main__":
    main()
