"""The handwritten digits that ship inside scikit-learn (UCI optdigits test set), as 32x32 images.

1,797 digits of 8x8 pixels with values 0..16 (white ink on black) -> uint8 0..255, bilinearly
resized to 32x32 with Pillow and replicated to RGB, split 80/20 stratified by class with a fixed seed.
No download: `sklearn.datasets.load_digits` reads a file inside the package.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np


@dataclass(frozen=True)
class DigitsSplit:
    """train_images/test_images uint8 [N, 32, 32, 3] RGB (gray replicated); labels int64 [N] (0..9).

    The arrays are read-only (they are shared through a cache): copy before changing them.
    """

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(str(i) for i in range(10))


def _to_rgb32(images8: np.ndarray) -> np.ndarray:
    from PIL import Image

    u8 = np.clip(np.round(images8 * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    out = np.stack([np.asarray(Image.fromarray(im).resize((32, 32), Image.BILINEAR)) for im in u8])
    return np.repeat(out[..., None], 3, axis=3)


@lru_cache(maxsize=4)
def load_digits_32(seed: int = 0, test_fraction: float = 0.2) -> DigitsSplit:
    """The digits as 32x32 RGB uint8 with a stratified train/test split (1437/360 at the default 0.2)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    images = _to_rgb32(d.images)
    labels = d.target.astype(np.int64)
    idx = np.arange(len(labels))
    train_idx, test_idx = train_test_split(idx, test_size=test_fraction, stratify=labels, random_state=seed)
    arrays = [images[train_idx], labels[train_idx], images[test_idx], labels[test_idx]]
    for a in arrays:
        a.setflags(write=False)
    return DigitsSplit(*arrays)
