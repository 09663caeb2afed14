"""Detection accuracy: PASCAL VOC AP@0.5 (VOC07 11-point and VOC2010+ all-point) plus COCO AP (numpy only).

Two VOC conventions, named in every result (`voc_convention`) and report:

- `devkit` (the default): the VOC devkit's `voc_eval.py` as py-faster-rcnn, ssd.pytorch and Darknet ship
  it (darknet `scripts/voc_eval.py`), reproduced bit for bit on VOC-format data:
  - boxes are pixel indices: ground truth is the XML's 1-based inclusive (xmin, ymin, xmax, ymax), i.e.
    enginesmith's continuous box + (1, 1, 0, 0); a detection is written as every reference pipeline
    writes its 0-based box to the detection file, + (1, 1, 1, 1) on all four coordinates (py-faster-rcnn
    `_write_voc_results_file`, ssd.pytorch `write_voc_results_file`, darknet `print_detector_detections`;
    enginesmith writes no rounding, where they print 1 or 6 decimals);
  - IoU adds 1 to every width and height (intersection and both areas); a match needs IoU > threshold;
  - detections are sorted by `np.argsort(-score)` (numpy's default, unstable sort: ties are ordered as
    voc_eval.py orders them on the same numpy, over detections listed image by image);
  - the 11 recall points are `np.arange(0., 1.1, 0.1)`, whose 0.3, 0.6 and 0.7 lie a hair above the
    decimals, so a recall of exactly 3/10, 6/10 or 7/10 does not reach that point;
  - precision = tp / max(tp + fp, eps) (darknet's guard for a first detection on a difficult object).
- `continuous`: enginesmith's own geometry (data/detection.py): boxes as they are, IoU on continuous
  coordinates without +1, a match at IoU >= threshold (the Matlab devkit's and pycocotools' `>=`), a stable
  sort (ties keep image order, then the order within the image), the 11 points at exactly k / 10.

Matching is the same in both, per class: detections of the class over all images in score order; a
detection takes the ground truth of the same class in its image with the highest IoU (among all of them,
matched or not, difficult or not). If that IoU passes the threshold: a `difficult` ground truth makes the
detection ignored (neither TP nor FP); an unmatched one makes it a TP and marks the ground truth matched; an
already matched one makes it a FP (duplicates count as false positives). Otherwise it is a FP.
positives = the class's non-difficult ground truths; recall = TP / positives.

Classes with no (non-difficult) ground truth in the split have no AP: they are reported as None and left
out of the mean, as pycocotools leaves them out of its mean (voc_eval.py would give such a class 0 or nan,
and py-faster-rcnn's caller averages it in; on VOC2007 test every class has positives, so the means agree).

Boxes are x1, y1, x2, y2 in original-image pixels (continuous, data/detection.py) at every entry point of
this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple, Sequence

import numpy as np

from enginesmith.errors import EnginesmithError
from enginesmith.evaluation.coco_metrics import coco_metrics


class Predictions(NamedTuple):
    """One image's detections: boxes [K, 4] float32 x1y1x2y2 original pixels, scores [K] float32, labels [K] int64."""

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray


@dataclass(frozen=True)
class VocConvention:
    """How boxes, IoU, ties and the 11-point grid are read (see the module docstring).

    gt_offset / det_offset [4] are added to the continuous x1y1x2y2 boxes before the IoU; inclusive adds 1
    to every width and height in it; strict matches at IoU > threshold (else >=); sort_kind is numpy's
    argsort kind (None: its default); grid [11] are the recall points of the 11-point AP."""

    name: str
    label: str
    gt_offset: tuple[float, float, float, float]
    det_offset: tuple[float, float, float, float]
    inclusive: bool
    strict: bool
    sort_kind: str | None
    grid: tuple[float, ...]


DEVKIT = VocConvention("devkit", "VOC devkit voc_eval.py: pixel-inclusive boxes, IoU > 0.5",
                       (1.0, 1.0, 0.0, 0.0), (1.0, 1.0, 1.0, 1.0), inclusive=True, strict=True, sort_kind=None,
                       grid=tuple(np.arange(0.0, 1.1, 0.1).tolist()))
CONTINUOUS = VocConvention("continuous", "continuous boxes, IoU >= 0.5", (0.0,) * 4, (0.0,) * 4, inclusive=False,
                           strict=False, sort_kind="stable", grid=tuple((np.arange(11) / 10.0).tolist()))
VOC_CONVENTIONS: dict[str, VocConvention] = {c.name: c for c in (DEVKIT, CONTINUOUS)}


def voc_convention(name: str) -> VocConvention:
    """The convention called `name` ("devkit" or "continuous"); a one-line error otherwise."""
    if name not in VOC_CONVENTIONS:
        raise EnginesmithError(f"unknown VOC metric convention {name!r}; use {' or '.join(VOC_CONVENTIONS)}")
    return VOC_CONVENTIONS[name]


