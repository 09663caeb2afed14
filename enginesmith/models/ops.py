"""Box operations used inside the detector graphs (torch).

Box format everywhere: x1, y1, x2, y2 in network-input pixels (corners, not centre/size).
These run inside exported graphs, so they use only ops that trace to plain ONNX (no Python
control flow on tensor values, reshapes with -1 for the batch axis).
"""

from __future__ import annotations

import torch
from torch import Tensor


def make_grid(height: int, width: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """Cell offsets of a feature map: [H, W, 2] holding (x, y) = (column, row)."""
    ys, xs = torch.meshgrid(
        torch.arange(height, dtype=dtype), torch.arange(width, dtype=dtype), indexing="ij"
    )
    return torch.stack((xs, ys), dim=-1)


def yolo_decode(
    raw: Tensor,
    anchors: Tensor,
    stride: float,
    grid: Tensor | None = None,
    static_shape: tuple[int, int, int, int] | None = None,
) -> tuple[Tensor, Tensor]:
    """Decode one YOLOv3 detection map.

    - raw: [N, na * (5 + C), H, W], channels per anchor ordered (tx, ty, tw, th, obj, cls_0..cls_C-1)
      (Darknet's layout).
    - anchors: [na, 2] anchor (w, h) in input pixels.
    - stride: input pixels per feature-map cell.
    - grid: [H, W, 2] cell offsets from `make_grid` (pass a precomputed buffer when exporting, so
      the graph holds a constant instead of a range computation).
    - static_shape: (na, 5 + C, H, W) as Python ints, given by modules that are traced for export
      so reshapes get constant shapes (the batch stays -1, i.e. dynamic).

    Returns boxes [N, na*H*W, 4] (x1, y1, x2, y2, input pixels) and scores [N, na*H*W, C]
    (sigmoid(obj) * sigmoid(cls)), ordered anchor-major, then row, then column:
    xy = (sigmoid(t_xy) + cell) * stride, wh = exp(t_wh) * anchor.
    """
    if static_shape is None:
        na = int(anchors.shape[0])
        no, h, w = int(raw.shape[1]) // na, int(raw.shape[2]), int(raw.shape[3])
    else:
        na, no, h, w = static_shape
    if grid is None:
        grid = make_grid(h, w, raw.dtype).to(raw.device)
    # [N, na, no, H, W] -> [N, na, H, W, no]; -1 keeps the batch axis dynamic in ONNX.
    p = raw.reshape(-1, na, no, h, w).permute(0, 1, 3, 4, 2)
    xy = (torch.sigmoid(p[..., 0:2]) + grid) * stride
    wh = torch.exp(p[..., 2:4]) * anchors.reshape(1, na, 1, 1, 2)
    boxes = torch.cat((xy - 0.5 * wh, xy + 0.5 * wh), dim=-1)
    scores = torch.sigmoid(p[..., 4:5]) * torch.sigmoid(p[..., 5:])
    return boxes.reshape(-1, na * h * w, 4), scores.reshape(-1, na * h * w, no - 5)


def box_area(boxes: Tensor) -> Tensor:
    """boxes [..., 4] x1, y1, x2, y2 -> area [...] (0 for inverted boxes)."""
    return (boxes[..., 2] - boxes[..., 0]).clamp(min=0) * (boxes[..., 3] - boxes[..., 1]).clamp(min=0)


def box_iou(a: Tensor, b: Tensor) -> Tensor:
    """Pairwise IoU: a [M, 4], b [K, 4] (x1, y1, x2, y2) -> [M, K]."""
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(dim=-1)
    union = box_area(a)[:, None] + box_area(b)[None, :] - inter
    return inter / union.clamp(min=1e-12)
