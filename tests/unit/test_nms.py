"""Host NMS (runtime/nms.py, numpy) against ops.batched_nms / torchvision, and in-engine NMS
(pipeline/nms.py, ONNX NonMaxSuppression) against host NMS on ONNX Runtime and OpenVINO."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch
import torchvision

from reference_helpers import passthrough_detector
from enginesmith.errors import EnginesmithError
from enginesmith.models import ops
from enginesmith.pipeline.nms import append_nms, append_nms_model
from enginesmith.runtime import nms as host

SEEDS = range(20)


def random_detector_outputs(rng, n, a, c, near_threshold=None):
    xy = rng.uniform(0, 100, (n, a, 2)).astype(np.float32)
    wh = rng.uniform(2, 40, (n, a, 2)).astype(np.float32)
    boxes = np.concatenate([xy, xy + wh], -1)
    # clusters of overlapping boxes so NMS has work to do
    boxes[:, a // 2 :] = boxes[:, : a - a // 2] + rng.uniform(-4, 4, (n, a - a // 2, 4)).astype(np.float32)
    boxes[..., 2:] = np.maximum(boxes[..., 2:], boxes[..., :2] + 1)
    if near_threshold is not None and a >= 2:  # torchvision TestNMS: a pair just above the IoU threshold
        t = near_threshold + 1e-5
        boxes[:, -1] = boxes[:, 0]
        boxes[:, -1, 2] += (boxes[:, 0, 2] - boxes[:, 0, 0]) * (1 - t) / t
    scores = rng.uniform(0, 1, (n, a, c)).astype(np.float32)
    return boxes, scores


def reference(boxes, scores, iou, thr, k, agnostic):
    """Per image: candidates above thr, torchvision batched_nms (or nms on best class), top-K."""
    out = []
    for b in range(boxes.shape[0]):
        s = torch.from_numpy(scores[b])
        bx = torch.from_numpy(boxes[b])
        if agnostic:
            best, cls = s.max(1)
            idx = torch.nonzero(best > thr).flatten()
            keep = torchvision.ops.nms(bx[idx], best[idx], iou)
            rows = [(float(best[idx[j]]), int(cls[idx[j]]), int(idx[j])) for j in keep]
        else:
            a_idx, c_idx = torch.nonzero(s > thr, as_tuple=True)
            keep = torchvision.ops.batched_nms(bx[a_idx], s[a_idx, c_idx], c_idx, iou)
            ours = ops.batched_nms(bx[a_idx], s[a_idx, c_idx], c_idx, iou)
            assert keep.tolist() == ours.tolist()
            rows = [(float(s[a_idx[j], c_idx[j]]), int(c_idx[j]), int(a_idx[j])) for j in keep]
        rows.sort(key=lambda r: (-r[0], r[1], r[2]))
        out.append(rows[:k])
    return out


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("agnostic", [False, True])
def test_host_nms_matches_torchvision(seed, agnostic):
    rng = np.random.default_rng(seed)
    iou, thr, k = [(0.45, 0.25, 100), (0.5, 0.5, 7), (0.3, 0.05, 20)][seed % 3]
    boxes, scores = random_detector_outputs(rng, 2, 60, 4, near_threshold=iou)
    dets, num = host.nms_detections(boxes, scores, iou, thr, k, agnostic)
    assert dets.shape == (2, k, 6) and dets.dtype == np.float32 and num.shape == (2,) and num.dtype == np.int32
    for b, rows in enumerate(reference(boxes, scores, iou, thr, k, agnostic)):
        assert num[b] == len(rows)
        expect = np.zeros((k, 6), np.float32)
        for j, (s, c, i) in enumerate(rows):
            expect[j] = [*boxes[b, i], s, c]
        np.testing.assert_array_equal(dets[b], expect)


def test_host_nms_exact_threshold_and_defaults():
    boxes = np.array([[[0, 0, 10, 10], [0, 0, 10, 20], [0, 0, 10, 40]]], np.float32)  # IoUs 0.5, 0.5, 0.25
    scores = np.array([[[0.9], [0.8], [0.7]]], np.float32)
    _, num = host.nms_detections(boxes, scores, iou_threshold=0.5, score_threshold=0.0)
    assert num.tolist() == [3]  # IoU exactly 0.5 is not > 0.5
    dets, num = host.nms_detections(boxes, scores, iou_threshold=0.49, score_threshold=0.0)
    assert num.tolist() == [2] and dets[0, :2, 4].tolist() == pytest.approx([0.9, 0.7])
    _, num = host.nms_detections(boxes, scores, iou_threshold=0.49, score_threshold=0.8)
    assert num.tolist() == [1]  # score exactly 0.8 is not > 0.8
    assert (host.DEFAULT_IOU_THRESHOLD, host.DEFAULT_SCORE_THRESHOLD, host.DEFAULT_MAX_DETECTIONS) == (0.45, 0.25, 100)
    dets, num = host.nms_detections(boxes, scores)
    assert dets.shape == (1, 100, 6) and not dets[0, num[0]:].any()
    with pytest.raises(ValueError):
        host.nms_detections(boxes[0], scores[0])


def test_runtime_nms_does_not_import_torch():
    code = "import sys, enginesmith.runtime.nms; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


# ---- in-engine NMS -------------------------------------------------------------------------------

def ort_session(path):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def ov_compiled(path):
    import openvino as ov

    return ov.Core().compile_model(ov.convert_model(str(path)), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})


@pytest.mark.parametrize("agnostic", [False, True])
def test_engine_nms_matches_host_on_random_boxes(tmp_path, agnostic):
    iou, thr, k = 0.45, 0.3, 15
    src = tmp_path / "det.onnx"
    onnx.save(passthrough_detector(), src)
    out = append_nms(src, tmp_path / "det_nms.onnx", iou, thr, k, class_agnostic=agnostic)
    model = onnx.load(str(out))
    assert [o.name for o in model.graph.output] == ["detections", "num_detections"]
    assert any(n.op_type == "NonMaxSuppression" for n in model.graph.node)
    sess, ovm = ort_session(out), ov_compiled(out)
    for seed in range(8):
        rng = np.random.default_rng(seed)
        n, a, c = [(2, 80, 3), (1, 6, 2), (3, 0, 2), (2, 200, 1), (1, 150, 6), (4, 30, 3), (1, 1, 1), (2, 100, 20)][seed]
        boxes, scores = random_detector_outputs(rng, n, a, c, near_threshold=iou)
        want = host.nms_detections(boxes, scores, iou, thr, k, agnostic)
        got_ort = sess.run(None, {"b_in": boxes, "s_in": scores})
        r = ovm({"b_in": boxes, "s_in": scores})
        got_ov = (r["detections"], r["num_detections"])
        for got in (got_ort, got_ov):
            assert got[0].dtype == np.float32 and got[1].dtype == np.int32
            np.testing.assert_array_equal(got[1], want[1])
            np.testing.assert_array_equal(got[0], want[0])


def test_append_nms_errors(tmp_path):
    bad = passthrough_detector()
    bad.graph.output[0].name = "other"
    with pytest.raises(EnginesmithError, match="boxes"):
        append_nms_model(bad)
    with pytest.raises(EnginesmithError, match="not found"):
        append_nms(tmp_path / "missing.onnx", tmp_path / "x.onnx")


@pytest.mark.slow
def test_engine_nms_matches_host_on_exported_yolov3(tmp_path):
    from enginesmith.models import registry

    model = registry.get("yolov3").create(input_size=(64, 64))
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    src = tmp_path / "yolov3.onnx"
    torch.onnx.export(model, (x,), str(src), dynamo=False, opset_version=17, input_names=["images"],
                      output_names=["boxes", "scores"], dynamic_axes={"images": {0: "n"}})
    raw_ort = ort_session(src).run(None, {"images": x.numpy()})
    thr = float(np.quantile(raw_ort[1], 0.995))  # an untrained head: keep the top 0.5% of (box, class) pairs
    out = append_nms(src, tmp_path / "yolov3_nms.onnx", 0.45, thr, 30)
    got = ort_session(out).run(None, {"images": x.numpy()})
    want = host.nms_detections(raw_ort[0], raw_ort[1], 0.45, thr, 30)
    assert want[1].min() > 0
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_array_equal(got[0], want[0])
    # OpenVINO: the engine's NMS against host NMS of OpenVINO's own raw outputs
    raw_ov = ov_compiled(src)({"images": x.numpy()})
    want_ov = host.nms_detections(raw_ov["boxes"], raw_ov["scores"], 0.45, thr, 30)
    r = ov_compiled(out)({"images": x.numpy()})
    np.testing.assert_array_equal(r["num_detections"], want_ov[1])
    np.testing.assert_allclose(r["detections"], want_ov[0], rtol=0, atol=1e-6)
