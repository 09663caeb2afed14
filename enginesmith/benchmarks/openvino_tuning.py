"""Hand-tuned OpenVINO CPU configurations against enginesmith's own engines, at batch 1.

    python -m enginesmith.benchmarks.openvino_tuning RESULTS_JSON MODEL [--input-size 300x300] [--out DIR]

RESULTS_JSON is an `enginesmith bench` results.json; its batch-1 rows of MODEL name the engines. In one
process, one after another, on one real image (the offline photos, preprocessed as the engine's manifest
says):
1. enginesmith as shipped: every engine of those rows through its own Runner and options (sync calls),
   and the OpenVINO engines in the bench's throughput mode (PERFORMANCE_HINT THROUGHPUT, plugin's streams);
2. hand-tuned: every OpenVINO IR among them (fp32, fp16, int8 builds) compiled with each configuration of
   `config_grid`: INFERENCE_PRECISION_HINT f32 | bf16 | f16, and
   - sync: PERFORMANCE_HINT LATENCY, INFERENCE_NUM_THREADS 1..cores, ENABLE_CPU_PINNING on/off;
   - async: PERFORMANCE_HINT THROUGHPUT, NUM_STREAMS 1..cores, an AsyncInferQueue of the plugin's
     OPTIMAL_NUMBER_OF_INFER_REQUESTS.
Every trial also records the cosine similarity of its outputs to the FP32 IR's run at f32 (the lowest over
the outputs, each flattened: boxes and scores apart, so large box coordinates cannot hide changed scores),
so a faster configuration that changes the numbers (bf16, INT8) shows it.
Writes tuning-MODEL-SIZE.json and .md: every trial, the best of each mode, and the ratio best enginesmith
FPS / best hand-tuned FPS, over all precision hints and over f32-exact hints only.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from enginesmith.backends.targets import TARGETS
from enginesmith.benchmarks.bench import load_images
from enginesmith.benchmarks.machine import run_header
from enginesmith.benchmarks.timing import TimingProfile, measure, openvino_throughput
from enginesmith.errors import EnginesmithError
from enginesmith.files import write_json_atomic, write_text_atomic
from enginesmith.runtime.preprocess import PreprocessSpec, preprocess

PRECISION_HINTS = ("f32", "bf16", "f16")


@dataclass(frozen=True)
class EngineRef:
    """One built engine of the results: its target, build precision and engine file."""

    target: str
    precision: str
    engine: Path
    preprocess: dict[str, Any]
    input_name: str

    @property
    def label(self) -> str:
        return f"{self.target} {self.precision}"


@dataclass
class Trial:
    """One measured configuration. fps: images/s at batch 1; p50_ms: sync calls only."""

    who: str  # "enginesmith" | "hand-tuned"
    engine: str  # EngineRef.label
    mode: str  # "sync" | "async"
    config: dict[str, Any]
    fps: float | None = None
    p50_ms: float | None = None
    streams: int | None = None
    requests: int | None = None
    cosine: float | None = None
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def engines_from_results(results: dict[str, Any], model: str, size_text: str | None) -> tuple[str, list[EngineRef]]:
    """(size, engines): the batch-1 engines of `model` in a results.json at `size_text` (e.g. "300x300"),
    or at its only measured size when None."""
    rows = [r for r in results["rows"] if r["model"] == model and r["batch"] == 1 and r["status"] == "ok"
            and r.get("engine_dir")]
    sizes = sorted({r["input_size"] for r in rows})
    if not rows:
        raise EnginesmithError(f"the results have no measured batch-1 engine of {model}; run enginesmith bench first")
    if size_text is None:
        if len(sizes) > 1:
            raise EnginesmithError(f"{model} was measured at {', '.join(sizes)}: pick one with --input-size")
        size_text = sizes[0]
    refs = []
    for r in rows:
        if r["input_size"] != size_text:
            continue
        d = Path(r["engine_dir"])
        manifest = json.loads((d / "manifest.json").read_text())
        refs.append(EngineRef(r["target"], r["precision"], d / manifest["engine"], manifest["preprocess"],
                              manifest["input"]["name"]))
    if not refs:
        raise EnginesmithError(f"no batch-1 engine of {model} at {size_text}; measured sizes: {', '.join(sizes)}")
    return size_text, refs


def config_grid(cores: int) -> Iterator[tuple[str, dict[str, Any]]]:
    """(mode, CPU properties) of every hand-tuned configuration tried."""
    for hint in PRECISION_HINTS:
        for threads in range(1, cores + 1):
            for pinning in (True, False):
                yield "sync", {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": hint,
                               "INFERENCE_NUM_THREADS": threads, "ENABLE_CPU_PINNING": pinning}
        for streams in range(1, cores + 1):
            yield "async", {"PERFORMANCE_HINT": "THROUGHPUT", "INFERENCE_PRECISION_HINT": hint, "NUM_STREAMS": streams}


def _flat(outputs: dict[str, np.ndarray] | list[np.ndarray]) -> list[np.ndarray]:
    """Each output as a flat float64 vector, in the model's output order."""
    values = outputs.values() if isinstance(outputs, dict) else outputs
    return [np.asarray(v, dtype=np.float64).ravel() for v in values]


