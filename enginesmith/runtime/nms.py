"""Host NMS (numpy only; never imports torch): decoded detector outputs -> final detections.

`nms_detections(boxes [N, A, 4], scores [N, A, C])` returns `detections [N, K, 6]` float32 rows
(x1, y1, x2, y2, score, class) and `num_detections [N]` int32, K = max_detections; rows past
num_detections are zeros. It is the reference for the in-engine form (pipeline/nms.py, ONNX
NonMaxSuppression), and both follow ONNX NonMaxSuppression's semantics:

- a (box, class) is a candidate when its score is strictly greater than score_threshold;
- greedy NMS per class (or over all boxes, each with its best class, when class_agnostic): a box is
  suppressed when its IoU with a kept box of the same class is strictly greater than iou_threshold;
  IoU is computed in float32 as inter / (area1 + area2 - inter); boxes with zero area never suppress;
- at most max_detections kept per class, then the max_detections best over all classes by score.
- Order: by decreasing score. Equal scores are ordered by (class, box index) here; engines may order
  exact ties differently (ONNX does not define it), which is the only way the two forms can differ.
"""

from __future__ import annotations

import numpy as np

DEFAULT_IOU_THRESHOLD = 0.45
DEFAULT_SCORE_THRESHOLD = 0.25
DEFAULT_MAX_DETECTIONS = 100


