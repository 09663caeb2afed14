"""Training-time augmentation of (image HxWx3 uint8 RGB, boxes [K, 4] x1y1x2y2 original pixels, labels [K]),
followed by the model's own numpy preprocessing (runtime/preprocess.py), so a network trains on exactly
what its engine is fed; boxes come out in network-input pixels through the preprocessing Transform.

Geometry: one random affine map per image, zoom s (s > 1 crops in, s < 1 shrinks onto a grey border)
about the image centre plus a translation t, in the image's own frame:
    x' = s * (x - W/2) + W/2 + t_x,   y' = s * (y - H/2) + H/2 + t_y.
A box is kept when its centre stays inside the image; it is then clipped to the image and dropped if
narrower or lower than `min_box_px`. No horizontal flip by default: a mirrored 2, 3, 4, 5, 6, 7 or 9 is
not that digit; `flip_classes` lists classes that are mirror-symmetric, and an image is flipped (with
probability 1/2) only when all its objects are of those classes.
Photometric: brightness, contrast and saturation jitter (multiplicative, uniform in 1 +- amount).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from enginesmith.runtime.preprocess import PreprocessSpec, preprocess

GREY = 114


@dataclass(frozen=True)
class AugmentConfig:
    """Ranges of the random augmentation; `AugmentConfig.off()` gives the identity."""

    zoom: tuple[float, float] = (0.6, 1.5)  # s, log-uniform in this range
    translate: float = 0.2  # t_x uniform in +-translate * W (t_y likewise with H)
    brightness: float = 0.3
    contrast: float = 0.3
    saturation: float = 0.4
    flip_classes: tuple[int, ...] = ()
    min_box_px: float = 2.0
    probability: float = 1.0  # chance that an image gets the geometric part

    @classmethod
    def off(cls) -> "AugmentConfig":
        return cls(zoom=(1.0, 1.0), translate=0.0, brightness=0.0, contrast=0.0, saturation=0.0, probability=0.0)


@dataclass(frozen=True)
class Affine:
    """x' = s * (x - cx) + cx + tx (y likewise), optionally mirrored first (x -> W - x)."""

    s: float
    tx: float
    ty: float
    flip: bool = False


def sample_affine(rng: np.random.Generator, height: int, width: int, labels: np.ndarray,
                  cfg: AugmentConfig) -> Affine:
    """Draw one geometric augmentation for an image of (height, width) holding `labels`."""
    flip = bool(cfg.flip_classes) and len(labels) > 0 and bool(np.isin(labels, cfg.flip_classes).all()) \
        and rng.random() < 0.5
    if rng.random() >= cfg.probability:
        return Affine(1.0, 0.0, 0.0, flip)
    lo, hi = cfg.zoom
    s = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
    tx = float(rng.uniform(-cfg.translate, cfg.translate) * width)
    ty = float(rng.uniform(-cfg.translate, cfg.translate) * height)
    return Affine(s, tx, ty, flip)


def apply_affine_boxes(boxes: np.ndarray, labels: np.ndarray, a: Affine, height: int, width: int,
                       min_box_px: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    """Map boxes [K, 4] through `a`; keep those whose centre lands inside the image, clip, drop slivers."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4).copy()
    if a.flip:
        b[:, [0, 2]] = width - b[:, [2, 0]]
    cx, cy = width / 2.0, height / 2.0
    b[:, [0, 2]] = a.s * (b[:, [0, 2]] - cx) + cx + a.tx
    b[:, [1, 3]] = a.s * (b[:, [1, 3]] - cy) + cy + a.ty
    mx, my = (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2
    inside = (mx >= 0) & (mx < width) & (my >= 0) & (my < height)
    b[:, [0, 2]] = b[:, [0, 2]].clip(0, width)
    b[:, [1, 3]] = b[:, [1, 3]].clip(0, height)
    big = ((b[:, 2] - b[:, 0]) >= min_box_px) & ((b[:, 3] - b[:, 1]) >= min_box_px)
    keep = inside & big
    return b[keep].astype(np.float32), np.asarray(labels)[keep]


def apply_affine_image(image: np.ndarray, a: Affine) -> np.ndarray:
    """Warp an HxWx3 uint8 image by `a` (bilinear, grey border), same size out."""
    from PIL import Image

    if a.flip:
        image = image[:, ::-1]
    if a.s == 1.0 and a.tx == 0.0 and a.ty == 0.0:
        return np.ascontiguousarray(image)
    h, w = image.shape[:2]
    cx, cy = w / 2.0, h / 2.0
    # PIL wants the inverse map, output -> input, for pixel centres: x_in = (x_out - cx - tx) / s + cx
    inv = 1.0 / a.s
    coeffs = (inv, 0.0, cx - (cx + a.tx) * inv, 0.0, inv, cy - (cy + a.ty) * inv)
    out = Image.fromarray(np.ascontiguousarray(image)).transform(
        (w, h), Image.AFFINE, coeffs, resample=Image.BILINEAR, fillcolor=(GREY, GREY, GREY))
    return np.asarray(out)


def photometric(image: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
    """Saturation, contrast and brightness jitter of an HxWx3 uint8 image (Pillow's ImageEnhance: blends
    with the grey image, the mean grey level, and black), factors uniform in 1 +- amount."""
    if cfg.brightness == 0 and cfg.contrast == 0 and cfg.saturation == 0:
        return image
    from PIL import Image, ImageEnhance

    im = Image.fromarray(np.ascontiguousarray(image))
    im = ImageEnhance.Color(im).enhance(1.0 + rng.uniform(-cfg.saturation, cfg.saturation))
    im = ImageEnhance.Contrast(im).enhance(1.0 + rng.uniform(-cfg.contrast, cfg.contrast))
    im = ImageEnhance.Brightness(im).enhance(1.0 + rng.uniform(-cfg.brightness, cfg.brightness))
    return np.asarray(im)


def to_input(image: np.ndarray, boxes: np.ndarray, labels: np.ndarray,
             spec: PreprocessSpec) -> tuple[np.ndarray, np.ndarray]:
    """The model's preprocessing of one image, and its boxes in input pixels as targets [K, 5]
    (class, x1, y1, x2, y2)."""
    x, t = preprocess(image, spec)
    b = np.asarray(boxes, dtype=np.float32).reshape(-1, 4).copy()
    b[:, [0, 2]] = b[:, [0, 2]] * t.ratio_x + t.pad_x
    b[:, [1, 3]] = b[:, [1, 3]] * t.ratio_y + t.pad_y
    h, w = spec.input_size
    b[:, [0, 2]] = b[:, [0, 2]].clip(0, w)
    b[:, [1, 3]] = b[:, [1, 3]].clip(0, h)
    targets = np.concatenate((np.asarray(labels, dtype=np.float32).reshape(-1, 1), b), axis=1)
    return x, targets


def augment_sample(image: np.ndarray, boxes: np.ndarray, labels: np.ndarray, spec: PreprocessSpec,
                   rng: np.random.Generator, cfg: AugmentConfig = AugmentConfig()) -> tuple[np.ndarray, np.ndarray]:
    """Augment one sample and preprocess it: -> (x [C, H_in, W_in] float32, targets [K, 5] input pixels)."""
    h, w = image.shape[:2]
    a = sample_affine(rng, h, w, np.asarray(labels), cfg)
    image = apply_affine_image(image, a)
    boxes, labels = apply_affine_boxes(boxes, labels, a, h, w, cfg.min_box_px)
    image = photometric(image, rng, cfg)
    return to_input(image, boxes, labels, spec)
