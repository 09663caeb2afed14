"""The preprocessing contract between a model and its engine, in numpy (torch-free).

One definition serves calibration, verification, benchmarking and the edge runtime, and it is
recorded in every engine's manifest, so calibration and inference can never disagree.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from enginesmith.errors import EnginesmithError
from enginesmith.runtime.images import read_image_file

ResizeMode = Literal["letterbox", "stretch", "center_crop"]
ColorOrder = Literal["RGB", "BGR", "GRAY"]


@dataclass(frozen=True)
class PreprocessSpec:
    """How an image (H, W, 3) uint8 RGB becomes a network input (C, H, W) float32.

    - input_size: (height, width) of the network input.
    - resize: "letterbox" keeps the aspect ratio and pads with `pad_value` (YOLO); "stretch"
      resizes to the input size; "center_crop" resizes the shorter side to
      input/crop_fraction and crops the centre (ImageNet evaluation).
    - color: channel order fed to the network ("GRAY" gives one channel, ITU-R 601 luma).
    - the value fed is ((pixel * scale) - mean[c]) / std[c].
    """

    input_size: tuple[int, int]
    resize: ResizeMode = "stretch"
    color: ColorOrder = "RGB"
    scale: float = 1.0 / 255.0
    mean: tuple[float, ...] = (0.0, 0.0, 0.0)
    std: tuple[float, ...] = (1.0, 1.0, 1.0)
    pad_value: int = 114
    crop_fraction: float = 0.875
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def channels(self) -> int:
        return 1 if self.color == "GRAY" else 3

    def with_size(self, height: int, width: int) -> "PreprocessSpec":
        return replace(self, input_size=(int(height), int(width)))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["input_size"] = list(self.input_size)
        d["mean"] = list(self.mean)
        d["std"] = list(self.std)
        d.pop("extra")
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PreprocessSpec":
        return cls(
            input_size=tuple(d["input_size"]),  # type: ignore[arg-type]
            resize=d["resize"],
            color=d["color"],
            scale=float(d["scale"]),
            mean=tuple(d["mean"]),
            std=tuple(d["std"]),
            pad_value=int(d["pad_value"]),
            crop_fraction=float(d.get("crop_fraction", 0.875)),
        )


@dataclass(frozen=True)
class Transform:
    """Where the network input came from: input pixel = original pixel * ratio + (pad_x, pad_y).

    Map boxes back to the original image with `to_original(boxes)`.
    """

    ratio_x: float
    ratio_y: float
    pad_x: float
    pad_y: float
    original_size: tuple[int, int]  # (height, width)

    def to_input(self, boxes: np.ndarray) -> np.ndarray:
        """boxes [..., 4] x1, y1, x2, y2 in original-image pixels -> the same in input pixels (not clipped)."""
        out = np.asarray(boxes, dtype=np.float32).copy()
        out[..., 0::2] = out[..., 0::2] * np.float32(self.ratio_x) + np.float32(self.pad_x)
        out[..., 1::2] = out[..., 1::2] * np.float32(self.ratio_y) + np.float32(self.pad_y)
        return out

    def to_original(self, boxes: np.ndarray) -> np.ndarray:
        """boxes [..., 4] x1, y1, x2, y2 in input pixels -> the same in original-image pixels, clipped."""
        out = np.asarray(boxes, dtype=np.float32).copy()
        out[..., [0, 2]] = (out[..., [0, 2]] - self.pad_x) / self.ratio_x
        out[..., [1, 3]] = (out[..., [1, 3]] - self.pad_y) / self.ratio_y
        h, w = self.original_size
        out[..., [0, 2]] = out[..., [0, 2]].clip(0, w)
        out[..., [1, 3]] = out[..., [1, 3]].clip(0, h)
        return out


def _resize(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Bilinear resize of (H, W, C) uint8 with Pillow (no torch, no OpenCV)."""
    from PIL import Image

    return np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR))


