"""ONNX Runtime backend: the engine is the ONNX file itself (fp32, fp16-typed or Q/DQ int8), run on CPU.

`validate_onnx` is the shared front door for every backend that reads an ONNX file.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np

from enginesmith.backends.base import Runner as _BaseRunner
from enginesmith.backends.base import check_engine_file, check_precision, first_line
from enginesmith.backends.isolation import run_isolated
from enginesmith.errors import EnginesmithError

ENGINE_FILE = "model.onnx"
TARGET = "onnxruntime"
BUILD_TIMEOUT_S = 300.0

_ORT_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}

_CHECK_SESSION = (
    "import sys, onnxruntime as ort\n"
    "so = ort.SessionOptions()\n"
    "so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL\n"
    "so.log_severity_level = 3\n"
    "ort.InferenceSession(sys.argv[1], so, providers=['CPUExecutionProvider'])\n"
    "print('ok')\n"
)


def available() -> tuple[bool, str]:
    try:
        import onnxruntime as ort
    except Exception as e:  # ImportError or a broken native library
        return False, f"onnxruntime cannot be imported ({first_line(e)}); pip install onnxruntime"
    if "CPUExecutionProvider" not in ort.get_available_providers():
        return False, "onnxruntime has no CPUExecutionProvider"
    return True, ""


def validate_onnx(path: str | Path) -> None:
    """A missing file, a file that is not ONNX, or a model onnx.checker rejects -> EnginesmithError."""
    import onnx

    p = Path(path)
    if not p.is_file():
        raise EnginesmithError(f"ONNX file not found: {p}; run the export stage first or give the right path")
    try:
        # A path (not a loaded proto) lets the checker handle external data and >2 GB models.
        onnx.checker.check_model(str(p))
    except Exception as e:  # DecodeError, ValidationError, OSError from a truncated external-data file
        raise EnginesmithError(f"corrupt ONNX file {p}: {first_line(e)}; re-export it") from None


def _external_data_files(path: Path) -> list[str]:
    """Relative names of the external-data files an ONNX file refers to (copied along with it)."""
    import onnx
    from onnx.external_data_helper import ExternalDataInfo, _get_all_tensors, uses_external_data

    model = onnx.load(str(path), load_external_data=False)
    names = {ExternalDataInfo(t).location for t in _get_all_tensors(model) if uses_external_data(t)}
    return sorted(n for n in names if n)


def build(source: Any, out_dir: Path, precision: str) -> Path:
    """Validate the ONNX file, prove a CPU session loads it (in a child process), copy it as model.onnx.

    The precision is already in the file (fp16-typed or Q/DQ from the calibration stage); it is checked
    for being one we know, nothing is converted here.
    """
    check_precision(precision, TARGET)
    if not isinstance(source, (str, Path)):
        raise EnginesmithError(
            f"target onnxruntime builds from an ONNX file, got {type(source).__name__}; pass the ONNX path"
        )
    src = Path(source)
    validate_onnx(src)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    engine = out_dir / ENGINE_FILE
    if src.resolve() != engine.resolve():
        shutil.copyfile(src, engine)
        for name in _external_data_files(src):
            target = out_dir / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src.parent / name, target)
    run_isolated(
        _CHECK_SESSION,
        [str(engine)],
        stage="engine",
        what=f"loading {engine.name} on CPU",
        timeout_s=BUILD_TIMEOUT_S,
        tool="ONNX Runtime",
        hint="check the ONNX opset and operators against this onnxruntime version, or build for --target openvino",
    )
    return engine


class Runner(_BaseRunner):
    """An ONNX Runtime CPU session: graph optimisation ALL, optional intra-op thread count."""

    name = "onnxruntime"

    def __init__(self, engine_path: str | Path, *, intra_op_num_threads: int | None = None, **_: Any) -> None:
        super().__init__()
        self.engine_path = Path(engine_path)
        self.intra_op_num_threads = intra_op_num_threads
        self._session: Any = None
        self._dtypes: dict[str, Any] = {}

    def _load(self) -> None:
        import onnxruntime as ort

        path = check_engine_file(self.engine_path, "ONNX Runtime engine")
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3  # errors only: its optimizer's notes (e.g. unused Q/DQ initializers) are not ours to act on
        if self.intra_op_num_threads:
            so.intra_op_num_threads = int(self.intra_op_num_threads)
        try:
            self._session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        except Exception as e:
            raise EnginesmithError(
                f"cannot load ONNX Runtime engine {path}: {first_line(e)}; is the file corrupt? rebuild it"
            ) from None
        inputs = self._session.get_inputs()
        self.input_names = [i.name for i in inputs]
        self._dtypes = {i.name: _ORT_DTYPES.get(i.type) for i in inputs}
        self.output_names = [o.name for o in self._session.get_outputs()]

    def _infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        cast = {k: (v.astype(self._dtypes[k], copy=False) if self._dtypes.get(k) else v) for k, v in feed.items()}
        try:
            outs = self._session.run(self.output_names, cast)
        except Exception as e:
            shapes = {k: tuple(v.shape) for k, v in feed.items()}
            raise EnginesmithError(
                f"ONNX Runtime inference failed for inputs {shapes}: {first_line(e)}; "
                "feed the shapes and dtypes the model was exported with"
            ) from None
        return dict(zip(self.output_names, outs))

    def _release(self) -> None:
        self._session = None
