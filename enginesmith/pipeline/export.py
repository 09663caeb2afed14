"""Export stage: PyTorch module -> ONNX (opset >= 17, named inputs/outputs, static or dynamic batch).

Imports torch (with models/, the only place that does). The ONNX carries the model's output
contract: classifiers `logits [N, C]`; detectors `boxes [N, A, 4]` (x1, y1, x2, y2, input pixels)
and `scores [N, A, C]`, decoded in the graph.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any


from enginesmith.errors import EnginesmithError

INPUT_NAME = "images"
OPSET = 17


def export_onnx(
    model: Any,
    path: Path,
    input_shape: tuple[int, int, int, int],
    output_names: tuple[str, ...],
    dynamic_batch: bool,
    opset: int = OPSET,
    extra_inputs: dict[str, Any] | None = None,
    extra_axes: dict[str, dict[int, str]] | None = None,
) -> None:
    """Trace `model` on a zero input of `input_shape` (N, C, H, W) and write ONNX to `path`.

    extra_inputs: further named inputs after the image (name -> example array, e.g. Fast R-CNN's rois [R, 4]);
    extra_axes: their dynamic axes and the outputs' (name -> {axis: label}), e.g. {"rois": {0: "rois"}}."""
    import numpy as np
    import torch

    dummy = torch.zeros(input_shape, dtype=torch.float32)
    extra_inputs = extra_inputs or {}
    args = (dummy, *(torch.from_numpy(np.ascontiguousarray(v)) for v in extra_inputs.values()))
    axes = {INPUT_NAME: {0: "batch"}, **{n: {0: "batch"} for n in output_names}} if dynamic_batch else {}
    for name, ax in (extra_axes or {}).items():
        axes[name] = {**axes.get(name, {}), **ax}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            with torch.inference_mode():
                torch.onnx.export(
                    model,
                    args,
                    str(path),
                    dynamo=False,
                    opset_version=opset,
                    input_names=[INPUT_NAME, *extra_inputs],
                    output_names=list(output_names),
                    dynamic_axes=axes or None,
                    do_constant_folding=True,
                )
        except Exception as e:  # torch raises many types here; the user needs one line
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise EnginesmithError(f"ONNX export failed: {first}") from None


def node_count(path: Path) -> int:
    """Number of nodes in the main graph of an ONNX file (initializers not loaded)."""
    import onnx

    return len(onnx.load(str(path), load_external_data=False).graph.node)
