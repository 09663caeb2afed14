"""Q/DQ ONNX from our calibration ranges, with ONNX Runtime's QDQ quantizer (no ORT calibrator).

The ranges come from calibration.statistics (streaming, cached) for calibration_tensors(); they are handed
to ``onnxruntime.quantization.qdq_quantizer.QDQQuantizer`` as a ``TensorsData`` exactly the way
``quantize_static`` does after its calibrator ran, so ORT never collects activations itself
(its calibrators held 5.5 GB for 100 images here).

Two forms:
- symmetric=True, the TensorRT form (explicit quantization): int8 activations and int8
  weights, all zero points 0 (symmetric activations and weights), per-channel weights, full
  8-bit range, biases left in float (TensorRT fuses float bias itself; it does not take int32
  DequantizeLinear biases). Placed where NVIDIA's TensorRT guide recommends and ModelOpt places them
  (tensorrt_placement.py: weighted-op inputs, the skip input of residual Adds, pooling/Resize inputs, no
  outputs, the GEMV classifier float): ModelOpt 0.47 puts its Q/DQ on the same inputs of every node of
  resnet50, yolov3 and ssd300 but YOLOv3's three decode Muls, which we keep float
  (benchmarks/qdq-placement-modelopt.md).
- symmetric=False, the ONNX Runtime CPU form: uint8 asymmetric activations (ReLU outputs use
  all 256 levels), int8 symmetric per-channel weights with ``reduce_range`` (7-bit weights,
  [-64, 63]) and int32 biases, on the inputs and outputs of Conv/Gemm/MatMul. Why reduce_range: ORT's
  x86 u8s8 kernels without VNNI use vpmaddubsw, whose int16 pair sums saturate with full-range u8 x s8
  products; 7-bit weights cannot overflow (2 * 255 * 64 < 32767). That is the CPU this project targets
  (DESIGN.md: AVX2 without VNNI) — ORT documents reduce_range for exactly this case. On a VNNI CPU it costs
  one bit of weight resolution; measured cosine to float on ORT (held-out inputs, tests/unit/
  test_quantizers.py and the report) stays >= 0.99 for both the 4-conv net and ResNet-18.

The decode subgraph (node names matching `exclude_patterns`, plus nodes fed only by it) is
excluded and stays float, and so do the heads' raw outputs on their way to it (through layout ops
such as Transpose/Reshape/Concat): see _keep_decode_inputs_float.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from enginesmith.calibration.statistics import decode_node_names, quantizable_tensors
from enginesmith.calibration.tensorrt_placement import PER_CHANNEL_AXIS, Placement, tensorrt_placement
from enginesmith.calibration.onnx_io import save_onnx_atomic
from enginesmith.errors import EnginesmithError
from enginesmith.files import scratch_dir


def _qdq_config(symmetric: bool) -> dict[str, Any]:
    from onnxruntime.quantization import QuantType

    if symmetric:
        return dict(
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            reduce_range=False,
            extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False},
        )
    return dict(
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        reduce_range=True,
        extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
    )


ORT_OP_TYPES = ("Conv", "Gemm", "MatMul")  # what the ONNX Runtime form quantizes (inputs and outputs)

# Ops that only move or regroup values: a head's raw output passes through them on its way to the decode.
LAYOUT_OPS = frozenset({"Transpose", "Reshape", "Flatten", "Concat", "Squeeze", "Unsqueeze", "Identity"})


def decode_feeders(graph: Any, decode: set[str]) -> set[str]:
    """The decode nodes plus the layout nodes (LAYOUT_OPS) whose every output is read only by those, found
    upstream until a compute node: for SSD, conf.k Conv -> Transpose -> Reshape -> Concat -> Reshape -> decode,
    the four layout nodes join the decode."""
    consumers: dict[str, list[str]] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n.name)
    region = set(decode)
    changed = True
    while changed:
        changed = False
        for n in graph.node:
            if n.name in region or n.op_type not in LAYOUT_OPS:
                continue
            readers = [r for o in n.output for r in consumers.get(o, [])]
            if readers and all(r in region for r in readers):
                region.add(n.name)
                changed = True
    return region


def _keep_decode_inputs_float(graph: Any, decode: set[str]) -> int:
    """Remove Q -> DQ pairs whose dequantized tensor is read only by the decode or the layout nodes that feed
    it (decode_feeders), wiring those nodes to the float tensor itself. The quantizer quantizes a Conv's
    output when it can, which would put the detection heads' raw outputs through 8 bits before decoding: the
    class logits before the softmax (SSD-slim on ONNX Runtime: 0.8 of its 1.1-point INT8 drop on the val
    split) and the box offsets before exp(). Returns how many pairs were removed."""
    region = decode_feeders(graph, decode)
    readers = _readers(graph)
    producer = {o: n for n in graph.node for o in n.output}
    edges, removed = [], 0
    for dq in graph.node:
        q = producer.get(dq.input[0]) if dq.op_type == "DequantizeLinear" else None
        dq_readers = readers.get(dq.output[0]) if q is not None and q.op_type == "QuantizeLinear" else None
        if dq_readers and all(r.name in region for r in dq_readers):
            edges += [(r.name, q.input[0]) for r in dq_readers]
            removed += 1
    read_float(graph, edges)
    return removed


def _readers(graph: Any) -> dict[str, list[Any]]:
    """tensor name -> the nodes that read it."""
    out: dict[str, list[Any]] = {}
    for n in graph.node:
        for i in n.input:
            out.setdefault(i, []).append(n)
    return out


def read_float(graph: Any, edges: Iterable[tuple[str, str]]) -> int:
    """Make each (node, tensor) edge read `tensor` itself instead of its Q -> DQ copy, then drop the Q/DQ
    nodes nothing reads any more. Returns how many inputs were rewired."""
    wanted = set(edges)
    producer = {o: n for n in graph.node for o in n.output}
    rewired = 0
    for node in graph.node:
        for k, name in enumerate(node.input):
            dq = producer.get(name)
            q = producer.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
            if q is not None and q.op_type == "QuantizeLinear" and (node.name, q.input[0]) in wanted:
                node.input[k] = q.input[0]
                rewired += 1
    for op in ("DequantizeLinear", "QuantizeLinear"):  # a DQ first: its Q is unread once the DQ is gone
        read = set(_readers(graph)) | {o.name for o in graph.output}
        kept = [n for n in graph.node if n.op_type != op or n.output[0] in read]
        del graph.node[:]
        graph.node.extend(kept)
    return rewired


def quantize_qdq(
    onnx_in: str | Path,
    onnx_out: str | Path,
    ranges: Mapping[str, tuple[float, float]],
    *,
    symmetric: bool,
    per_channel: bool = True,
    op_types: Sequence[str] = ORT_OP_TYPES,
    exclude_patterns: Sequence[str] = ("/decode/",),
    keep_float: Sequence[str] = (),
    _config: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write a Q/DQ ONNX of `onnx_in` to `onnx_out` (atomically) using `ranges` (tensor -> (lo, hi)).

    Placement: symmetric=True is TensorRT's (tensorrt_placement.py); symmetric=False quantizes the inputs
    and outputs of `op_types` as ONNX Runtime's quantizer does. `ranges` must cover calibration_tensors().
    Returns info: quantized_nodes, quantize_linear / dequantize_linear node counts, qdq_pairs,
    excluded_nodes, and the config. `keep_float` names nodes to leave in float (the mixed-precision search).
    `_config` overrides the chosen kernel config (used only to measure alternatives).
    """
    from onnxruntime.quantization.calibrate import CalibrationMethod, TensorData, TensorsData
    from onnxruntime.quantization.qdq_quantizer import QDQQuantizer

    src, dst = Path(onnx_in), Path(onnx_out)
    cfg = dict(_config) if _config is not None else _qdq_config(symmetric)
    model = _load_for_quantizer(src, cfg)
    excluded = sorted(decode_node_names(model.graph, exclude_patterns) | set(keep_float))
    placement = tensorrt_placement(model, excluded) if symmetric else None
    tensors = TensorsData(
        CalibrationMethod.MinMax,
        {k: TensorData(lowest=np.float32(lo), highest=np.float32(hi)) for k, (lo, hi) in ranges.items()},
    )
    quantizer = QDQQuantizer(
        model,
        per_channel,
        cfg["reduce_range"],
        cfg["weight_type"],
        cfg["activation_type"],
        tensors,
        list(placement.quantize) if placement else [],  # [] = every node of op_types
        excluded,
        list(placement.op_types) if placement else list(op_types),
        {**cfg["extra_options"], **(_tensorrt_options(placement) if placement else {})},
    )
    try:
        quantizer.quantize_model()
    except ValueError as e:
        raise EnginesmithError(f"Q/DQ quantization of {src} failed: {e}; compute ranges for "
                               "qdq.calibration_tensors()") from None
    qmodel = quantizer.model.model
    float_edges = read_float(qmodel.graph, placement.float_edges) if placement else 0
    unquantized_heads = _keep_decode_inputs_float(qmodel.graph, set(excluded))
    if placement:
        _drop_unused_initializers(qmodel.graph)
    save_onnx_atomic(qmodel, dst)

    return {
        "form": "tensorrt-symmetric" if symmetric else "onnxruntime-u8s8",
        **_qdq_counts(qmodel.graph, op_types),
        "excluded_nodes": len(excluded),
        "kept_float": sorted(keep_float),
        "decode_inputs_kept_float": unquantized_heads,
        **({"float_inputs": float_edges, "weighted_kept_float": list(placement.kept_float)} if placement else {}),
        "activation_type": str(cfg["activation_type"]),
        "weight_type": str(cfg["weight_type"]),
        "reduce_range": bool(cfg["reduce_range"]),
        "per_channel": bool(per_channel),
    }


