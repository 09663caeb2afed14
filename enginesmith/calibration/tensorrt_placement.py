"""Where the TensorRT-bound Q/DQ ONNX quantizes: the placement NVIDIA recommends and ModelOpt implements.

Sources. [TRT] NVIDIA TensorRT Developer Guide, "Explicit Quantization", section "Q/DQ Layer-Placement
Recommendations" and "TensorRT Processing of Q/DQ Networks" (https://docs.nvidia.com/deeplearning/tensorrt/
latest/inference-library/quantized-types-explicit-quantization.html). [MO] nvidia-modelopt 0.47.0,
modelopt/onnx/quantization/: int8.py (quantize, _find_nodes_to_quantize), graph_utils.py, partitioning.py,
ort_utils.py (configure_ort). scripts/compare_qdq_modelopt.py checks us against [MO] node by node
(benchmarks/qdq-placement-modelopt.md).

Rules, per node of the float graph (the decode and the nodes kept in float excluded):
1. Weighted ops (Conv, ConvTranspose, Gemm, MatMul with a constant weight): the activation input and the
   weight are quantized; weights int8 per output channel (axis 0, ConvTranspose 1), activations per tensor,
   zero points 0, biases float. [TRT: quantize all inputs of weighted operations; per-tensor activations,
   per-channel weights. MO: configure_ort QDQOpTypePerChannelSupportToAxis, QuantizeBias False]
2. No output is quantized: Q/DQ sits only on the inputs of the nodes below, one pair per tensor, shared by
   every reader of that tensor (a Concat or an L2Norm reading a quantized tensor reads it quantized).
   Relu/BatchNormalization/LeakyRelu after a Conv get nothing: TensorRT fuses them. [TRT: do not quantize
   the outputs of weighted operations; do not simulate BN/ReLU fusions. MO: OpTypesToExcludeOutputQuantization
   = every op type, DedicatedQDQPair False; Relu, LeakyRelu, Concat, Reshape, Transpose... removed from the
   quantizable ops]
3. Add of two activations. Residual Add: when one input comes from a Conv (itself or through its fusible
   epilogue: bias/scale, BatchNormalization, Relu) and the other is the skip connection, the skip input is
   quantized and the Conv branch stays float, so TensorRT fuses Conv+Add(+Relu) with an int8 output; when
   both come from different Convs, the one farther from their lowest common ancestor is the Conv branch.
   Any other Add of two activations (YOLO's shortcut after LeakyRelu, not a fusible epilogue) gets both
   inputs quantized. [TRT: quantize the residual input in skip connections. MO: build_non_residual_input_map,
   get_fusible_backbone, filter_quantizable_kgen_heads, remove_partial_input_qdq]
4. MaxPool, AveragePool, GlobalAveragePool and Resize: the input is quantized (MaxPool commutes with Q/DQ,
   AveragePool is a quantizable op fused with its DQ/Q; Resize reads the Conv's int8 output). Concat is
   never quantized itself (rule 2 gives its inputs). [TRT: commuting and quantizable layers. MO:
   find_quantizable_nodes (pooling with a quantized neighbour), _find_quantizable_kgen_partitions (Resize)]
5. Left in float, inputs included: a Gemm/MatMul that is a GEMV (output of rank <= 2 with a side of 1,
   unknown dims taken as 1: the classifier's last layer at batch 1) or has N or K < 16; a Conv with fewer
   than 16 input or output channels outside ModelOpt's int8 exceptions. [MO: find_nodes_from_matmul_to_exclude,
   find_nodes_from_convs_to_exclude, classify_partially_quantized_weighted_ops]
Beyond ModelOpt, qdq.py keeps the decode and the heads' raw outputs float (DESIGN.md, Precision).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np

WEIGHTED = ("Conv", "ConvTranspose", "Gemm", "MatMul")
INPUT_QUANTIZED = ("MaxPool", "AveragePool", "GlobalAveragePool", "Resize")
EPILOGUE = ("Relu", "BatchNormalization")  # fused into the Conv before a residual Add (MO get_fusible_backbone)
COPY_OPS = ("Flatten", "Transpose", "Concat", "Split", "Squeeze", "Unsqueeze", "Expand", "Reshape", "Tile",
            "Gather", "Slice")  # MO op_types.get_copy_ops (the ones a CNN has): skipped when matching a fusion
MIN_GEMM_DIM = 16  # MO _MIN_MATMUL_DIM
PER_CHANNEL_AXIS = {"Conv": 0, "ConvTranspose": 1}


@dataclass(frozen=True)
class Placement:
    """quantize: nodes whose activation inputs get Q/DQ (and weights, for weighted ops); float_edges:
    (node, tensor) inputs read in float even though the tensor is quantized for another reader (the residual
    Conv branch, the inputs of weighted ops left in float); tensors: what needs a calibration range."""

    quantize: tuple[str, ...]
    op_types: tuple[str, ...]
    float_edges: tuple[tuple[str, str], ...]
    kept_float: tuple[str, ...]
    tensors: tuple[str, ...]


def tensorrt_placement(model: Any, excluded: Iterable[str]) -> Placement:
    """The placement of rules 1-5 on a shape-inferred float `model` (onnx ModelProto), leaving out `excluded`."""
    import onnx_graphsurgeon as gs

    graph = gs.import_onnx(model)
    skip = set(excluded)
    quantize, float_edges, kept_float = [], [], []
    for node in graph.nodes:
        weighted = node.op in WEIGHTED and _has_constant_weight(node)
        small = weighted and node.name not in skip and _weighted_kept_float(node, graph)
        if weighted and (node.name in skip or small):  # its inputs read float even where shared (rule 5)
            kept_float += [node.name] if small else []
            float_edges += [(node.name, t.name) for t in _activations(node)]
        elif node.name in skip:
            continue
        elif weighted or node.op in INPUT_QUANTIZED:
            quantize.append(node.name)
        elif node.op == "Add" and len(_activations(node)) == 2:
            quantize.append(node.name)
            branch = _conv_branch(node)
            float_edges += [(node.name, branch)] if branch is not None else []
    chosen = set(quantize)
    # ONNX Runtime's quantizer quantizes every input of a chosen node first (the float edges are bypassed
    # afterwards), so each of them needs a range.
    tensors = {t.name: None for n in graph.nodes if n.name in chosen for t in _activations(n)[:_n_quantized(n)]}
    return Placement(
        quantize=tuple(quantize),
        op_types=tuple(sorted({n.op for n in graph.nodes if n.name in chosen})),
        float_edges=tuple(float_edges),
        kept_float=tuple(kept_float),
        tensors=tuple(tensors),
    )


def _activations(node: Any) -> list[Any]:
    """The node's non-constant float inputs (an unknown type counts as float), in input order."""
    import onnx_graphsurgeon as gs

    return [t for t in node.inputs
            if isinstance(t, gs.Variable) and t.name and not _is_constant(t) and _is_float(t.dtype)]


