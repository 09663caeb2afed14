"""Chain the stages for one build: export -> simplify -> precision -> engine -> latency check -> report.

Every stage is cached by content hash (artifacts.Cache) and verified against the stage before it.
Bad input is rejected up front, before any heavy work, with one-line EnginesmithErrors.
"""

from __future__ import annotations

import os
import re
import time
import uuid
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Callable

import numpy as np

from enginesmith.backends.targets import PRECISIONS, TARGETS, engine_precision, get_precision, get_target
from enginesmith.errors import EnginesmithError
from enginesmith.pipeline.export import INPUT_NAME
from enginesmith.runtime.proposals import DEFAULT_MAX_PROPOSALS
from enginesmith.pipeline.artifacts import (
    Artifact,
    Cache,
    StageResult,
    sha256_file,
    write_json_atomic,
    write_text_atomic,
)
from enginesmith.pipeline.inputs import stage_file

FALLBACKS = ("none", "auto")
CALIB_METHODS = ("minmax", "entropy", "percentile")
NNCF_PRESETS = ("performance", "mixed")
OVERFLOW_FIX = ("enable", "disable", "first_layer_only")
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
    calib_method: str | None = None  # None: the target's default_calib_method (backends/targets.py)
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
    val: Path | None = None  # held-out data: the task metric is measured and held to accuracy_budget
    val_split: str = "val"
    accuracy_budget: float | None = None  # points; None: pipeline/accuracy.py DEFAULT_BUDGET for the task
    fallback: str = "none"  # "auto": int8 keeps sensitive layers in float until the budget holds (= mixed)
    # an INT8 engine whose outputs miss the cosine tolerance is recorded in its engine stage, not fatal: the
    # bench measures speed, and untrained two-stage detectors reorder proposals under any quantization
    record_int8_tolerance: bool = False
    nncf_preset: str = "mixed"  # OpenVINO INT8: NNCF preset; "mixed" (asymmetric activations) halved the drop of "performance" on both trained detectors
    overflow_fix: str = "enable"  # OpenVINO INT8: NNCF OverflowFix (7-bit weights for AVX2 without VNNI)
    force: bool = False  # replace an --out folder that is not an engine folder enginesmith wrote (pipeline/outdir.py)
    rebuild: tuple[str, ...] | bool = ()  # stages to build afresh even when cached; True: all (--no-cache)

    def __post_init__(self) -> None:
        if self.calib_method is None:
            self.calib_method = TARGETS[self.target].default_calib_method if self.target in TARGETS else "minmax"

    @property
    def searches(self) -> bool:
        """True when INT8 may keep layers in float to meet the budget (mixed, or int8 --fallback auto)."""
        p = PRECISIONS.get(self.precision)
        return p is not None and (p.searches or (p.calibrated and self.fallback == "auto"))


@dataclass
class BuildResult:
    config: BuildConfig
    out: Path
    engine: Path
    stages: list[Artifact]
    latency: Artifact | None
    report: str
    accuracy: dict[str, Any] | None = None


def parse_input_size(text: str) -> tuple[int, int]:
    """'416x416' or '416' -> (416, 416)."""
    m = re.fullmatch(r"\s*(\d+)\s*(?:[xX,]\s*(\d+))?\s*", text)
    if not m:
        raise EnginesmithError(f"--input-size {text!r}: write HxW, e.g. 416x416")
    h = int(m.group(1))
    return h, int(m.group(2) or h)


