"""Draw results on an image with Pillow (torch-free, no OpenCV): boxes with "name score" labels, top-k text."""

from __future__ import annotations

from typing import Sequence

import numpy as np

# 20 distinct colours (Tableau-like), chosen by class id.
PALETTE = ((230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
           (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255),
           (170, 110, 40), (255, 250, 200), (128, 0, 0), (170, 255, 195), (128, 128, 0), (255, 215, 180),
           (0, 0, 128), (128, 128, 128))


def class_color(class_id: int) -> tuple[int, int, int]:
    """The RGB colour used for a class id."""
    return PALETTE[int(class_id) % len(PALETTE)]


def draw_detections(image: np.ndarray, detections: Sequence, line_width: int | None = None) -> np.ndarray:
    """A copy of `image` (H, W, 3) uint8 RGB with each Detection's box (x1, y1, x2, y2 pixels) and label."""
    from PIL import Image, ImageDraw

    im = Image.fromarray(np.ascontiguousarray(image))
    draw = ImageDraw.Draw(im)
    width = line_width or max(1, round(min(im.size) / 200))
    for d in detections:
        color = class_color(d.class_id)
        x1, y1, x2, y2 = d.box
        draw.rectangle([x1, y1, max(x1, x2 - 1), max(y1, y2 - 1)], outline=color, width=width)
        label = f"{d.class_name} {d.score:.2f}"
        left, top, right, bottom = draw.textbbox((0, 0), label)
        tw, th = right - left, bottom - top
        ty = y1 - th - 3 if y1 - th - 3 >= 0 else y1
        draw.rectangle([x1, ty, x1 + tw + 3, ty + th + 3], fill=color)
        draw.text((x1 + 1, ty + 1 - top), label, fill=(0, 0, 0) if sum(color) > 380 else (255, 255, 255))
    return np.asarray(im)


def draw_classification(image: np.ndarray, classes: Sequence) -> np.ndarray:
    """A copy of `image` with the top-k "name probability" lines written in its top-left corner."""
    from PIL import Image, ImageDraw

    im = Image.fromarray(np.ascontiguousarray(image))
    draw = ImageDraw.Draw(im)
    y = 2
    for c in classes:
        label = f"{c.class_name} {c.score:.3f}"
        left, top, right, bottom = draw.textbbox((0, 0), label)
        draw.rectangle([2, y, 2 + right - left + 4, y + bottom - top + 4], fill=(0, 0, 0))
        draw.text((4, y + 2 - top), label, fill=(255, 255, 255))
        y += bottom - top + 6
    return np.asarray(im)


def draw_segmentation(image: np.ndarray, segmentation, alpha: float = 0.5) -> np.ndarray:
    """A copy of `image` blended with the label map's class colours (unlabelled pixels untouched)."""
    labels = segmentation.labels
    colors = np.asarray(PALETTE, dtype=np.float32)[np.clip(labels, 0, None) % len(PALETTE)]
    out = image.astype(np.float32)
    valid = (labels >= 0)[:, :, None]
    out = np.where(valid, (1 - alpha) * out + alpha * colors, out)
    return out.round().clip(0, 255).astype(np.uint8)