def _drop_unused_initializers(graph: Any) -> None:
    """Remove the scales and zero points of the Q/DQ pairs read_float dropped (ONNX Runtime warns about each)."""
    read = set(_readers(graph)) | {o.name for o in graph.output}
    kept = [i for i in graph.initializer if i.name in read]
    del graph.initializer[:]
    graph.initializer.extend(kept)


def _tensorrt_options(placement: Placement) -> dict[str, Any]:
    """ONNX Runtime quantizer options that give TensorRT's placement (tensorrt_placement.py rules 1-2, as
    ModelOpt's configure_ort sets them): no output Q/DQ, one shared pair per tensor, pooling/Resize inputs
    quantized even when their producer is not, per-channel weight axes."""
    return {
        "OpTypesToExcludeOutputQuantization": list(placement.op_types),
        "DedicatedQDQPair": False,
        "ForceQuantizeNoInputCheck": True,
        "QDQOpTypePerChannelSupportToAxis": dict(PER_CHANNEL_AXIS),
    }


def calibration_tensors(
    onnx_path: str | Path, *, symmetric: bool, exclude_patterns: Sequence[str] = ("/decode/",),
    op_types: Sequence[str] = ORT_OP_TYPES,
) -> list[str]:
    """The activation tensors quantize_qdq needs ranges for: TensorRT's placement (symmetric=True), or the
    inputs and outputs of `op_types` (ONNX Runtime's form), the decode left out."""
    if not symmetric:
        return quantizable_tensors(onnx_path, op_types, exclude_patterns)
    model = _load_for_quantizer(Path(onnx_path), _qdq_config(True))
    return list(tensorrt_placement(model, decode_node_names(model.graph, exclude_patterns)).tensors)