def validate(config: BuildConfig):
    """Reject bad input before any heavy work; return the model spec."""
    from enginesmith.models import registry

    spec = registry.get(config.model)
    target = get_target(config.target)
    precision = get_precision(config.precision)
    if config.fallback not in FALLBACKS:
        raise EnginesmithError(f"unknown --fallback {config.fallback!r}; choose none or auto")
    if config.fallback == "auto" and not precision.calibrated:
        raise EnginesmithError(f"--fallback auto keeps INT8 layers in float; it does nothing for {config.precision}")
    if config.searches and config.val is None:
        raise EnginesmithError("--precision mixed and --fallback auto judge each step by the task metric: give held-out "
                               "data with --val DIR (e.g. the val split of `enginesmith data offline`)")
    if config.accuracy_budget is not None and config.accuracy_budget < 0:
        raise EnginesmithError(f"--accuracy-budget is a drop in points and cannot be negative, got {config.accuracy_budget}")
    if config.nncf_preset not in NNCF_PRESETS:
        raise EnginesmithError(f"unknown --nncf-preset {config.nncf_preset!r}; choose one of {', '.join(NNCF_PRESETS)}")
    if config.overflow_fix not in OVERFLOW_FIX:
        raise EnginesmithError(f"unknown --overflow-fix {config.overflow_fix!r}; choose one of {', '.join(OVERFLOW_FIX)}")
    if config.calib_method not in CALIB_METHODS:
        raise EnginesmithError(f"unknown calibration method {config.calib_method!r}; choose one of {', '.join(CALIB_METHODS)}")
    if spec.extra.get("two_stage") == "fast-rcnn" and not target.takes_max_roi_pool:
        raise EnginesmithError(f"{spec.name} pools its rois with ONNX MaxRoiPool, which TensorRT's ONNX parser does not "
                               "support (onnx-tensorrt docs/operators.md); build it for "
                               f"{' or '.join(t.name for t in TARGETS.values() if t.takes_max_roi_pool)}")
    ok, why = target.available()
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
    two_stage = spec.extra.get("two_stage")
    if two_stage == "rcnn" and config.batch == 1 and not config.dynamic_batch:
        # R-CNN runs its CNN once per proposal (~2,000 per image): a batch-1 engine would make that many calls,
        # so its default is a dynamic batch (an explicit --batch N > 1 still gives a static one)
        config.dynamic_batch = True
    if two_stage and config.nms == "engine":
        raise EnginesmithError(f"{spec.name} runs NMS on the host after its proposal stage (runtime/two_stage.py); "
                               "drop --nms engine")
    if two_stage and config.val is not None:
        raise EnginesmithError(f"--val measures single-pass detectors; measure {spec.name}'s engine with "
                               "`enginesmith eval ENGINE --dataset DIR` (proposals, engine and NMS together)")
    if config.dynamic_batch and config.batch != 1:
        raise EnginesmithError("give either --batch N (a static batch) or --dynamic-batch, not both")
    if spec.extra.get("static_batch") and (config.dynamic_batch or config.batch != 1):
        raise EnginesmithError(f"{spec.name} is exported with batch 1 only (its proposal stage is per image); "
                               "drop --batch/--dynamic-batch")
    if config.num_classes is not None and config.num_classes < 1:
        raise EnginesmithError(f"--num-classes must be at least 1, got {config.num_classes}; drop it for "
                               f"{spec.name}'s own {spec.num_classes} (or the checkpoint's)")
    if config.calib_size < 1:
        raise EnginesmithError(f"--calib-size must be at least 1, got {config.calib_size}")
    if config.calib_size < config.batch:
        raise EnginesmithError(f"--calib-size {config.calib_size} is smaller than --batch {config.batch}")

    # --calib-size against what the calibration source can give: a finite source's image count, the generated
    # photos' MAX_CALIBRATION_PHOTOS. The default size (64) on a smaller folder stays "use them all" (a warning in
    # the report): only an explicit larger number is refused (explicit 64 cannot be told apart from the default).
    from enginesmith.data.offline_photos import MAX_CALIBRATION_PHOTOS

    if config.calib is not None:
        from enginesmith.calibration.sources import is_detection_dataset
        from enginesmith.data.image_folder import list_images
        from enginesmith.runtime.images import image_file_size

        if is_detection_dataset(Path(config.calib)):
            from enginesmith.data.datasets import open_dataset

            paths = [Path(s.image_path) for s in open_dataset(Path(config.calib), "train").samples]
            source = f"the train split of {config.calib}"
        else:
            paths, source = list_images(Path(config.calib)), f"calibration folder {config.calib}"
        available = len(paths)
        fix = f"give --calib-size {available} or fewer, or add images"
        for path in paths[: config.calib_size]:  # headers only: unreadable files and decompression bombs, now
            image_file_size(path)
    elif spec.default_calibration == "digits":
        from enginesmith.data.digits import load_digits_32

        available, source = len(load_digits_32(config.seed).train_images), "the built-in digits training split"
        fix = f"give --calib-size {available} or fewer, or --calib FOLDER with more images"
    else:
        available = MAX_CALIBRATION_PHOTOS
        source = "the built-in photos give (augmented crops of 15 photographs add nothing past that)"
        fix = f"give --calib-size {available} or fewer, or --calib FOLDER with your own images"
    default_calib_size = BuildConfig.__dataclass_fields__["calib_size"].default
    if config.calib_size > available and (config.calib_size != default_calib_size or config.calib is None):
        raise EnginesmithError(f"--calib-size {config.calib_size} is more than {source}: {available} images; {fix}")

    # the checkpoint's metadata (one line naming the file and the field when malformed), then the size and class
    # count the build will use (the same precedence as _Build: option, checkpoint, model)
    from enginesmith.models.weights.checkpoint_info import read_checkpoint_info

    if config.weights is not None and not Path(config.weights).exists():
        raise EnginesmithError(f"weights file not found: {config.weights}")
    info = read_checkpoint_info(Path(config.weights)) if config.weights is not None else {}
    num_classes = int(config.num_classes or info.get("num_classes") or spec.num_classes)
    size = tuple(config.input_size or info.get("input_size") or spec.input_size)
    spec.check_size(size)  # a plain ceiling on each side first, then what the architecture takes

    # the network on PyTorch's meta device (shapes only, no memory): the weights file is checked against it and
    # the build's peak memory estimated from it, before anything is allocated (models/memory.py)
    from enginesmith.models.memory import check_build_fits, meta_model

    try:
        meta = meta_model(spec, num_classes, size)
    except EnginesmithError:
        raise
    except Exception as e:  # every registered model builds on meta at its defaults (tests): these settings do not
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise EnginesmithError(f"cannot build {spec.name} with {num_classes} classes at {size[0]}x{size[1]}: {first}; "
                               "check --num-classes and --input-size") from None
    if config.weights is not None:
        from enginesmith.models.weights import check_weights_file

        check_weights_file(meta, Path(config.weights), spec.load_weights)
    check_build_fits(spec, size, config.batch, num_classes, config.dynamic_batch, model=meta)

    if config.val is not None and not Path(config.val).exists() and str(config.val) != "digits":
        raise EnginesmithError(f"--val {config.val}: no such file or folder; give a VOC folder, a COCO json or a "
                               "folder of class subfolders")
    return spec


