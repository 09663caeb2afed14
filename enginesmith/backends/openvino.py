"""OpenVINO backend: ONNX (or an NNCF-quantized openvino.Model) -> model.xml + model.bin for the CPU plugin.

The build proves the engine compiles for CPU in a child process: OpenVINO 2026.4 has segfaulted
compiling some Q/DQ graphs, and a crash there must become an error that names the stage.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from enginesmith.backends.base import Runner as _BaseRunner
from enginesmith.backends.base import check_engine_file, check_precision, first_line
from enginesmith.backends.isolation import run_isolated
from enginesmith.backends.onnxruntime import validate_onnx
from enginesmith.errors import EnginesmithError

ENGINE_FILE = "model.xml"
WEIGHTS_FILE = "model.bin"
TARGET = "openvino"
BUILD_TIMEOUT_S = 600.0
PERFORMANCE_HINTS = ("LATENCY", "THROUGHPUT")
# What an engine folder's manifest may fix for the runtime ("runtime": {name: int}; --target auto measures them):
# INFERENCE_NUM_THREADS of the synchronous (LATENCY) runner, NUM_STREAMS of the THROUGHPUT path.
RUNTIME_SETTINGS = ("num_threads", "num_streams")

# The child compiles with the same config the Runner uses by default, so "it compiled" means what runs.
_CHECK_COMPILE = (
    "import sys, openvino as ov\n"
    "ov.Core().compile_model(sys.argv[1], 'CPU', "
    "{'PERFORMANCE_HINT': 'LATENCY', 'INFERENCE_PRECISION_HINT': 'f32'})\n"
    "print('ok')\n"
)


# The CPU plugin's INFERENCE_PRECISION_HINT for an engine built at each precision. fp32 and int8 are pinned to
# f32 (left alone, the plugin picks bf16 on AMX / AVX512-BF16 CPUs); an int8 IR's quantized layers run int8.
INFERENCE_PRECISION = {"fp32": "f32", "fp16": "f16", "bf16": "bf16", "int8": "f32"}


def runner_options(precision: str) -> dict[str, Any]:
    """The Runner options for an engine built at `precision` (INFERENCE_PRECISION)."""
    return {"inference_precision": INFERENCE_PRECISION.get(precision, "f32")}


def precision_runs_here(precision: str) -> tuple[bool, str]:
    """(True, "") unless `precision` is bf16 and this CPU has no bf16 instructions (AVX512-BF16 or AMX-BF16),
    as OpenVINO's CPU plugin reports them (OPTIMIZATION_CAPABILITIES has "BF16"). Elsewhere the plugin would
    quietly run a bf16 engine in f32, so a bf16 build there measures nothing it claims."""
    if precision != "bf16":
        return True, ""
    import openvino as ov

    return bf16_refusal(list(ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")))


def bf16_refusal(capabilities: list[str]) -> tuple[bool, str]:
    """(True, "") when the CPU plugin's OPTIMIZATION_CAPABILITIES include BF16, else (False, one line)."""
    if "BF16" in capabilities:
        return True, ""
    return False, (f"--precision bf16 needs a CPU with bf16 instructions (AVX512-BF16 or AMX-BF16); OpenVINO reports "
                   f"this CPU's capabilities as {', '.join(capabilities) or 'none'}: build fp32, fp16 or int8 instead")


def available() -> tuple[bool, str]:
    try:
        import openvino as ov
    except Exception as e:
        return False, f"openvino cannot be imported ({first_line(e)}); pip install openvino"
    try:
        devices = ov.Core().available_devices
    except Exception as e:
        return False, f"OpenVINO cannot list devices ({first_line(e)})"
    if "CPU" not in devices:
        return False, f"OpenVINO has no CPU device (found {devices})"
    return True, ""