def _load_for_quantizer(src: Path, cfg: dict[str, Any]) -> Any:
    """`src` shape-inferred and at an opset the quantizer takes (>= 13, the Q/DQ types' opset).

    ORT's loader writes a "-inferred" sibling beside the file it loads: it loads a private copy, so a
    read-only or shared input folder is never touched."""
    import onnx
    from onnxruntime.quantization.quant_utils import load_model_with_shape_infer, update_opset_version

    if not src.is_file():
        raise EnginesmithError(f"ONNX model not found: {src}")
    with scratch_dir("enginesmith-qdq") as tmpdir:
        local = Path(tmpdir) / "model.onnx"
        local.write_bytes(src.read_bytes())
        model = load_model_with_shape_infer(local)
    model = update_opset_version(model, cfg["weight_type"], cfg["activation_type"])
    if model.opset_import and max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0) < 13:
        model = onnx.version_converter.convert_version(model, 13)
    return model


def _qdq_counts(graph: Any, op_types: Sequence[str]) -> dict[str, int]:
    """quantized_nodes (op_types nodes fed by a DequantizeLinear), quantize_linear, dequantize_linear, qdq_pairs."""
    nodes = list(graph.node)
    dq_outputs = {o for n in nodes if n.op_type == "DequantizeLinear" for o in n.output}
    quantized = sum(1 for n in nodes if n.op_type in op_types and any(i in dq_outputs for i in n.input))
    n_q = sum(1 for n in nodes if n.op_type == "QuantizeLinear")
    n_dq = sum(1 for n in nodes if n.op_type == "DequantizeLinear")
    return {"quantized_nodes": quantized, "quantize_linear": n_q, "dequantize_linear": n_dq, "qdq_pairs": n_q}