class _Build:
    """The state of one build: the model (built lazily), calibration and verification data."""

    def __init__(self, config: BuildConfig, spec: Any, on_stage: Callable[[Artifact], None]) -> None:
        from enginesmith.calibration.sources import calibration_source
        from enginesmith.pipeline.quantize import Calibration

        from enginesmith.models.weights.checkpoint_info import read_checkpoint_info

        self.config, self.spec, self.on_stage = config, spec, on_stage
        # the weights are read once: hashed while copied into the cache, and the copy is what gets loaded
        self.weights = stage_file(Path(config.weights), Path(config.cache_dir)) if config.weights else None
        # a training checkpoint says what it was trained for; explicit options still win
        info = self._with_user_path(lambda: read_checkpoint_info(self.weights.path)) if self.weights else {}
        self.num_classes: int = int(config.num_classes or info.get("num_classes") or spec.num_classes)
        self.class_names = _class_names(spec, self.num_classes, info.get("class_names"))
        self.size = tuple(config.input_size or info.get("input_size") or spec.input_size)
        self.preprocess = spec.preprocess.with_size(*self.size)
        self.cache = Cache(Path(config.cache_dir), rebuild=config.rebuild)
        self.source = calibration_source(
            Path(config.calib) if config.calib else None, spec.default_calibration, config.calib_size, seed=config.seed
        )
        from enginesmith.calibration.feeds import extra_inputs, feed_maker

        static = None if config.dynamic_batch else config.batch
        # proposal-driven detectors (calibration/feeds.py): each calibration image becomes engine feeds
        self.feeds = feed_maker(spec, self.preprocess, static)
        self.extra_inputs, self.extra_axes = extra_inputs(spec)
        self.input_names = [INPUT_NAME, *self.extra_inputs]
        self.calibration = Calibration(self.source, self.preprocess, config.calib_method, static or 1, self.feeds)
        self.weights_id = self.weights.sha256 if self.weights else f"seeded:{config.seed}"

    def _with_user_path(self, read: Callable[[], Any]) -> Any:
        """Run `read()` on the staged weights; its errors name the user's file, not the cache copy."""
        try:
            return read()
        except EnginesmithError as e:
            assert self.weights is not None
            raise EnginesmithError(str(e).replace(str(self.weights.path), str(self.weights.source))) from None

    @property
    def trained(self) -> bool:
        return self.config.weights is not None

    @cached_property
    def model(self) -> Any:
        model = self.spec.create(num_classes=self.num_classes, input_size=self.size, seed=self.config.seed)
        if self.weights is not None:
            self._with_user_path(lambda: self.spec.load_weights(model, self.weights.path))
        return model.eval()

    @cached_property
    def verify_batches(self) -> list[Any]:
        """Up to VERIFY_IMAGES calibration images, as batches the engine takes (feed dicts for models with feeds)."""
        from enginesmith.calibration.sources import calibration_batches

        if self.feeds is not None:
            from itertools import islice

            return [f for image in islice(self.source.images(), VERIFY_IMAGES) for f in self.feeds(image)]

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
        from enginesmith.pipeline.export import OPSET, export_onnx, node_count
        from enginesmith.pipeline.verify import TOLERANCES, check, compare

        c = self.config
        batch_dim = 1 if c.dynamic_batch else c.batch
        shape = (batch_dim, self.preprocess.channels, *self.size)
        params = {
            "model": self.spec.name,
            "num_classes": self.num_classes,
            "input_shape": list(shape),
            "dynamic_batch": c.dynamic_batch,
            **({"extra_inputs": {k: ax for k, ax in self.extra_axes.items()}} if self.extra_inputs else {}),
            "opset": OPSET,
            "weights": self.weights_id,
            "model_source": sha256_file(Path(self.spec.source_file)) if self.spec.source_file else "",
        }

        def produce(tmp: Path) -> StageResult:
            path = tmp / "model.onnx"
            export_onnx(self.model, path, shape, self.spec.output_names, c.dynamic_batch, extra_inputs=self.extra_inputs,
                        extra_axes=self.extra_axes)
            with TorchRunner(self.model, self.input_names, list(self.spec.output_names)) as torch_runner:
                ref = run_batches(torch_runner, INPUT_NAME, self.verify_batches)
            bad = [k for k, v in ref.items() if not np.all(np.isfinite(v))]
            if bad and self.weights is not None:
                raise EnginesmithError(f"the model loaded from {self.weights.source} gives NaN or Inf in output {bad[0]!r} "
                                       "on the calibration images: the weights file does not hold trained weights for "
                                       f"{self.spec.name} (random or corrupt values?); give the right checkpoint")
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

    # -- accuracy -------------------------------------------------------------------------------
    @cached_property
    def val(self) -> Any:
        from enginesmith.pipeline.accuracy import check_classes, load_validation

        val = load_validation(self.config.val, self.spec.task, self.config.val_split)  # type: ignore[arg-type]
        check_classes(val, self.num_classes)
        return val

    @property
    def budget(self) -> float:
        from enginesmith.pipeline.accuracy import DEFAULT_BUDGET

        c = self.config
        return c.accuracy_budget if c.accuracy_budget is not None else DEFAULT_BUDGET[self.spec.task]

    def _accuracy(self, name: str, parents: list[Artifact], params: dict[str, Any], make_infer: Callable[[], Any],
                  batch: int | None) -> Artifact:
        from enginesmith.pipeline.accuracy import check_unchanged, measure
        from enginesmith.pipeline.progress import progress_bar

        params = {**params, "val": self.val.fingerprint, "split": self.val.split, "metric": self.val.metric}

        def produce(tmp: Path) -> StageResult:
            with make_infer() as runner, progress_bar(f"{self.val.metric} on {len(self.val)} held-out images",
                                                      len(self.val)) as update:
                result = measure(lambda x: runner.infer({"images": x}), batch, self.val, self.preprocess, update)
            check_unchanged(self.val)  # the images measured are the ones the cache key names
            write_json_atomic(tmp / "accuracy.json", result)
            return StageResult(["accuracy.json"], result)

        return self._stage(self.cache.run(name, parents, params, produce))

    def reference_accuracy(self, exported: Artifact) -> Artifact:
        """The metric of the FP32 PyTorch model (what every engine is judged against)."""
        from enginesmith.backends.torch import TorchRunner

        return self._accuracy("accuracy-fp32", [exported], {"runner": "pytorch-eager-fp32"},
                              lambda: TorchRunner(self.model, "images", list(self.spec.output_names)),
                              None if self.config.dynamic_batch else self.config.batch)  # static-batch models take only that

    def engine_accuracy(self, engine: Artifact) -> Artifact:
        c = self.config
        return self._accuracy(
            "accuracy", [engine], {"target": c.target, "precision": engine_precision(c.precision)},
            lambda: get_target(c.target).runner(engine.file, c.precision),
            None if c.dynamic_batch else c.batch,
        )

    def latency(self, engine: Artifact) -> Artifact:
        """Engine vs PyTorch eager FP32, same batch, same run, same machine."""
        import platform

        from enginesmith.benchmarks.latency import measure_latency

        from enginesmith.calibration.feeds import as_feed, batch_len

        c = self.config
        feed = as_feed(self.verify_batches[0], [INPUT_NAME])
        n = batch_len(feed)

        def produce(tmp: Path) -> StageResult:
            from enginesmith.backends.torch import TorchRunner

            with get_target(c.target).runner(engine.file, c.precision) as runner:
                eng = measure_latency(lambda: runner.infer(feed), n, budget_s=c.latency_budget_s)
            with TorchRunner(self.model, self.input_names, list(self.spec.output_names)) as runner:
                ref = measure_latency(lambda: runner.infer(feed), n, budget_s=c.latency_budget_s)
            stats = {"engine": eng.to_dict(), "pytorch_eager_fp32": ref.to_dict(), "speedup": ref.p50_ms / eng.p50_ms,
                     # a measurement, not a build product: when and under what load it was taken travels with it
                     "measured_at": time.strftime("%Y-%m-%d %H:%M:%S %z"), "load_average": list(os.getloadavg()),
                     "cpus": os.cpu_count()}
            write_json_atomic(tmp / "latency.json", stats)
            return StageResult(["latency.json"], stats)

        params = {"batch": n, "budget_s": c.latency_budget_s, "machine": platform.processor() or platform.machine(),
                  "cpus": os.cpu_count(), "weights": self.weights_id}
        return self._stage(self.cache.run("latency", [engine], params, produce))

    def _stage(self, art: Artifact) -> Artifact:
        self.on_stage(art)
        return art


