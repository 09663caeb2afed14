"""Metric edge cases against hand-computed values and naive re-implementations: classification top-k
(empty input, messages), VOC AP (evaluation/detection_metrics.py) and the COCO AP adapter (pycocotools)."""

from __future__ import annotations

import numpy as np
import pytest

from enginesmith.evaluation.classification_metrics import classification_metrics, label_ranks, topk_accuracy
from enginesmith.errors import EnginesmithError


# ---- classification ------------------------------------------------------------------------------------


def test_classification_on_no_images_is_zero():
    logits, labels = np.zeros((0, 10)), np.zeros(0, np.int64)
    assert classification_metrics(logits, labels) == {"top1": 0.0, "top5": 0.0, "images": 0}
    assert topk_accuracy(logits, labels, 1) == 0.0
    assert topk_accuracy(logits, labels, 5) == 0.0


def test_classification_hand_values():
    logits = np.array([[0.1, 0.9, 0.0], [0.5, 0.2, 0.3], [0.2, 0.2, 0.6]])
    labels = np.array([1, 2, 1])  # ranks 0, 1, 2 (0.6 beats 0.2; the tie 0.2 = 0.2 goes to class 0)
    assert label_ranks(logits, labels).tolist() == [0, 1, 2]
    assert classification_metrics(logits, labels) == {"top1": pytest.approx(1 / 3), "top5": 1.0, "images": 3}
    assert topk_accuracy(logits, labels, 2) == pytest.approx(2 / 3)
    assert topk_accuracy(logits, labels, 3) == 1.0


def test_classification_messages():
    with pytest.raises(EnginesmithError, match=r"labels go up to 10 but the model gives 10 classes \(ids 0\.\.9\); "
                                               r"is the dataset the one the model was trained on\?"):
        label_ranks(np.zeros((1, 10)), np.array([10]))
    with pytest.raises(EnginesmithError, match="^the logits contain NaN or infinite values; the model or engine is broken$"):
        label_ranks(np.array([[0.0, np.nan]]), np.array([0]))
    with pytest.raises(EnginesmithError, match="top-k needs k >= 1, got 0"):
        topk_accuracy(np.zeros((1, 3)), np.array([0]), 0)


# ---- COCO adapter (evaluation/coco_metrics.py) -----------------------------------------------------------

from pathlib import Path  # noqa: E402

from enginesmith.data.detection import DetectionDataset, DetectionSample  # noqa: E402


def make_dataset(per_image, class_names=("a", "b"), size=(200, 300)) -> DetectionDataset:
    samples = [
        DetectionSample(f"img{i}", Path(f"/nonexistent/img{i}.jpg"), size[1], size[0],
                        np.asarray(b, np.float32).reshape(-1, 4), np.asarray(lab, np.int64), np.asarray(d, bool))
        for i, (b, lab, d) in enumerate(per_image)
    ]
    return DetectionDataset(Path("/nonexistent"), "test", tuple(class_names), samples)


def test_coco_ground_truth_is_the_coco_format():
    from enginesmith.evaluation.coco_metrics import coco_ground_truth

    ds = make_dataset([([[10, 20, 40, 30], [0, 0, 5, 8]], [1, 0], [False, True]), ([], [], [])])
    s0 = ds.samples[0]
    gt = coco_ground_truth(ds)
    assert gt["images"] == [
        {"id": 0, "width": s0.width, "height": s0.height, "file_name": "img0"},
        {"id": 1, "width": s0.width, "height": s0.height, "file_name": "img1"},
    ]
    assert gt["annotations"] == [
        {"id": 1, "image_id": 0, "category_id": 2, "bbox": [10.0, 20.0, 30.0, 10.0], "area": 300.0, "iscrowd": 0},
        {"id": 2, "image_id": 0, "category_id": 1, "bbox": [0.0, 0.0, 5.0, 8.0], "area": 40.0, "iscrowd": 1},
    ]
    assert gt["categories"] == [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]


