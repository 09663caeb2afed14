"""VOC AP (07 11-point and all-point) in the `continuous` convention against hand-computed cases and a naive
loop reference; tests/unit/test_voc_devkit.py checks the default `devkit` convention against voc_eval.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from functools import partial

from enginesmith.evaluation import detection_metrics
from enginesmith.evaluation.detection_metrics import CONTINUOUS, Predictions, box_iou, evaluate_detections, voc_ap
from enginesmith.data.detection import DetectionDataset, DetectionSample
from enginesmith.errors import EnginesmithError

voc_metrics = partial(detection_metrics.voc_metrics, convention="continuous")


def make_dataset(per_image: list[tuple[list, list, list]], class_names=("a", "b", "c")) -> DetectionDataset:
    """per_image: (boxes, labels, difficult) lists -> a DetectionDataset of 200x200 images."""
    samples = []
    for i, (boxes, labels, difficult) in enumerate(per_image):
        samples.append(DetectionSample(
            image_id=f"img{i}", image_path=Path(f"/nonexistent/img{i}.jpg"), width=200, height=200,
            boxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4), labels=np.asarray(labels, dtype=np.int64),
            difficult=np.asarray(difficult, dtype=bool)))
    return DetectionDataset(Path("/nonexistent"), "test", tuple(class_names), samples)


def preds(boxes, scores, labels) -> Predictions:
    return Predictions(np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(scores, np.float32),
                       np.asarray(labels, np.int64))


GT3 = [[0, 0, 10, 10], [20, 0, 30, 10], [40, 0, 50, 10]]
# In score order: TP (GT1), FP (far away), TP (GT2), FP (a duplicate of GT1), TP (GT3).
DETS5 = ([[0, 0, 10, 10], [100, 100, 110, 110], [20, 0, 30, 10], [0.5, 0, 10.5, 10], [40, 0, 50, 10]],
         [0.9, 0.8, 0.7, 0.6, 0.5])

# Hand computation for DETS5 on GT3 (3 positives):
#   cumulative TP 1,1,2,2,3; FP 0,1,1,2,2 -> recall 1/3,1/3,2/3,2/3,1; precision 1,1/2,2/3,1/2,3/5
#   envelope (max to the right): 1, 2/3, 2/3, 3/5, 3/5
#   all-point: 1/3*1 + 1/3*2/3 + 1/3*3/5 = 34/45
#   VOC07: t=0,.1,.2,.3 -> 1 (recall 1/3 >= .3); t=.4,.5,.6 -> 2/3; t=.7,.8,.9,1 -> 3/5
#          (4*1 + 3*2/3 + 4*3/5) / 11 = 8.4/11 = 42/55
AP_ALL_5 = 34 / 45
AP_07_5 = 42 / 55


def test_iou_is_continuous_no_plus_one():
    # inter 5x10 = 50, union 100 + 100 - 50 = 150 (the devkit's +1 would give 66/176 = 0.375)
    assert box_iou(np.array([[0, 0, 10, 10]]), np.array([[5, 0, 15, 10]]))[0, 0] == pytest.approx(1 / 3)
    assert box_iou(np.array([[0, 0, 10, 10]]), np.array([[10, 0, 20, 10]]))[0, 0] == 0.0
    assert box_iou(np.array([[0, 0, 10, 10]]), np.array([[5, 0, 15, 10]]), inclusive=True)[0, 0] == 66 / 176
    assert box_iou(np.array([[0, 0, 10, 10]]), np.array([[10, 0, 20, 10]]), inclusive=True)[0, 0] == 11 / 231


def test_voc_ap_on_a_hand_curve():
    rec = np.array([1, 1, 2, 2, 3]) / 3
    prec = np.array([1, 1 / 2, 2 / 3, 1 / 2, 3 / 5])
    assert voc_ap(rec, prec, use_07_metric=False) == pytest.approx(AP_ALL_5, abs=1e-12)
    assert voc_ap(rec, prec, use_07_metric=True) == pytest.approx(AP_07_5, abs=1e-12)
    # Recall exactly 0.3 reaches the 0.3 point: rec .3 with prec 1, then rec .6 with prec .5
    # -> 07: t in 0..0.3 -> 1 (4 points), t in .4..0.6 -> .5 (3 points), rest 0 -> 5.5/11
    assert voc_ap(np.array([0.3, 0.6]), np.array([1.0, 0.5]), True, CONTINUOUS) == pytest.approx(5.5 / 11, abs=1e-12)
    # The devkit's grid np.arange(0., 1.1, 0.1) has 0.30000000000000004 and 0.6000000000000001: recall .3 reaches
    # t = 0, .1, .2 (3 points at 1), recall .6 reaches .3, .4, .5 (3 points at .5), nothing reaches .6 -> 4.5/11
    assert voc_ap(np.array([0.3, 0.6]), np.array([1.0, 0.5]), True) == pytest.approx(4.5 / 11, abs=1e-12)


def test_hand_computed_ap_with_a_duplicate_as_fp():
    ds = make_dataset([(GT3, [0, 0, 0], [False] * 3)])
    m = voc_metrics([preds(DETS5[0], DETS5[1], [0] * 5)], ds)
    assert m["per_class"]["a"]["ap"] == pytest.approx(AP_ALL_5, abs=1e-9)
    assert m["per_class"]["a"]["voc07"] == pytest.approx(AP_07_5, abs=1e-9)
    assert m["map"] == pytest.approx(AP_ALL_5, abs=1e-9)  # b and c have no ground truth: left out of the mean
    assert m["per_class"]["b"]["ap"] is None and m["classes_evaluated"] == 1


def test_detection_on_difficult_changes_nothing_and_counts_without_the_flag():
    gt4 = GT3 + [[60, 0, 70, 10]]
    boxes = DETS5[0] + [[60, 0, 70, 10]]
    scores = DETS5[1] + [0.85]
    with_flag = make_dataset([(gt4, [0] * 4, [False, False, False, True])])
    m = voc_metrics([preds(boxes, scores, [0] * 6)], with_flag)
    assert m["per_class"]["a"]["ap"] == pytest.approx(AP_ALL_5, abs=1e-9)
    assert m["per_class"]["a"]["voc07"] == pytest.approx(AP_07_5, abs=1e-9)
    assert m["per_class"]["a"]["positives"] == 3
    # Without the flag the .85 detection is a TP and there are 4 positives:
    #   order TP TP FP TP FP TP; recall .25 .5 .5 .75 .75 1; precision 1 1 2/3 3/4 3/5 2/3
    #   envelope 1 1 3/4 3/4 2/3 2/3 -> all-point .25*(1 + 1 + 3/4 + 2/3) = 41/48
    #   VOC07: t<=.5 -> 1 (6 points), t=.6,.7 -> 3/4, t=.8,.9,1 -> 2/3 -> (6 + 1.5 + 2)/11 = 19/22
    without = make_dataset([(gt4, [0] * 4, [False] * 4)])
    m = voc_metrics([preds(boxes, scores, [0] * 6)], without)
    assert m["per_class"]["a"]["ap"] == pytest.approx(41 / 48, abs=1e-9)
    assert m["per_class"]["a"]["voc07"] == pytest.approx(19 / 22, abs=1e-9)


def test_missed_difficult_is_no_miss_and_unmatched_detection_elsewhere_is_fp():
    # One positive found, one difficult GT never detected: AP 1.
    ds = make_dataset([([[0, 0, 10, 10], [50, 50, 60, 60]], [0, 0], [False, True])])
    assert voc_metrics([preds([[0, 0, 10, 10]], [0.9], [0])], ds)["map"] == pytest.approx(1.0)


def test_class_without_detections_has_ap_zero_and_counts_in_the_mean():
    ds = make_dataset([(GT3 + [[0, 50, 10, 60]], [0, 0, 0, 1], [False] * 4)])
    m = voc_metrics([preds(DETS5[0], DETS5[1], [0] * 5)], ds)
    assert m["per_class"]["b"]["ap"] == 0.0 and m["per_class"]["b"]["voc07"] == 0.0
    assert m["map"] == pytest.approx(AP_ALL_5 / 2, abs=1e-9)
    assert m["voc07_map"] == pytest.approx(AP_07_5 / 2, abs=1e-9)


def test_wrong_class_is_fp_and_iou_threshold_is_inclusive():
    ds = make_dataset([([[0, 0, 10, 10]], [0], [False])])
    # IoU exactly 0.5 (inter 100, union 200) matches; 10x20.02 does not.
    assert voc_metrics([preds([[0, 0, 10, 20]], [0.9], [0])], ds)["map"] == 1.0
    assert voc_metrics([preds([[0, 0, 10, 20.02]], [0.9], [0])], ds)["map"] == 0.0
    assert voc_metrics([preds([[0, 0, 10, 10]], [0.9], [1])], ds)["map"] == 0.0


def test_bad_predictions_are_clear_errors():
    ds = make_dataset([(GT3, [0, 0, 0], [False] * 3)])
    with pytest.raises(EnginesmithError, match="predictions for 2 images"):
        voc_metrics([preds([], [], []), preds([], [], [])], ds)
    with pytest.raises(EnginesmithError, match="3 classes"):
        voc_metrics([preds([[0, 0, 1, 1]], [0.5], [7])], ds)


# ----------------------------------------------------------------------------------------------
# A naive reference: a direct loop transcription of the VOC devkit's voc_eval.py (continuous IoU,
# match at IoU >= threshold, 11 points at k/10), written without numpy vectorisation.

def _ref_iou(a, b):
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _ref_voc_eval(gts, dets, cls, thresh=0.5):
    """gts: per image list of (box, label, difficult); dets: list of (image, box, score, label)."""
    recs, npos = {}, 0
    for img, objs in enumerate(gts):
        R = [o for o in objs if o[1] == cls]
        recs[img] = {"bbox": [o[0] for o in R], "difficult": [o[2] for o in R], "det": [False] * len(R)}
        npos += sum(1 for o in R if not o[2])
    mine = [d for d in dets if d[3] == cls]
    mine = sorted(mine, key=lambda d: -d[2])
    tp, fp = [0.0] * len(mine), [0.0] * len(mine)
    for d, (img, bb, _, _) in enumerate(mine):
        R = recs[img]
        ovmax, jmax = -1.0, -1
        for j, g in enumerate(R["bbox"]):
            o = _ref_iou(bb, g)
            if o > ovmax:
                ovmax, jmax = o, j
        if ovmax >= thresh:
            if not R["difficult"][jmax]:
                if not R["det"][jmax]:
                    tp[d] = 1.0
                    R["det"][jmax] = True
                else:
                    fp[d] = 1.0
        else:
            fp[d] = 1.0
    if npos == 0:
        return None
    rec, prec, ctp, cfp = [], [], 0.0, 0.0
    for t, f in zip(tp, fp):
        ctp, cfp = ctp + t, cfp + f
        rec.append(ctp / npos)
        prec.append(ctp / max(ctp + cfp, 1e-300))
    ap07 = 0.0
    for k in range(11):
        ps = [p for r, p in zip(rec, prec) if r >= k / 10]
        ap07 += (max(ps) if ps else 0.0) / 11
    mrec, mpre = [0.0] + rec + [1.0], [0.0] + prec + [0.0]
    for i in range(len(mpre) - 1, 0, -1):
        mpre[i - 1] = max(mpre[i - 1], mpre[i])
    ap = sum((mrec[i + 1] - mrec[i]) * mpre[i + 1] for i in range(len(mrec) - 1) if mrec[i + 1] != mrec[i])
    return ap07, ap


def random_case(rng: np.random.Generator, n_images: int, n_classes: int, difficult_rate: float = 0.15):
    """Ground truth and predictions: jittered copies of GTs (some duplicated), random boxes, random scores."""
    per_image, predictions = [], []
    for _ in range(n_images):
        k = int(rng.integers(0, 7))
        xy = rng.uniform(0, 160, size=(k, 2))
        wh = rng.uniform(8, 60, size=(k, 2))
        boxes = np.concatenate([xy, np.minimum(xy + wh, 200)], axis=1)
        labels = rng.integers(0, n_classes, size=k)
        difficult = rng.random(k) < difficult_rate
        per_image.append((boxes, labels, difficult))
        pb, pl = [], []
        for b, lab in zip(boxes, labels):
            for _ in range(int(rng.choice([0, 1, 1, 1, 2]))):  # missed, found, or found twice
                w, h = b[2] - b[0], b[3] - b[1]
                jitter = rng.normal(0, 0.15, size=4) * np.array([w, h, w, h])
                pb.append(b + jitter)
                pl.append(lab if rng.random() > 0.1 else rng.integers(0, n_classes))
        for _ in range(int(rng.integers(0, 5))):  # false positives anywhere
            xy0 = rng.uniform(0, 160, 2)
            pb.append(np.concatenate([xy0, xy0 + rng.uniform(8, 60, 2)]))
            pl.append(rng.integers(0, n_classes))
        pb = np.asarray(pb, np.float64).reshape(-1, 4)
        pb[:, 2:] = np.maximum(pb[:, 2:], pb[:, :2] + 1)
        predictions.append(preds(pb, rng.random(len(pb)), pl))
    return per_image, predictions


@pytest.mark.parametrize("seed", range(40))
def test_matches_naive_voc_eval_over_random_seeds(seed):
    rng = np.random.default_rng(seed)
    n_classes = int(rng.integers(1, 5))
    per_image, predictions = random_case(rng, int(rng.integers(1, 12)), n_classes)
    ds = make_dataset(per_image, class_names=[f"c{i}" for i in range(n_classes)])
    m = voc_metrics(predictions, ds)
    gts = [[(tuple(map(float, ds[i].boxes[j])), int(ds[i].labels[j]), bool(ds[i].difficult[j]))
            for j in range(len(ds[i].labels))] for i in range(len(ds))]
    dets = [(i, tuple(map(float, p.boxes[j])), float(p.scores[j]), int(p.labels[j]))
            for i, p in enumerate(predictions) for j in range(len(p.scores))]
    ap07s, aps = [], []
    for c in range(n_classes):
        ref = _ref_voc_eval(gts, dets, c)
        got = m["per_class"][f"c{c}"]
        if ref is None:
            assert got["ap"] is None and got["voc07"] is None
            continue
        assert got["voc07"] == pytest.approx(ref[0], abs=1e-6)
        assert got["ap"] == pytest.approx(ref[1], abs=1e-6)
        ap07s.append(ref[0])
        aps.append(ref[1])
    assert m["map"] == pytest.approx(np.mean(aps) if aps else 0.0, abs=1e-6)
    assert m["voc07_map"] == pytest.approx(np.mean(ap07s) if ap07s else 0.0, abs=1e-6)


def test_evaluate_detections_has_every_key():
    ds = make_dataset([(GT3, [0, 0, 0], [False] * 3)])
    m = evaluate_detections([preds(DETS5[0], DETS5[1], [0] * 5)], ds)
    for key in ("voc07_map", "map", "coco_ap", "coco_ap50", "coco_ap75", "per_class"):
        assert key in m
    assert set(m["per_class"]["a"]) >= {"voc07", "ap"}