def build_engine(
    config: BuildConfig,
    on_stage: Callable[[Artifact], None] = lambda a: None,
    on_start: Callable[[str], None] | None = None,
    on_search_step: Callable[[int, int, Any], None] | None = None,
) -> BuildResult:
    """Run the whole pipeline for `config` and publish the engine, its manifest and report.md.

    `--out` is checked before any stage runs (pipeline/outdir.py: what may be replaced) and held by this
    build until the engine folder is published."""
    from enginesmith.pipeline.outdir import hold_out, out_state

    spec = validate(config)
    out = Path(config.out) if config.out else Path("build") / spec.name / f"{config.target}-{config.precision}"
    state = out_state(out, Path(config.cache_dir), config.force)
    with hold_out(out):
        return _build_and_publish(config, spec, out, state, on_stage, on_start, on_search_step)


def _build_and_publish(config: BuildConfig, spec: Any, out: Path, state: Any, on_stage: Callable[[Artifact], None],
                       on_start: Callable[[str], None] | None,
                       on_search_step: Callable[[int, int, Any], None] | None) -> BuildResult:
    """The stages of one build, then the engine folder published at `out` (if it is still as `state` saw it)."""
    from enginesmith.backends.onnxruntime import Runner
    from enginesmith.pipeline.build import engine_artifact, run_batches
    from enginesmith.pipeline.mixed import Attempt, SearchResult, search
    from enginesmith.pipeline.outdir import publish_engine_folder
    from enginesmith.pipeline.quantize import QuantizeOptions, precision_artifacts
    from enginesmith.pipeline.report import render_report
    from enginesmith.runtime.manifest import ENGINE_SCHEMA, SCHEMA_VERSION

    b = _Build(config, spec, on_stage)
    b.cache.on_start = on_start
    if config.val is not None:
        b.val  # read (and check) the held-out data before any heavy work
    exported = b.export()
    simplified = b.simplify(exported)
    with_nms = b.nms(simplified) if config.nms == "engine" else None
    base = with_nms or simplified
    quant_precision = engine_precision(config.precision)
    calibrated = get_precision(config.precision).calibrated
    calibration = b.calibration if calibrated else None
    reference_acc = b.reference_accuracy(exported) if config.val is not None else None

    def reference() -> dict[str, np.ndarray]:
        """The model's own outputs (raw head for detectors) from the FP32 ONNX on ONNX Runtime: what
        every engine is verified against."""
        with Runner(base.file) as runner:
            outs = run_batches(runner, INPUT_NAME, b.verify_batches)
        return {k: v for k, v in outs.items() if k in spec.output_names}

    def attempt(keep_float: tuple[str, ...]) -> Attempt:
        """Build (precision stage + engine) with `keep_float` in float; measure it when --val is given."""
        quantized = precision_artifacts(b.cache, config.target, quant_precision, base, calibration, on_stage,
                                        QuantizeOptions(keep_float=keep_float, nncf_preset=config.nncf_preset,
                                                        overflow_fix=config.overflow_fix))
        try:
            engine = engine_artifact(b.cache, config.target, quant_precision, quantized or base, INPUT_NAME,
                                     lambda: b.verify_batches, reference,
                                     judged_by_metric=(reference_acc is not None or config.record_int8_tolerance)
                                     and calibrated)
        except EnginesmithError as e:
            if not config.searches:
                raise
            return Attempt(keep_float, None, None, error=str(e), quantized=quantized)
        on_stage(engine)
        if reference_acc is None:
            return Attempt(keep_float, None, None, engine=engine, quantized=quantized)
        acc = b.engine_accuracy(engine).metrics
        return Attempt(keep_float, acc["value"], reference_acc.metrics["value"] - acc["value"], engine=engine,
                       quantized=quantized)

    def within_budget(a: Attempt) -> bool:
        return a.ok and (a.drop is None or a.drop <= b.budget + 1e-9)

    if config.searches:
        result = search(attempt, lambda first: _rank_layers(config.target, base, first, b.verify_batches),
                        within_budget, on_step=on_search_step or (lambda i, n, a: None))
    else:
        result = SearchResult([attempt(())])
        if not within_budget(result.final):
            hint = "" if not calibrated else "; try --precision mixed (keeps the most sensitive layers in float)"
            raise EnginesmithError(
                f"the {config.target} {config.precision} engine's {b.val.metric} is {result.final.metric:.2f} against "
                f"{reference_acc.metrics['value']:.2f} for FP32 PyTorch on {len(b.val)} held-out images: a drop of "
                f"{result.final.drop:.2f} points exceeds --accuracy-budget {b.budget:g}{hint}"
            )
    quantized, engine = result.final.quantized, result.final.engine
    assert engine is not None
    accuracy = None
    if reference_acc is not None:
        accuracy = {"metric": b.val.metric, "fp32_pytorch": reference_acc.metrics["value"], "engine": result.final.metric,
                    "drop": result.final.drop, "budget": b.budget, "val": str(config.val), "split": b.val.split,
                    "images": len(b.val), "kept_float": list(result.final.keep_float)}
        if config.searches:
            accuracy["search"] = result.to_dict()
    latency = b.latency(engine)
    stages = [a for a in (exported, simplified, with_nms, quantized, engine) if a is not None]
    report = render_report(config, spec, b.preprocess, stages, latency, out, trained=b.trained,
                           calibration_images=len(b.source), calibration_warning=b.source.warning, accuracy=accuracy)

    def fill(tmp: Path) -> None:
        for name in engine.manifest["files"]:
            _copy_checked(engine, name, tmp / name)
        manifest = {
            "schema": ENGINE_SCHEMA,
            "schema_version": SCHEMA_VERSION,
            "build_id": uuid.uuid4().hex,
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
            "class_names": b.class_names,
            "weights": b.weights_id,
            "trained": b.trained,
            "sha256": engine.sha256,
            "stages": [{"stage": a.stage, "key": a.manifest["key"], "sha256": a.sha256, "params": a.manifest["params"],
                        "metrics": a.metrics, "wall_time_s": a.wall_time_s, "tools": a.manifest["tools"]} for a in stages],
            "latency": latency.metrics,
            "accuracy": accuracy,
        }
        two_stage = spec.extra.get("two_stage")
        if two_stage:  # host stages around the engine (runtime/two_stage.py)
            manifest["inputs"] = [manifest["input"], *({"name": k, "shape": [ax[0], 4]} for k, ax in b.extra_axes.items()
                                                       if k in b.extra_inputs)]
            manifest["two_stage"] = {"kind": two_stage, "proposals": {"method": "selective-search", "mode": "fast",
                                                                      "max_proposals": DEFAULT_MAX_PROPOSALS}}
        if engine.metrics.get("device"):  # TensorRT: {"tensorrt", "gpu", "compute_capability"} the plan is tied to
            manifest["device"] = engine.metrics["device"]
        write_json_atomic(tmp / "manifest.json", manifest)
        write_text_atomic(tmp / "report.md", report)

    publish_engine_folder(fill, out, state)
    return BuildResult(config, out, out / engine.manifest["files"][0], stages, latency, report, accuracy)