def _is_float(dtype: Any) -> bool:
    """True for a float numpy dtype or an unknown one (None); onnx-graphsurgeon gives non-numpy types as ONNX
    enums, of which bfloat16 (16) is the float one."""
    if dtype is None:
        return True
    try:
        return np.dtype(dtype).kind == "f"
    except TypeError:
        return dtype == 16


def _is_constant(tensor: Any) -> bool:
    """A tensor fed by a Constant node (onnx-graphsurgeon imports initializers as gs.Constant already)."""
    return bool(tensor.inputs) and tensor.inputs[0].op == "Constant"


def _n_quantized(node: Any) -> int:
    """How many leading activation inputs the quantizer quantizes: both of an Add, else the first."""
    return 2 if node.op == "Add" else 1


def _has_constant_weight(node: Any) -> bool:
    import onnx_graphsurgeon as gs

    return len(node.inputs) > 1 and (isinstance(node.inputs[1], gs.Constant) or _is_constant(node.inputs[1]))


def _weighted_kept_float(node: Any, graph: Any) -> bool:
    """Rule 5: GEMV or small GEMM (MO find_nodes_from_matmul_to_exclude), or a Conv too small for int8
    kernels (MO find_nodes_from_convs_to_exclude, int8 mode)."""
    weight = node.inputs[1]
    if weight.shape is None or len(weight.shape) < 2:
        return False
    if node.op in ("Gemm", "MatMul"):
        out = [d if isinstance(d, int) and d > 0 else 1 for d in (node.outputs[0].shape or [])]
        trans_b = node.op == "Gemm" and bool(node.attrs.get("transB", 0))
        k = weight.shape[-1 if trans_b else -2]
        n = out[-1] if len(out) >= 2 else 0
        return (len(out) < 3 and 1 in out) or 0 < n < MIN_GEMM_DIM or 0 < k < MIN_GEMM_DIM
    if node.op != "Conv":
        return False
    oc, ic = int(weight.shape[0]), int(weight.shape[1])
    if oc >= 16 and ic >= 16:
        return False
    group = int(node.attrs.get("group", 1))
    kernel = list(node.attrs.get("kernel_shape", weight.shape[2:]))
    reads_input = any(t in graph.inputs for t in node.inputs)
    if group == 1:
        return not ((oc % 8 == 0 or ic % 8 == 0) and (reads_input or oc >= 16 or ic >= 16) and len(set(kernel)) == 1)
    return not (oc % 8 == 0 and all(k >= 3 for k in kernel))


