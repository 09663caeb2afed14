"""ssd.pytorch's input preprocessing, transcribed (not imported, not rewritten from memory) so tests can compare
enginesmith's against it. Source: github.com/amdegroot/ssd.pytorch at commit
5b0b77faa955c1917b0c710d770739ba8fbff9b7 (2019-03-11):

- `data/__init__.py` `base_transform` / `BaseTransform` (the README's "utils/augmentations.py" BaseTransform lives
  here in that tree): cv2.resize to (size, size) (default INTER_LINEAR), astype float32, subtract the mean.
- `data/config.py` `MEANS = (104, 117, 123)`; `eval.py` `dataset_mean = (104, 117, 123)` -> BaseTransform(300, ...).
- `data/voc0712.py` `VOCDetection.pull_item`: `img = cv2.imread(...)` (BGR), `self.transform(img, ...)`, then
  `img = img[:, :, (2, 1, 0)]` ("to rgb") and `torch.from_numpy(img).permute(2, 0, 1)`: what train.py trains on and
  eval.py measures with, i.e. the `ssd300_mAP_77.43_v2.pth` family.
- The Caffe-converted `ssd_300_VOC0712.pth` keeps Caffe's BGR: base_transform on the cv2 BGR image, no swap (as
  `test.py` feeds `testset.pull_image(i)`, a cv2.imread BGR image, through BaseTransform without a swap).
"""

from __future__ import annotations

import cv2
import numpy as np

MEANS = (104, 117, 123)  # data/config.py, B, G, R (cv2 images are BGR)


def base_transform(image: np.ndarray, size: int, mean: np.ndarray) -> np.ndarray:
    """data/__init__.py, verbatim."""
    x = cv2.resize(image, (size, size)).astype(np.float32)
    x -= mean
    x = x.astype(np.float32)
    return x


class BaseTransform:
    """data/__init__.py, verbatim."""

    def __init__(self, size: int, mean: tuple[float, ...]) -> None:
        self.size = size
        self.mean = np.array(mean, dtype=np.float32)

    def __call__(self, image, boxes=None, labels=None):
        return base_transform(image, self.size, self.mean), boxes, labels


def train_py_input(bgr_image: np.ndarray, size: int = 300) -> np.ndarray:
    """data/voc0712.py pull_item's image with the eval/train transform: BaseTransform(size, MEANS) on the cv2 BGR
    image, then `img[:, :, (2, 1, 0)]` and permute(2, 0, 1) -> (3, size, size) float32 (R-123, G-117, B-104)."""
    img, _, _ = BaseTransform(size, MEANS)(bgr_image)
    img = img[:, :, (2, 1, 0)]
    return np.ascontiguousarray(img.transpose(2, 0, 1))


def caffe_converted_input(bgr_image: np.ndarray, size: int = 300) -> np.ndarray:
    """The Caffe-converted weights' input: BaseTransform(size, MEANS) on the cv2 BGR image, no swap -> (3, size,
    size) float32 (B-104, G-117, R-123)."""
    img, _, _ = BaseTransform(size, MEANS)(bgr_image)
    return np.ascontiguousarray(img.transpose(2, 0, 1))
