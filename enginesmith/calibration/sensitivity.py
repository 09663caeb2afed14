"""Rank quantized layers by how much quantization noise each one adds (for the mixed-precision search).

For every quantizable node (Conv/Gemm/MatMul outside the decode head) we compare, on a few
calibration batches, the float model's tensors with the quantized model's, both run on the backend
that will run the engine (OpenVINO for an NNCF IR, ONNX Runtime for a Q/DQ ONNX):

    NSR(t)  = sum (quant(t) - ref(t))^2 / sum ref(t)^2      (noise-to-signal power ratio)
    SQNR(t) = -10 log10 NSR(t)                               [dB, capped at 100]
    added(node) = NSR(node's output) - NSR(node's activation input)

`added` is the relative noise power the node itself contributes (quantizing its input activation and
its weights), net of the noise it inherits (independent errors add in power, so the difference is
taken in linear terms, not in dB); the nodes with the largest `added` are kept in float first. Sums are
accumulated batch by batch, so memory does not grow with the number of batches.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from enginesmith.calibration.feeds import as_feed

from enginesmith.calibration.statistics import decode_node_names

SQNR_CAP_DB = 100.0


@dataclass(frozen=True)
class QuantizableNode:
    """One ONNX node the quantizers quantize: its name, op type, activation input and output tensor."""

    name: str
    op_type: str
    input: str
    output: str


@dataclass(frozen=True)
class LayerSensitivity:
    name: str
    op_type: str
    sqnr_in_db: float
    sqnr_out_db: float

    @property
    def added_nsr(self) -> float:
        """Noise-to-signal power the node adds: 10^(-SQNR_out/10) - 10^(-SQNR_in/10)."""
        return 10.0 ** (-self.sqnr_out_db / 10.0) - 10.0 ** (-self.sqnr_in_db / 10.0)

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "op_type": self.op_type, "sqnr_in_db": round(self.sqnr_in_db, 2),
                "sqnr_out_db": round(self.sqnr_out_db, 2), "added_nsr": float(f"{self.added_nsr:.3g}")}


def quantizable_nodes(onnx_path: str | Path, op_types: Sequence[str], exclude_patterns: Sequence[str]) -> list[QuantizableNode]:
    """The nodes of `op_types` outside the decode subgraph, in graph order, with their first
    non-constant input (the activation) and their output."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    g = model.graph
    constants = {i.name for i in g.initializer} | {o for n in g.node if n.op_type == "Constant" for o in n.output}
    skip = decode_node_names(g, exclude_patterns)
    out = []
    for n in g.node:
        if n.op_type not in op_types or n.name in skip:
            continue
        acts = [i for i in n.input if i and i not in constants]
        if acts:
            out.append(QuantizableNode(n.name, n.op_type, acts[0], n.output[0]))
    return out


def sqnr_db(signal_power: float, noise_power: float) -> float:
    """10 log10(signal / noise), capped at SQNR_CAP_DB (an exact tensor, or an all-zero one)."""
    if noise_power <= 0.0:
        return SQNR_CAP_DB
    if signal_power <= 0.0:
        return -SQNR_CAP_DB
    return min(SQNR_CAP_DB, 10.0 * math.log10(signal_power / noise_power))


def tensor_sqnr(
    run_float: Callable[[np.ndarray], dict[str, np.ndarray]],
    run_quant: Callable[[np.ndarray], dict[str, np.ndarray]],
    batches: Iterable[np.ndarray],
    tensors: Sequence[str],
) -> dict[str, float]:
    """SQNR in dB of each tensor of the quantized run against the float run, summed over batches.
    A tensor the quantized run does not expose (folded away) is left out."""
    signal: dict[str, float] = {}
    noise: dict[str, float] = {}
    for batch in batches:
        ref, got = run_float(batch), run_quant(batch)
        for t in tensors:
            if t not in ref or t not in got:
                continue
            r = np.asarray(ref[t], dtype=np.float64)
            q = np.asarray(got[t], dtype=np.float64)
            if r.shape != q.shape:
                continue
            signal[t] = signal.get(t, 0.0) + float(np.sum(r * r))
            noise[t] = noise.get(t, 0.0) + float(np.sum((q - r) ** 2))
    return {t: sqnr_db(signal[t], noise[t]) for t in signal}


