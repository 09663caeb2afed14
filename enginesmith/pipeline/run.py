"""Chain the stages for one build: export -> simplify -> precision -> engine -> latency check -> report.

Every stage is cached by content hash (artifacts.Cache) and verified against the stage before it.
Bad input is rejected up front, before any heavy work, with one-line EnginesmithErrors.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Callable

import numpy as np

from enginesmith.errors import EnginesmithError
from enginesmith.pipeline.artifacts import (
    Artifact,
    Cache,
    StageResult,
    publish_folder,
    sha256_file,
    write_json_atomic,
    write_text_atomic,
)

TARGETS = ("openvino", "onnxruntime", "tensorrt")
PRECISIONS = ("fp32", "fp16", "int8")
CALIB_METHODS = ("minmax", "entropy", "percentile")
NMS_MODES = ("host", "engine")
VERIFY_IMAGES = 8


@dataclass
class BuildConfig:
    """Everything `build-engine` takes. `out` defaults to build/MODEL/TARGET-PRECISION/."""

    model: str
    target: str = "openvino"
    precision: str = "int8"
    weights: Path | None = None
    calib: Path | None = None
    calib_method: str = "minmax"
    calib_size: int = 64
    batch: int = 1
    dynamic_batch: bool = False
    input_size: tuple[int, int] | None = None
    num_classes: int | None = None
    nms: str = "host"  # detectors: "engine" appends ONNX NonMaxSuppression; "host" leaves it to runtime/nms.py
    out: Path | None = None
    cache_dir: Path = field(default_factory=lambda: Path(os.environ.get("ENGINESMITH_CACHE", "build/.cache")))
    latency_budget_s: float = 8.0
    seed: int = 0


@dataclass
class BuildResult:
    config: BuildConfig
    out: Path
    engine: Path
    stages: list[Artifact]
    latency: Artifact | None
    report: str


def parse_input_size(text: str) -> tuple[int, int]:
    """'416x416' or '416' -> (416, 416)."""
    m = re.fullmatch(r"\s*(\d+)\s*(?:[xX,]\s*(\d+))?\s*", text)
    if not m:
        raise EnginesmithError(f"--input-size {text!r}: write HxW, e.g. 416x416")
    h = int(m.group(1))
    return h, int(m.group(2) or h)


def validate(config: BuildConfig):
    """Reject bad input before any heavy work; return the model spec."""
    from enginesmith.backends import get_backend
    from enginesmith.models import registry

    spec = registry.get(config.model)
    if config.target not in TARGETS:
        raise EnginesmithError(f"unknown target {config.target!r}; choose one of {', '.join(TARGETS)}")
    if config.precision not in PRECISIONS:
        raise EnginesmithError(f"unknown precision {config.precision!r}; choose one of {', '.join(PRECISIONS)}")
    if config.calib_method not in CALIB_METHODS:
        raise EnginesmithError(f"unknown calibration method {config.calib_method!r}; choose one of {', '.join(CALIB_METHODS)}")
    ok, why = get_backend(config.target).available()
    if not ok:
        raise EnginesmithError(why)
    if config.batch < 1:
        raise EnginesmithError(f"--batch must be at least 1, got {config.batch}")
    if spec.extra.get("pipeline", True) is False:
        raise EnginesmithError(f"{spec.name} takes volumes, not images, and build-engine's calibration and "
                               "verification are image-based; it is not supported by build-engine yet")
    if config.nms not in NMS_MODES:
        raise EnginesmithError(f"unknown --nms {config.nms!r}; choose host or engine")
    if config.nms == "engine" and spec.task != "detection":
        raise EnginesmithError(f"--nms engine is for detectors; {spec.name} is a {spec.task} model")
    if config.dynamic_batch and config.batch != 1:
        raise EnginesmithError("give either --batch N (a static batch) or --dynamic-batch, not both")
    if spec.extra.get("static_batch") and (config.dynamic_batch or config.batch != 1):
        raise EnginesmithError(f"{spec.name} is exported with batch 1 only (its proposal stage is per image); "
                               "drop --batch/--dynamic-batch")
    if config.calib_size < 1:
        raise EnginesmithError(f"--calib-size must be at least 1, got {config.calib_size}")
    if config.calib_size < config.batch:
        raise EnginesmithError(f"--calib-size {config.calib_size} is smaller than --batch {config.batch}")
    spec.check_input_size(tuple(config.input_size or spec.input_size))
    if config.weights is not None and not Path(config.weights).is_file():
        raise EnginesmithError(f"weights file not found: {config.weights}")
    if config.calib is not None:
        from enginesmith.data.image_folder import list_images

        list_images(Path(config.calib))
    return spec


class _Build:
    """The state of one build: the model (built lazily), calibration and verification data."""

    def __init__(self, config: BuildConfig, spec: Any, on_stage: Callable[[Artifact], None]) -> None:
        from enginesmith.calibration.sources import calibration_source
        from enginesmith.pipeline.quantize import Calibration

        self.config, self.spec, self.on_stage = config, spec, on_stage
        self.size = tuple(config.input_size or spec.input_size)
        self.preprocess = spec.preprocess.with_size(*self.size)
        self.cache = Cache(Path(config.cache_dir))
        self.source = calibration_source(
            Path(config.calib) if config.calib else None, spec.default_calibration, config.calib_size, seed=config.seed
        )
        self.calibration = Calibration(self.source, self.preprocess, config.calib_method, 1 if config.dynamic_batch else config.batch)
        self.weights_id = sha256_file(Path(config.weights)) if config.weights else f"seeded:{config.seed}"

    @property
    def trained(self) -> bool:
        return self.config.weights is not None

    @cached_property
    def model(self) -> Any:
        model = self.spec.create(num_classes=self.config.num_classes, input_size=self.size, seed=self.config.seed)
        if self.config.weights:
            self.spec.load_weights(model, Path(self.config.weights))
        return model.eval()

    @cached_property
    def verify_batches(self) -> list[np.ndarray]:
        """Up to VERIFY_IMAGES calibration images, as batches the engine takes."""
        from enginesmith.calibration.sources import calibration_batches

        per = 2 if self.config.dynamic_batch else self.config.batch
        images = np.concatenate(list(calibration_batches(self.source, self.preprocess, per)), axis=0)
        n = max(per, min(VERIFY_IMAGES, len(images)) // per * per)
        if len(images) < n:  # fewer images than one static batch: repeat them
            images = np.concatenate([images] * (n // len(images) + 1), axis=0)
        images = images[:n]
        return [images[i : i + per] for i in range(0, n, per)]

    # -- stages ---------------------------------------------------------------------------------
    def export(self) -> Artifact:
        from enginesmith.backends.onnxruntime import Runner
        from enginesmith.backends.torch import TorchRunner
        from enginesmith.pipeline.build import run_batches
        from enginesmith.pipeline.export import INPUT_NAME, OPSET, export_onnx, node_count
        from enginesmith.pipeline.verify import TOLERANCES, check, compare

        c = self.config
        batch_dim = 1 if c.dynamic_batch else c.batch
        shape = (batch_dim, self.preprocess.channels, *self.size)
        params = {
            "model": self.spec.name,
            "num_classes": c.num_classes or self.spec.num_classes,
            "input_shape": list(shape),
            "dynamic_batch": c.dynamic_batch,
            "opset": OPSET,
            "weights": self.weights_id,
            "model_source": sha256_file(Path(self.spec.source_file)) if self.spec.source_file else "",
        }

        def produce(tmp: Path) -> StageResult:
            path = tmp / "model.onnx"
            export_onnx(self.model, path, shape, self.spec.output_names, c.dynamic_batch)
            with TorchRunner(self.model, INPUT_NAME, list(self.spec.output_names)) as torch_runner:
                ref = run_batches(torch_runner, INPUT_NAME, self.verify_batches)
            with Runner(path) as onnx_runner:
                cmp = compare(ref, run_batches(onnx_runner, INPUT_NAME, self.verify_batches))
            check(cmp, TOLERANCES["export"], "ONNX export (ONNX Runtime vs PyTorch)")
            return StageResult(["model.onnx"], {"nodes": node_count(path), "verify": cmp.to_dict(), "opset": OPSET})

        return self._stage(self.cache.run("export", [], params, produce))

    def simplify(self, exported: Artifact) -> Artifact:
        from enginesmith.pipeline.build import run_batches
        from enginesmith.pipeline.simplify import simplify_onnx
        from enginesmith.pipeline.verify import TOLERANCES, check, compare
        from enginesmith.backends.onnxruntime import Runner
        from enginesmith.pipeline.export import INPUT_NAME

        def produce(tmp: Path) -> StageResult:
            counts = simplify_onnx(exported.file, tmp / "model.onnx")
            with Runner(exported.file) as before, Runner(tmp / "model.onnx") as after:
                cmp = compare(run_batches(before, INPUT_NAME, self.verify_batches), run_batches(after, INPUT_NAME, self.verify_batches))
            check(cmp, TOLERANCES["simplify"], "onnxsim simplification")
            return StageResult(["model.onnx"], {**counts, "verify": cmp.to_dict()})

        return self._stage(self.cache.run("simplify", [exported], {"tool": "onnxsim"}, produce))

    def nms(self, simplified: Artifact) -> Artifact:
        """Append ONNX NonMaxSuppression (detections, num_detections; raw boxes/scores kept as outputs)
        and check it against host NMS on the same raw outputs."""
        from enginesmith.backends.onnxruntime import Runner
        from enginesmith.pipeline.build import run_batches
        from enginesmith.pipeline.export import INPUT_NAME
        from enginesmith.pipeline.nms import (DEFAULT_IOU_THRESHOLD, DEFAULT_MAX_DETECTIONS, DEFAULT_SCORE_THRESHOLD,
                                              append_nms_model, nms_parity)

        params = {"iou": DEFAULT_IOU_THRESHOLD, "score": DEFAULT_SCORE_THRESHOLD, "max_detections": DEFAULT_MAX_DETECTIONS}

        def produce(tmp: Path) -> StageResult:
            import onnx

            from enginesmith.calibration.onnx_io import save_onnx_atomic

            model = append_nms_model(onnx.load(str(simplified.file)), params["iou"], params["score"],
                                     params["max_detections"], keep_raw_outputs=True)
            save_onnx_atomic(model, tmp / "model.onnx")
            with Runner(tmp / "model.onnx") as runner:
                parity = nms_parity(run_batches(runner, INPUT_NAME, self.verify_batches), params["iou"], params["score"])
            return StageResult(["model.onnx"], {"nms_parity": parity, **params})

        return self._stage(self.cache.run("nms", [simplified], params, produce))

    def latency(self, engine: Artifact) -> Artifact:
        """Engine vs PyTorch eager FP32, same batch, same run, same machine."""
        import platform

        from enginesmith.backends import get_backend
        from enginesmith.benchmarks.latency import measure_latency
        from enginesmith.pipeline.build import runner_options
        from enginesmith.pipeline.export import INPUT_NAME

        c = self.config
        batch = self.verify_batches[0]

        def produce(tmp: Path) -> StageResult:
            from enginesmith.backends.torch import TorchRunner

            backend = get_backend(c.target)
            with backend.Runner(engine.file, **runner_options(c.target, c.precision)) as runner:
                eng = measure_latency(lambda: runner.infer({INPUT_NAME: batch}), len(batch), budget_s=c.latency_budget_s)
            with TorchRunner(self.model, INPUT_NAME, list(self.spec.output_names)) as runner:
                ref = measure_latency(lambda: runner.infer({INPUT_NAME: batch}), len(batch), budget_s=c.latency_budget_s)
            stats = {"engine": eng.to_dict(), "pytorch_eager_fp32": ref.to_dict(), "speedup": ref.p50_ms / eng.p50_ms}
            write_json_atomic(tmp / "latency.json", stats)
            return StageResult(["latency.json"], stats)

        params = {"batch": len(batch), "budget_s": c.latency_budget_s, "machine": platform.processor() or platform.machine(),
                  "cpus": os.cpu_count(), "weights": self.weights_id}
        return self._stage(self.cache.run("latency", [engine], params, produce))

    def _stage(self, art: Artifact) -> Artifact:
        self.on_stage(art)
        return art


def build_engine(
    config: BuildConfig,
    on_stage: Callable[[Artifact], None] = lambda a: None,
    on_start: Callable[[str], None] | None = None,
) -> BuildResult:
    """Run the whole pipeline for `config` and publish the engine, its manifest and report.md."""
    from enginesmith.pipeline.build import engine_artifact, run_batches
    from enginesmith.pipeline.export import INPUT_NAME
    from enginesmith.pipeline.quantize import precision_artifacts
    from enginesmith.pipeline.report import render_report
    from enginesmith.backends.onnxruntime import Runner

    spec = validate(config)
    b = _Build(config, spec, on_stage)
    b.cache.on_start = on_start
    exported = b.export()
    simplified = b.simplify(exported)
    with_nms = b.nms(simplified) if config.nms == "engine" else None
    base = with_nms or simplified
    calibration = b.calibration if config.precision == "int8" else None
    quantized = precision_artifacts(b.cache, config.target, config.precision, base, calibration, on_stage)

    def reference() -> dict[str, np.ndarray]:
        """The model's own outputs (raw head for detectors) from the FP32 ONNX on ONNX Runtime: what
        every engine is verified against."""
        with Runner(base.file) as runner:
            outs = run_batches(runner, INPUT_NAME, b.verify_batches)
        return {k: v for k, v in outs.items() if k in spec.output_names}

    engine = engine_artifact(
        b.cache, config.target, config.precision, quantized or base, INPUT_NAME, lambda: b.verify_batches, reference
    )
    on_stage(engine)
    latency = b.latency(engine)
    stages = [a for a in (exported, simplified, with_nms, quantized, engine) if a is not None]
    out = Path(config.out) if config.out else Path("build") / spec.name / f"{config.target}-{config.precision}"
    report = render_report(config, spec, b.preprocess, stages, latency, out, trained=b.trained,
                           calibration_images=len(b.source), calibration_warning=b.source.warning)

    def fill(tmp: Path) -> None:
        for name in engine.manifest["files"]:
            shutil.copy2(engine.folder / name, tmp / name)
        manifest = {
            "model": spec.name,
            "task": spec.task,
            "target": config.target,
            "precision": config.precision,
            "engine": engine.manifest["files"][0],
            "input": {"name": INPUT_NAME, "shape": ["batch" if config.dynamic_batch else config.batch,
                                                    b.preprocess.channels, *b.size]},
            "outputs": (["detections", "num_detections"] if with_nms else []) + list(spec.output_names),
            "nms": config.nms if spec.task == "detection" else None,
            "preprocess": b.preprocess.to_dict(),
            "class_names": _class_names(spec, config.num_classes),
            "weights": b.weights_id,
            "trained": b.trained,
            "sha256": engine.sha256,
            "stages": [{"stage": a.stage, "key": a.manifest["key"], "sha256": a.sha256, "params": a.manifest["params"],
                        "metrics": a.metrics, "wall_time_s": a.wall_time_s, "tools": a.manifest["tools"]} for a in stages],
            "latency": latency.metrics,
        }
        write_json_atomic(tmp / "manifest.json", manifest)
        write_text_atomic(tmp / "report.md", report)

    publish_folder(fill, out)
    return BuildResult(config, out, out / engine.manifest["files"][0], stages, latency, report)


def _class_names(spec: Any, num_classes: int | None) -> list[str]:
    """The spec's names when the class count is the default, else "0".."C-1"."""
    n = num_classes or spec.num_classes
    return list(spec.class_names) if len(spec.class_names) == n else [str(i) for i in range(n)]
