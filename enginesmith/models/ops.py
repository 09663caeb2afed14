"""Box operations used inside the detector graphs (torch).

Box format everywhere: x1, y1, x2, y2 in network-input pixels (corners, not centre/size).
These run inside exported graphs, so they use only ops that trace to plain ONNX (no Python
control flow on tensor values, reshapes with -1 for the batch axis).
"""

from __future__ import annotations

import math

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


# ---------------------------------------------------------------------------------------------
# Non-maximum suppression (greedy, as in torchvision.ops.nms: a box is dropped when its IoU with a
# kept, higher-scoring box is strictly greater than the threshold; equal scores keep the lower index
# first). These run on the host / in training code, not inside exported graphs.
# ---------------------------------------------------------------------------------------------


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Greedy NMS. boxes [M, 4] x1y1x2y2, scores [M] -> int64 indices kept, by decreasing score."""
    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.int64, device=boxes.device)
    order = torch.sort(scores, descending=True, stable=True).indices
    iou = box_iou(boxes[order], boxes[order])
    m = int(order.numel())
    suppressed = torch.zeros(m, dtype=torch.bool)
    over = (iou > iou_threshold).cpu()
    keep: list[int] = []
    for i in range(m):
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed |= over[i]
    return order[torch.tensor(keep, dtype=torch.int64, device=order.device)]


def batched_nms(
    boxes: Tensor, scores: Tensor, classes: Tensor, iou_threshold: float, class_agnostic: bool = False
) -> Tensor:
    """Per-class NMS (boxes of different classes never suppress each other), or one NMS over all
    boxes when class_agnostic. Returns kept indices sorted by decreasing score (stable: equal scores
    keep the lower index first), like torchvision.ops.batched_nms."""
    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.int64, device=boxes.device)
    if class_agnostic:
        return nms(boxes, scores, iou_threshold)
    kept = []
    for c in torch.unique(classes):
        idx = torch.nonzero(classes == c).flatten()
        kept.append(idx[nms(boxes[idx], scores[idx], iou_threshold)])
    keep = torch.cat(kept)
    keep = torch.sort(keep).values  # stable tie order by index
    return keep[torch.sort(scores[keep], descending=True, stable=True).indices]


# ---------------------------------------------------------------------------------------------
# Anchors
# ---------------------------------------------------------------------------------------------


def ssd_priors(
    image_size: int,
    feature_maps: tuple[int, ...],
    steps: tuple[int, ...],
    min_sizes: tuple[float, ...],
    max_sizes: tuple[float, ...],
    aspect_ratios: tuple[tuple[int, ...], ...],
    clip: bool = True,
) -> Tensor:
    """SSD default boxes (Liu et al. 2016, as ssd.pytorch's PriorBox): [P, 4] (cx, cy, w, h) in
    [0, 1] units of the input.

    Per layer k and cell (row i, column j), in this order: centre ((j + 0.5) / f_k, (i + 0.5) / f_k)
    with f_k = image_size / steps[k]; a square of side min_k; a square of side sqrt(min_k * max_k);
    then for each ratio r: (min_k * sqrt(r), min_k / sqrt(r)) and its transpose. Sizes are divided by
    image_size; clip limits every value to [0, 1]. Layer-major, then row, column, box.
    """
    out = []
    for k, f in enumerate(feature_maps):
        fk = image_size / steps[k]
        s = min_sizes[k] / image_size
        s2 = math.sqrt(s * (max_sizes[k] / image_size))
        wh = [(s, s), (s2, s2)]
        for r in aspect_ratios[k]:
            q = math.sqrt(r)
            wh += [(s * q, s / q), (s / q, s * q)]
        whs = torch.tensor(wh, dtype=torch.float32)  # [B, 2]
        i, j = torch.meshgrid(torch.arange(f, dtype=torch.float32), torch.arange(f, dtype=torch.float32), indexing="ij")
        centres = torch.stack(((j + 0.5) / fk, (i + 0.5) / fk), dim=-1).reshape(-1, 1, 2)  # [f*f, 1, 2]
        b = whs.shape[0]
        layer = torch.cat((centres.expand(-1, b, 2), whs.reshape(1, b, 2).expand(f * f, b, 2)), dim=-1)
        out.append(layer.reshape(-1, 4))
    priors = torch.cat(out)
    return priors.clamp(0.0, 1.0) if clip else priors


def rpn_anchors(
    feature_h: int,
    feature_w: int,
    stride: int = 16,
    scales: tuple[float, ...] = (8.0, 16.0, 32.0),
    ratios: tuple[float, ...] = (0.5, 1.0, 2.0),
    base_size: int = 16,
) -> Tensor:
    """Faster R-CNN RPN anchors: [H * W * len(ratios) * len(scales), 4] x1y1x2y2 in input pixels.

    Anchor sizes are base_size * scales (16 * (8, 16, 32) = 128, 256, 512: the paper's 128^2, 256^2,
    512^2 areas) at aspect ratios h/w in `ratios`: w = size / sqrt(r), h = size * sqrt(r), rounded,
    centred on (x * stride, y * stride). This is torchvision's AnchorGenerator convention (the one its
    Faster R-CNN uses). Order: location (row, column) major, then ratio, then scale.
    """
    sizes = torch.tensor(scales, dtype=torch.float32) * base_size
    ar = torch.tensor(ratios, dtype=torch.float32)
    h_ratios = torch.sqrt(ar)
    w_ratios = 1.0 / h_ratios
    ws = (w_ratios[:, None] * sizes[None, :]).reshape(-1)
    hs = (h_ratios[:, None] * sizes[None, :]).reshape(-1)
    base = (torch.stack([-ws, -hs, ws, hs], dim=1) / 2).round()  # [A, 4]
    sx = torch.arange(feature_w, dtype=torch.float32) * stride
    sy = torch.arange(feature_h, dtype=torch.float32) * stride
    yy, xx = torch.meshgrid(sy, sx, indexing="ij")
    shifts = torch.stack((xx, yy, xx, yy), dim=-1).reshape(-1, 1, 4)
    return (shifts + base.reshape(1, -1, 4)).reshape(-1, 4)


# ---------------------------------------------------------------------------------------------
# Box coding
# ---------------------------------------------------------------------------------------------

SSD_VARIANCES = (0.1, 0.2)
RCNN_BBOX_CLIP = math.log(1000.0 / 16)  # torchvision BoxCoder's limit on dw, dh before exp


def xyxy_to_cxcywh(b: Tensor) -> Tensor:
    return torch.stack(((b[..., 0] + b[..., 2]) / 2, (b[..., 1] + b[..., 3]) / 2, b[..., 2] - b[..., 0], b[..., 3] - b[..., 1]), -1)


def cxcywh_to_xyxy(b: Tensor) -> Tensor:
    half = b[..., 2:] / 2
    return torch.cat((b[..., :2] - half, b[..., :2] + half), dim=-1)


def encode_boxes(
    boxes: Tensor,
    anchors: Tensor,
    form: str = "rcnn",
    weights: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0),
    variances: tuple[float, float] = SSD_VARIANCES,
) -> Tensor:
    """Regression targets of `boxes` (x1y1x2y2) relative to `anchors`, [..., 4] each.

    - form "ssd": anchors are SSD priors (cx, cy, w, h) (ssd.pytorch box_utils.encode):
      ((cx - pcx) / (v0 * pw), (cy - pcy) / (v0 * ph), log(w / pw) / v1, log(h / ph) / v1).
    - form "rcnn": anchors are x1y1x2y2 (Faster R-CNN; torchvision BoxCoder, widths x2 - x1):
      (wx * (cx - acx) / aw, wy * (cy - acy) / ah, ww * log(w / aw), wh * log(h / ah)).
    """
    g = xyxy_to_cxcywh(boxes)
    if form == "ssd":
        v0, v1 = variances
        a = anchors
        return torch.cat(((g[..., :2] - a[..., :2]) / (v0 * a[..., 2:]), torch.log(g[..., 2:] / a[..., 2:]) / v1), -1)
    if form == "rcnn":
        a = xyxy_to_cxcywh(anchors)
        wx, wy, ww, wh = weights
        return torch.stack(
            (
                wx * (g[..., 0] - a[..., 0]) / a[..., 2],
                wy * (g[..., 1] - a[..., 1]) / a[..., 3],
                ww * torch.log(g[..., 2] / a[..., 2]),
                wh * torch.log(g[..., 3] / a[..., 3]),
            ),
            -1,
        )
    raise ValueError(f"unknown box coding form {form!r}; use 'ssd' or 'rcnn'")


def decode_boxes(
    deltas: Tensor,
    anchors: Tensor,
    form: str = "rcnn",
    weights: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0),
    variances: tuple[float, float] = SSD_VARIANCES,
    clip: float = RCNN_BBOX_CLIP,
) -> Tensor:
    """Inverse of `encode_boxes`: deltas [..., 4] + anchors -> boxes x1y1x2y2 (same units as anchors).

    Traces to plain ONNX (elementwise ops only), so it can sit inside a `decode` submodule.
    The "rcnn" form clamps dw, dh at `clip` (log(1000/16)) before exp, as torchvision does.
    """
    if form == "ssd":
        v0, v1 = variances
        a = anchors
        cxcy = a[..., :2] + deltas[..., :2] * v0 * a[..., 2:]
        wh = a[..., 2:] * torch.exp(deltas[..., 2:] * v1)
        return torch.cat((cxcy - wh / 2, cxcy + wh / 2), -1)
    if form == "rcnn":
        a = xyxy_to_cxcywh(anchors)
        wx, wy, ww, wh_ = weights
        cx = deltas[..., 0] / wx * a[..., 2] + a[..., 0]
        cy = deltas[..., 1] / wy * a[..., 3] + a[..., 1]
        w = torch.exp((deltas[..., 2] / ww).clamp(max=clip)) * a[..., 2]
        h = torch.exp((deltas[..., 3] / wh_).clamp(max=clip)) * a[..., 3]
        return torch.stack((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), -1)
    raise ValueError(f"unknown box coding form {form!r}; use 'ssd' or 'rcnn'")


# ---------------------------------------------------------------------------------------------
# Losses and pooling
# ---------------------------------------------------------------------------------------------


def sigmoid_focal_loss(
    logits: Tensor, targets: Tensor, alpha: float = 0.25, gamma: float = 2.0, reduction: str = "none"
) -> Tensor:
    """Focal loss (Lin et al. 2017, eq. 5): -alpha_t (1 - p_t)^gamma log(p_t), p = sigmoid(logits),
    alpha_t = alpha for positives and 1 - alpha for negatives (alpha < 0 disables the balancing).
    reduction: "none" | "mean" | "sum"."""
    p = torch.sigmoid(logits)
    ce = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    if reduction == "none":
        return loss
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    raise ValueError(f"unknown reduction {reduction!r}; use 'none', 'mean' or 'sum'")


def _round_half_away(x: Tensor) -> Tensor:
    return torch.sign(x) * torch.floor(x.abs() + 0.5)  # C's round(), as the Fast R-CNN kernels use


def roi_pool(features: Tensor, rois: Tensor, output_size: int | tuple[int, int], spatial_scale: float) -> Tensor:
    """RoI max pooling (Fast R-CNN, Girshick 2015): features [N, C, H, W], rois [K, 5]
    (batch index, x1, y1, x2, y2 in input pixels) -> [K, C, ph, pw].

    The RoI is scaled by spatial_scale and rounded to feature cells (inclusive ends, at least 1x1);
    bin (i, j) covers rows floor(i * bh) .. ceil((i + 1) * bh) (bh = roi_h / ph) clipped to the map,
    and takes the max there; empty bins give 0. Same quantisation as torchvision.ops.roi_pool.
    """
    ph, pw = (output_size, output_size) if isinstance(output_size, int) else output_size
    _, c, h, w = features.shape
    k = int(rois.shape[0])
    out = features.new_zeros((k, c, ph, pw))
    if k == 0:
        return out
    q = _round_half_away(rois[:, 1:] * spatial_scale)
    x1, y1, x2, y2 = q.unbind(1)
    roi_w = (x2 - x1 + 1).clamp(min=1)
    roi_h = (y2 - y1 + 1).clamp(min=1)
    rows = torch.arange(h, dtype=features.dtype, device=features.device)
    cols = torch.arange(w, dtype=features.dtype, device=features.device)
    neg = torch.finfo(features.dtype).min
    for r in range(k):
        fmap = features[int(rois[r, 0])]  # [C, H, W]
        bh, bw = roi_h[r] / ph, roi_w[r] / pw
        i = torch.arange(ph, dtype=features.dtype, device=features.device)
        j = torch.arange(pw, dtype=features.dtype, device=features.device)
        hs = (torch.floor(i * bh) + y1[r]).clamp(0, h)
        he = (torch.ceil((i + 1) * bh) + y1[r]).clamp(0, h)
        ws = (torch.floor(j * bw) + x1[r]).clamp(0, w)
        we = (torch.ceil((j + 1) * bw) + x1[r]).clamp(0, w)
        mrow = (rows[None, :] >= hs[:, None]) & (rows[None, :] < he[:, None])  # [ph, H]
        mcol = (cols[None, :] >= ws[:, None]) & (cols[None, :] < we[:, None])  # [pw, W]
        colmax = fmap[:, :, None, :].masked_fill(~mcol[None, None], neg).amax(-1)  # [C, H, pw]
        binmax = colmax[:, None, :, :].masked_fill(~mrow[None, :, :, None], neg).amax(2)  # [C, ph, pw]
        empty = ~(mrow.any(1)[:, None] & mcol.any(1)[None, :])  # [ph, pw]
        out[r] = binmax.masked_fill(empty[None], 0.0)
    return out
