"""One module per engine (onnxruntime, openvino, tensorrt) plus the PyTorch baseline (torch).

Importing this package imports no engine library: `get_backend(target)` imports the module lazily,
and each module imports its native library inside its functions.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

from enginesmith.backends.base import TARGETS, Runner
from enginesmith.errors import EnginesmithError

__all__ = ["TARGETS", "Runner", "get_backend", "runner_options"]


def get_backend(target: str) -> ModuleType:
    """The backend module for an engine target ("openvino", "onnxruntime", "tensorrt").

    The module has `available()`, `ENGINE_FILE`, `build(source, out_dir, precision)` and `Runner`.
    """
    if target not in TARGETS:
        raise EnginesmithError(f"unknown target {target!r}; choose one of: {', '.join(TARGETS)}")
    return importlib.import_module(f"enginesmith.backends.{target}")


def runner_options(target: str, precision: str) -> dict[str, Any]:
    """Options a Runner of an engine built for `target` at `precision` needs: OpenVINO executes an fp16
    build in f16 and every other build in f32 (left alone, its CPU plugin would pick bf16 on AMX CPUs)."""
    if target == "openvino":
        return {"inference_precision": "f16" if precision == "fp16" else "f32"}
    return {}