def min_cosine(outputs: list[np.ndarray], reference: list[np.ndarray]) -> float:
    """The lowest cosine similarity over corresponding outputs."""
    if len(outputs) != len(reference):
        raise EnginesmithError(f"{len(outputs)} outputs against {len(reference)} in the reference engine")
    return min(cosine(a, b) for a, b in zip(outputs, reference))


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two flat vectors (1.0 for two zero vectors)."""
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0.0 or nb == 0.0:
        return 1.0 if na == nb else 0.0
    return float(np.dot(a, b) / (na * nb))


def measure_shipped(ref: EngineRef, x: np.ndarray, profile: TimingProfile) -> tuple[Trial, list[np.ndarray]]:
    """enginesmith's own Runner for `ref`, sync calls; also its flattened outputs."""
    target = TARGETS[ref.target]
    options = target.options(ref.precision)
    with target.runner(ref.engine, ref.precision) as runner:
        out = runner.infer({ref.input_name: x})
        stats = measure(lambda: runner.infer({ref.input_name: x}), 1, profile)
    return Trial("enginesmith", ref.label, "sync", {"runner": ref.target, **options}, fps=stats.fps,
                 p50_ms=stats.p50_ms), _flat(out)


def measure_sync(xml: Path, x: np.ndarray, config: dict[str, Any], profile: TimingProfile) -> tuple[float, float, list[np.ndarray]]:
    """(fps, p50 ms, flattened outputs) of sync infer calls on `xml` compiled with `config`."""
    import openvino as ov

    core = ov.Core()
    compiled = core.compile_model(core.read_model(str(xml)), "CPU", config)
    request = compiled.create_infer_request()
    out = [np.array(v) for v in request.infer({0: x}).to_tuple()]
    stats = measure(lambda: request.infer({0: x}, share_inputs=True), 1, profile)
    return stats.fps, stats.p50_ms, _flat(out)


def _outputs(xml: Path, x: np.ndarray, config: dict[str, Any]) -> list[np.ndarray]:
    import openvino as ov

    core = ov.Core()
    compiled = core.compile_model(core.read_model(str(xml)), "CPU", {**config, "PERFORMANCE_HINT": "LATENCY"})
    return _flat([np.array(v) for v in compiled.create_infer_request().infer({0: x}).to_tuple()])


