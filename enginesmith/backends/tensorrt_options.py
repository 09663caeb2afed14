"""What a TensorRT plan is built with, decided on the CPU: the build options (profile, workspace, timing cache,
EfficientNMS), the typing rules per TensorRT version, and what the ONNX file says (fp16 tensors, Q/DQ and
their zero points, which inputs have a dynamic batch). Imports neither TensorRT nor Polygraphy."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from enginesmith.backends.tensorrt_nms import EfficientNMS
from enginesmith.errors import EnginesmithError


def major(version: str) -> int:
    """The major number of a TensorRT version string ("10.8.0.43" -> 10; 0 when unreadable)."""
    try:
        return int(str(version).split(".")[0])
    except ValueError:
        return 0


@dataclass(frozen=True)
class BuildOptions:
    """How a plan is built beyond the ONNX file.

    min/opt/max_batch: the optimization profile of a dynamic batch axis (a static batch needs none).
    timing_cache: a file read before and written after the build, so later builds reuse the tactic timings.
    workspace_mb: the builder's workspace limit. efficient_nms: append EfficientNMS_TRT to the raw head.
    """

    min_batch: int = 1
    opt_batch: int = 1
    max_batch: int = 8
    workspace_mb: int = 2048
    timing_cache: Path | None = None
    efficient_nms: EfficientNMS | None = None

    def check(self) -> None:
        if not 1 <= self.min_batch <= self.opt_batch <= self.max_batch:
            raise EnginesmithError(f"TensorRT profile needs 1 <= min <= opt <= max batch, got {self.min_batch}/"
                                   f"{self.opt_batch}/{self.max_batch}; fix the batch options")
        if self.workspace_mb < 1:
            raise EnginesmithError(f"TensorRT workspace must be at least 1 MB, got {self.workspace_mb}")
        if self.efficient_nms is not None:
            self.efficient_nms.check()

    def cache_params(self) -> dict[str, Any]:
        """What changes the plan (the timing cache only speeds the build up, so it is not part of the key)."""
        nms = self.efficient_nms
        return {"profile": [self.min_batch, self.opt_batch, self.max_batch], "workspace_mb": self.workspace_mb,
                "efficient_nms": None if nms is None else {"iou": nms.iou, "score": nms.score,
                                                           "max_detections": nms.max_detections,
                                                           "class_agnostic": nms.class_agnostic}}


def timing_cache_file(folder: Path, device: dict[str, str]) -> Path:
    """The timing cache for this TensorRT version and GPU inside `folder` (a cache from another device is not reused)."""
    slug = "".join(c if c.isalnum() else "-" for c in device.get("gpu", "gpu")).strip("-").lower() or "gpu"
    return Path(folder) / f"timing-trt{device.get('tensorrt', '?')}-sm{device.get('compute_capability', '?')}-{slug}.cache"


def onnx_typing(onnx_path: Path) -> tuple[bool, bool]:
    """(has fp16 tensors, has Q/DQ nodes) of an ONNX file, read without its weights."""
    import onnx

    m = onnx.load(str(onnx_path), load_external_data=False)
    g = m.graph
    fp16 = any(t.data_type == onnx.TensorProto.FLOAT16 for t in g.initializer) or any(
        v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT16 for v in list(g.input) + list(g.output)
    )
    qdq = any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in g.node)
    return fp16, qdq


def check_qdq_symmetric(onnx_path: Path) -> None:
    """TensorRT's explicit quantization takes symmetric Q/DQ only: every zero point must be 0."""
    import onnx
    from onnx import numpy_helper

    m = onnx.load(str(onnx_path), load_external_data=False)
    inits = {t.name: t for t in m.graph.initializer}
    for node in m.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") and len(node.input) > 2 and node.input[2]:
            zp = inits.get(node.input[2])
            if zp is not None and np.any(numpy_helper.to_array(zp) != 0):
                raise EnginesmithError(f"TensorRT INT8 needs symmetric Q/DQ (zero points 0), but {node.name or node.op_type} "
                                       f"in {onnx_path.name} has a non-zero zero point; quantize with the tensorrt quantizer")


def plan_typing(trt_version: str, precision: str, fp16_typed: bool, qdq: bool) -> tuple[bool, bool]:
    """(strongly typed network, set the fp16 builder flag) for a build; refuses what the TensorRT version cannot do.

    The ONNX file carries the precision: fp16 -> FP16-typed, int8 -> Q/DQ. Only TensorRT 10 may
    turn an fp32 ONNX into fp16 with the (weakly typed) FP16 flag; TensorRT 11 removed it."""
    if precision == "int8" and not qdq:
        raise EnginesmithError(f"TensorRT {precision} needs a Q/DQ ONNX (explicit quantization) and this one has none; "
                               "run the quantize stage for tensorrt first")
    if precision == "fp16" and not fp16_typed and not qdq:
        if major(trt_version) >= 11:
            raise EnginesmithError(f"TensorRT {trt_version} builds fp16 from an FP16-typed ONNX only (the FP16 builder "
                                   "flag is gone); convert it with the fp16 precision stage first")
        return False, True
    return True, False


def batch_profile(onnx_path: Path, opts: BuildOptions) -> list[tuple[str, tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
    """(input, min, opt, max shape) for every input with a dynamic batch axis (dim_param or 0) and fixed other dims."""
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    weights = {t.name for t in graph.initializer}
    out = []
    for value in graph.input:
        if value.name in weights:
            continue
        dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else -1 for d in value.type.tensor_type.shape.dim]
        if -1 in dims[1:]:
            raise EnginesmithError(f"TensorRT input {value.name} has dynamic dims {dims} beyond the batch; "
                                   "export with a fixed input size")
        if dims and dims[0] == -1:
            rest = tuple(dims[1:])
            out.append((value.name, (opts.min_batch, *rest), (opts.opt_batch, *rest), (opts.max_batch, *rest)))
    return out
