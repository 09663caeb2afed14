"""Host NMS's IoU (runtime/nms.py) bit for bit against a transcription of ONNX Runtime's NonMaxSuppression IoU
(onnxruntime/core/providers/cpu/object_detection/nms_helpers.h, SuppressByIOU: float32 throughout)."""

from __future__ import annotations

import numpy as np
import pytest

from enginesmith.runtime import nms as host

f32 = np.float32


def ort_iou(a, b) -> np.float32:
    """IoU as ONNX Runtime's SuppressByIOU computes it, in float32 scalars (0 where it would not suppress)."""
    x1a, x2a = min(f32(a[0]), f32(a[2])), max(f32(a[0]), f32(a[2]))
    y1a, y2a = min(f32(a[1]), f32(a[3])), max(f32(a[1]), f32(a[3]))
    x1b, x2b = min(f32(b[0]), f32(b[2])), max(f32(b[0]), f32(b[2]))
    y1b, y2b = min(f32(b[1]), f32(b[3])), max(f32(b[1]), f32(b[3]))
    iw = f32(min(x2a, x2b) - max(x1a, x1b))
    ih = f32(min(y2a, y2b) - max(y1a, y1b))
    inter = f32(max(iw, f32(0)) * max(ih, f32(0)))
    if inter <= 0:
        return f32(0)
    area_a = f32(f32(x2a - x1a) * f32(y2a - y1a))
    area_b = f32(f32(x2b - x1b) * f32(y2b - y1b))
    union = f32(f32(area_a + area_b) - inter)
    if area_a <= 0 or area_b <= 0 or union <= 0:
        return f32(0)
    return f32(inter / union)


def random_boxes(rng, m):
    xy = rng.uniform(0, 50, (m, 2)).astype(np.float32)
    wh = rng.uniform(0.1, 30, (m, 2)).astype(np.float32)
    boxes = np.concatenate([xy, xy + wh], 1).astype(np.float32)
    flip = rng.random(m) < 0.2  # corners in the other diagonal order (ONNX allows it)
    boxes[flip] = boxes[flip][:, [2, 3, 0, 1]]
    boxes[:3] = [[5, 5, 5, 9], [1, 1, 4, 4], [1, 1, 4, 4]]  # a zero-width box and an exact duplicate
    return boxes


@pytest.mark.parametrize("seed", range(3))
def test_iou_is_onnxruntimes_float32_iou_bit_for_bit(seed):
    rng = np.random.default_rng(seed)
    boxes = random_boxes(rng, 60)
    ref = np.array([[ort_iou(a, b) for b in boxes] for a in boxes], np.float32)
    mat = host.iou_matrix(boxes)
    assert mat.dtype == np.float32
    np.testing.assert_array_equal(mat, ref)
    for i in range(len(boxes)):
        row = host.iou_one_to_many(boxes[i], boxes)
        assert row.dtype == np.float32
        np.testing.assert_array_equal(row, ref[i])
    # float64 inputs are rounded to float32 first
    np.testing.assert_array_equal(host.iou_one_to_many(boxes[3].astype(np.float64), boxes.astype(np.float64)), ref[3])


def test_touching_and_degenerate_boxes_do_not_overlap():
    box = np.array([0, 0, 10, 10], np.float32)
    others = np.array([[10, 0, 20, 10], [0, 10, 10, 20], [5, 5, 5, 8], [2, 2, 8, 2], [0, 0, 10, 10]], np.float32)
    assert host.iou_one_to_many(box, others).tolist() == [0.0, 0.0, 0.0, 0.0, 1.0]
    assert host.iou_matrix(np.concatenate([box[None], others]))[0].tolist() == [1.0, 0.0, 0.0, 0.0, 0.0, 1.0]
    assert host.iou_one_to_many(np.array([3, 3, 3, 3], np.float32), others).tolist() == [0.0] * 5


