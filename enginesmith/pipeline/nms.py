"""In-engine NMS: rewrite a detector ONNX (outputs `boxes [N, A, 4]`, `scores [N, A, C]`) so it ends
in ONNX NonMaxSuppression and returns the final detections itself (`--nms engine`).

The appended graph produces exactly what runtime/nms.py's `nms_detections` (`--nms host`) returns:
- `detections [N, K, 6]` float32 (x1, y1, x2, y2, score, class), K = max_detections, zero rows past
  `num_detections [N]` int32.
- NonMaxSuppression(boxes, scores^T [N, C, A], max_output_boxes_per_class=K, iou, score) (per class;
  with class_agnostic, over one column holding each box's best class score, its class from ArgMax);
  then the selected (batch, class, box) triples are scattered into a [N, S] score matrix (-inf where a
  triple belongs to another image), TopK(min(K, S)) per image picks the best by score, rows are gathered,
  invalid ones zeroed, and Pad fills up to K.
- Tie-breaking: TopK returns equal scores in the order NonMaxSuppression emitted them (class-major);
  exact score ties may therefore be ordered differently from the host form (which orders ties by
  class, then box index). The set of detections is the same.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from enginesmith.backends.onnxruntime import Runner
from enginesmith.calibration.onnx_io import save_onnx_atomic
from enginesmith.errors import EnginesmithError
from enginesmith.pipeline.artifacts import Artifact, StageResult
from enginesmith.pipeline.build import run_batches
from enginesmith.pipeline.export import INPUT_NAME
from enginesmith.pipeline.verify import nms_parity
from enginesmith.runtime.nms import DEFAULT_IOU_THRESHOLD, DEFAULT_MAX_DETECTIONS, DEFAULT_SCORE_THRESHOLD

NMS_OPSET = 17
PREFIX = "nms/"  # node and tensor names of the appended subgraph

if TYPE_CHECKING:
    from enginesmith.pipeline.context import BuildContext


def _const(name: str, value: np.ndarray):
    from onnx import numpy_helper

    return numpy_helper.from_array(np.asarray(value), name=PREFIX + name)


def append_nms_model(
    model,
    iou_threshold: float = DEFAULT_IOU_THRESHOLD,
    score_threshold: float = DEFAULT_SCORE_THRESHOLD,
    max_detections: int = DEFAULT_MAX_DETECTIONS,
    class_agnostic: bool = False,
    boxes_name: str = "boxes",
    scores_name: str = "scores",
    keep_raw_outputs: bool = False,
):
    """The in-memory form of `append_nms`: an onnx.ModelProto in, a new one out. With
    `keep_raw_outputs`, `boxes` and `scores` stay graph outputs after the detections, so every later
    stage can still be verified on the raw head (detections alone flip at score/IoU thresholds)."""
    import onnx
    from onnx import TensorProto, helper

    opset = _check_appendable(model, boxes_name, scores_name, max_detections)
    k = int(max_detections)
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    g.initializer.extend(_constants(k, iou_threshold, score_threshold))
    b = _Nodes(g)
    rows, b_idx, sel_scores, sel = _selected_rows(b, boxes_name, scores_name, class_agnostic, opset)
    _top_k_per_image(b, rows, b_idx, sel_scores, sel, scores_name)
    g.node.extend(b.nodes)
    batch = _batch_dim(g, scores_name)
    raw = [o for o in g.output if o.name in (boxes_name, scores_name)] if keep_raw_outputs else []
    raw = [onnx.ValueInfoProto.FromString(o.SerializeToString()) for o in raw]
    del g.output[:]
    g.output.extend([
        helper.make_tensor_value_info("detections", TensorProto.FLOAT, [batch, k, 6]),
        helper.make_tensor_value_info("num_detections", TensorProto.INT32, [batch]),
        *raw,
    ])
    onnx.checker.check_model(m)
    return m


def _check_appendable(model, boxes_name: str, scores_name: str, max_detections: int) -> int:
    """The model's opset, once it is known to end in the detector contract and to take NMS."""
    outputs = [o.name for o in model.graph.output]
    if boxes_name not in outputs or scores_name not in outputs:
        raise EnginesmithError(
            f"cannot append NMS: the model's outputs are {outputs}, expected {boxes_name!r} [N, A, 4] and "
            f"{scores_name!r} [N, A, C] (the detector output contract)"
        )
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < 13:
        raise EnginesmithError(f"cannot append NMS to an opset-{opset} model; export with opset_version={NMS_OPSET}")
    if int(max_detections) < 1:
        raise EnginesmithError(f"max_detections must be >= 1, got {max_detections}")
    return opset


