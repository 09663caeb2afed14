"""What a build takes (`BuildConfig`) and the checks that refuse bad input before any stage runs.

Every check raises a one-line EnginesmithError that says what to change. They run in this order: the
choices (target, precision, modes), the model's own limits, the calibration source's size, then the
weights file and the build's memory estimate on PyTorch's meta device (models/memory.py).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from enginesmith.backends.targets import PRECISIONS, TARGETS, get_precision, get_target
from enginesmith.calibration.sources import is_detection_dataset
from enginesmith.cluster.executor import check_cluster
from enginesmith.data.datasets import open_dataset
from enginesmith.data.digits import load_digits_32
from enginesmith.data.image_folder import list_images
from enginesmith.data.offline_photos import MAX_CALIBRATION_PHOTOS
from enginesmith.errors import EnginesmithError
from enginesmith.models import registry
from enginesmith.models.memory import check_build_fits, meta_model
from enginesmith.models.weights import check_weights_file
from enginesmith.models.weights.checkpoint_info import read_checkpoint_info
from enginesmith.runtime.images import image_file_size
from enginesmith.runtime.preprocess_override import PreprocessOverride, make_override, resolve_preprocess

FALLBACKS = ("none", "auto")
CALIB_METHODS = ("minmax", "entropy", "percentile")
NNCF_PRESETS = ("performance", "mixed")
OVERFLOW_FIX = ("enable", "disable", "first_layer_only")
NMS_MODES = ("host", "engine")


@dataclass
class BuildConfig:
    """Everything `build-engine` takes. `out` defaults to build/MODEL/TARGET-PRECISION/."""

    model: str
    target: str = "openvino"
    precision: str = "int8"
    weights: Path | None = None
    cfg: Path | None = None  # model "darknet": the network is this Darknet .cfg (models/darknet_net.py)
    names: Path | None = None  # with cfg: a Darknet .names file, one class name a line
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
    # the latency check's least measuring time, engine and PyTorch interleaved (at most 2.5x it: slow models get
    # fewer pairs); one budget for both, where each had 8 s of its own before
    latency_budget_s: float = 8.0
    seed: int = 0
    val: Path | None = None  # held-out data: the task metric is measured and held to accuracy_budget
    val_split: str = "val"
    accuracy_budget: float | None = None  # points; None: pipeline/accuracy.py DEFAULT_BUDGET for the task
    # --val's engine metric in shards as jobs on this executor (cluster/executor.py executor_for): local, ray,
    # ray://HOST:PORT, HOST:PORT or auto; None: in this process. The value, and so the cache entry, is the same
    cluster: str | None = None
    fallback: str = "none"  # "auto": int8 keeps sensitive layers in float until the budget holds (= mixed)
    # an INT8 engine whose outputs miss the cosine tolerance is recorded in its engine stage, not fatal: the
    # bench measures speed, and untrained two-stage detectors reorder proposals under any quantization
    record_int8_tolerance: bool = False
    nncf_preset: str = "mixed"  # OpenVINO INT8: NNCF preset; "mixed" (asymmetric activations) halved the drop of "performance" on both trained detectors
    overflow_fix: str = "enable"  # OpenVINO INT8: NNCF OverflowFix (7-bit weights for AVX2 without VNNI)
    force: bool = False  # replace an --out folder that is not an engine folder enginesmith wrote (pipeline/outdir.py)
    rebuild: tuple[str, ...] | bool = ()  # stages to build afresh even when cached; True: all (--no-cache)
    # what the checkpoint was trained on, over the model's PreprocessSpec (runtime/preprocess_override.py):
    # "rgb" | "bgr", and one value per channel fed, in the order fed
    channels: str | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if self.calib_method is None:
            self.calib_method = TARGETS[self.target].default_calib_method if self.target in TARGETS else "minmax"

    @property
    def preprocess_override(self) -> PreprocessOverride:
        """--channels / --mean / --std, checked (a bad channel order or value is one line)."""
        return make_override(self.channels, self.mean, self.std)

    def validate(self) -> Any:
        """Refuse bad input before any heavy work, each in one line; return the model's spec."""
        return validate(self)

    @property
    def searches(self) -> bool:
        """True when INT8 may keep layers in float to meet the budget (mixed, or int8 --fallback auto)."""
        p = PRECISIONS.get(self.precision)
        return p is not None and (p.searches or (p.calibrated and self.fallback == "auto"))


def parse_input_size(text: str) -> tuple[int, int]:
    """'416x416' or '416' -> (416, 416)."""
    m = re.fullmatch(r"\s*(\d+)\s*(?:[xX,]\s*(\d+))?\s*", text)
    if not m:
        raise EnginesmithError(f"--input-size {text!r}: write HxW, e.g. 416x416")
    h = int(m.group(1))
    return h, int(m.group(2) or h)


