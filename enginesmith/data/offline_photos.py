"""Real photographs that ship inside the scikit-image wheel, expanded into a calibration set.

Nothing is downloaded: the files are read straight from ``skimage/data`` with Pillow (the
``skimage.data`` loaders are not used because some of them fall back to a pooch download).
The 15 base photographs (colour and grey scenes, textures, microscopy, astronomy) are expanded
into ``n`` samples by deterministic augmentation: a random crop of 50-100% of each side, a
horizontal flip with probability 1/2 and a rescale of 0.5-1.0 of the crop (never upscaled past
the source). The sequence is a pure function of (n, seed, scikit-image version).
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path
from typing import Iterator

import numpy as np

from enginesmith.errors import EnginesmithError
from enginesmith.runtime.images import read_image_file

# Natural photographs only (no synthetic charts, logos or binary silhouettes). Gray ones are
# replicated to RGB.
PHOTO_FILES: tuple[str, ...] = (
    "astronaut.png",
    "chelsea.png",
    "coffee.png",
    "rocket.jpg",
    "motorcycle_left.png",
    "hubble_deep_field.jpg",
    "retina.jpg",
    "ihc.png",
    "camera.png",
    "coins.png",
    "moon.png",
    "grass.png",
    "gravel.png",
    "brick.png",
    "cell.png",
)

GENERATOR_NAME = "skimage-photos-v1"

# The most images build-engine calibrates on from this generated set (--calib-size; pipeline/run.py validate()).
# Past it, more random crops of the same 15 photographs add no information to activation ranges (NNCF's default
# calibration subset is 300 images, TensorRT's guide suggests ~500), and each image is a forward pass per
# statistics pass: 1000 images of yolov3 at 416 are minutes of CPU already, 10^9 would never finish.
MAX_CALIBRATION_PHOTOS = 1000


def _data_dir() -> Path:
    try:
        import skimage
    except ImportError:  # pragma: no cover - skimage is a declared dependency
        raise EnginesmithError(
            "the built-in calibration photos need scikit-image; pip install scikit-image or pass --calib FOLDER"
        ) from None
    return Path(skimage.__file__).parent / "data"


def skimage_version() -> str:
    import skimage

    return str(skimage.__version__)


@lru_cache(maxsize=1)
def base_photos() -> tuple[np.ndarray, ...]:
    """The base photographs, each (H, W, 3) uint8 RGB, read from the installed wheel (cached) by the runtime's
    decoder (runtime/images.py: the same pixels as Pillow's convert("RGB") for these RGB and gray files, and its
    refusals of unreadable files and decompression bombs)."""
    folder = _data_dir()
    out = []
    for name in PHOTO_FILES:
        path = folder / name
        if not path.is_file():
            raise EnginesmithError(
                f"built-in photo {path} is missing from the scikit-image install; reinstall scikit-image "
                "or pass --calib FOLDER"
            )
        arr = read_image_file(path)
        arr.setflags(write=False)
        out.append(arr)
    return tuple(out)


def _augment(photo: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One deterministic crop / flip / rescale of `photo` (H, W, 3) -> (h, w, 3) uint8."""
    from PIL import Image

    h, w = photo.shape[:2]
    ch = int(rng.integers(max(1, h // 2), h + 1))
    cw = int(rng.integers(max(1, w // 2), w + 1))
    top = int(rng.integers(0, h - ch + 1))
    left = int(rng.integers(0, w - cw + 1))
    crop = photo[top : top + ch, left : left + cw]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    scale = float(rng.uniform(0.5, 1.0))
    nh, nw = max(8, round(ch * scale)), max(8, round(cw * scale))
    return np.asarray(Image.fromarray(np.ascontiguousarray(crop)).resize((nw, nh), Image.BILINEAR))


def offline_photos(n: int, seed: int = 0) -> Iterator[np.ndarray]:
    """Yield `n` real photographs, each (H, W, 3) uint8 RGB (sizes vary, ~64-1411 px a side).

    The first ``len(PHOTO_FILES)`` samples of every seed are the untouched base photos in a
    seed-dependent order; the rest are augmented copies. Deterministic per (n, seed).
    """
    if n < 0:
        raise EnginesmithError(f"number of calibration photos must be >= 0, got {n}")
    photos = base_photos()
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x5EED]))
    order = rng.permutation(len(photos))
    for i in range(n):
        base = photos[order[i % len(photos)]]
        if i < len(photos):
            yield np.array(base)  # a writable copy
        else:
            yield _augment(base, rng)


def photo_fingerprint(n: int, seed: int = 0) -> str:
    """sha256 naming the generated set: generator name, n, seed and the scikit-image version."""
    key = f"{GENERATOR_NAME}|n={int(n)}|seed={int(seed)}|skimage={skimage_version()}|files={','.join(PHOTO_FILES)}"
    return hashlib.sha256(key.encode()).hexdigest()
