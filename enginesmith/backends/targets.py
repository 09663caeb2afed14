"""The one table of engine targets and precisions: what `--target` and `--precision` mean.

Every decision that depends on the target (which quantizer makes its INT8 model, its default calibration
method, how its runner executes each precision, the files of its engine, whether it needs a GPU, how the
runtime streams it) is a field here, so code elsewhere asks `TARGETS[name].field` and never compares a
target's name. A new backend is one module in this package (available(), ENGINE_FILE, build(), Runner)
plus one entry below.

The backend modules are imported here at module level (a reader or a tool can follow `--target` into
them); each imports its native library (openvino, onnxruntime, tensorrt) only inside its functions, so
importing this table stays cheap and torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Literal

from enginesmith.backends import onnxruntime, openvino, tensorrt, tensorrt_device
from enginesmith.errors import EnginesmithError


@dataclass(frozen=True)
class Precision:
    """One `--precision`. `engine` is what the engine is built and verified at: "mixed" is INT8 with the
    most sensitive layers kept in float (the search in pipeline/mixed.py), so its engine precision is int8."""

    name: str
    engine: str
    calibrated: bool  # needs calibration images (activation ranges)
    searches: bool  # keeps layers in float until the accuracy budget holds


PRECISIONS: dict[str, Precision] = {
    "fp32": Precision("fp32", "fp32", calibrated=False, searches=False),
    "fp16": Precision("fp16", "fp16", calibrated=False, searches=False),
    "bf16": Precision("bf16", "bf16", calibrated=False, searches=False),
    "int8": Precision("int8", "int8", calibrated=True, searches=False),
    "mixed": Precision("mixed", "int8", calibrated=True, searches=True),
}


def get_precision(name: str) -> Precision:
    """The Precision called `name`; an unknown name is one line listing the choices."""
    if name not in PRECISIONS:
        raise EnginesmithError(f"unknown precision {name!r}; choose one of {', '.join(PRECISIONS)}")
    return PRECISIONS[name]


def engine_precision(name: str) -> str:
    """The precision an engine of `--precision name` is built at ("mixed" -> "int8")."""
    return get_precision(name).engine


def _no_build_options(cache_root: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    return {}, {}


def _every_precision_runs(precision: str) -> tuple[bool, str]:
    return True, ""


# What a backend without bf16 kernels builds: every precision but bf16 (OpenVINO's CPU plugin has them).
WITHOUT_BF16 = tuple(p for p in PRECISIONS if p != "bf16")


@dataclass(frozen=True)
class Target:
    """One `--target`: an engine backend and everything the pipeline and the runtime decide by it.

    int8_quantizer: "nncf" (NNCF on the OpenVINO model -> IR) or "qdq" (our activation ranges -> a Q/DQ ONNX,
    `int8_symmetric` for TensorRT's explicit quantization). fp16_model: "onnx" (an FP16-typed ONNX stage) or
    "engine" (the engine compiles FP32 ONNX to f16 itself). quantize_options: the QuantizeOptions fields the
    quantizer takes (they enter the precision stage's cache key). layer_ranking: the runtime that runs the
    quantized model when the mixed search ranks layers ("onnxruntime" stands in for TensorRT's Q/DQ).
    runner_options(precision): keyword arguments of `backend.Runner` for an engine of that precision.
    runtime_settings: the settings an engine folder's manifest may fix for the runtime ("runtime": {name: int}),
    which `--target auto` measures and records: OpenVINO's num_threads (INFERENCE_NUM_THREADS of the synchronous
    runner) and num_streams (NUM_STREAMS of the throughput path). Absent: the plugin's own choice.
    build_options(cache_root): (keyword arguments of `backend.build`, extra engine-stage cache-key parameters).
    """

    name: str
    display: str  # as people write it: "ONNX Runtime"
    backend: ModuleType
    runtime_package: str  # the Python module an app needs to run its engines
    install_hint: str  # how to get that module
    int8_quantizer: Literal["nncf", "qdq"]
    default_calib_method: str
    fp16_model: Literal["onnx", "engine"] = "onnx"
    int8_symmetric: bool = False
    quantize_options: tuple[str, ...] = ()
    layer_ranking: Literal["openvino", "onnxruntime"] = "onnxruntime"
    needs_gpu: bool = False
    engine_companions: tuple[str, ...] = ()  # suffixes of the weights files that sit beside the engine file (".bin")
    streams_async: bool = False  # runtime: an async request queue overlaps preprocessing and inference
    runtime_settings: tuple[str, ...] = ()
    takes_max_roi_pool: bool = True  # its ONNX importer takes MaxRoiPool (Fast R-CNN's pooling)
    check_device: Callable[[dict[str, Any]], None] | None = None  # refuses a manifest this machine cannot load
    precisions: tuple[str, ...] = tuple(PRECISIONS)  # the --precision values it builds
    # (True, "") when this machine's hardware runs an engine precision ("bf16": a CPU with bf16 instructions)
    precision_runs_here: Callable[[str], tuple[bool, str]] = _every_precision_runs
    runner_options: Callable[[str], dict[str, Any]] = field(default=lambda precision: {})
    build_options: Callable[[Path], tuple[dict[str, Any], dict[str, Any]]] = _no_build_options

    @property
    def engine_file(self) -> str:
        """The engine's file name in its folder (model.xml, model.onnx, model.plan)."""
        return str(self.backend.ENGINE_FILE)

    def available(self) -> tuple[bool, str]:
        """(True, "") when this machine can build and run it, else (False, one line saying what is missing)."""
        return self.backend.available()

    def options(self, precision: str, **overrides: Any) -> dict[str, Any]:
        """The Runner options for an engine of `--precision precision` ("mixed" runs as int8), `overrides` last."""
        return {**self.runner_options(engine_precision(precision)), **overrides}

    def runner(self, engine_file: str | Path, precision: str, **overrides: Any) -> Any:
        """A backend Runner (not yet loaded; use it as `with ...:`) for an engine of `--precision precision`."""
        return self.backend.Runner(engine_file, **self.options(precision, **overrides))


# Defaults chosen per backend from the measured comparisons benchmarks/quantizers-{ssd-slim-256,
# yolov3-tiny-3l-256}-cpu.md: ONNX Runtime Q/DQ percentile had the smallest mAP drop on both trained detectors
# (entropy lost 30 points on one); OpenVINO keeps minmax with NNCF's "mixed" preset. TensorRT is unmeasured
# here: minmax.
TARGETS: dict[str, Target] = {
    "openvino": Target(
        "openvino", "OpenVINO", openvino, "openvino",
        "pip install openvino (or enginesmith with its extra, from its repository: "
        "pip install '/path/to/enginesmith[runtime-openvino]')", int8_quantizer="nncf",
        default_calib_method="minmax", fp16_model="engine", quantize_options=("nncf_preset", "overflow_fix"), layer_ranking="openvino", engine_companions=(".bin",),
        streams_async=True, runner_options=openvino.runner_options, precision_runs_here=openvino.precision_runs_here,
        runtime_settings=openvino.RUNTIME_SETTINGS,
    ),
    "onnxruntime": Target(
        "onnxruntime", "ONNX Runtime", onnxruntime, "onnxruntime",
        "pip install onnxruntime (or enginesmith with its extra, from its repository: "
        "pip install '/path/to/enginesmith[runtime-onnxruntime]')", int8_quantizer="qdq",
        default_calib_method="percentile", precisions=WITHOUT_BF16,
    ),
    "tensorrt": Target(
        "tensorrt", "TensorRT", tensorrt, "tensorrt", tensorrt_device.INSTALL_HINT, int8_quantizer="qdq",
        default_calib_method="minmax", int8_symmetric=True, needs_gpu=True, takes_max_roi_pool=False,
        build_options=tensorrt.stage_options, check_device=tensorrt_device.check_device, precisions=WITHOUT_BF16,
    ),
}
CPU_TARGETS = tuple(name for name, t in TARGETS.items() if not t.needs_gpu)


def get_target(name: str) -> Target:
    """The Target called `name`; an unknown name is one line listing the choices."""
    if name not in TARGETS:
        raise EnginesmithError(f"unknown target {name!r}; choose one of {', '.join(TARGETS)}")
    return TARGETS[name]
