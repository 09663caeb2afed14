"""The runtime's result and configuration types: what `load(...)` engines return and take (torch-free)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from enginesmith.runtime.nms import DEFAULT_IOU_THRESHOLD, DEFAULT_MAX_DETECTIONS, DEFAULT_SCORE_THRESHOLD


# -- results ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Detection:
    """One detected object. box: (x1, y1, x2, y2) in the original image's pixels (continuous, clipped)."""

    box: tuple[float, float, float, float]
    score: float
    class_id: int
    class_name: str

    def to_dict(self) -> dict[str, Any]:
        return {"box": [round(v, 2) for v in self.box], "score": round(self.score, 5), "class_id": self.class_id,
                "class_name": self.class_name}


@dataclass(frozen=True)
class Classification:
    """One of the top-k classes: score is the softmax probability of the engine's logits."""

    class_id: int
    class_name: str
    score: float

    def to_dict(self) -> dict[str, Any]:
        return {"class_id": self.class_id, "class_name": self.class_name, "score": round(self.score, 6)}


@dataclass(frozen=True)
class Segmentation:
    """A per-pixel label map in the original image's pixels.

    labels: (H, W) int32 class ids; -1 where the network makes no prediction (U-Net's valid convolutions
    leave a border of the input unlabelled). scores: (H, W) float32 softmax probability of that label.
    """

    labels: np.ndarray
    scores: np.ndarray
    class_names: tuple[str, ...]

    def mask(self, class_id: int) -> np.ndarray:
        """(H, W) bool: pixels labelled class_id."""
        return self.labels == class_id

    def to_dict(self) -> dict[str, Any]:
        ids, counts = np.unique(self.labels, return_counts=True)
        return {"shape": list(self.labels.shape), "pixels": {("unlabelled" if i < 0 else self.class_names[i]
                if i < len(self.class_names) else f"class {i}"): int(c) for i, c in zip(ids.tolist(), counts.tolist())}}


@dataclass(frozen=True)
class DetectorConfig:
    """Host post-processing: a (box, class) is kept when score > score_threshold; NMS suppresses a box
    whose IoU with a kept box of the same class (any class when class_agnostic) is > iou_threshold; at
    most max_detections per image, best first. `classes`: only those class ids are candidates (None: all).
    engine_nms: use an engine's in-graph NMS when it gives exactly this config (False: always host NMS
    on the raw head, which engines built with --nms engine also return)."""

    score_threshold: float = DEFAULT_SCORE_THRESHOLD
    iou_threshold: float = DEFAULT_IOU_THRESHOLD
    max_detections: int = DEFAULT_MAX_DETECTIONS
    class_agnostic: bool = False
    classes: tuple[int, ...] | None = None
    engine_nms: bool = True
