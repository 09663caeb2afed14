"""Export stage: PyTorch module -> ONNX (opset >= 17, named inputs/outputs, static or dynamic batch).

Imports torch (with models/, the only place that does). The ONNX carries the model's output
contract: classifiers `logits [N, C]`; detectors `boxes [N, A, 4]` (x1, y1, x2, y2, input pixels)
and `scores [N, A, C]`, decoded in the graph.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from enginesmith.backends.onnxruntime import Runner
from enginesmith.backends.torch import TorchRunner
from enginesmith.errors import EnginesmithError
from enginesmith.pipeline.artifacts import Artifact, StageResult, sha256_file
from enginesmith.pipeline.build import run_batches
from enginesmith.pipeline.verify import TOLERANCES, check, compare

if TYPE_CHECKING:
    from enginesmith.pipeline.context import BuildContext

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


def export_stage(ctx: BuildContext) -> Artifact:
    """Stage 1: the PyTorch model -> model.onnx, verified on ONNX Runtime against PyTorch on ctx.verify_batches.

    The key holds the model, class count, input shape, batch axis, extra inputs, opset, the weights' sha256
    (or the seed) and the model's source file."""
    c = ctx.config
    batch_dim = 1 if c.dynamic_batch else c.batch
    shape = (batch_dim, ctx.preprocess.channels, *ctx.size)
    params = {
        "model": ctx.spec.name,
        "num_classes": ctx.num_classes,
        "input_shape": list(shape),
        "dynamic_batch": c.dynamic_batch,
        **({"extra_inputs": {k: ax for k, ax in ctx.extra_axes.items()}} if ctx.extra_inputs else {}),
        "opset": OPSET,
        "weights": ctx.weights_id,
        "model_source": sha256_file(Path(ctx.spec.source_file)) if ctx.spec.source_file else "",
        **({"cfg_sha256": ctx.spec.definition["sha256"]} if ctx.spec.definition else {}),
    }

    def produce(tmp: Path) -> StageResult:
        path = tmp / "model.onnx"
        export_onnx(ctx.model, path, shape, ctx.spec.output_names, c.dynamic_batch, extra_inputs=ctx.extra_inputs,
                    extra_axes=ctx.extra_axes)
        with TorchRunner(ctx.model, ctx.input_names, list(ctx.spec.output_names)) as torch_runner:
            ref = run_batches(torch_runner, INPUT_NAME, ctx.verify_batches)
        bad = [k for k, v in ref.items() if not np.all(np.isfinite(v))]
        if bad and ctx.weights is not None:
            raise EnginesmithError(f"the model loaded from {ctx.weights.source} gives NaN or Inf in output {bad[0]!r} "
                                   "on the calibration images: the weights file does not hold trained weights for "
                                   f"{ctx.spec.name} (random or corrupt values?); give the right checkpoint")
        with Runner(path) as onnx_runner:
            cmp = compare(ref, run_batches(onnx_runner, INPUT_NAME, ctx.verify_batches))
        check(cmp, TOLERANCES["export"], "ONNX export (ONNX Runtime vs PyTorch)")
        return StageResult(["model.onnx"], {"nodes": node_count(path), "verify": cmp.to_dict(), "opset": OPSET})

    return ctx.record(ctx.cache.run("export", [], params, produce))
