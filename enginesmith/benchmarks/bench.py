"""`enginesmith bench`: build every engine a suite names (through the cached pipeline), then measure it.

    run_bench(suite, out) -> BenchOutcome      (results.json/csv/md + fps_vs_map.png in `out`)

Phase 1 builds (parent process): each engine run goes through pipeline.run.build_engine (cached by
content hash; with weights + dataset the build's accuracy stages measure VOC07 mAP / COCO AP or top-1
on the held-out split, measured, never enforced), and every model's MACs are counted.
Phase 2 measures (one child process per run, `python -m enginesmith.benchmarks.bench JOB OUT`, so peak
RSS is that engine's own process and a native crash becomes a failed row): load the engine, time
inference-only calls on one batch of real images, run the end-to-end loop on decoded real images
(preprocess / inference / decode + NMS timed apart in a sequential loop, then the whole as detector.batch()
runs it, host work overlapped with inference), read the process's peak RSS, then OpenVINO's
throughput mode. Engine children import no torch; the "torch" target is PyTorch eager FP32 on the CPU.
After the first measured row of each (target, precision) on the CPU, that pair's roofline probe
(benchmarks/roofline.py: 3x3 convolution stacks built through the same precision stage and backend) is
measured in a child process the same way; the header records it.
Phase 3: ratios (FPS over PyTorch eager FP32 of the same model, size and batch; GMAC/s over the probe's
GMAC/s of the row's own target and precision) and the result files, rewritten after every run.

Longer than 400 lines: both phases of a bench and the JSON job that passes between them; the measuring half
is what issue 20 (Ray) replaces, so it is split then.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from enginesmith.backends.base import first_line
from enginesmith.benchmarks.results import empty_row, write_results
from enginesmith.backends.targets import TARGETS
from enginesmith.backends.torch import TorchRunner
from enginesmith.backends.torch_compile import TorchCompileRunner
from enginesmith.benchmarks.evaluate import evaluate
from enginesmith.benchmarks.machine import run_header as machine_header
from enginesmith.benchmarks.suite import BASELINES, GPU_TARGETS, REFERENCE_BASELINE, Run, Skipped, Suite, plan
from enginesmith.benchmarks.roofline import Roofline, load_average, measure_probe, probe_key
from enginesmith.benchmarks.timing import TimingProfile, measure, openvino_throughput, time_calls
from enginesmith.data.classification import classification_samples
from enginesmith.data.datasets import open_dataset
from enginesmith.data.offline_photos import offline_photos
from enginesmith.errors import EnginesmithError
from enginesmith.files import scratch_dir, write_json_atomic
from enginesmith.models import registry
from enginesmith.models.weights.checkpoint_info import read_checkpoint_info
from enginesmith.pipeline.run import MEASUREMENT_STAGES, BuildConfig, build_engine
from enginesmith.progress import progress_bar
from enginesmith.runtime.nms import DEFAULT_SCORE_THRESHOLD, nms_detections
from enginesmith.runtime.openvino_async import AsyncEngine
from enginesmith.runtime.overlap import overlapped
from enginesmith.runtime.preprocess import PreprocessSpec, preprocess
from enginesmith.runtime.preprocess_override import PreprocessOverride, resolve_preprocess

INPUT_NAME = "images"  # pipeline.export.INPUT_NAME (not imported: that module imports torch)
ACCURACY_NOT_ENFORCED = 100.0  # points: the bench measures accuracy, it does not fail a build on it
QUICK_CALIB_SIZE = 8
CHILD_TIMEOUT_S = {"quick": 900.0, "full": 3600.0}
Echo = Callable[[str], None]
# (groups, prepare, finish) -> results: runtime/overlap.py's overlapped or AsyncEngine.pipeline, with infer bound
Pipeline = Callable[[Iterable[Any], Callable[[Any], Any], Callable[[dict[str, np.ndarray], Any], list[Any]]], Iterator[Any]]


@dataclass
class Built:
    """What phase 1 learnt about one run."""

    engine_dir: Path | None = None
    engine_file: Path | None = None
    manifest: dict[str, Any] | None = None
    build_s: float | None = None
    cached: bool | None = None
    engine_bytes: int | None = None
    verify_cosine: float | None = None  # engine outputs vs the FP32 ONNX on the verification images
    accuracy: dict[str, Any] | None = None
    error: str | None = None


@dataclass
class BenchOutcome:
    rows: list[dict[str, Any]]
    skipped: list[Skipped]
    paths: dict[str, Path]
    run: dict[str, Any] = field(default_factory=dict)

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [r for r in self.rows if r["status"] != "ok"]


# ---------------------------------------------------------------------------------------------- checks


def check_targets(runs: list[Run]) -> None:
    """Every target the runs need must be usable here; say which is not and how to drop it."""
    for target in dict.fromkeys(r.target for r in runs):
        if target in TARGETS:
            ok, why = TARGETS[target].available()
        elif BASELINES[target].device == "cuda":
            import torch

            ok, why = torch.cuda.is_available(), f"no CUDA GPU: PyTorch {torch.__version__} sees none"
        else:
            ok, why = True, ""
        if not ok:
            raise EnginesmithError(f"target {target} is not usable here ({why}); drop it from --targets or the suite")


def gpu_name() -> str | None:
    try:
        import torch

        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except Exception:
        return None


# ---------------------------------------------------------------------------------------------- phase 1


def engine_dir_for(engines: Path, run: Run) -> Path:
    nms = "-nms" if run.nms == "engine" else ""
    return Path(engines) / f"{run.model}-{run.size_text}" / f"{run.target}-{run.precision}-b{run.batch}{nms}"


def _points(metrics: dict[str, Any], task: str, fractions: bool) -> dict[str, Any]:
    """Accuracy in points from the build's accuracy stage (points) or evaluate() (fractions)."""
    f = 100.0 if fractions else 1.0

    def val(key: str) -> float | None:
        v = metrics.get(key)
        return None if v is None or not math.isfinite(float(v)) else f * float(v)

    images = metrics.get("images") if not fractions else metrics.get("timing", {}).get("images")
    if task == "detection":
        return {"map_voc07": val("voc07_map" if fractions else "value"), "map_all_point": val("map"),
                "coco_ap": val("coco_ap"), "accuracy_images": images}
    return {"top1": val("top1" if fractions else "value"), "accuracy_images": images}


