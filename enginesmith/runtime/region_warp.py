"""R-CNN's region warp (Girshick et al. 2014, Sec. 2.1 and Appendix A): every proposal is dilated so that
the warped crop shows `context_pad` pixels of image context around the box at the CNN's input size, then
warped (anisotropic bilinear scaling) to size x size. Where the dilated box leaves the image, the crop is
filled with the mean pixel (the paper's "image mean"), so those pixels become 0 after mean subtraction.

Box decoding for the class-specific regressors (Appendix C) is here too. Torch-free (numpy + Pillow).
"""

from __future__ import annotations

import numpy as np

from enginesmith.runtime.preprocess import PreprocessSpec, normalize_channels

PAPER_CONTEXT_PAD = 16  # pixels at 227x227 (R-CNN's AlexNet); scaled with the input size elsewhere


def context_pad(size: int) -> float:
    """The paper's 16 px of context at 227, in pixels of a size x size input."""
    return PAPER_CONTEXT_PAD * size / 227.0


def mean_pixel(spec: PreprocessSpec) -> tuple[int, int, int]:
    """The uint8 RGB value that the spec normalises to ~0 (ImageNet mean / scale). The spec's mean is in the order
    fed, so a BGR spec's is reversed into R, G, B."""
    mean = spec.mean[:3][::-1] if spec.color == "BGR" else spec.mean[:3]
    return tuple(int(round(min(255.0, max(0.0, m / spec.scale)))) for m in mean)  # type: ignore[return-value]


def dilate_boxes(boxes: np.ndarray, size: int, pad: float) -> np.ndarray:
    """[P, 4] x1y1x2y2 -> the boxes whose warp to size x size leaves `pad` px of context on each side."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    cx, cy = (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2
    w = np.maximum(b[:, 2] - b[:, 0], 1.0)
    h = np.maximum(b[:, 3] - b[:, 1], 1.0)
    grow = size / max(size - 2.0 * pad, 1.0)
    return np.stack([cx - w * grow / 2, cy - h * grow / 2, cx + w * grow / 2, cy + h * grow / 2], axis=1)


def warp_regions(image: np.ndarray, boxes: np.ndarray, size: int, pad: float,
                 fill: tuple[int, int, int]) -> np.ndarray:
    """HxWx3 uint8 RGB image, boxes [P, 4] (x1, y1, x2, y2, image pixels) -> crops [P, size, size, 3] uint8.

    Each box is dilated by `dilate_boxes`; the part inside the image is scaled bilinearly to where it falls
    in the size x size crop, the rest is `fill`."""
    from PIL import Image

    img_h, img_w = image.shape[:2]
    pil = Image.fromarray(np.ascontiguousarray(image))
    dil = dilate_boxes(boxes, size, pad)
    out = np.empty((len(dil), size, size, 3), dtype=np.uint8)
    out[:] = np.asarray(fill, dtype=np.uint8)
    for i, (x1, y1, x2, y2) in enumerate(dil):
        sx, sy = size / (x2 - x1), size / (y2 - y1)
        cx1, cy1, cx2, cy2 = max(x1, 0.0), max(y1, 0.0), min(x2, float(img_w)), min(y2, float(img_h))
        if cx2 - cx1 < 1e-3 or cy2 - cy1 < 1e-3:
            continue
        # destination rectangle in the crop (whole pixels), and the source box mapped onto it exactly
        dx1, dy1 = int(round((cx1 - x1) * sx)), int(round((cy1 - y1) * sy))
        dx2, dy2 = int(round((cx2 - x1) * sx)), int(round((cy2 - y1) * sy))
        dx2, dy2 = min(max(dx2, dx1 + 1), size), min(max(dy2, dy1 + 1), size)
        dx1, dy1 = min(dx1, dx2 - 1), min(dy1, dy2 - 1)
        # (rounding to whole destination pixels may move the source edge a hair outside the image)
        src = (max(x1 + dx1 / sx, 0.0), max(y1 + dy1 / sy, 0.0), min(x1 + dx2 / sx, float(img_w)),
               min(y1 + dy2 / sy, float(img_h)))
        out[i, dy1:dy2, dx1:dx2] = np.asarray(pil.resize((dx2 - dx1, dy2 - dy1), Image.BILINEAR, box=src))
    return out


def region_inputs(image: np.ndarray, boxes: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """R-CNN's engine input for `boxes` [P, 4] of an HxWx3 uint8 RGB image: each box warped to the spec's
    (square) input size with the paper's context and mean-pixel fill, then normalised -> [P, 3, S, S] float32."""
    size = int(spec.input_size[0])
    return normalize_channels(warp_regions(image, boxes, size, context_pad(size), mean_pixel(spec)), spec)


def decode_deltas(proposals: np.ndarray, deltas: np.ndarray, width: float, height: float) -> np.ndarray:
    """R-CNN / Fast R-CNN box regression: proposals [P, 4], deltas [P, C, 4] (tx, ty, tw, th) -> boxes
    [P, C, 4] x1y1x2y2, clipped to width x height. Widths are x2 - x1 (continuous pixels)."""
    p = np.asarray(proposals, dtype=np.float32)
    d = np.asarray(deltas, dtype=np.float32)
    pw = np.maximum(p[:, 2] - p[:, 0], 1e-3)[:, None]
    ph = np.maximum(p[:, 3] - p[:, 1], 1e-3)[:, None]
    px = p[:, 0][:, None] + 0.5 * pw
    py = p[:, 1][:, None] + 0.5 * ph
    gx = px + pw * d[..., 0]
    gy = py + ph * d[..., 1]
    gw = pw * np.exp(np.minimum(d[..., 2], np.log(1000.0 / 16)))
    gh = ph * np.exp(np.minimum(d[..., 3], np.log(1000.0 / 16)))
    boxes = np.stack([gx - gw / 2, gy - gh / 2, gx + gw / 2, gy + gh / 2], axis=-1)
    boxes[..., 0::2] = boxes[..., 0::2].clip(0, width)
    boxes[..., 1::2] = boxes[..., 1::2].clip(0, height)
    return boxes.astype(np.float32)


def encode_targets(proposals: np.ndarray, truths: np.ndarray) -> np.ndarray:
    """The inverse of decode_deltas for one class: proposals [P, 4], matched truths [P, 4] -> [P, 4] targets."""
    p = np.asarray(proposals, dtype=np.float64)
    g = np.asarray(truths, dtype=np.float64)
    pw, ph = np.maximum(p[:, 2] - p[:, 0], 1e-3), np.maximum(p[:, 3] - p[:, 1], 1e-3)
    gw, gh = np.maximum(g[:, 2] - g[:, 0], 1e-3), np.maximum(g[:, 3] - g[:, 1], 1e-3)
    tx = ((g[:, 0] + 0.5 * gw) - (p[:, 0] + 0.5 * pw)) / pw
    ty = ((g[:, 1] + 0.5 * gh) - (p[:, 1] + 0.5 * ph)) / ph
    return np.stack([tx, ty, np.log(gw / pw), np.log(gh / ph)], axis=1).astype(np.float32)


__all__ = ["region_inputs", "warp_regions", "dilate_boxes", "context_pad", "mean_pixel",
           "decode_deltas", "encode_targets"]