# ---- in-engine NMS (pipeline/nms.py): graph options, errors and the parity check --------------------------

import onnx  # noqa: E402
from onnx import TensorProto, helper  # noqa: E402

from enginesmith.errors import EnginesmithError  # noqa: E402
from enginesmith.pipeline.nms import append_nms, append_nms_model  # noqa: E402
from enginesmith.pipeline.verify import nms_parity  # noqa: E402


def passthrough(opset=17, batch="N"):
    g = helper.make_graph(
        [helper.make_node("Identity", ["b_in"], ["boxes"]), helper.make_node("Identity", ["s_in"], ["scores"])], "det",
        [helper.make_tensor_value_info("b_in", TensorProto.FLOAT, [batch, "A", 4]),
         helper.make_tensor_value_info("s_in", TensorProto.FLOAT, [batch, "A", "C"])],
        [helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [batch, "A", 4]),
         helper.make_tensor_value_info("scores", TensorProto.FLOAT, [batch, "A", "C"])])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def run_ort(model, boxes, scores):
    import onnxruntime as ort

    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"b_in": boxes, "s_in": scores})))


def clustered(rng, n, a, c):
    xy = rng.uniform(0, 60, (n, a, 2)).astype(np.float32)
    boxes = np.concatenate([xy, xy + rng.uniform(5, 30, (n, a, 2)).astype(np.float32)], -1)
    boxes[:, a // 2:] = boxes[:, : a - a // 2] + rng.uniform(-3, 3, (n, a - a // 2, 4)).astype(np.float32)
    boxes[..., 2:] = np.maximum(boxes[..., 2:], boxes[..., :2] + 1)
    return boxes, rng.uniform(0, 1, (n, a, c)).astype(np.float32)


@pytest.mark.parametrize("opset,agnostic", [(17, False), (17, True), (18, True), (19, False)])
def test_engine_nms_equals_host_nms_at_each_opset(opset, agnostic):
    rng = np.random.default_rng(opset)
    boxes, scores = clustered(rng, 2, 40, 3)
    m = append_nms_model(passthrough(opset), 0.4, 0.35, 12, class_agnostic=agnostic)
    ops_used = [n.op_type for n in m.graph.node]
    assert ops_used.count("NonMaxSuppression") == 1 and ("ReduceMax" in ops_used) == agnostic
    got = run_ort(m, boxes, scores)
    want = host.nms_detections(boxes, scores, 0.4, 0.35, 12, agnostic)
    np.testing.assert_array_equal(got["num_detections"], want[1])
    np.testing.assert_array_equal(got["detections"], want[0])
    assert [o.name for o in m.graph.output] == ["detections", "num_detections"]


def test_keep_raw_outputs_and_batch_dims():
    rng = np.random.default_rng(0)
    boxes, scores = clustered(rng, 2, 10, 2)
    m = append_nms_model(passthrough(), max_detections=5, keep_raw_outputs=True)
    assert [o.name for o in m.graph.output] == ["detections", "num_detections", "boxes", "scores"]
    dims = lambda o: [d.dim_value or d.dim_param for d in o.type.tensor_type.shape.dim]  # noqa: E731
    assert [dims(o) for o in m.graph.output] == [["N", 5, 6], ["N"], ["N", "A", 4], ["N", "A", "C"]]
    got = run_ort(m, boxes, scores)
    np.testing.assert_array_equal(got["boxes"], boxes)
    np.testing.assert_array_equal(got["scores"], scores)
    want = host.nms_detections(boxes, scores, max_detections=5)  # the defaults: IoU 0.45, score 0.25
    np.testing.assert_array_equal(got["detections"], want[0])
    fixed = append_nms_model(passthrough(batch=2), max_detections=3)
    assert [dims(o) for o in fixed.graph.output] == [[2, 3, 6], [2]]
    nodim = passthrough()
    nodim.graph.output[1].type.tensor_type.ClearField("shape")  # scores without a shape: batch named N
    assert [dims(o) for o in append_nms_model(nodim, max_detections=3).graph.output] == [["N", 3, 6], ["N"]]
    none = passthrough()
    none.graph.output[1].type.tensor_type.shape.dim[0].Clear()  # an unnamed, unknown batch dim
    assert [dims(o) for o in append_nms_model(none, max_detections=3).graph.output] == [["N", 3, 6], ["N"]]


def test_append_nms_model_refusals():
    bad = passthrough()
    bad.graph.output[1].name = "logits"
    with pytest.raises(EnginesmithError, match=r"cannot append NMS: the model's outputs are \['boxes', 'logits'\], "
                                               r"expected 'boxes' \[N, A, 4\] and 'scores' \[N, A, C\]"):
        append_nms_model(bad)
    with pytest.raises(EnginesmithError, match="cannot append NMS to an opset-12 model; export with opset_version=17"):
        append_nms_model(passthrough(12))
    append_nms_model(passthrough(13))  # 13 is enough
    with pytest.raises(EnginesmithError, match="max_detections must be >= 1, got 0"):
        append_nms_model(passthrough(), max_detections=0)
    append_nms_model(passthrough(), max_detections=1)
    other = passthrough()
    other.opset_import[0].domain = "com.example"  # no default-domain opset: version 0
    with pytest.raises(EnginesmithError, match="opset-0 model"):
        append_nms_model(other)


def test_append_nms_files(tmp_path):
    src = tmp_path / "det.onnx"
    onnx.save(passthrough(), str(src))
    out = append_nms(src, tmp_path / "sub" / "det_nms.onnx", 0.5, 0.2, 7, class_agnostic=True)
    assert out == tmp_path / "sub" / "det_nms.onnx" and out.is_file() and not (tmp_path / "sub" / "det_nms.onnx.tmp").exists()
    m = onnx.load(str(out))
    assert any(n.op_type == "ArgMax" for n in m.graph.node)  # class-agnostic form
    rng = np.random.default_rng(1)
    boxes, scores = clustered(rng, 1, 30, 4)
    got = run_ort(m, boxes, scores)
    want = host.nms_detections(boxes, scores, 0.5, 0.2, 7, True)
    np.testing.assert_array_equal(got["detections"], want[0])
    (tmp_path / "junk.onnx").write_bytes(b"not a protobuf at all \xff\xfe")
    with pytest.raises(EnginesmithError, match=r"cannot read .*junk.onnx as ONNX \(\w+\); re-export the model"):
        append_nms(tmp_path / "junk.onnx", tmp_path / "y.onnx")
    with pytest.raises(EnginesmithError, match=r"ONNX file not found: .*missing.onnx"):
        append_nms(tmp_path / "missing.onnx", tmp_path / "y.onnx")


def test_nms_parity_accepts_agreement_and_names_disagreement():
    rng = np.random.default_rng(2)
    boxes, scores = clustered(rng, 2, 30, 3)
    dets, counts = host.nms_detections(boxes, scores, 0.45, 0.25, 10)
    outputs = {"detections": dets, "num_detections": counts, "boxes": boxes, "scores": scores}
    assert nms_parity(outputs) == {"count_mismatches": 0, "max_abs": 0.0}
    # same rows in another order (exact ties may be ordered differently): still agreement
    swapped = dets.copy()
    swapped[0, [0, 1]] = swapped[0, [1, 0]]
    assert nms_parity({**outputs, "detections": swapped}) == {"count_mismatches": 0, "max_abs": 0.0}
    # a box moved by 0.5 px: beyond float rounding
    moved = dets.copy()
    moved[1, 0, 0] += 0.5
    with pytest.raises(EnginesmithError, match=r"in-engine NMS disagrees with host NMS on the engine's own raw outputs "
                                               r"\(0 images with a different count, max \|Δ\| 0.5\); build with --nms host"):
        nms_parity({**outputs, "detections": moved})
    small = dets.copy()
    small[1, 0, 0] += 1e-4 * max(1.0, float(np.abs(dets).max()))  # float rounding: accepted, and reported
    r = nms_parity({**outputs, "detections": small})
    assert r["count_mismatches"] == 0 and r["max_abs"] == pytest.approx(float(small[1, 0, 0] - dets[1, 0, 0]))
    fewer = counts.copy()
    fewer[0] -= 1
    with pytest.raises(EnginesmithError, match=r"\(1 images with a different count"):
        nms_parity({**outputs, "num_detections": fewer})
    # thresholds are the caller's (and K is the engine's): other thresholds keep other boxes
    dets, counts = host.nms_detections(boxes, scores, 0.45, 0.25, 90)
    outputs = {"detections": dets, "num_detections": counts, "boxes": boxes, "scores": scores}
    nms_parity(outputs)
    with pytest.raises(EnginesmithError, match="different count"):
        nms_parity(outputs, score_threshold=0.6)
    with pytest.raises(EnginesmithError, match="different count"):
        nms_parity(outputs, iou_threshold=0.1)
    dets, counts = host.nms_detections(boxes, scores, 0.1, 0.6, 90)
    nms_parity({"detections": dets, "num_detections": counts, "boxes": boxes, "scores": scores}, 0.1, 0.6)


def test_append_nms_defaults_to_per_class_nms(tmp_path):
    src = tmp_path / "det.onnx"
    onnx.save(passthrough(), str(src))
    m = onnx.load(str(append_nms(src, tmp_path / "out.onnx")))
    assert not any(n.op_type in ("ArgMax", "ReduceMax") for n in m.graph.node)
    rng = np.random.default_rng(5)
    boxes, scores = clustered(rng, 1, 30, 3)
    got = run_ort(m, boxes, scores)
    want = host.nms_detections(boxes, scores)  # the defaults on both sides: IoU 0.45, score 0.25, K 100
    np.testing.assert_array_equal(got["detections"], want[0])


def test_nms_parity_tolerance_edges():
    # coordinates below 1: the tolerance is 1e-3 (absolute), not relative to the small values
    boxes = np.array([[[0.1, 0.1, 0.5, 0.5], [0.6, 0.6, 0.9, 0.9]]], np.float32)
    scores = np.array([[[0.9], [0.8]]], np.float32)
    dets, counts = host.nms_detections(boxes, scores, 0.45, 0.25, 4)
    outputs = {"detections": dets, "num_detections": counts, "boxes": boxes, "scores": scores}
    off = dets.copy()
    off[0, 0, 0] += np.float32(0.0015)
    with pytest.raises(EnginesmithError, match="disagrees"):
        nms_parity({**outputs, "detections": off})
    # a difference exactly at the limit passes: boxes up to 1000 px give a tolerance of 1e-3 * 1000 = 1.0
    boxes = np.array([[[0, 0, 1000, 1000]]], np.float32)
    one = np.array([[[0.9]]], np.float32)
    dets, counts = host.nms_detections(boxes, one, 0.45, 0.25, 2)
    at = dets.copy()
    at[0, 0, 0] += 1.0
    r = nms_parity({"detections": at, "num_detections": counts, "boxes": boxes, "scores": one})
    assert r == {"count_mismatches": 0, "max_abs": 1.0}
    at[0, 0, 0] += 0.001
    with pytest.raises(EnginesmithError, match="disagrees"):
        nms_parity({"detections": at, "num_detections": counts, "boxes": boxes, "scores": one})
    # no images at all: nothing to compare
    empty = {"detections": np.zeros((0, 5, 6), np.float32), "num_detections": np.zeros(0, np.int32),
             "boxes": np.zeros((0, 3, 4), np.float32), "scores": np.zeros((0, 3, 2), np.float32)}
    assert nms_parity(empty) == {"count_mismatches": 0, "max_abs": 0.0}