def build_run(run: Run, engines: Path, cache_dir: Path, quick: bool, calib_size: int,
              reference: dict[tuple, dict[str, Any]]) -> Built:
    """Build (or reuse) the engine of an engine run; record the PyTorch FP32 accuracy in `reference`."""
    accuracy = run.measures_accuracy and run.task in ("detection", "classification")
    calib = run.calib
    if calib is None and run.task == "detection" and isinstance(run.dataset, Path):
        calib = run.dataset  # a detection dataset: build-engine calibrates on its train split
    stages: list[Any] = []
    config = BuildConfig(
        model=run.model, target=run.target, precision=run.precision, weights=run.weights, calib=calib,
        calib_size=max(run.batch, min(calib_size, QUICK_CALIB_SIZE) if quick else calib_size), batch=run.batch,
        input_size=run.input_size, num_classes=run.num_classes, nms=run.nms, out=engine_dir_for(engines, run),
        cache_dir=Path(cache_dir), latency_budget_s=0.1 if quick else 1.0,
        val=Path(str(run.dataset)) if accuracy else None, val_split=run.split,
        accuracy_budget=ACCURACY_NOT_ENFORCED if accuracy else None, record_int8_tolerance=True,
        **_preprocess_options(run.preprocess),
    )
    result = build_engine(config, on_stage=stages.append)
    manifest = json.loads((result.out / "manifest.json").read_text())
    built = Built(engine_dir=result.out, engine_file=result.engine, manifest=manifest,
                  build_s=sum(float(s.get("wall_time_s", 0.0)) for s in manifest["stages"]
                              if s["stage"] not in MEASUREMENT_STAGES),
                  cached=all(a.cached for a in stages if a.stage not in MEASUREMENT_STAGES))
    engine_stage = next((s for s in manifest["stages"] if s["stage"] == "engine"), None)
    if engine_stage is not None:
        built.engine_bytes = engine_stage["metrics"].get("engine_bytes")
        built.verify_cosine = (engine_stage["metrics"].get("verify") or {}).get("cosine")
    for a in stages:
        if a.stage == "accuracy":
            built.accuracy = _points(a.metrics, run.task, fractions=False)
        elif a.stage == "accuracy-fp32":
            reference[_reference_key(run)] = _points(a.metrics, run.task, fractions=False)
    return built