def _constants(k: int, iou_threshold: float, score_threshold: float) -> list:
    return [
        _const("max_out", np.array([k], np.int64)),
        _const("iou", np.array([iou_threshold], np.float32)),
        _const("score_thr", np.array([score_threshold], np.float32)),
        _const("k", np.array([k], np.int64)),
        _const("i0", np.array([0], np.int64)),
        _const("i1", np.array([1], np.int64)),
        _const("i2", np.array([2], np.int64)),
        _const("zero", np.array(0, np.int64)),
        _const("one", np.array(1, np.int64)),
        _const("ninf", np.array(-np.inf, np.float32)),
        _const("pads_head", np.array([0, 0, 0, 0], np.int64)),
        _const("pads_tail", np.array([0], np.int64)),
        _const("ax1", np.array([1], np.int64)),
    ]


class _Nodes:
    """The appended nodes, in order; names and outputs carry PREFIX."""

    def __init__(self, graph) -> None:
        self.graph, self.nodes, self.p = graph, [], PREFIX

    def __call__(self, op, ins, outs, **attrs):
        from onnx import helper

        self.nodes.append(helper.make_node(op, ins, [self.p + o for o in outs], name=self.p + outs[0], **attrs))
        return [self.p + o for o in outs]


def _selected_rows(node: _Nodes, boxes_name: str, scores_name: str, class_agnostic: bool, opset: int):
    """NonMaxSuppression per class (or over each box's best class) -> rows [S, 6] (x1, y1, x2, y2, score, class)
    with their image index b_idx [S], scores [S] and the selected (batch, class, box) triples [S, 3]."""
    from onnx import TensorProto

    p = node.p
    if class_agnostic:
        if opset >= 18:  # ReduceMax takes axes as an input from opset 18
            best, = node("ReduceMax", [scores_name, p + "i2"], ["best"], keepdims=1)  # [N, A, 1]
        else:
            best, = node("ReduceMax", [scores_name], ["best"], axes=[2], keepdims=1)
        best_cls, = node("ArgMax", [scores_name], ["best_cls"], axis=2, keepdims=0)  # [N, A] int64
        scores_t, = node("Transpose", [best], ["scores_t"], perm=[0, 2, 1])  # [N, 1, A]
    else:
        scores_t, = node("Transpose", [scores_name], ["scores_t"], perm=[0, 2, 1])  # [N, C, A]
    sel, = node("NonMaxSuppression", [boxes_name, scores_t, p + "max_out", p + "iou", p + "score_thr"], ["selected"],
                center_point_box=0)  # [S, 3] (batch, class, box)
    b_idx, = node("Gather", [sel, p + "zero"], ["b_idx"], axis=1)  # [S]
    node("Gather", [sel, p + "i2"], ["a_idx"], axis=1)  # [S]
    sel_scores, = node("GatherND", [scores_t, sel], ["sel_scores"])  # [S]
    node.graph.initializer.append(_const("ba_cols", np.array([0, 2], np.int64)))
    ba_idx, = node("Gather", [sel, p + "ba_cols"], ["ba_idx"], axis=1)  # [S, 2] (batch, box)
    sel_boxes, = node("GatherND", [boxes_name, ba_idx], ["sel_boxes"])  # [S, 4]
    if class_agnostic:
        c_idx, = node("GatherND", [best_cls, ba_idx], ["c_idx"])  # [S]
    else:
        c_idx, = node("Gather", [sel, p + "one"], ["c_idx"], axis=1)  # [S]
    c_f, = node("Cast", [c_idx], ["c_f"], to=TensorProto.FLOAT)
    s_col, = node("Unsqueeze", [sel_scores, p + "ax1"], ["s_col"])
    c_col, = node("Unsqueeze", [c_f, p + "ax1"], ["c_col"])
    rows, = node("Concat", [sel_boxes, s_col, c_col], ["rows"], axis=1)  # [S, 6]
    return rows, b_idx, sel_scores, sel