def rank_layers(nodes: Sequence[QuantizableNode], sqnr: dict[str, float], graph_inputs: Iterable[str]) -> list[LayerSensitivity]:
    """Nodes sorted by the noise they add, largest first. A graph input counts as exact (the cap);
    a node whose output was not measured is ranked last."""
    exact = set(graph_inputs)
    ranked = []
    for n in nodes:
        s_in = SQNR_CAP_DB if n.input in exact else sqnr.get(n.input, SQNR_CAP_DB)
        s_out = sqnr.get(n.output)
        if s_out is None:
            s_out = s_in
        ranked.append(LayerSensitivity(n.name, n.op_type, s_in, s_out))
    return sorted(ranked, key=lambda r: (-r.added_nsr, r.name))


# -- taps: the float and quantized models with every needed tensor as an output --------------------

def onnx_tap(onnx_path: str | Path, tensors: Sequence[str]) -> Callable[[np.ndarray], dict[str, np.ndarray]]:
    """Run an ONNX model (float or Q/DQ) on ONNX Runtime with `tensors` added as graph outputs."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(onnx_path))
    have = {o.name for o in model.graph.output}
    produced = {o for n in model.graph.node for o in n.output} | {i.name for i in model.graph.input}
    for t in tensors:
        if t not in have and t in produced:
            model.graph.output.append(onnx.helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    names = [o.name for o in session.get_outputs()]

    def run(batch: Any) -> dict[str, np.ndarray]:
        return dict(zip(names, session.run(names, as_feed(batch, [input_name]))))

    return run


def openvino_tap(model_or_path: object, tensors: Sequence[str]) -> Callable[[np.ndarray], dict[str, np.ndarray]]:
    """Run an OpenVINO model (ONNX path, IR path or openvino.Model) in f32 on the CPU with `tensors`
    added as outputs (tensor names survive convert_model and NNCF)."""
    import openvino as ov

    core = ov.Core()
    model = core.read_model(str(model_or_path)) if isinstance(model_or_path, (str, Path)) else model_or_path.clone()
    known = {name for op in model.get_ordered_ops() for o in op.outputs() for name in o.get_names()}
    wanted = [t for t in tensors if t in known]
    if wanted:
        model.add_outputs(wanted)
    compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    request = compiled.create_infer_request()
    outputs = list(compiled.outputs)

    def run(batch: Any) -> dict[str, np.ndarray]:
        result = request.infer(batch if isinstance(batch, dict) else {0: batch})
        out: dict[str, np.ndarray] = {}
        for port in outputs:
            value = np.asarray(result[port])
            for name in port.get_names():
                out[name] = value
        return out

    return run


def layer_sensitivity(
    float_onnx: str | Path,
    quantized: str | Path | object,
    backend: str,
    batches: Iterable[np.ndarray],
    op_types: Sequence[str],
    exclude_patterns: Sequence[str],
) -> list[LayerSensitivity]:
    """Rank the quantizable nodes of `float_onnx` by the noise they add in `quantized` (an NNCF IR
    for backend "openvino", a Q/DQ ONNX otherwise, run on ONNX Runtime)."""
    import onnx

    nodes = quantizable_nodes(float_onnx, op_types, exclude_patterns)
    tensors = sorted({t for n in nodes for t in (n.input, n.output)})
    graph_inputs = [i.name for i in onnx.load(str(float_onnx), load_external_data=False).graph.input]
    tap = TAPS[backend]
    run_float, run_quant = tap(float_onnx, tensors), tap(quantized, tensors)  # type: ignore[operator]
    return rank_layers(nodes, tensor_sqnr(run_float, run_quant, batches, tensors), graph_inputs)


# the runtime that runs the quantized model (backends/targets.py Target.layer_ranking) -> its tensor tap
TAPS = {"openvino": openvino_tap, "onnxruntime": onnx_tap}