def _as_rgb(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise EnginesmithError(f"expected a uint8 image, got dtype {image.dtype}; convert with np.uint8 first")
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise EnginesmithError(f"expected an image of shape (H, W, 3), got {image.shape}")
    return np.ascontiguousarray(image[:, :, :3])


def preprocess(image: np.ndarray, spec: PreprocessSpec) -> tuple[np.ndarray, Transform]:
    """One image (H, W, 3) uint8 RGB (or (H, W) gray) -> (C, H_in, W_in) float32 and its Transform."""
    image = _as_rgb(image)
    h0, w0 = image.shape[:2]
    th, tw = spec.input_size
    if spec.resize == "letterbox":
        r = min(th / h0, tw / w0)
        nh, nw = max(1, round(h0 * r)), max(1, round(w0 * r))
        resized = _resize(image, nw, nh)
        canvas = np.full((th, tw, 3), spec.pad_value, dtype=np.uint8)
        top, left = (th - nh) // 2, (tw - nw) // 2
        canvas[top : top + nh, left : left + nw] = resized
        out, transform = canvas, Transform(nw / w0, nh / h0, float(left), float(top), (h0, w0))
    elif spec.resize == "stretch":
        out = _resize(image, tw, th)
        transform = Transform(tw / w0, th / h0, 0.0, 0.0, (h0, w0))
    elif spec.resize == "center_crop":
        short = min(h0, w0)
        target_short = round(min(th, tw) / spec.crop_fraction)
        r = target_short / short
        nh, nw = max(th, round(h0 * r)), max(tw, round(w0 * r))
        resized = _resize(image, nw, nh)
        top, left = (nh - th) // 2, (nw - tw) // 2
        out = resized[top : top + th, left : left + tw]
        transform = Transform(nw / w0, nh / h0, -float(left), -float(top), (h0, w0))
    else:  # pragma: no cover - guarded by the Literal type
        raise EnginesmithError(f"unknown resize mode {spec.resize!r}")

    if spec.color != "GRAY":
        return normalize_channels(out[None], spec)[0], transform
    x = out.astype(np.float32)
    x = (x @ np.array([0.299, 0.587, 0.114], dtype=np.float32))[:, :, None]
    x = x * np.float32(spec.scale)
    mean = np.asarray(spec.mean[: spec.channels], dtype=np.float32)
    std = np.asarray(spec.std[: spec.channels], dtype=np.float32)
    x = (x - mean) / std
    return np.ascontiguousarray(x.transpose(2, 0, 1), dtype=np.float32), transform


def normalize_channels(images: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """[N, H, W, 3] uint8 RGB -> [N, 3, H, W] float32: (pixel * scale - mean[c]) / std[c] in float32, in the
    spec's channel order (RGB or BGR; no resize). One channel plane at a time, written straight into place:
    0.19 ms per 256x256 image against 0.46 for a uint8 lookup table and 0.62 for one ufunc over (3, H, W)."""
    rgb = images[..., ::-1] if spec.color == "BGR" else images
    out = np.empty((images.shape[0], 3, images.shape[1], images.shape[2]), dtype=np.float32)
    for c in range(3):
        np.multiply(rgb[..., c], np.float32(spec.scale), out=out[:, c], dtype=np.float32)
    out -= _per_channel(spec.mean)
    out /= _per_channel(spec.std)
    return out


def _per_channel(values: tuple[float, ...]) -> np.ndarray:
    """(3, 1, 1) float32 of the first three values (a single value serves all three)."""
    return np.broadcast_to(np.asarray(values[:3], dtype=np.float32), (3,)).reshape(3, 1, 1)


def preprocess_batch(images: list[np.ndarray], spec: PreprocessSpec) -> np.ndarray:
    """A list of images -> (N, C, H_in, W_in) float32."""
    return np.stack([preprocess(im, spec)[0] for im in images])


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def load_image(path: str | Path) -> np.ndarray:
    """Read an image file -> (H, W, 3) uint8 RGB by runtime/images.py's rule (16-bit as round(v / 257),
    alpha dropped, gray repeated), so the pipeline and the edge runtime decode files alike. A missing or
    undecodable file is a one-line EnginesmithError."""
    return read_image_file(path)