def validate(config: BuildConfig) -> Any:
    """Reject bad input before any heavy work; return the model spec (models/registry.py ModelSpec)."""
    spec = model_spec(config)
    _check_choices(config, spec)
    _check_model_options(config, spec)
    _check_calibration_size(config, spec)
    _check_weights_and_memory(config, spec)
    _check_preprocess(config, spec)
    if config.val is not None and not Path(config.val).exists() and str(config.val) != "digits":
        raise EnginesmithError(f"--val {config.val}: no such file or folder; give a VOC folder, a COCO json or a "
                               "folder of class subfolders")
    return spec


DARKNET = "darknet"  # the model name of a network built from its Darknet cfg (--cfg)


def model_spec(config: BuildConfig) -> Any:
    """The registered model, or for `darknet --cfg PATH` the spec of that cfg (read once: its sha256 names the bytes
    the network is built from)."""
    is_darknet = config.model.strip().lower() == DARKNET
    if config.cfg is None:
        if is_darknet:
            raise EnginesmithError("model darknet is built from your Darknet cfg: give --cfg PATH (and --weights "
                                   "PATH.weights for trained weights)")
        if config.names is not None:
            raise EnginesmithError(f"--names gives the classes of a --cfg network; {config.model} has its own names")
        return registry.get(config.model)
    if not is_darknet:
        raise EnginesmithError(f"--cfg builds the network of a Darknet cfg: give the model name darknet "
                               f"(build-engine darknet --cfg {config.cfg}), not {config.model!r}")
    from enginesmith.models.darknet_net import cfg_spec  # torch: only when a cfg is built
    from enginesmith.models.darknet_plan import read_cfg_source

    return cfg_spec(read_cfg_source(config.cfg), config.names)


def _check_choices(config: BuildConfig, spec: Any) -> None:
    """Every option with a fixed set of values holds one of them; the target can run here."""
    target = get_target(config.target)
    precision = get_precision(config.precision)
    if precision.name not in target.precisions:
        others = [t.name for t in TARGETS.values() if precision.name in t.precisions]
        raise EnginesmithError(f"{target.display} builds {', '.join(target.precisions)}, not {precision.name}"
                               + (f"; --target {' or '.join(others)} builds it" if others else ""))
    if config.fallback not in FALLBACKS:
        raise EnginesmithError(f"unknown --fallback {config.fallback!r}; choose none or auto")
    if config.fallback == "auto" and not precision.calibrated:
        raise EnginesmithError(f"--fallback auto keeps INT8 layers in float; it does nothing for {config.precision}")
    if config.searches and config.val is None:
        raise EnginesmithError("--precision mixed and --fallback auto judge each step by the task metric: give held-out "
                               "data with --val DIR (e.g. the val split of `enginesmith data offline`)")
    _check_cluster(config)
    if config.accuracy_budget is not None and config.accuracy_budget < 0:
        raise EnginesmithError(f"--accuracy-budget is a drop in points and cannot be negative, got {config.accuracy_budget}")
    for value, choices, what in ((config.nncf_preset, NNCF_PRESETS, "--nncf-preset"),
                                 (config.overflow_fix, OVERFLOW_FIX, "--overflow-fix"),
                                 (config.calib_method, CALIB_METHODS, "calibration method")):
        if value not in choices:
            raise EnginesmithError(f"unknown {what} {value!r}; choose one of {', '.join(choices)}")
    if spec.two_stage == "fast-rcnn" and not target.takes_max_roi_pool:
        raise EnginesmithError(f"{spec.name} pools its rois with ONNX MaxRoiPool, which TensorRT's ONNX parser does not "
                               "support (onnx-tensorrt docs/operators.md); build it for "
                               f"{' or '.join(t.name for t in TARGETS.values() if t.takes_max_roi_pool)}")
    ok, why = target.available()
    if not ok:
        raise EnginesmithError(why)
    ok, why = target.precision_runs_here(precision.engine)
    if not ok:
        raise EnginesmithError(why)


def _check_cluster(config: BuildConfig) -> None:
    """--cluster names a known executor and has a --val measurement to run (nothing is started here)."""
    if config.cluster is None:
        return
    if config.val is None:
        raise EnginesmithError("--cluster runs the --val accuracy measurement in shards: give --val DATA, or drop "
                               "--cluster")
    check_cluster(config.cluster)