def build(source: Any, out_dir: Path, precision: str) -> Path:
    """Write model.xml/model.bin into out_dir and prove they compile for CPU (in a child process).

    `source` is an ONNX path or an `openvino.Model` (the NNCF-quantized model). fp16 stores the weights
    as f16 (`compress_to_fp16`); everything else keeps them as they are (a bf16 engine is the FP32 IR, run
    with the bf16 inference hint: runner_options).
    """
    import openvino as ov

    check_precision(precision, TARGET)
    if isinstance(source, ov.Model):
        model = source
    elif isinstance(source, (str, Path)):
        validate_onnx(source)
        try:
            model = ov.convert_model(str(source))
        except Exception as e:
            raise EnginesmithError(
                f"OpenVINO cannot convert {source}: {first_line(e)}; check the ONNX opset/operators "
                "or build for --target onnxruntime"
            ) from None
    else:
        raise EnginesmithError(
            f"target openvino builds from an ONNX path or an openvino.Model, got {type(source).__name__}"
        )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    xml = out_dir / ENGINE_FILE
    try:
        ov.save_model(model, str(xml), compress_to_fp16=(precision == "fp16"))
    except Exception as e:
        raise EnginesmithError(f"OpenVINO cannot save {xml}: {first_line(e)}; check disk space and permissions") from None
    run_isolated(
        _CHECK_COMPILE,
        [str(xml)],
        stage="engine",
        what=f"compiling {xml.name} for CPU",
        timeout_s=BUILD_TIMEOUT_S,
        tool="OpenVINO",
        hint="build another precision (fp32/fp16) or --target onnxruntime",
    )
    return xml


class _OpenVINORunnerBase(_BaseRunner):
    name = "openvino"

    def __init__(self) -> None:
        super().__init__()
        self._compiled: Any = None
        self._request: Any = None
        self._declared_outputs: list[str] | None = None

    def _compile(self) -> Any:
        raise NotImplementedError

    def _compile_model(self, model: Any, config: dict[str, Any]) -> Any:
        """Compile for CPU, remembering the model's own output names: the CPU plugin may rename an
        output port when it folds the op behind it (e.g. a final Cast to int32)."""
        import openvino as ov

        self._declared_outputs = [_port_name(p, f"output{i}") for i, p in enumerate(model.outputs)]
        return ov.Core().compile_model(model, "CPU", config)

    def _load(self) -> None:
        self._compiled = self._compile()
        self.input_names = [_port_name(p, f"input{i}") for i, p in enumerate(self._compiled.inputs)]
        self.output_names = self._declared_outputs or [
            _port_name(p, f"output{i}") for i, p in enumerate(self._compiled.outputs)]
        self._request = self._compiled.create_infer_request()

    def _infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            result = self._request.infer({name: feed[name] for name in self.input_names})
        except Exception as e:
            shapes = {k: tuple(v.shape) for k, v in feed.items()}
            raise EnginesmithError(
                f"OpenVINO inference failed for inputs {shapes}: {first_line(e)}; "
                "feed the shapes and dtypes the model was exported with"
            ) from None
        values = result.to_tuple()
        return {name: np.array(values[i]) for i, name in enumerate(self.output_names)}

    def _release(self) -> None:
        self._request = None
        self._compiled = None

    def profiling_info(self) -> list[Any]:
        """The last call's per-layer counters (openvino.ProfilingInfo: node name and type, exec type, real time,
        status); empty unless compiled with PERF_COUNT (Runner(perf_count=True))."""
        if self._request is None:
            raise EnginesmithError("OpenVINO runner is not loaded; use it as `with runner:` first")
        return list(self._request.get_profiling_info())

    def runtime_model(self) -> Any:
        """The executable graph the CPU plugin compiled (fused layers, their kernels and precisions in rt_info)."""
        if self._compiled is None:
            raise EnginesmithError("OpenVINO runner is not loaded; use it as `with runner:` first")
        return self._compiled.get_runtime_model()

    @property
    def inference_precision(self) -> str:
        """The precision the CPU plugin actually chose ("f32", "bf16", "f16"); loaded runners only.

        Without a hint OpenVINO picks bf16 on CPUs with AMX/AVX512-BF16 and f32 elsewhere, so the
        plain baseline is not always an f32 baseline.
        """
        if self._compiled is None:
            raise EnginesmithError("OpenVINO runner is not loaded; use it as `with runner:` first")
        value = self._compiled.get_property("INFERENCE_PRECISION_HINT")
        return value.to_string() if hasattr(value, "to_string") else str(value)