def _top_k_per_image(node: _Nodes, rows: str, b_idx: str, sel_scores: str, sel: str, scores_name: str) -> None:
    """Per image, the K best selected rows by score, invalid ones zeroed, padded to K: `detections [N, K, 6]`
    and `num_detections [N]`."""
    from onnx import TensorProto, helper

    p = node.p
    shape_s, = node("Shape", [scores_name], ["shape_s"])
    n_img, = node("Gather", [shape_s, p + "zero"], ["n_img"], axis=0)  # scalar N
    rng, = node("Range", [p + "zero", n_img, p + "one"], ["rng"])  # [N]
    rng_col, = node("Unsqueeze", [rng, p + "ax1"], ["rng_col"])  # [N, 1]
    b_row, = node("Unsqueeze", [b_idx, p + "i0"], ["b_row"])  # [1, S]
    match, = node("Equal", [rng_col, b_row], ["match"])  # [N, S]
    s_row, = node("Unsqueeze", [sel_scores, p + "i0"], ["s_row"])  # [1, S]
    dense, = node("Where", [match, s_row, p + "ninf"], ["dense"])  # [N, S]
    shape_sel, = node("Shape", [sel], ["shape_sel"])
    s_cnt, = node("Slice", [shape_sel, p + "i0", p + "i1"], ["s_cnt"])  # [1] = S
    k_eff, = node("Min", [s_cnt, p + "k"], ["k_eff"])  # [1]
    _, top_idx = node("TopK", [dense, k_eff], ["top_val", "top_idx"], axis=1, largest=1, sorted=1)  # [N, k]
    match_i, = node("Cast", [match], ["match_i"], to=TensorProto.INT64)
    valid, = node("GatherElements", [match_i, top_idx], ["valid"], axis=1)  # [N, k] 0/1
    picked, = node("Gather", [rows, top_idx], ["picked"], axis=0)  # [N, k, 6]
    valid_f, = node("Cast", [valid], ["valid_f"], to=TensorProto.FLOAT)
    valid_f3, = node("Unsqueeze", [valid_f, p + "i2"], ["valid_f3"])  # [N, k, 1]
    masked, = node("Mul", [picked, valid_f3], ["masked"])
    pad_n, = node("Sub", [p + "k", k_eff], ["pad_n"])  # [1]
    pads, = node("Concat", [p + "pads_head", pad_n, p + "pads_tail"], ["pads"], axis=0)  # [0,0,0, 0,K-k,0]
    node.nodes.append(helper.make_node("Pad", [masked, pads], ["detections"], name=p + "detections", mode="constant"))
    count, = node("ReduceSum", [valid, p + "ax1"], ["count"], keepdims=0)  # [N]
    node.nodes.append(helper.make_node("Cast", [count], ["num_detections"], name=p + "num_detections",
                                       to=TensorProto.INT32))


def _batch_dim(graph, name: str):
    for o in graph.output:
        if o.name == name:
            d = o.type.tensor_type.shape.dim[0] if o.type.tensor_type.shape.dim else None
            if d is not None and d.HasField("dim_value"):
                return int(d.dim_value)
            if d is not None and d.dim_param:
                return d.dim_param
    return "N"


def append_nms(
    onnx_in: str | Path,
    onnx_out: str | Path,
    iou_threshold: float = DEFAULT_IOU_THRESHOLD,
    score_threshold: float = DEFAULT_SCORE_THRESHOLD,
    max_detections: int = DEFAULT_MAX_DETECTIONS,
    class_agnostic: bool = False,
) -> Path:
    """Rewrite the detector ONNX at `onnx_in` to end in NMS (outputs detections, num_detections);
    write it to `onnx_out` (written to a temporary name, then renamed) and return that path."""
    import onnx

    src, dst = Path(onnx_in), Path(onnx_out)
    if not src.is_file():
        raise EnginesmithError(f"ONNX file not found: {src}")
    try:
        model = onnx.load(str(src))
    except Exception as e:
        raise EnginesmithError(f"cannot read {src} as ONNX ({type(e).__name__}); re-export the model") from None
    out = append_nms_model(model, iou_threshold, score_threshold, max_detections, class_agnostic)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".tmp")
    onnx.save(out, str(tmp))
    tmp.replace(dst)
    return dst


__all__ = ["append_nms", "append_nms_model", "NMS_OPSET", "DEFAULT_IOU_THRESHOLD", "DEFAULT_SCORE_THRESHOLD",
           "DEFAULT_MAX_DETECTIONS"]


def nms_stage(simplified: Artifact, ctx: BuildContext) -> Artifact:
    """Stage 3 (`--nms engine`): append ONNX NonMaxSuppression (detections, num_detections; the raw boxes/scores
    stay outputs) and check it against host NMS on the same raw outputs (nms_parity)."""
    import onnx

    params = {"iou": DEFAULT_IOU_THRESHOLD, "score": DEFAULT_SCORE_THRESHOLD, "max_detections": DEFAULT_MAX_DETECTIONS}

    def produce(tmp: Path) -> StageResult:
        model = append_nms_model(onnx.load(str(simplified.file)), params["iou"], params["score"],
                                 params["max_detections"], keep_raw_outputs=True)
        save_onnx_atomic(model, tmp / "model.onnx")
        with Runner(tmp / "model.onnx") as runner:
            parity = nms_parity(run_batches(runner, INPUT_NAME, ctx.verify_batches), params["iou"], params["score"])
        return StageResult(["model.onnx"], {"nms_parity": parity, **params})

    return ctx.record(ctx.cache.run("nms", [simplified], params, produce))
