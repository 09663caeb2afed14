"""Anchor (prior) sizes fitted to a dataset: YOLOv2's k-means on box (w, h) with distance 1 - IoU
(boxes compared as if they shared a centre), in network-input pixels after the model's preprocessing."""

from __future__ import annotations

import numpy as np

from enginesmith.runtime.preprocess import PreprocessSpec


def wh_iou_np(wh: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """IoU of centred boxes: wh [M, 2], centres [K, 2] -> [M, K]."""
    inter = np.minimum(wh[:, None, 0], centres[None, :, 0]) * np.minimum(wh[:, None, 1], centres[None, :, 1])
    return inter / (wh[:, None].prod(-1) + centres[None].prod(-1) - inter)


def kmeans_anchors(wh: np.ndarray, k: int, seed: int = 0, iterations: int = 300) -> np.ndarray:
    """k anchors [k, 2] (w, h) minimising the mean 1 - IoU of each box to its nearest anchor; k-means++
    seeding from a numpy generator seeded by `seed`; sorted by area, smallest first."""
    wh = np.asarray(wh, dtype=np.float64).reshape(-1, 2)
    if len(wh) < k:
        raise ValueError(f"need at least {k} boxes to fit {k} anchors, got {len(wh)}")
    rng = np.random.default_rng(seed)
    centres = [wh[rng.integers(len(wh))]]
    for _ in range(1, k):
        d = 1 - wh_iou_np(wh, np.asarray(centres)).max(1)
        centres.append(wh[rng.choice(len(wh), p=d**2 / (d**2).sum())])
    c = np.asarray(centres)
    for _ in range(iterations):
        assign = wh_iou_np(wh, c).argmax(1)
        new = np.array([np.median(wh[assign == j], axis=0) if (assign == j).any() else c[j] for j in range(k)])
        if np.allclose(new, c):
            break
        c = new
    return c[np.argsort(c.prod(1))]


def dataset_input_wh(dataset, spec: PreprocessSpec) -> np.ndarray:
    """(w, h) [M, 2] of every non-difficult box of a DetectionDataset in network-input pixels."""
    th, tw = spec.input_size
    out = []
    for s in dataset.samples:
        if spec.resize == "letterbox":
            r = min(th / s.height, tw / s.width)
            rx = ry = r
        else:
            rx, ry = tw / s.width, th / s.height
        b = s.boxes[~s.difficult]
        out.append(np.stack(((b[:, 2] - b[:, 0]) * rx, (b[:, 3] - b[:, 1]) * ry), 1))
    return np.concatenate(out) if out else np.zeros((0, 2))


def mean_best_iou(wh: np.ndarray, anchors: np.ndarray) -> float:
    """Mean over boxes of the IoU with the best anchor (YOLOv2's 'Avg IOU')."""
    return float(wh_iou_np(np.asarray(wh, dtype=np.float64), np.asarray(anchors, dtype=np.float64)).max(1).mean())