def box_iou(a: np.ndarray, b: np.ndarray, inclusive: bool = False) -> np.ndarray:
    """IoU matrix [M, N] (float64) of boxes a [M, 4] and b [N, 4] (x1y1x2y2).

    inclusive=False: continuous coordinates (no +1). inclusive=True: voc_eval.py's pixel indices, every width
    and height + 1, in its order of operations ((x2 - x1 + 1), areas summed before the intersection is taken
    off), so the values are the ones voc_eval.py computes."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    one = 1.0 if inclusive else 0.0
    iw = np.maximum(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]) + one, 0.0)
    ih = np.maximum(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]) + one, 0.0)
    inter = iw * ih
    if inclusive:
        area_a = (a[:, 2] - a[:, 0] + one) * (a[:, 3] - a[:, 1] + one)
        area_b = (b[:, 2] - b[:, 0] + one) * (b[:, 3] - b[:, 1] + one)
    else:
        area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
        area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    union = area_a[:, None] + area_b[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        # voc_eval.py divides as it is (a degenerate pair gives nan/inf, which never passes the threshold)
        return inter / union if inclusive else np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def voc_ap(recall: np.ndarray, precision: np.ndarray, use_07_metric: bool = False,
           convention: VocConvention = DEVKIT) -> float:
    """AP from a recall/precision curve (arrays in detection order, recall non-decreasing).

    use_07_metric: VOC2007's 11-point AP, the mean over t in the convention's grid of the highest precision
    at recall >= t (0 when recall never reaches t); the devkit's grid is np.arange(0., 1.1, 0.1), the
    continuous one exact k / 10. Otherwise VOC2010+'s all-point AP: the area under the precision envelope
    (precision made non-increasing from the right) summed over the recall steps (the same in both).
    """
    rec = np.asarray(recall, dtype=np.float64).ravel()
    prec = np.asarray(precision, dtype=np.float64).ravel()
    if use_07_metric:
        ap = 0.0
        for t in convention.grid:
            reached = rec >= t
            ap += (float(prec[reached].max()) if reached.any() else 0.0) / 11.0
        return ap
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]  # the envelope
    i = np.nonzero(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def match_class(
    gt_boxes: Sequence[np.ndarray],
    gt_difficult: Sequence[np.ndarray],
    det_boxes: Sequence[np.ndarray],
    det_scores: Sequence[np.ndarray],
    iou_threshold: float = 0.5,
    convention: VocConvention = DEVKIT,
) -> tuple[np.ndarray, np.ndarray, int]:
    """One class over all images (lists indexed by image; boxes [K, 4] continuous x1y1x2y2) -> (tp [D], fp [D]
    float64 in score order, number of positives). Ignored detections (on a difficult ground truth) are 0 in
    both. The convention's offsets, IoU, sort and threshold apply (module docstring)."""
    npos = int(sum(int((~np.asarray(d, bool)).sum()) for d in gt_difficult))
    image_of = np.concatenate([np.full(len(s), i, dtype=np.int64) for i, s in enumerate(det_scores)] or [np.zeros(0, np.int64)])
    index_in = np.concatenate([np.arange(len(s)) for s in det_scores] or [np.zeros(0, np.int64)]).astype(np.int64)
    scores = np.concatenate([np.asarray(s, np.float64) for s in det_scores] or [np.zeros(0)])
    order = np.argsort(-scores) if convention.sort_kind is None else np.argsort(-scores, kind=convention.sort_kind)
    tp = np.zeros(len(order))
    fp = np.zeros(len(order))
    taken = [np.zeros(len(g), dtype=bool) for g in gt_boxes]
    gt_off, det_off = np.asarray(convention.gt_offset), np.asarray(convention.det_offset)
    # IoU of every detection with its image's ground truths, one matrix per image.
    ious = [box_iou(np.asarray(det_boxes[i], np.float64) + det_off, np.asarray(gt_boxes[i], np.float64) + gt_off,
                    convention.inclusive) if len(gt_boxes[i]) and len(det_scores[i]) else None
            for i in range(len(det_scores))]
    for d, k in enumerate(order):
        img, j = image_of[k], index_in[k]
        row = ious[img]
        if row is None:
            fp[d] = 1
            continue
        best = int(np.argmax(row[j]))
        passed = row[j, best] > iou_threshold if convention.strict else row[j, best] >= iou_threshold
        if not passed:
            fp[d] = 1
        elif gt_difficult[img][best]:
            continue
        elif taken[img][best]:
            fp[d] = 1
        else:
            tp[d] = 1
            taken[img][best] = True
    return tp, fp, npos


def class_ap(tp: np.ndarray, fp: np.ndarray, npos: int, convention: VocConvention = DEVKIT) -> tuple[float, float]:
    """(VOC07 11-point AP, all-point AP) from match_class's output; (nan, nan) when npos is 0."""
    if npos == 0:
        return float("nan"), float("nan")
    ctp, cfp = np.cumsum(tp), np.cumsum(fp)
    recall = ctp / float(npos)
    precision = ctp / np.maximum(ctp + cfp, np.finfo(np.float64).eps)
    return voc_ap(recall, precision, True, convention), voc_ap(recall, precision, False, convention)