def tune(refs: list[EngineRef], profile: TimingProfile, cores: int, echo: Any = print) -> list[Trial]:
    """Every trial (module docstring): enginesmith's engines first, then the hand-tuned grid."""
    image = load_images({"kind": "photos", "seed": 0}, 1)[0]
    x = preprocess(image, PreprocessSpec.from_dict(refs[0].preprocess))[0][None].astype(np.float32)
    reference_ref = next((r for r in refs if r.target == "openvino" and r.precision == "fp32"), None)
    if reference_ref is None:
        raise EnginesmithError("the results have no OpenVINO fp32 engine to tune (bench with --targets openvino)")
    reference = _outputs(reference_ref.engine, x, {"INFERENCE_PRECISION_HINT": "f32"})
    trials: list[Trial] = []

    def run(trial: Trial, work: Any) -> None:
        try:
            work(trial)
        except Exception as e:  # a configuration the plugin rejects is a row, not the end of the sweep
            trial.error = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        trials.append(trial)
        echo(f"{trial.who:11s} {trial.engine:16s} {trial.mode:5s} {trial.config} -> "
             + (f"{trial.fps:.1f} FPS, cosine {trial.cosine:.6f}" if trial.fps else f"error: {trial.error}"))

    for ref in refs:
        def shipped(t: Trial, ref: EngineRef = ref) -> None:
            measured, out = measure_shipped(ref, x, profile)
            t.config, t.fps, t.p50_ms = measured.config, measured.fps, measured.p50_ms
            t.cosine = min_cosine(out, reference)
        run(Trial("enginesmith", ref.label, "sync", {}), shipped)
        if ref.target == "openvino":
            hint = TARGETS[ref.target].options(ref.precision)["inference_precision"]

            def shipped_async(t: Trial, ref: EngineRef = ref, hint: str = hint) -> None:
                thr = openvino_throughput(ref.engine, x, hint, profile.throughput_s)
                t.fps, t.streams, t.requests, t.config = thr["fps"], thr["streams"], thr["requests"], thr["config"]
                t.cosine = min_cosine(_outputs(ref.engine, x, {"INFERENCE_PRECISION_HINT": hint}), reference)
            run(Trial("enginesmith", ref.label, "async", {}), shipped_async)
    for ref in (r for r in refs if r.target == "openvino"):
        for mode, config in config_grid(cores):
            def hand(t: Trial, ref: EngineRef = ref, mode: str = mode, config: dict[str, Any] = config) -> None:
                if mode == "sync":
                    t.fps, t.p50_ms, out = measure_sync(ref.engine, x, config, profile)
                else:
                    rest = {k: v for k, v in config.items() if k not in ("PERFORMANCE_HINT", "INFERENCE_PRECISION_HINT")}
                    thr = openvino_throughput(ref.engine, x, config["INFERENCE_PRECISION_HINT"], profile.throughput_s,
                                              extra_config=rest)
                    t.fps, t.streams, t.requests = thr["fps"], thr["streams"], thr["requests"]
                    out = _outputs(ref.engine, x, {"INFERENCE_PRECISION_HINT": config["INFERENCE_PRECISION_HINT"]})
                t.cosine = min_cosine(out, reference)
            run(Trial("hand-tuned", ref.label, mode, dict(config)), hand)
    return trials


def _best(trials: list[Trial], who: str, mode: str | None, f32_only: bool = False) -> Trial | None:
    ok = [t for t in trials if t.who == who and t.fps and (mode is None or t.mode == mode)
          and not (f32_only and t.config.get("INFERENCE_PRECISION_HINT", "f32") != "f32")]
    return max(ok, key=lambda t: t.fps or 0.0) if ok else None


def summary(trials: list[Trial]) -> list[dict[str, Any]]:
    """Per comparison (sync, async, either; all hints or f32 hints only): best of each side and the ratio."""
    rows = []
    for mode in ("sync", "async", None):
        for f32_only in (False, True):
            ours = _best(trials, "enginesmith", mode, f32_only)
            hand = _best(trials, "hand-tuned", mode, f32_only)
            rows.append({"mode": mode or "either", "hints": "f32 only" if f32_only else "f32, bf16, f16",
                         "enginesmith": asdict(ours) if ours else None, "hand_tuned": asdict(hand) if hand else None,
                         "ratio": (ours.fps / hand.fps) if ours and hand and hand.fps else None})
    return rows