def _conv_branch(add: Any) -> str | None:
    """Rule 3: the input tensor of a residual `add` that comes from the Conv it fuses with, or None when
    the Add is not residual (neither input from a Conv, both from the same one, or the skip is the Conv)."""
    inputs = _activations(add)
    producers = [t.inputs[0] if t.inputs else None for t in inputs]
    if any(p is None for p in producers):
        return None
    convs = [_fusible_conv(p) for p in producers]
    if convs[0] is None and convs[1] is None:
        return None
    if convs[0] is not None and convs[1] is not None and convs[0].name == convs[1].name:
        return None
    lca, d0, d1 = _lowest_common_ancestor(producers[0], producers[1])
    if convs[0] is not None and convs[1] is not None:
        return inputs[0].name if d0 > d1 else inputs[1].name
    k = 0 if convs[0] is not None else 1
    return None if lca == convs[k].name else inputs[k].name


def _fusible_conv(node: Any) -> Any:
    """The Conv that `node` is (or ends, through bias/scale, BatchNormalization and Relu, copy ops
    skipped), else None: the patterns of MO get_fusible_backbone that a BN-folded export can hold."""
    seen = 0
    while node is not None and seen < 8:
        if node.op in ("Conv", "ConvTranspose"):
            return node
        if not (node.op in EPILOGUE or node.op in COPY_OPS or _is_bias_or_scale(node)):
            return None
        acts = _activations(node)
        node = acts[0].inputs[0] if len(acts) == 1 and acts[0].inputs else None
        seen += 1
    return None


def _is_bias_or_scale(node: Any) -> bool:
    return node.op in ("Add", "Mul") and len(_activations(node)) == 1


def _lowest_common_ancestor(a: Any, b: Any) -> tuple[str | None, int, int]:
    """The name of the common ancestor of nodes `a` and `b` closest to `a`, with its distances (in nodes)
    from a and b."""
    da, db = _ancestor_distances(a), _ancestor_distances(b)
    common = [n for n in da if n in db]
    if not common:
        return None, -1, -1
    best = min(common, key=lambda n: da[n])
    return best, da[best], db[best]


def _ancestor_distances(node: Any) -> dict[str, int]:
    """Breadth-first distance from `node` to each of its ancestors (itself at 0), by node name."""
    dist, frontier = {node.name: 0}, [node]
    while frontier:
        nxt = []
        for n in frontier:
            for t in _activations(n):
                for p in t.inputs:
                    if p.name not in dist:
                        dist[p.name] = dist[n.name] + 1
                        nxt.append(p)
        frontier = nxt
    return dist