def _preprocess_options(override: PreprocessOverride | None) -> dict[str, Any]:
    """BuildConfig's channels / mean / std from a run's override."""
    if override is None:
        return {}
    return {"channels": override.channels, "mean": override.mean, "std": override.std}


def _reference_key(run: Run) -> tuple:
    return (run.model, run.input_size, str(run.weights), str(run.dataset), run.split, run.num_classes, run.preprocess)


def torch_accuracy(run: Run, reference: dict[tuple, dict[str, Any]]) -> dict[str, Any] | None:
    """PyTorch FP32 accuracy: the builds' accuracy-fp32 stage when one ran, else evaluate() on the model."""
    if not (run.measures_accuracy and run.task in ("detection", "classification")):
        return None
    key = _reference_key(run)
    if key not in reference:
        metrics = evaluate(run.model, run.dataset, split=run.split, weights=run.weights,  # type: ignore[arg-type]
                           num_classes=run.num_classes, input_size=run.input_size, batch_size=run.batch,
                           progress=True, preprocess=run.preprocess)
        reference[key] = _points(metrics, run.task, fractions=True)
    return reference[key]


def model_macs(model: str, size: tuple[int, int], num_classes: int | None) -> int | None:
    """MACs of one image (conv + linear, models/profile.py), on torch's meta device where it can."""
    import torch

    from enginesmith.models.profile import profile_forward

    spec = registry.get(model)
    shape = (spec.preprocess.channels, *size)
    try:
        with torch.device("meta"):
            net = spec.create(num_classes=num_classes, input_size=size)
        return profile_forward(net, shape)[0]
    except (NotImplementedError, RuntimeError, TypeError, ValueError):
        try:
            return profile_forward(spec.create(num_classes=num_classes, input_size=size), shape)[0]
        except Exception:
            return None


# ---------------------------------------------------------------------------------------------- phase 2


def make_job(run: Run, built: Built | None, profile: TimingProfile, throughput: bool, ov_streams: int | None) -> dict[str, Any]:
    """What the measuring process needs, as JSON."""
    spec = registry.get(run.model)
    if isinstance(run.dataset, (Path, str)) and run.task in ("detection", "classification"):
        images = {"kind": run.task, "path": str(run.dataset), "split": run.split}
    else:
        images = {"kind": "photos", "seed": 0}
    job: dict[str, Any] = {"key": run.key, "target": run.target, "precision": run.precision, "batch": run.batch,
                           "task": run.task, "images": images, "profile": profile.to_dict(),
                           "throughput": bool(throughput and run.target in TARGETS and TARGETS[run.target].streams_async), "ov_streams": ov_streams}
    if built is not None and built.manifest is not None:
        m = built.manifest
        job.update(engine=str(built.engine_file), input_name=m["input"]["name"], preprocess=m["preprocess"],
                   runtime=dict(m.get("runtime") or {}))  # the settings the runtime would use (--target auto's)
    else:
        info = read_checkpoint_info(run.weights) if run.weights else {}
        pre, _ = resolve_preprocess(spec.preprocess.with_size(*run.input_size), run.preprocess, info.get("preprocess"),
                                    spec.name, str(run.weights))
        job.update(engine=None, input_name=INPUT_NAME, preprocess=pre.to_dict(),
                   torch={"model": run.model, "input_size": list(run.input_size), "num_classes": run.num_classes,
                          "weights": str(run.weights) if run.weights else None, "seed": 0,
                          "device": "cuda" if run.target in GPU_TARGETS else "cpu", "half": run.precision == "fp16",
                          "compile": BASELINES[run.target].compiled})
    return job