def _check_predictions(predictions: Sequence[Any], dataset: Any) -> list[Predictions]:
    if len(predictions) != len(dataset):
        raise EnginesmithError(
            f"got predictions for {len(predictions)} images but the dataset {dataset.root} ({dataset.split}) has "
            f"{len(dataset)}; give one (boxes, scores, labels) per image, in the dataset's order"
        )
    num_classes = len(dataset.class_names)
    out = []
    for i, p in enumerate(predictions):
        boxes, scores, labels = (np.asarray(a) for a in p)
        boxes = boxes.reshape(-1, 4) if boxes.size == 0 else boxes
        if boxes.ndim != 2 or boxes.shape[1] != 4 or scores.shape != (len(boxes),) or labels.shape != (len(boxes),):
            raise EnginesmithError(
                f"predictions for image {i} ({dataset.samples[i].image_id}) have boxes {boxes.shape}, scores "
                f"{scores.shape}, labels {labels.shape}; expected [K, 4], [K], [K]"
            )
        if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
            raise EnginesmithError(
                f"predictions for image {i} ({dataset.samples[i].image_id}) have class ids up to {int(labels.max())} "
                f"but the dataset has {num_classes} classes (ids 0..{num_classes - 1}); is it the right model?"
            )
        if not (np.all(np.isfinite(boxes)) and np.all(np.isfinite(scores))):
            raise EnginesmithError(
                f"predictions for image {i} ({dataset.samples[i].image_id}) contain NaN or infinite values"
            )
        out.append(Predictions(boxes.astype(np.float64), scores.astype(np.float64), labels.astype(np.int64)))
    return out


def voc_metrics(predictions: Sequence[Any], dataset: Any, iou_threshold: float = 0.5,
                convention: str = "devkit") -> dict[str, Any]:
    """VOC AP per class and their means over the classes that have ground truth, under `convention`
    ("devkit": voc_eval.py's numbers; "continuous": enginesmith's geometry; see the module docstring).

    Returns {"voc07_map", "map", "per_class": {name: {"voc07", "ap", "positives", "detections"}},
    "classes_evaluated", "voc_convention"}; a class with no positives has voc07/ap None and is not in the means.
    """
    rules = voc_convention(convention)
    preds = _check_predictions(predictions, dataset)
    per_class: dict[str, dict[str, Any]] = {}
    ap07s, aps = [], []
    for c, name in enumerate(dataset.class_names):
        gt_boxes, gt_diff, det_boxes, det_scores = [], [], [], []
        for s, p in zip(dataset.samples, preds):
            g = s.labels == c
            gt_boxes.append(np.asarray(s.boxes, np.float64)[g])
            gt_diff.append(np.asarray(s.difficult, bool)[g])
            d = p.labels == c
            det_boxes.append(p.boxes[d])
            det_scores.append(p.scores[d])
        tp, fp, npos = match_class(gt_boxes, gt_diff, det_boxes, det_scores, iou_threshold, rules)
        ap07, ap = class_ap(tp, fp, npos, rules)
        entry = {"voc07": None, "ap": None, "positives": npos, "detections": int(sum(len(s) for s in det_scores))}
        if npos:
            entry["voc07"], entry["ap"] = ap07, ap
            ap07s.append(ap07)
            aps.append(ap)
        per_class[name] = entry
    return {
        "voc07_map": float(np.mean(ap07s)) if ap07s else 0.0,
        "map": float(np.mean(aps)) if aps else 0.0,
        "per_class": per_class,
        "classes_evaluated": len(aps),
        "voc_convention": rules.name,
    }


def evaluate_detections(predictions: Sequence[Any], dataset: Any, iou_threshold: float = 0.5,
                        convention: str = "devkit") -> dict[str, Any]:
    """All detection metrics of `predictions` (one Predictions per dataset sample, same order) on a
    DetectionDataset: voc07_map, map (all-point AP at iou_threshold), per_class, classes_evaluated,
    voc_convention (voc_metrics), and pycocotools' coco_ap (AP@[.5:.95]), coco_ap50, coco_ap75. Values are
    fractions in [0, 1]."""
    out = voc_metrics(predictions, dataset, iou_threshold, convention)
    out.update(coco_metrics(predictions, dataset))
    out["images"] = len(dataset)
    return out


def voc_metric_label(convention: str) -> str:
    """How a report names the VOC metric of `convention`, e.g. "VOC07 mAP@0.5 (VOC devkit voc_eval.py: ...)"."""
    return f"VOC07 mAP@0.5 ({voc_convention(convention).label})"


__all__ = ["Predictions", "VocConvention", "DEVKIT", "CONTINUOUS", "VOC_CONVENTIONS", "voc_convention",
           "voc_metric_label", "box_iou", "voc_ap", "match_class", "class_ap", "voc_metrics", "evaluate_detections"]