def _copy_checked(artifact: Artifact, name: str, dest: Path) -> None:
    """Copy one file of a cache entry, checking the copy has the bytes the entry recorded (sha256)."""
    import shutil

    shutil.copyfile(artifact.folder / name, dest)
    if sha256_file(dest) != artifact.manifest["content"][name]["sha256"]:
        raise EnginesmithError(f"{artifact.folder / name} changed while it was copied to the engine folder; "
                               "run the build again")


def _rank_layers(target: str, base: Artifact, first: Any, batches: list[np.ndarray]) -> list[Any]:
    """Layers by added quantization noise, measured on the first attempt's quantized model run by
    the engine's own backend (ONNX Runtime stands in for TensorRT's Q/DQ)."""
    from enginesmith.calibration.sensitivity import layer_sensitivity
    from enginesmith.pipeline.quantize import DECODE_ONNX_PATTERN, QUANTIZED_OP_TYPES

    if first.quantized is None:
        raise EnginesmithError("the mixed-precision search needs an INT8 model to rank layers; none was built")
    return layer_sensitivity(base.file, first.quantized.file, get_target(target).layer_ranking, batches, QUANTIZED_OP_TYPES, (DECODE_ONNX_PATTERN,))


def _class_names(spec: Any, n: int, from_checkpoint: Any = None) -> list[str]:
    """The checkpoint's names, else the spec's when the class count matches, else "0".."C-1"."""
    if from_checkpoint is not None and len(from_checkpoint) == n:
        return [str(c) for c in from_checkpoint]
    return list(spec.class_names) if len(spec.class_names) == n else [str(i) for i in range(n)]