def _status_mb(field_name: str) -> float | None:
    """VmRSS / VmHWM of this process in MB (Linux), else None."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) / 1024.0
    except (OSError, ValueError, IndexError):
        pass
    return None


def load_images(spec: dict[str, Any], n: int) -> list[np.ndarray]:
    """`n` real decoded images (H, W, 3) uint8 RGB: a dataset split's first images (cycled when fewer), or
    the offline photos (data/offline_photos.py)."""
    kind = spec["kind"]
    if kind == "photos":
        return list(offline_photos(n, seed=int(spec.get("seed", 0))))
    if kind == "detection":
        ds: Any = open_dataset(Path(spec["path"]), spec["split"])
    else:
        path = spec["path"]
        ds = classification_samples(path if path == "digits" and not Path(path).exists() else Path(path), spec["split"])
    if not len(ds):
        raise EnginesmithError(f"dataset {spec['path']} ({spec['split']}) has no images to benchmark on")
    return [ds.load_image(i % len(ds)) for i in range(n)]


def _torch_runner(t: dict[str, Any]) -> tuple[Any, int]:
    """(runner, state-dict bytes) for the job's PyTorch model: eager on the CPU (FP32); on a CUDA GPU eager
    ("torch-cuda") or torch.compile ("torch-compile"), channels_last, FP16 by autocast."""
    import torch

    spec = registry.get(t["model"])
    model = spec.create(num_classes=t["num_classes"], input_size=tuple(t["input_size"]), seed=int(t["seed"]))
    if t["weights"]:
        spec.load_weights(model, Path(t["weights"]))
    size = sum(v.numel() * v.element_size() for v in model.state_dict().values())
    precision = "fp16" if t["half"] else "fp32"
    if t.get("compile"):
        return TorchCompileRunner(model, INPUT_NAME, list(spec.output_names), device=t["device"], precision=precision), size
    if str(t["device"]).startswith("cuda"):
        return TorchRunner(model, INPUT_NAME, list(spec.output_names), device=t["device"], precision=precision), size
    if t["half"]:
        inner = model.half()

        class Half(torch.nn.Module):
            """float32 in -> fp16 model -> float32 out (PyTorch eager FP16 on the GPU)."""

            def __init__(self) -> None:
                super().__init__()
                self.inner = inner

            def forward(self, x: Any) -> Any:
                out = self.inner(x.half())
                return tuple(o.float() for o in out) if isinstance(out, (tuple, list)) else out.float()

        model = Half().eval()
    return TorchRunner(model, INPUT_NAME, list(spec.output_names), device=t["device"]), size


def _postprocess(task: str, out: dict[str, np.ndarray], transforms: list[Any]) -> None:
    """Deployment post-processing of one batch: detectors -> NMS'd boxes in original pixels; classifiers -> top-5."""
    n = len(transforms)
    if task == "detection":
        if "detections" in out:
            dets, num = out["detections"], out["num_detections"]
        else:
            dets, num = nms_detections(out["boxes"][:n], out["scores"][:n])
        for i, t in enumerate(transforms):
            t.to_original(dets[i, : int(num[i]), :4])
    elif task == "classification":
        logits = np.asarray(out["logits"][:n], dtype=np.float32)
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs = e / e.sum(axis=1, keepdims=True)
        k = min(5, probs.shape[1])
        np.argpartition(-probs, k - 1, axis=1)[:, :k]


def _e2e_group(images: list[np.ndarray], batch: int, k: int) -> list[np.ndarray]:
    """The k-th batch of the end-to-end loops: `batch` images cycled from `images`."""
    return [images[(k * batch + j) % len(images)] for j in range(batch)]


def _e2e_prepare(pre_spec: Any) -> Callable[[list[np.ndarray]], tuple[np.ndarray, list[Any]]]:
    def prepare(imgs: list[np.ndarray]) -> tuple[np.ndarray, list[Any]]:
        pairs = [preprocess(img, pre_spec) for img in imgs]
        return np.stack([p[0] for p in pairs]).astype(np.float32, copy=False), [p[1] for p in pairs]
    return prepare