def iou_one_to_many(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU (float32) of box [4] with boxes [M, 4], corners in any diagonal order (as ONNX)."""
    b = box.astype(np.float32)
    bs = boxes.astype(np.float32)
    x1a, x2a = min(b[0], b[2]), max(b[0], b[2])
    y1a, y2a = min(b[1], b[3]), max(b[1], b[3])
    x1b, x2b = np.minimum(bs[:, 0], bs[:, 2]), np.maximum(bs[:, 0], bs[:, 2])
    y1b, y2b = np.minimum(bs[:, 1], bs[:, 3]), np.maximum(bs[:, 1], bs[:, 3])
    iw = np.minimum(x2a, x2b) - np.maximum(x1a, x1b)
    ih = np.minimum(y2a, y2b) - np.maximum(y1a, y1b)
    inter = (iw * ih).astype(np.float32)
    area_a = np.float32((x2a - x1a) * (y2a - y1a))
    area_b = ((x2b - x1b) * (y2b - y1b)).astype(np.float32)
    union = (area_a + area_b - inter).astype(np.float32)
    valid = (iw > 0) & (ih > 0) & (area_a > 0) & (area_b > 0) & (union > 0)
    out = np.zeros(len(bs), dtype=np.float32)
    out[valid] = inter[valid] / union[valid]
    return out


# Up to this many candidates (of one class), greedy_nms computes their IoU matrix once (M x M float32,
# 4 MB at 1024) instead of one row per kept box: the same float32 arithmetic, so the same result.
MATRIX_NMS_MAX = 1024


def iou_matrix(boxes: np.ndarray) -> np.ndarray:
    """IoU [M, M] (float32) of boxes [M, 4] with each other: element for element the arithmetic of
    `iou_one_to_many` (row i equals iou_one_to_many(boxes[i], boxes) exactly)."""
    bs = boxes.astype(np.float32)
    x1, x2 = np.minimum(bs[:, 0], bs[:, 2]), np.maximum(bs[:, 0], bs[:, 2])
    y1, y2 = np.minimum(bs[:, 1], bs[:, 3]), np.maximum(bs[:, 1], bs[:, 3])
    iw = np.minimum(x2[:, None], x2[None, :]) - np.maximum(x1[:, None], x1[None, :])
    ih = np.minimum(y2[:, None], y2[None, :]) - np.maximum(y1[:, None], y1[None, :])
    inter = (iw * ih).astype(np.float32)
    area = ((x2 - x1) * (y2 - y1)).astype(np.float32)
    union = (area[:, None] + area[None, :] - inter).astype(np.float32)
    valid = (iw > 0) & (ih > 0) & (area[:, None] > 0) & (area[None, :] > 0) & (union > 0)
    out = np.zeros(inter.shape, dtype=np.float32)
    np.divide(inter, union, out=out, where=valid)
    return out


def greedy_nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float, limit: int | None = None) -> np.ndarray:
    """Indices kept by greedy NMS, by decreasing score (stable: equal scores keep the lower index first)."""
    order = np.argsort(-scores.astype(np.float64), kind="stable")
    if 1 < len(order) <= MATRIX_NMS_MAX:
        iou = iou_matrix(boxes[order])
        suppressed = np.zeros(len(order), dtype=bool)
        kept: list[int] = []
        for pos in range(len(order)):
            if suppressed[pos]:
                continue
            kept.append(int(order[pos]))
            if limit is not None and len(kept) >= limit:
                break
            suppressed[pos + 1 :] |= iou[pos, pos + 1 :] > iou_threshold
        return np.asarray(kept, dtype=np.int64)
    keep: list[int] = []
    alive = np.ones(len(order), dtype=bool)
    for pos, i in enumerate(order):
        if not alive[pos]:
            continue
        keep.append(int(i))
        if limit is not None and len(keep) >= limit:
            break
        rest = order[pos + 1 :]
        if len(rest):
            alive[pos + 1 :] &= iou_one_to_many(boxes[i], boxes[rest]) <= iou_threshold
    return np.asarray(keep, dtype=np.int64)


def nms_detections(
    boxes: np.ndarray,
    scores: np.ndarray,
    iou_threshold: float = DEFAULT_IOU_THRESHOLD,
    score_threshold: float = DEFAULT_SCORE_THRESHOLD,
    max_detections: int = DEFAULT_MAX_DETECTIONS,
    class_agnostic: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """boxes [N, A, 4], scores [N, A, C] -> (detections [N, K, 6] float32, num_detections [N] int32)."""
    boxes = np.asarray(boxes, dtype=np.float32)
    scores = np.asarray(scores, dtype=np.float32)
    if boxes.ndim != 3 or boxes.shape[-1] != 4 or scores.ndim != 3 or scores.shape[:2] != boxes.shape[:2]:
        raise ValueError(f"expected boxes [N, A, 4] and scores [N, A, C], got {boxes.shape} and {scores.shape}")
    n = boxes.shape[0]
    k = int(max_detections)
    dets = np.zeros((n, k, 6), dtype=np.float32)
    counts = np.zeros(n, dtype=np.int32)
    for b in range(n):
        rows = []  # (score, class, box index)
        if class_agnostic:
            cls = np.argmax(scores[b], axis=1) if scores.shape[2] else np.zeros(0, np.int64)
            best = scores[b, np.arange(scores.shape[1]), cls] if scores.shape[2] else np.zeros(0, np.float32)
            idx = np.nonzero(best > score_threshold)[0]
            for i in idx[greedy_nms(boxes[b, idx], best[idx], iou_threshold, k)]:
                rows.append((best[i], int(cls[i]), int(i)))
        else:
            for c in range(scores.shape[2]):
                s = scores[b, :, c]
                idx = np.nonzero(s > score_threshold)[0]
                for i in idx[greedy_nms(boxes[b, idx], s[idx], iou_threshold, k)]:
                    rows.append((s[i], c, int(i)))
        rows.sort(key=lambda r: (-float(r[0]), r[1], r[2]))
        rows = rows[:k]
        counts[b] = len(rows)
        for j, (s, c, i) in enumerate(rows):
            dets[b, j, :4] = boxes[b, i]
            dets[b, j, 4] = s
            dets[b, j, 5] = c
    return dets, counts


__all__ = ["nms_detections", "greedy_nms", "iou_one_to_many", "iou_matrix", "DEFAULT_IOU_THRESHOLD", "DEFAULT_SCORE_THRESHOLD",
           "DEFAULT_MAX_DETECTIONS"]