def test_coco_detections_are_coco_results_in_float64():
    from enginesmith.evaluation.coco_metrics import coco_detections

    box = np.array([[0.1, 0.2, 0.7, 0.9]], np.float32)  # widths from float32 corners, subtracted in float64
    dets = coco_detections([(box, np.array([0.5], np.float32), np.array([1])), (np.zeros((0, 4)), [], [])])
    x1, y1, x2, y2 = (float(v) for v in box[0])
    w, h = x2 - x1, y2 - y1
    assert dets == [{"image_id": 0, "category_id": 2, "bbox": [x1, y1, w, h], "score": float(np.float32(0.5)),
                     "area": w * h, "iscrowd": 0}]
    dets = coco_detections([(np.array([10, 20, 40, 30]), [0.9], [0])])  # a flat [4] box is one box
    assert dets[0]["bbox"] == [10.0, 20.0, 30.0, 10.0] and dets[0]["area"] == 300.0


def test_coco_metrics_without_detections_or_ground_truth():
    from enginesmith.evaluation.coco_metrics import coco_metrics

    ds = make_dataset([([[10, 20, 40, 30]], [0], [False])])
    m = coco_metrics([(np.zeros((0, 4)), np.zeros(0), np.zeros(0, np.int64))], ds)
    assert m == {"coco_ap": 0.0, "coco_ap50": 0.0, "coco_ap75": 0.0, "coco_summary": "no detections"}
    empty = make_dataset([([], [], [])])
    m = coco_metrics([(np.array([[10, 20, 40, 30]]), np.array([0.9]), np.array([0]))], empty)
    assert m == {"coco_ap": 0.0, "coco_ap50": 0.0, "coco_ap75": 0.0, "coco_summary": "no ground truth"}


def test_coco_metrics_messages(monkeypatch):
    from enginesmith.evaluation.coco_metrics import coco_metrics

    ds = make_dataset([([[10, 20, 40, 30]], [0], [False])])
    with pytest.raises(EnginesmithError, match="got predictions for 2 images but the dataset has 1"):
        coco_metrics([(np.zeros((0, 4)), [], [])] * 2, ds)
    monkeypatch.setitem(__import__("sys").modules, "pycocotools.coco", None)  # as if not installed
    with pytest.raises(EnginesmithError, match="^COCO AP needs pycocotools; pip install pycocotools$"):
        coco_metrics([(np.zeros((0, 4)), [], [])], ds)


# ---- VOC AP (evaluation/detection_metrics.py) -------------------------------------------------------------

from enginesmith.evaluation.detection_metrics import (  # noqa: E402
    CONTINUOUS, box_iou, class_ap, evaluate_detections, match_class, voc_ap, voc_metrics,
)


def naive_iou(a, b):
    """IoU of two x1y1x2y2 boxes with Python floats (continuous coordinates; inverted boxes have no area)."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    area = lambda r: max(0.0, r[2] - r[0]) * max(0.0, r[3] - r[1])  # noqa: E731
    union = area(a) + area(b) - iw * ih
    return iw * ih / union if union > 0 else 0.0


def test_box_iou_small_thin_inverted_and_degenerate_boxes():
    boxes = [
        [0.0, 0.0, 0.5, 0.5],      # area 0.25 (< 1)
        [0.25, 0.0, 0.75, 0.5],    # overlaps the first by half its width
        [0.0, 0.0, 10.0, 0.5],     # thin: height 0.5
        [0.0, 0.2, 10.0, 0.4],     # thin inside the thin one
        [20.0, 0.0, 30.0, 10.0],   # disjoint in x, overlapping in y with the first rows
        [0.0, 20.0, 0.5, 30.0],    # disjoint in y, overlapping in x
        [5.0, 5.0, 3.0, 8.0],      # inverted in x (no area)
        [5.0, 8.0, 6.0, 5.0],      # inverted in y
        [1.0, 1.0, 1.0, 1.0],      # a point
        [2.0, 2.0, 2.0, 2.0],      # another point
    ]
    got = box_iou(np.array(boxes, np.float32), np.array(boxes, np.float32))
    assert got.dtype == np.float64 and got.shape == (10, 10)
    expect = np.array([[naive_iou([float(v) for v in np.float32(a)], [float(v) for v in np.float32(b)]) for b in boxes]
                       for a in boxes])
    np.testing.assert_allclose(got, expect, rtol=1e-15, atol=0)
    assert got[0, 1] == pytest.approx(1 / 3) and got[2, 3] == pytest.approx(0.4)
    assert got[8, 9] == 0.0 and got[8, 8] == 0.0  # points: union 0 -> IoU 0, not NaN
    # float32 inputs are computed in float64: 0.1 + 0.2 style rounding is not float32's
    a = np.array([[0.1, 0.2, 0.7, 0.9]], np.float32)
    b = np.array([[0.3, 0.1, 0.8, 0.6]], np.float32)
    assert box_iou(a, b)[0, 0] == naive_iou([float(v) for v in a[0]], [float(v) for v in b[0]])
    assert box_iou(np.array([0, 0, 2, 2]), np.array([1, 1, 3, 3])).tolist() == [[1 / 7]]  # flat [4] boxes


def naive_voc_ap(rec, prec, use_07):
    """voc_eval.py's voc_ap with Python lists and the 11 points at exactly k/10 (the `continuous` convention's
    grid; test_voc_devkit.py checks the devkit's own)."""
    rec, prec = [float(r) for r in rec], [float(p) for p in prec]
    if use_07:
        ap = 0.0
        for k in range(11):
            t = k / 10
            ps = [p for r, p in zip(rec, prec) if r >= t]
            ap += (max(ps) if ps else 0.0) / 11
        return ap
    mrec, mpre = [0.0] + rec + [1.0], [0.0] + prec + [0.0]
    for i in range(len(mpre) - 2, -1, -1):
        mpre[i] = max(mpre[i], mpre[i + 1])
    return sum((mrec[i + 1] - mrec[i]) * mpre[i + 1] for i in range(len(mrec) - 1) if mrec[i + 1] != mrec[i])