def end_to_end(runner: Any, input_name: str, images: list[np.ndarray], pre_spec: Any, task: str, batch: int,
               profile: TimingProfile) -> dict[str, float]:
    """Decoded images in, results out, over batches of `batch` images cycled from `images`, one batch after
    another with each part timed apart: mean ms per image for preprocessing, inference and post-processing,
    `fps_e2e_sequential` over their sum, and `e2e_calls` batches (end_to_end_pipelined runs as many)."""
    state = {"k": 0}
    parts = np.zeros(3)
    prepare = _e2e_prepare(pre_spec)

    def one_batch() -> None:
        k = state["k"]
        state["k"] = k + 1
        t0 = time.perf_counter()
        x, transforms = prepare(_e2e_group(images, batch, k))
        t1 = time.perf_counter()
        out = runner.infer({input_name: x})
        t2 = time.perf_counter()
        _postprocess(task, out, transforms)
        t3 = time.perf_counter()
        parts[:] += (t1 - t0, t2 - t1, t3 - t2)

    for _ in range(max(1, profile.warmup_iterations)):
        one_batch()
    parts[:] = 0
    calls = len(time_calls(one_batch, profile, warmup=False))
    n_images = calls * batch
    per = parts * 1000.0 / n_images
    return {"preprocess_ms": float(per[0]), "inference_ms": float(per[1]), "postprocess_ms": float(per[2]),
            "fps_e2e_sequential": float(n_images / parts.sum()), "e2e_calls": calls}


def end_to_end_pipelined(pipeline: Pipeline, images: list[np.ndarray], pre_spec: Any, task: str, batch: int,
                         calls: int) -> float:
    """Images per second of `calls` batches (cycled from `images`, as end_to_end's) through `pipeline`, the loop
    detector.batch() runs (`pipeline_for`), timed as a whole after one warm-up batch."""
    prepare = _e2e_prepare(pre_spec)

    def finish(out: dict[str, np.ndarray], prepared: tuple[np.ndarray, list[Any]]) -> list[None]:
        _postprocess(task, out, prepared[1])
        return [None]

    for _ in pipeline([_e2e_group(images, batch, 0)], prepare, finish):
        pass
    t0 = time.perf_counter()
    for _ in pipeline((_e2e_group(images, batch, k) for k in range(calls)), prepare, finish):
        pass
    return calls * batch / (time.perf_counter() - t0)


def pipeline_for(runner: Any, input_name: str, async_engine: Any = None) -> Pipeline:
    """The loop detector.batch() runs over several batches: OpenVINO's async queue on its THROUGHPUT model
    (`async_engine`, runtime/openvino_async.py), otherwise runtime/overlap.py around `runner`."""
    if async_engine is not None:
        return lambda groups, prepare, finish: async_engine.pipeline(input_name, groups, prepare, finish)
    return lambda groups, prepare, finish: overlapped(groups, prepare, lambda p: runner.infer({input_name: p[0]}), finish)


