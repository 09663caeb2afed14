"""FP16 ONNX: weights and compute in float16, inputs/outputs kept float32 by default.

Uses onnxruntime.transformers.float16.convert_float_to_float16 (onnxconverter-common is not
installed; ORT ships the same converter). Ops whose fp16 kernels are missing or numerically
risky stay float32 via the converter's default block list; Cast nodes are inserted at the
boundaries. The output is written atomically (temporary file, then rename).
"""

from __future__ import annotations

from pathlib import Path

from enginesmith.calibration.onnx_io import save_onnx_atomic
from enginesmith.errors import EnginesmithError


def onnx_to_fp16(onnx_in: str | Path, onnx_out: str | Path, keep_io_types: bool = True) -> dict:
    """Convert `onnx_in` to float16 into `onnx_out`; returns info (cast nodes, fp16 initializers)."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    src, dst = Path(onnx_in), Path(onnx_out)
    if not src.is_file():
        raise EnginesmithError(f"ONNX model not found: {src}")
    model = onnx.load(str(src))
    half = convert_float_to_float16(model, keep_io_types=keep_io_types, disable_shape_infer=False)
    del model
    save_onnx_atomic(half, dst)
    return {
        "cast_nodes": sum(1 for n in half.graph.node if n.op_type == "Cast"),
        "fp16_initializers": sum(1 for i in half.graph.initializer if i.data_type == onnx.TensorProto.FLOAT16),
        "keep_io_types": keep_io_types,
    }