def test_voc_ap_default_is_all_point_and_float32_curves_are_read_in_float64():
    rec = np.array([0.1, 0.1, 0.35, 0.6, 0.6, 0.85], np.float32)
    prec = np.array([1.0, 0.5, 0.7, 0.75, 0.6, 0.66], np.float32)
    assert voc_ap(rec, prec) == pytest.approx(naive_voc_ap(rec, prec, False), rel=1e-15)
    assert voc_ap(rec, prec, True, CONTINUOUS) == pytest.approx(naive_voc_ap(rec, prec, True), rel=1e-15)
    assert voc_ap(rec, prec) != pytest.approx(voc_ap(rec, prec, True), rel=1e-3)


def test_match_class_defaults_and_no_images():
    tp, fp, npos = match_class([], [], [], [])
    assert tp.shape == fp.shape == (0,) and npos == 0
    gt = [np.array([[0.0, 0.0, 10.0, 10.0]])]
    det = [np.array([[0.0, 0.0, 10.0, 16.0]])]  # IoU 100 / 160 = 0.625: a TP at the default 0.5
    tp, fp, npos = match_class(gt, [np.array([False])], det, [np.array([0.9])])
    assert tp.tolist() == [1.0] and fp.tolist() == [0.0] and npos == 1
    tp, fp, _ = match_class(gt, [np.array([False])], det, [np.array([0.9])], iou_threshold=0.7)
    assert tp.tolist() == [0.0] and fp.tolist() == [1.0]
    # difficult flags given as 0/1 integers (as parsed from VOC XML) count like booleans
    _, _, npos = match_class(gt * 3, [np.array([0]), np.array([1]), np.array([0], np.uint8)], det * 3,
                             [np.array([0.9])] * 3)
    assert npos == 2


def test_match_class_ties_keep_image_then_detection_order():
    # 40 detections with one score, in 4 images: per image one TP (the first on its GT) then 9 duplicates (FP).
    # The continuous convention's stable sort keeps that order: TP, 9 FP, TP, 9 FP, ...
    gt = [np.array([[0.0, 0.0, 10.0, 10.0]])] * 4
    det = [np.tile([[0.0, 0.0, 10.0, 10.0]], (10, 1))] * 4
    tp, fp, npos = match_class(gt, [np.zeros(1, bool)] * 4, det, [np.full(10, 0.5)] * 4, convention=CONTINUOUS)
    assert tp.tolist() == ([1.0] + [0.0] * 9) * 4 and npos == 4
    ap07, ap = class_ap(tp, fp, npos, CONTINUOUS)
    ctp = np.cumsum(tp)
    rec, prec = ctp / 4, ctp / np.arange(1, 41)
    assert ap == pytest.approx(naive_voc_ap(rec, prec, False)) and ap07 == pytest.approx(naive_voc_ap(rec, prec, True))


