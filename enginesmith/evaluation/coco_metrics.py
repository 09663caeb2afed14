"""COCO box AP through pycocotools, built in memory from a DetectionDataset (numpy + pycocotools).

Ground truth: one COCO image per sample (id = its index), one category per class (id = class index + 1),
bbox [x, y, w, h] from x1y1x2y2, area w * h, iscrowd = the sample's `difficult` flag (so, as in COCO,
a detection on it is ignored and it is not a positive; note that COCO's IoU with a crowd region is
intersection / detection area). Detections: every prediction as given (pycocotools keeps the 100 best
per image and category). pycocotools' own printing (index creation, the 12-line summary) is captured,
not printed, and returned as text.
"""

from __future__ import annotations

import contextlib
import io
from typing import Any, Sequence

import numpy as np

from enginesmith.errors import EnginesmithError


def _xywh(boxes: np.ndarray) -> np.ndarray:
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.stack([b[:, 0], b[:, 1], b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]], axis=1)


def coco_ground_truth(dataset: Any) -> dict[str, Any]:
    """The dataset as a COCO annotation dict (images, annotations, categories)."""
    images, anns = [], []
    for i, s in enumerate(dataset.samples):
        images.append({"id": i, "width": int(s.width), "height": int(s.height), "file_name": str(s.image_id)})
        for box, label, diff in zip(_xywh(s.boxes), np.asarray(s.labels), np.asarray(s.difficult)):
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": int(label) + 1,
                         "bbox": [float(v) for v in box], "area": float(box[2] * box[3]), "iscrowd": int(bool(diff))})
    cats = [{"id": c + 1, "name": n} for c, n in enumerate(dataset.class_names)]
    return {"images": images, "annotations": anns, "categories": cats}


def coco_detections(predictions: Sequence[Any]) -> list[dict[str, Any]]:
    """Predictions (per image: boxes [K, 4] x1y1x2y2, scores [K], labels [K]) as COCO result dicts."""
    out = []
    for i, (boxes, scores, labels) in enumerate(predictions):
        for box, score, label in zip(_xywh(boxes), np.asarray(scores), np.asarray(labels)):
            out.append({"image_id": i, "category_id": int(label) + 1, "bbox": [float(v) for v in box],
                        "score": float(score), "area": float(box[2] * box[3]), "iscrowd": 0})
    return out


def coco_metrics(predictions: Sequence[Any], dataset: Any) -> dict[str, Any]:
    """{"coco_ap": AP@[.5:.95], "coco_ap50", "coco_ap75", "coco_summary": pycocotools' printed text}.

    Values are fractions; 0.0 when there are no detections at all. pycocotools averages over the classes
    with ground truth (its -1 entries, classes without any, are left out)."""
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError:
        raise EnginesmithError("COCO AP needs pycocotools; pip install pycocotools") from None
    if len(predictions) != len(dataset):
        raise EnginesmithError(f"got predictions for {len(predictions)} images but the dataset has {len(dataset)}")
    text = io.StringIO()
    with contextlib.redirect_stdout(text):
        gt = COCO()
        gt.dataset = coco_ground_truth(dataset)
        gt.createIndex()
        dets = coco_detections(predictions)
        if not dets or not gt.dataset["annotations"]:
            return {"coco_ap": 0.0, "coco_ap50": 0.0, "coco_ap75": 0.0, "coco_summary": "no detections" if not dets
                    else "no ground truth"}
        for k, d in enumerate(dets, start=1):
            d["id"] = k
        dt = COCO()
        dt.dataset = {"images": gt.dataset["images"], "categories": gt.dataset["categories"], "annotations": dets}
        dt.createIndex()
        ev = COCOeval(gt, dt, iouType="bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    stats = [max(0.0, float(v)) for v in ev.stats[:3]]  # -1 (nothing to evaluate) reads as 0
    return {"coco_ap": stats[0], "coco_ap50": stats[1], "coco_ap75": stats[2], "coco_summary": text.getvalue()}


__all__ = ["coco_ground_truth", "coco_detections", "coco_metrics"]