def measure_job(job: dict[str, Any], isolated: bool = True) -> dict[str, Any]:
    """Measure one engine (or PyTorch model, or a roofline probe) as `job` says; see the module docstring."""
    if "probe" in job:
        return measure_probe(job)
    profile = TimingProfile(**job["profile"])
    batch, task = int(job["batch"]), job["task"]
    pre_spec = PreprocessSpec.from_dict(job["preprocess"])
    images = load_images(job["images"], max(profile.e2e_images, batch))
    base_rss = _status_mb("VmRSS")
    state_bytes = None
    t0 = time.perf_counter()
    if job.get("torch"):
        runner, state_bytes = _torch_runner(job["torch"])
    else:
        runner = TARGETS[job["target"]].runner(Path(job["engine"]), job["precision"], **job.get("runtime", {}))
    input_name = job["input_name"]
    with runner:
        load_s = time.perf_counter() - t0
        x = np.stack([preprocess(images[j % len(images)], pre_spec)[0] for j in range(batch)]).astype(np.float32)
        feed = {input_name: x}
        first = runner.infer(feed)
        boxes = candidates = None
        if task == "detection" and "boxes" in first:
            boxes = int(first["boxes"].shape[1])
            candidates = float((np.asarray(first["scores"]) > DEFAULT_SCORE_THRESHOLD).sum() / batch)
        stats = measure(lambda: runner.infer(feed), batch, profile)
        e2e = None
        if job.get("e2e", True):  # --target auto ranks by inference alone and skips the end-to-end loops
            e2e = end_to_end(runner, input_name, images, pre_spec, task, batch, profile)
        peak_rss = _status_mb("VmHWM")  # the engine's own: before batch()'s OpenVINO throughput model is compiled
        if e2e is not None:
            async_engine = None
            if not job.get("torch") and TARGETS[job["target"]].streams_async:
                hint = TARGETS[job["target"]].options(job["precision"])["inference_precision"]
                async_engine = AsyncEngine(Path(job["engine"]), hint, 0, job.get("runtime", {}).get("num_streams"))
            e2e["fps_e2e"] = end_to_end_pipelined(pipeline_for(runner, input_name, async_engine), images, pre_spec,
                                                  task, batch, e2e["e2e_calls"])
            async_engine = None
    result: dict[str, Any] = {"latency": stats.to_dict(), "e2e": e2e, "boxes": boxes, "candidates": candidates,
                              "load_s": load_s, "torch_imported": "torch" in sys.modules, "state_dict_bytes": state_bytes,
                              "peak_rss_mb": peak_rss if isolated else None, "base_rss_mb": base_rss if isolated else None,
                              "throughput": None}
    if job.get("throughput"):
        hint = TARGETS["openvino"].options(job["precision"])["inference_precision"]
        streams = job.get("ov_streams") or job.get("runtime", {}).get("num_streams")
        result["throughput"] = openvino_throughput(Path(job["engine"]), x, hint, profile.throughput_s, streams)
    return result