def _port_name(port: Any, fallback: str) -> str:
    try:
        return port.get_any_name()
    except Exception:  # an unnamed port
        return fallback


class Runner(_OpenVINORunnerBase):
    """An OpenVINO CPU CompiledModel.

    - performance_hint: "LATENCY" (default, one request at a time) or "THROUGHPUT".
    - inference_precision: "f32" (default), "f16" (on AVX2 CPUs OpenVINO still executes f16 as f32) or "bf16"
      (AVX512-BF16 / AMX-BF16 CPUs; elsewhere f32).
    - num_threads: INFERENCE_NUM_THREADS, when given.
    - perf_count: PERF_COUNT (per-layer timing; `profiling_info()` after a call), off by default: it costs time.
    """

    def __init__(
        self,
        engine_path: str | Path,
        *,
        performance_hint: str = "LATENCY",
        inference_precision: str = "f32",
        num_threads: int | None = None,
        perf_count: bool = False,
        **_: Any,
    ) -> None:
        super().__init__()
        hint = performance_hint.upper()
        if hint not in PERFORMANCE_HINTS:
            raise EnginesmithError(f"unknown OpenVINO performance hint {performance_hint!r}; use LATENCY or THROUGHPUT")
        if inference_precision not in ("f32", "f16", "bf16"):
            raise EnginesmithError(f"unknown OpenVINO inference precision {inference_precision!r}; use f32, f16 or bf16")
        self.engine_path = Path(engine_path)
        self.config: dict[str, Any] = {"PERFORMANCE_HINT": hint, "INFERENCE_PRECISION_HINT": inference_precision}
        if num_threads:
            self.config["INFERENCE_NUM_THREADS"] = int(num_threads)
        if perf_count:
            self.config["PERF_COUNT"] = True

    def _compile(self) -> Any:
        import openvino as ov

        xml = check_engine_file(self.engine_path, "OpenVINO engine")
        weights = xml.with_suffix(".bin")
        if not weights.is_file():
            raise EnginesmithError(f"engine not found: {weights} (the weights of {xml.name}); rebuild the engine")
        try:
            return self._compile_model(ov.Core().read_model(str(xml), str(weights)), self.config)
        except Exception as e:
            raise EnginesmithError(
                f"cannot load OpenVINO engine {xml}: {first_line(e)}; is the file corrupt? rebuild it"
            ) from None


class PlainRunner(_OpenVINORunnerBase):
    """The untuned baseline: `ov.Core().compile_model(ov.convert_model(onnx), "CPU")`, no config.

    Note: with no INFERENCE_PRECISION_HINT the CPU plugin runs bf16 on AMX/AVX512-BF16 CPUs (see
    `inference_precision`), so its outputs differ from f32 by ~1e-3 relative there.
    """

    name = "openvino-plain"

    def __init__(self, onnx_path: str | Path, config: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.onnx_path = Path(onnx_path)
        self.config = dict(config or {})

    def _compile(self) -> Any:
        import openvino as ov

        validate_onnx(self.onnx_path)
        try:
            return self._compile_model(ov.convert_model(str(self.onnx_path)), self.config)
        except Exception as e:
            raise EnginesmithError(f"OpenVINO cannot compile {self.onnx_path}: {first_line(e)}") from None


def plain_runner(onnx_path: str | Path, config: dict[str, Any] | None = None) -> PlainRunner:
    """A Runner for the baseline the issue compares against: OpenVINO defaults, nothing tuned
    (`config`, e.g. {"INFERENCE_PRECISION_HINT": "f32"}, pins what the defaults would pick)."""
    return PlainRunner(onnx_path, config)
