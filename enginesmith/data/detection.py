"""The in-memory form of a detection dataset, shared by the VOC and COCO readers, metrics and trainers.

Coordinates are continuous pixel coordinates of the original image: a box (x1, y1, x2, y2) covers
[x1, x2) x [y1, y2); the pixel (0, 0) is the square [0, 1) x [0, 1). VOC's 1-based inclusive
(xmin, ymin, xmax, ymax) maps to (xmin - 1, ymin - 1, xmax, ymax); COCO's [x, y, w, h] to
(x, y, x + w, y + h). Torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from enginesmith.errors import EnginesmithError
from enginesmith.runtime.preprocess import load_image


@dataclass(frozen=True)
class DetectionSample:
    """One image and its ground truth.

    boxes [K, 4] float32 x1, y1, x2, y2 (original-image pixels); labels [K] int64 class ids (index into
    the dataset's class_names); difficult [K] bool (VOC's flag, COCO's iscrowd): ignored by the metrics,
    neither a hit nor a miss.
    """

    image_id: str
    image_path: Path
    width: int
    height: int
    boxes: np.ndarray
    labels: np.ndarray
    difficult: np.ndarray
    annotation: Path | None = None  # the file that states width/height and the boxes (VOC xml, COCO json)

    def __post_init__(self) -> None:
        assert self.boxes.shape == (len(self.labels), 4), self.boxes.shape
        assert self.difficult.shape == (len(self.labels),), self.difficult.shape


@dataclass(frozen=True)
class DetectionDataset:
    """A split of a detection dataset: its class names and samples, in a fixed order."""

    root: Path
    split: str
    class_names: tuple[str, ...]
    samples: list[DetectionSample] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> DetectionSample:
        return self.samples[i]

    def load_image(self, i: int) -> np.ndarray:
        """Image i as HxWx3 uint8 RGB; an image whose decoded size is not the width x height its annotation states
        (which its boxes were checked against) is a one-line EnginesmithError naming both."""
        s = self.samples[i]
        image = load_image(s.image_path)
        h, w = image.shape[:2]
        if (w, h) != (s.width, s.height):
            where = s.annotation or self.root
            raise EnginesmithError(
                f"{where} says image {s.image_path} is {s.width}x{s.height}, but it decodes to {w}x{h}; fix the "
                "annotation's size (its boxes were checked against it) or the image"
            )
        return image