def measure_isolated(job: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    """measure_job in a child process (`python -m enginesmith.benchmarks.bench JOB OUT`)."""
    import signal

    with scratch_dir("es-bench") as tmp:
        job_path, out_path = Path(tmp) / "job.json", Path(tmp) / "result.json"
        job_path.write_text(json.dumps(job))
        cmd = [sys.executable, "-m", "enginesmith.benchmarks.bench", str(job_path), str(out_path)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise EnginesmithError(f"measuring {job['key']} took over {timeout_s:.0f} s; use --min-time or --quick") from None
        if proc.returncode < 0:
            try:
                name = signal.Signals(-proc.returncode).name
            except ValueError:
                name = "unknown signal"
            raise EnginesmithError(f"the {job['target']} engine crashed (signal {-proc.returncode}, {name}) while "
                                   f"measuring {job['key']}")
        if out_path.is_file():
            data = json.loads(out_path.read_text())
            if "error" in data:
                raise EnginesmithError(data["error"])
            return data
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        raise EnginesmithError(f"measuring {job['key']} failed (exit code {proc.returncode}): "
                               f"{lines[-1].strip() if lines else 'no error output'}")


# ---------------------------------------------------------------------------------------------- phase 3


def make_row(run: Run, built: Built | None, measured: dict[str, Any] | None, accuracy: dict[str, Any] | None,
             macs: int | None, error: str | None) -> dict[str, Any]:
    """One results row (results.COLUMNS); ratios are filled later by add_ratios."""
    r = empty_row()
    r.update(method=run.method, model=run.model, input_size=run.size_text, target=run.target, precision=run.precision,
             batch=run.batch, status="error" if error else "ok", error=error, macs=macs,
             weights=str(run.weights) if run.weights else "untrained (seed 0)",
             dataset=str(run.dataset) if run.dataset is not None else None)
    if accuracy:
        r.update(accuracy)
    if built is not None:
        r.update(engine_dir=str(built.engine_dir) if built.engine_dir else None, build_s=built.build_s,
                 build_cached=built.cached, verify_cosine=built.verify_cosine,
                 engine_mb=None if built.engine_bytes is None else built.engine_bytes / 1e6)
    if measured:
        lat, e2e, thr = measured["latency"], measured["e2e"], measured.get("throughput")
        r.update(fps=lat["fps"], latency_p50_ms=lat["p50_ms"], latency_p90_ms=lat["p90_ms"], latency_p99_ms=lat["p99_ms"],
                 latency_mean_ms=lat["mean_ms"], latency_std_ms=lat["std_ms"], iterations=lat["iterations"],
                 fps_e2e=e2e["fps_e2e"], preprocess_ms=e2e["preprocess_ms"], inference_ms=e2e["inference_ms"],
                 postprocess_ms=e2e["postprocess_ms"], e2e_over_inference=e2e["fps_e2e"] / lat["fps"],
                 boxes=measured["boxes"], candidates=measured["candidates"], peak_rss_mb=measured["peak_rss_mb"],
                 base_rss_mb=measured["base_rss_mb"], load_s=measured["load_s"])
        if measured.get("state_dict_bytes") is not None:
            r["engine_mb"] = measured["state_dict_bytes"] / 1e6
        if thr:
            r.update(fps_throughput=thr["fps"], throughput_streams=thr["streams"], throughput_requests=thr["requests"])
    return r


def add_ratios(rows: list[dict[str, Any]], ceilings: dict[str, float | None],
               ceiling_key: Callable[[dict[str, Any]], str] = lambda r: probe_key(r["target"], r["precision"])) -> None:
    """speedup_vs_torch (CPU targets over "torch" FP32, GPU targets over "torch-cuda" FP32, same model,
    size and batch) and GMAC/s over the roofline probe's GMAC/s of the row's own target and precision
    (`ceilings`: ceiling_key(row) -> GMAC/s, by default roofline.probe_key; GPU rows and failed probes: none)."""
    base = {(r["model"], r["input_size"], r["batch"], r["target"]): r["fps"] for r in rows
            if r["status"] == "ok" and r["target"] in REFERENCE_BASELINE.values() and r["precision"] == "fp32"}
    for r in rows:
        if r["status"] != "ok" or not r["fps"]:
            continue
        device = "cuda" if r["target"] in GPU_TARGETS else "cpu"
        ref = base.get((r["model"], r["input_size"], r["batch"], REFERENCE_BASELINE[device]))
        r["speedup_vs_torch"] = r["fps"] / ref if ref else None
        if r["macs"]:
            r["gmacs_per_s"] = r["macs"] * r["fps"] / 1e9
            r["probe_gmacs"] = ceilings.get(ceiling_key(r))
            r["fraction_of_probe"] = r["gmacs_per_s"] / r["probe_gmacs"] if r["probe_gmacs"] else None


def error_text(e: Exception) -> str:
    """An EnginesmithError's message as is; anything else as one line naming its type (it is a bug or a
    library failure the pipeline did not explain: worth reporting)."""
    if isinstance(e, EnginesmithError):
        return str(e)

    return f"{type(e).__name__}: {first_line(e)} (unexpected; please report it with the command)"


def run_header(suite: Suite, command: str, profile: TimingProfile, isolate: bool,
               quick: bool = False) -> dict[str, Any]:
    return {**machine_header(), "command": command, "suite": suite.name, "description": suite.description,
            "suite_file": str(suite.source) if suite.source else None, "gpu": gpu_name(),
            "roofline": None, "timing": profile.to_dict(),
            "isolated": isolate, "quick": quick, "load_average": load_average()}


def run_bench(suite: Suite, out: Path, *, weights: dict[str, Path] | None = None, dataset: Path | str | None = None,
              preprocess: dict[str, PreprocessOverride] | None = None,
              profile: TimingProfile | None = None, quick: bool = False, cache_dir: Path | None = None,
              engines: Path | None = None, command: str = "", isolate: bool = True, throughput: bool = True,
              ov_streams: int | None = None, progress: bool = True, echo: Echo = lambda s: None) -> BenchOutcome:
    """Build and measure every run of `suite`; write results into `out`. A run that fails becomes a row with
    status "error" (the others go on); bad input fails before anything is built. On a cluster:
    cluster_bench.run_on_cluster."""
    from contextlib import nullcontext

    profile = profile or (TimingProfile.quick() if quick else TimingProfile())
    runs, skipped = plan(suite, weights, dataset, preprocess=preprocess)
    check_targets(runs)
    cache_dir = Path(cache_dir or os.environ.get("ENGINESMITH_CACHE", "build/.cache"))
    engines = Path(engines or Path("build") / "bench-engines")
    header = run_header(suite, command, profile, isolate, quick)
    bar = (lambda what, n: progress_bar(what, n)) if progress else (lambda what, n: nullcontext(lambda k: None))
    skipped_d = [{"key": s.key, "reason": s.reason} for s in skipped]

    built: dict[str, Built] = {}
    reference: dict[tuple, dict[str, Any]] = {}
    macs: dict[tuple, int | None] = {}
    engine_runs = [r for r in runs if r.target in TARGETS]
    with bar(f"building {len(engine_runs)} engines", max(1, len(engine_runs))) as update:
        for i, run in enumerate(engine_runs):
            try:
                built[run.key] = build_run(run, engines, cache_dir, quick, suite.calib_size, reference)
                b = built[run.key]
                echo(f"built {run.key}: " + ("cached" if b.cached else f"{b.build_s:.1f} s"))
            except Exception as e:  # one failed build is a failed row; the suite goes on (and the exit code says so)
                built[run.key] = Built(error=error_text(e))
                echo(f"FAILED to build {run.key}: {built[run.key].error}")
            update(i + 1)
    for run in runs:
        mk = (run.model, run.input_size, run.num_classes)
        if mk not in macs:
            macs[mk] = model_macs(*mk)

    rows: list[dict[str, Any]] = []
    paths: dict[str, Path] = {}
    timeout = CHILD_TIMEOUT_S["quick" if quick else "full"]
    measure_child = (lambda job: measure_isolated(job, timeout)) if isolate else (lambda job: measure_job(job, isolated=False))
    roof = Roofline(profile, measure_child, echo=echo)
    try:
        with bar(f"measuring {len(runs)} runs", len(runs)) as update:
            for i, run in enumerate(runs):
                b = built.get(run.key)
                error = b.error if b is not None else None
                measured = accuracy = None
                if error is None:
                    try:
                        accuracy = b.accuracy if b is not None else torch_accuracy(run, reference)
                        job = make_job(run, b, profile, throughput, ov_streams)
                        measured = measure_child(job)
                        roof.ceiling(run.target, run.precision)  # the (target, precision)'s probe, once, now
                        header["roofline"] = roof.to_dict(quick)
                    except Exception as e:
                        error = error_text(e)
                row = make_row(run, b, measured, accuracy, macs[(run.model, run.input_size, run.num_classes)], error)
                rows.append(row)
                echo(f"FAILED {run.key}: {error}" if error else
                     f"{run.key}: {row['fps']:.1f} FPS, end to end {row['fps_e2e']:.1f}")
                add_ratios(rows, roof.ceilings())
                paths = write_results(out, header, rows, skipped_d, plot=False)
                update(i + 1)
    finally:
        roof.close()
        if rows:
            add_ratios(rows, roof.ceilings())
            paths = write_results(out, header, rows, skipped_d, plot=True)
    return BenchOutcome(rows, skipped, paths, header)


# ---------------------------------------------------------------------------------------------- child


def _child_main(argv: list[str]) -> int:
    """`python -m enginesmith.benchmarks.bench JOB.json OUT.json`: measure one job, write its result."""
    job_path, out_path = Path(argv[0]), Path(argv[1])
    job = json.loads(job_path.read_text())
    try:
        result = measure_job(job, isolated=True)
    except EnginesmithError as e:
        write_json_atomic(out_path, {"error": str(e)})
        return 0
    write_json_atomic(out_path, result)
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.stderr.write("usage: python -m enginesmith.benchmarks.bench JOB.json OUT.json (used by enginesmith bench)\n")
        sys.exit(2)
    sys.exit(_child_main(sys.argv[1:]))