def _config_text(config: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in config.items())


def render_markdown(model: str, size_text: str, header: dict[str, Any], trials: list[Trial]) -> str:
    lines = [f"# OpenVINO hand-tuning: {model} {size_text}, batch 1", "",
             f"- command: `{header['command']}`", f"- date: {header['date']}",
             f"- machine: {header['machine']}; commit {header['commit']}; load average at start "
             f"{header['load_average']}",
             "- versions: " + ", ".join(f"{k} {v}" for k, v in header["versions"].items()),
             f"- timing: {header['timing']['min_time_s']} s of calls per sync trial after warm-up; "
             f"{header['timing']['throughput_s']} s of async requests per async trial", "",
             "## Best enginesmith engine over best hand-tuned configuration", "",
             "| mode | precision hints | best enginesmith | FPS | best hand-tuned | FPS | ratio |",
             "|---|---|---|---|---|---|---|"]
    for s in summary(trials):
        o, h = s["enginesmith"], s["hand_tuned"]
        lines.append(f"| {s['mode']} | {s['hints']} | {o['engine'] + ' ' + o['mode'] if o else '—'} | "
                     f"{o['fps']:.1f} | " if o else f"| {s['mode']} | {s['hints']} | — | — | ")
        lines[-1] += (f"{h['engine']}: {_config_text(h['config'])} | {h['fps']:.1f} | " if h else "— | — | ")
        lines[-1] += f"{s['ratio']:.2f} |" if s["ratio"] else "— |"
    lines += ["", "## Every trial", "", "| who | engine | mode | configuration | FPS | p50 ms | streams/requests | "
              "cosine to FP32 |", "|---|---|---|---|---|---|---|---|"]
    for t in trials:
        fps = f"{t.fps:.1f}" if t.fps else f"error: {t.error}"
        lines.append(f"| {t.who} | {t.engine} | {t.mode} | {_config_text(t.config)} | {fps} | "
                     f"{t.p50_ms:.2f} | " if t.p50_ms else f"| {t.who} | {t.engine} | {t.mode} | "
                     f"{_config_text(t.config)} | {fps} | — | ")
        lines[-1] += (f"{t.streams}/{t.requests} | " if t.streams else "— | ")
        lines[-1] += f"{t.cosine:.6f} |" if t.cosine is not None else "— |"
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, help="results.json of `enginesmith bench`")
    parser.add_argument("model")
    parser.add_argument("--input-size", default=None, help="e.g. 416x416, when the model was measured at several")
    parser.add_argument("--out", type=Path, default=Path("build/bench"))
    parser.add_argument("--min-time", type=float, default=2.0, help="seconds of calls per trial")
    args = parser.parse_args(argv)
    try:
        if not args.results.is_file():
            raise EnginesmithError(f"results file not found: {args.results}; run enginesmith bench first")
        size_text, refs = engines_from_results(json.loads(args.results.read_text()), args.model, args.input_size)
        profile = TimingProfile().with_min_time(args.min_time)
        header = {**run_header(), "command": shlex.join(["python", "-m", "enginesmith.benchmarks.openvino_tuning",
                                                           *(sys.argv[1:] if argv is None else argv)]),
                  "timing": profile.to_dict(), "load_average": [round(v, 2) for v in os.getloadavg()]}
        start = time.perf_counter()
        trials = tune(refs, profile, os.cpu_count() or 1)
        header["wall_s"] = time.perf_counter() - start
    except EnginesmithError as e:
        sys.stderr.write(f"error: {e}\n")
        return e.exit_code
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"tuning-{args.model}-{size_text}"
    write_json_atomic(stem.with_suffix(".json"), {"run": header, "summary": summary(trials),
                                                  "trials": [asdict(t) for t in trials]})
    write_text_atomic(stem.with_suffix(".md"), render_markdown(args.model, size_text, header, trials))
    print(render_markdown(args.model, size_text, header, trials).split("## Every trial")[0])
    return 0


if __name__ == "__main__":
    sys.exit(main())