def _check_model_options(config: BuildConfig, spec: Any) -> None:
    """Batch, NMS, class count and held-out data as the model can take them (R-CNN's default batch is set here)."""
    if config.batch < 1:
        raise EnginesmithError(f"--batch must be at least 1, got {config.batch}")
    if not spec.image_model:
        raise EnginesmithError(f"{spec.name} takes volumes, not images, and build-engine's calibration and "
                               "verification are image-based; it is not supported by build-engine yet")
    if config.nms not in NMS_MODES:
        raise EnginesmithError(f"unknown --nms {config.nms!r}; choose host or engine")
    if config.nms == "engine" and spec.task != "detection":
        raise EnginesmithError(f"--nms engine is for detectors; {spec.name} is a {spec.task} model")
    two_stage = spec.two_stage
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
    if spec.static_batch and (config.dynamic_batch or config.batch != 1):
        raise EnginesmithError(f"{spec.name} is exported with batch 1 only (its proposal stage is per image); "
                               "drop --batch/--dynamic-batch")
    if config.num_classes is not None and config.num_classes < 1:
        raise EnginesmithError(f"--num-classes must be at least 1, got {config.num_classes}; drop it for "
                               f"{spec.name}'s own {spec.num_classes} (or the checkpoint's)")
    if config.calib_size < 1:
        raise EnginesmithError(f"--calib-size must be at least 1, got {config.calib_size}")
    if config.calib_size < config.batch:
        raise EnginesmithError(f"--calib-size {config.calib_size} is smaller than --batch {config.batch}")


def _check_calibration_size(config: BuildConfig, spec: Any) -> None:
    """--calib-size against what the calibration source can give; unreadable images and bombs, by header."""
    # --calib-size against what the calibration source can give: a finite source's image count, the generated
    # photos' MAX_CALIBRATION_PHOTOS. The default size (64) on a smaller folder stays "use them all" (a warning in
    # the report): only an explicit larger number is refused (explicit 64 cannot be told apart from the default).

    if config.calib is not None:
        if is_detection_dataset(Path(config.calib)):
            paths = [Path(s.image_path) for s in open_dataset(Path(config.calib), "train").samples]
            source = f"the train split of {config.calib}"
        else:
            paths, source = list_images(Path(config.calib)), f"calibration folder {config.calib}"
        available = len(paths)
        fix = f"give --calib-size {available} or fewer, or add images"
        for path in paths[: config.calib_size]:  # headers only: unreadable files and decompression bombs, now
            image_file_size(path)
    elif spec.default_calibration == "digits":
        available, source = len(load_digits_32(config.seed).train_images), "the built-in digits training split"
        fix = f"give --calib-size {available} or fewer, or --calib FOLDER with more images"
    else:
        available = MAX_CALIBRATION_PHOTOS
        source = "the built-in photos give (augmented crops of 15 photographs add nothing past that)"
        fix = f"give --calib-size {available} or fewer, or --calib FOLDER with your own images"
    default_calib_size = BuildConfig.__dataclass_fields__["calib_size"].default
    if config.calib_size > available and (config.calib_size != default_calib_size or config.calib is None):
        raise EnginesmithError(f"--calib-size {config.calib_size} is more than {source}: {available} images; {fix}")


def _check_preprocess(config: BuildConfig, spec: Any) -> None:
    """--channels / --mean / --std against the model's channels and what the checkpoint records."""
    override = config.preprocess_override
    if override.empty:
        return
    info = read_checkpoint_info(Path(config.weights)) if config.weights is not None else {}
    resolve_preprocess(spec.preprocess, override, info.get("preprocess"), spec.name, str(config.weights))


def _check_weights_and_memory(config: BuildConfig, spec: Any) -> None:
    """The weights file against the model built on PyTorch's meta device, then the build's peak memory."""
    # the checkpoint's metadata (one line naming the file and the field when malformed), then the size and class
    # count the build will use (the same precedence as BuildContext: option, checkpoint, model)

    if config.weights is not None and not Path(config.weights).exists():
        raise EnginesmithError(f"weights file not found: {config.weights}")
    info = read_checkpoint_info(Path(config.weights)) if config.weights is not None else {}
    num_classes = int(config.num_classes or info.get("num_classes") or spec.num_classes)
    size = tuple(config.input_size or info.get("input_size") or spec.input_size)
    spec.check_size(size)  # a plain ceiling on each side first, then what the architecture takes

    # the network on PyTorch's meta device (shapes only, no memory): the weights file is checked against it and
    # the build's peak memory estimated from it, before anything is allocated (models/memory.py)

    try:
        meta = meta_model(spec, num_classes, size)
    except EnginesmithError:
        raise
    except Exception as e:  # every registered model builds on meta at its defaults (tests): these settings do not
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise EnginesmithError(f"cannot build {spec.name} with {num_classes} classes at {size[0]}x{size[1]}: {first}; "
                               "check --num-classes and --input-size") from None
    if config.weights is not None:
        check_weights_file(meta, Path(config.weights), spec.load_weights)
    check_build_fits(spec, size, config.batch, num_classes, config.dynamic_batch, model=meta)
