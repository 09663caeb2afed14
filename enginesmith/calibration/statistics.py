"""Activation statistics gathered once, streaming, with ONNX Runtime.

Data-structure decisions:
- The result is a plain ``dict[str, tuple[float, float]]`` tensor name -> (lo, hi); JSON-able,
  so the pipeline caches it by content hash (model, calibration fingerprint, preprocessing,
  method). Quantizers (qdq.py) turn it into ONNX Runtime's ``TensorsData``.
- Memory is flat in the number of images: activations are never kept. Pass 1 keeps a running
  (min, max) per tensor; "entropy" and "percentile" need a second pass that adds each batch into
  a fixed-range histogram of |x| (``num_bins`` int64 counts per tensor, range [0, max|x|] from
  pass 1). ``batches_factory`` is therefore called once (minmax) or twice.
- The tensors are fetched by adding them as extra graph outputs to a temporary copy of the model
  on disk; only one ``ModelProto`` is alive at a time and it is dropped before inference, so a
  250 MB model is held once by the proto (briefly) and once by the session.

Methods (what (lo, hi) means):
- "minmax": the global (min, max) over all calibration data.
- "percentile": if min >= 0 (post-ReLU, sigmoid) -> (min, P-th percentile of x); otherwise the
  symmetric (-t, t) with t the P-th percentile of |x|. Percentiles are read from the histogram
  (linear interpolation inside the bin), so they are exact to one bin width (max|x| / num_bins).
- "entropy": TensorRT's KL-divergence calibration (as in NVIDIA pytorch-quantization
  ``_compute_amax_entropy``): for every candidate i in [128, num_bins], the clipped |x|
  histogram P (outliers folded into bin i-1) is compared with its 128-level quantization Q; the
  threshold is the upper edge of bin i-1 for the i with the smallest KL(P || Q) (ties -> largest
  i). Range: (min, t) if min >= 0, else (-t, t).
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Literal, Sequence

import numpy as np

from enginesmith.calibration.feeds import as_feed
from enginesmith.errors import EnginesmithError

Method = Literal["minmax", "entropy", "percentile"]
METHODS = ("minmax", "entropy", "percentile")
NUM_QUANTIZED_BINS = 128  # int8 magnitude levels (TensorRT's entropy calibrator)

_FLOAT_TYPES = (1, 10, 16)  # onnx FLOAT, FLOAT16, BFLOAT16


def _matches(name: str, patterns: Sequence[str]) -> bool:
    return any(re.search(p, name) for p in patterns)


def decode_node_names(graph, exclude_patterns: Sequence[str]) -> set[str]:
    """Names of the ONNX nodes kept in float: the ones whose name matches a pattern, plus every
    node fed only by such nodes (and constants). The second rule catches the decode head's last
    node, which exporters name after the graph output (e.g. the final Concat named "boxes")."""
    if not exclude_patterns:
        return set()
    constants = {i.name for i in graph.initializer}
    for n in graph.node:
        if n.op_type == "Constant":
            constants.update(n.output)
    decode: set[str] = set()
    decode_tensors: set[str] = set()
    for n in graph.node:  # ONNX nodes are topologically sorted
        acts = [i for i in n.input if i and i not in constants]
        if _matches(n.name, exclude_patterns) or (acts and all(i in decode_tensors for i in acts)):
            decode.add(n.name)
            decode_tensors.update(n.output)
    return decode


def _load(onnx_path: str | Path, with_data: bool = False):
    import onnx

    path = Path(onnx_path)
    if not path.is_file():
        raise EnginesmithError(f"ONNX model not found: {path}")
    return onnx.load(str(path), load_external_data=with_data)


def _tensor_types(model) -> dict[str, int]:
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # shape inference is best effort; fall back to what the file declares
        inferred = model
    g = inferred.graph
    types = {}
    for vi in list(g.input) + list(g.output) + list(g.value_info):
        if vi.type.HasField("tensor_type"):
            types[vi.name] = vi.type.tensor_type.elem_type
    for init in g.initializer:
        types[init.name] = init.data_type
    return types


def quantizable_tensors(
    onnx_path: str | Path,
    op_types: Sequence[str] = ("Conv", "Gemm", "MatMul"),
    exclude_patterns: Sequence[str] = ("/decode/",),
) -> list[str]:
    """Float activation tensors (inputs and outputs, not weights/constants) of the nodes of
    `op_types` outside the decode subgraph, in graph order, without duplicates."""
    model = _load(onnx_path)
    g = model.graph
    types = _tensor_types(model)
    skip = decode_node_names(g, exclude_patterns)
    constants = {i.name for i in g.initializer}
    for n in g.node:
        if n.op_type == "Constant":
            constants.update(n.output)
    out: dict[str, None] = {}
    for n in g.node:
        if n.op_type not in op_types or n.name in skip:
            continue
        for t in list(n.input) + list(n.output):
            if t and t not in constants and types.get(t, 1) in _FLOAT_TYPES:
                out[t] = None
    return list(out)


class _Session:
    """An ORT session over a temporary copy of the model that also outputs `names`."""

    def __init__(self, onnx_path: Path, names: list[str]):
        import onnx
        import onnxruntime as ort

        model = _load(onnx_path, with_data=True)
        g = model.graph
        self.input_names = [i.name for i in g.input if i.name not in {x.name for x in g.initializer}]
        self.fed = [n for n in names if n in self.input_names]
        existing = {o.name for o in g.output}
        for n in names:
            if n not in existing and n not in self.input_names:
                g.output.append(onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None))
        self.fetched = [n for n in names if n not in self.input_names]
        opts = ort.SessionOptions()
        # Fusions would hide (or rename) the very tensors we ask for; basic folding keeps them.
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        opts.log_severity_level = 3
        fd, tmp = tempfile.mkstemp(suffix=".onnx", prefix="enginesmith-stats-")
        os.close(fd)
        try:
            size = model.ByteSize()
            if size > 1_900_000_000:
                onnx.save(model, tmp, save_as_external_data=True, location=Path(tmp).name + ".data")
            else:
                onnx.save(model, tmp)
            del model, g
            self.session = ort.InferenceSession(tmp, opts, providers=["CPUExecutionProvider"])
        finally:
            for p in (tmp, tmp + ".data"):
                if os.path.exists(p):
                    os.remove(p)
    def run(self, batch: Any) -> Iterator[tuple[str, np.ndarray]]:
        """batch: an array for the first input, or a feed dict (calibration/feeds.py) for every input."""
        feed = as_feed(batch, self.input_names)
        if set(feed) != set(self.input_names):
            raise EnginesmithError(f"calibration fed {sorted(feed)} but the model takes {self.input_names}")
        outs = self.session.run(self.fetched, feed) if self.fetched else []
        for n in self.fed:
            yield n, feed[n]
        for n, v in zip(self.fetched, outs):
            yield n, v


def kl_threshold_bin(hist: np.ndarray, num_quantized_bins: int = NUM_QUANTIZED_BINS) -> int:
    """TensorRT entropy calibration on a |x| histogram: the number of bins i to keep (the
    threshold is the upper edge of bin i-1). Vectorised per candidate; see module docstring."""
    hist = np.asarray(hist, dtype=np.float64)
    nbins = len(hist)
    if nbins <= num_quantized_bins:
        return nbins
    tail = np.concatenate([np.cumsum(hist[::-1])[::-1], [0.0]])  # tail[i] = sum(hist[i:])
    best_i, best_kl = nbins, np.inf
    for i in range(num_quantized_bins, nbins + 1):
        p_raw = hist[:i]
        nonzero = p_raw != 0
        space = np.linspace(0, i, num=num_quantized_bins + 1)
        level = np.digitize(np.arange(i), space) - 1
        sums = np.bincount(level[nonzero], weights=p_raw[nonzero], minlength=num_quantized_bins)
        counts = np.bincount(level[nonzero], minlength=num_quantized_bins)
        per = np.divide(sums, counts, out=np.zeros_like(sums), where=counts > 0)
        q = np.where(nonzero, per[level], 0.0)
        p = p_raw.copy()
        p[-1] += tail[i]
        ps, qs = p.sum(), q.sum()
        if ps == 0 or qs == 0:
            continue
        p /= ps
        q /= qs
        m = p > 0
        if np.any(q[m] == 0):
            kl = np.inf
        else:
            kl = float(np.sum(p[m] * np.log(p[m] / q[m])))
        if kl <= best_kl:  # ties -> the largest i (TensorRT takes the last argmin)
            best_kl, best_i = kl, i
    return best_i


def _percentile_from_hist(hist: np.ndarray, hi_edge: float, percentile: float) -> float:
    total = hist.sum()
    if total == 0 or hi_edge <= 0:
        return 0.0
    cdf = np.cumsum(hist) / total
    target = percentile / 100.0
    b = int(np.searchsorted(cdf, target, side="left"))
    b = min(b, len(hist) - 1)
    width = hi_edge / len(hist)
    prev = cdf[b - 1] if b > 0 else 0.0
    frac = 0.0 if cdf[b] == prev else (target - prev) / (cdf[b] - prev)
    return float((b + np.clip(frac, 0.0, 1.0)) * width)


def activation_ranges(
    onnx_path: str | Path,
    batches_factory: Callable[[], Iterable[np.ndarray]],
    tensor_names: list[str] | None = None,
    method: Method = "minmax",
    percentile: float = 99.99,
    num_bins: int = 2048,
    progress: Callable[[int], None] | None = None,
) -> dict[str, tuple[float, float]]:
    """Calibration ranges tensor -> (lo, hi) for `tensor_names` (default: quantizable_tensors).

    batches_factory() yields (N, C, H, W) float32 batches; it is called once per pass (1 for
    minmax, 2 otherwise). progress(k) is called with the number of images seen so far in the
    current pass. See the module docstring for what each method returns.
    """
    if method not in METHODS:
        raise EnginesmithError(f"unknown calibration method {method!r}; use one of {', '.join(METHODS)}")
    if not 0.0 < percentile <= 100.0:
        raise EnginesmithError(f"percentile must be in (0, 100], got {percentile}")
    path = Path(onnx_path)
    names = list(tensor_names) if tensor_names is not None else quantizable_tensors(path)
    if not names:
        return {}
    sess = _Session(path, names)
    lo, hi = _min_max_pass(sess, names, batches_factory, progress)
    if method == "minmax":
        return {n: (lo[n], hi[n]) for n in names}
    amax = {n: max(abs(lo[n]), abs(hi[n])) for n in names}
    hists = _histogram_pass(sess, names, batches_factory, amax, num_bins, progress)
    result: dict[str, tuple[float, float]] = {}
    for n in names:
        if amax[n] == 0:
            result[n] = (lo[n], hi[n])
            continue
        if method == "percentile":
            t = _percentile_from_hist(hists[n], amax[n], percentile)
        else:
            i = kl_threshold_bin(hists[n])
            t = i * amax[n] / num_bins
        t = max(t, 1e-12)
        result[n] = (lo[n], min(t, hi[n])) if lo[n] >= 0 else (-t, t)
    return result


def _min_max_pass(sess: _Session, names: list[str], batches_factory: Callable[[], Iterable[np.ndarray]],
                  progress: Callable[[int], None] | None) -> tuple[dict[str, float], dict[str, float]]:
    """Pass 1: each tensor's running minimum and maximum over every calibration batch."""
    lo = {n: np.inf for n in names}
    hi = {n: -np.inf for n in names}
    seen = 0
    for batch in batches_factory():
        for n, v in sess.run(batch):
            if v.size:
                lo[n] = min(lo[n], float(v.min()))
                hi[n] = max(hi[n], float(v.max()))
        seen += 1 if isinstance(batch, dict) else len(batch)  # a feed dict is one image
        if progress:
            progress(seen)
    if seen == 0:
        raise EnginesmithError("calibration data is empty; give at least one image")
    missing = [n for n in names if not np.isfinite(lo[n])]
    if missing:
        raise EnginesmithError(f"calibration never saw values for tensors {missing[:5]} (empty outputs)")
    return lo, hi


def _histogram_pass(sess: _Session, names: list[str], batches_factory: Callable[[], Iterable[np.ndarray]],
                    amax: dict[str, float], num_bins: int,
                    progress: Callable[[int], None] | None) -> dict[str, np.ndarray]:
    """Pass 2: each tensor's histogram of |value| over [0, amax] in `num_bins` fixed bins (memory flat in the set)."""
    hists = {n: np.zeros(num_bins, dtype=np.int64) for n in names}
    seen = 0
    for batch in batches_factory():
        for n, v in sess.run(batch):
            if amax[n] > 0:
                h, _ = np.histogram(np.abs(v), bins=num_bins, range=(0.0, amax[n]))
                hists[n] += h
        seen += 1 if isinstance(batch, dict) else len(batch)  # a feed dict is one image
        if progress:
            progress(seen)
    return hists