def test_class_ap_without_positives_is_nan():
    ap07, ap = class_ap(np.zeros(2), np.ones(2), 0)
    assert np.isnan(ap07) and np.isnan(ap)


def metrics_dataset():
    return make_dataset([([[0, 0, 10, 10], [20, 20, 30, 30]], [0, 1], [False, False])], class_names=("a", "b"))


def test_voc_and_evaluate_follow_the_iou_threshold():
    ds = metrics_dataset()
    p = [(np.array([[0, 0, 10, 16], [20, 20, 30, 30]]), np.array([0.9, 0.8]), np.array([0, 1]))]  # IoU .625, 1
    m = voc_metrics(p, ds, iou_threshold=0.7)
    assert m["per_class"]["a"] == {"voc07": 0.0, "ap": 0.0, "positives": 1, "detections": 1}
    assert m["per_class"]["b"] == {"voc07": pytest.approx(1.0), "ap": 1.0, "positives": 1, "detections": 1}
    assert m["map"] == 0.5 and m["classes_evaluated"] == 2
    e = evaluate_detections(p, ds, iou_threshold=0.7)
    assert e["map"] == 0.5 and e["images"] == 1
    e = evaluate_detections(p, ds)  # default 0.5: both are TPs
    assert e["map"] == 1.0 and e["voc07_map"] == pytest.approx(1.0) and e["images"] == 1


@pytest.mark.parametrize("boxes,scores,labels,match", [
    (np.zeros(8), [0.5, 0.5], [0, 0], r"have boxes \(8,\), scores \(2,\), labels \(2,\); expected \[K, 4\], \[K\], \[K\]"),
    (np.zeros((2, 5)), [0.5, 0.5], [0, 0], r"have boxes \(2, 5\)"),
    (np.zeros((2, 4, 1)), [0.5, 0.5], [0, 0], r"have boxes \(2, 4, 1\)"),
    (np.zeros((2, 4)), [0.5], [0, 0], r"have boxes \(2, 4\), scores \(1,\), labels \(2,\)"),
    (np.zeros((2, 4)), [0.5, 0.5], [0], r"have boxes \(2, 4\), scores \(2,\), labels \(1,\)"),
    (np.zeros((1, 4)), [0.5], [2], r"have class ids up to 2 but the dataset has 2 classes \(ids 0\.\.1\); is it the right model\?"),
    (np.zeros((1, 4)), [np.nan], [0], r"contain NaN or infinite values"),
    (np.array([[0, 0, np.inf, 1]]), [0.5], [0], r"contain NaN or infinite values"),
])
def test_bad_predictions_name_the_image(boxes, scores, labels, match):
    ds = metrics_dataset()
    with pytest.raises(EnginesmithError, match=r"predictions for image 0 \(img0\) " + match):
        voc_metrics([(boxes, np.asarray(scores), np.asarray(labels))], ds)


def test_empty_predictions_in_any_shape():
    ds = metrics_dataset()
    for empty in (np.zeros(0), np.zeros((0, 4)), []):
        m = voc_metrics([(empty, np.zeros(0), np.zeros(0, np.int64))], ds)
        assert m["map"] == 0.0 and m["per_class"]["a"]["detections"] == 0


def test_match_class_ties_in_a_shuffled_run_follow_image_then_detection_order():
    # 60 detections over 3 images with three distinct scores in random order; on each image's one ground truth,
    # every detection is an exact hit, so the first in (score desc, image, index) order is the TP, the rest FP
    rng = np.random.default_rng(0)
    scores = [rng.choice([0.2, 0.5, 0.9], 20) for _ in range(3)]
    gt = [np.array([[0.0, 0.0, 10.0, 10.0]])] * 3
    det = [np.tile([[0.0, 0.0, 10.0, 10.0]], (20, 1))] * 3
    tp, fp, _ = match_class(gt, [np.zeros(1, bool)] * 3, det, scores, convention=CONTINUOUS)
    order = sorted(((-float(s), i, j) for i in range(3) for j, s in enumerate(scores[i])))  # Python: stable by key
    first = {}
    expect = []
    for _, i, j in order:
        expect.append(0.0 if i in first else 1.0)
        first.setdefault(i, j)
    assert tp.tolist() == expect and fp.tolist() == [1.0 - t for t in expect]
