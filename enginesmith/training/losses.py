"""Each family's own training loss, on the raw heads (`forward_raw`) of the zoo's detectors.

Targets everywhere: one tensor per image, [K, 5] float32 rows (class id 0..C-1, x1, y1, x2, y2) in
network-input pixels (after preprocessing; training/augment.py makes them). Every loss returns a dict
with "loss" (the scalar to minimise) and its parts (detached) for logging.

- `yolo_loss` (YOLOv3, Redmon & Farhadi 2018): each ground truth is assigned to the one anchor, over
  all scales, whose (w, h) has the highest IoU with its (w, h) (both centred), in the cell holding its
  centre (when two truths fall on the same anchor and cell the later one wins, as darknet). Positives:
  box loss 1 - GIoU (Rezatofighi et al. 2019) of the decoded box with the truth (the paper uses
  squared error on (t_x, t_y, t_w, t_h); GIoU is scale-free and needs no (2 - w h) weighting),
  objectness BCE to 1, per-class BCE (sigmoid, one-hot). Every other prediction: objectness BCE to
  0, except predictions whose decoded box has IoU > ignore_iou (0.5) with some truth of its image,
  which are left out (the paper's ignore rule). Sums over the batch divided by the batch size.
- `multibox_loss` (SSD, Liu et al. 2016): a prior is matched to the truth of highest IoU when that IoU
  is > 0.5; each truth also takes its best prior (the later truth wins a shared prior, as
  ssd.pytorch). Smooth-L1 (beta 1) on the encoded offsets (variances 0.1, 0.2) of positives; softmax
  cross-entropy (background = 0) on positives and on the hardest negatives, at most 3 per positive
  and at most all negatives of the image (hard negative mining); both divided by the number of
  positives in the batch.
- `focal_loss` (RetinaNet, Lin et al. 2017): anchors with IoU >= 0.5 to a truth are positives (and
  each truth's best anchor, torchvision's low-quality matches), IoU < 0.4 negatives, the rest
  ignored; alpha-balanced sigmoid focal loss (models/ops.py) over positives and negatives, L1 on the
  R-CNN box coding (weights 1) of positives; per image divided by its positives (at least 1), then
  averaged over the batch (torchvision's RetinaNet head losses).
- `classification_loss`: softmax cross-entropy of logits [N, C] against int labels [N], mean.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from enginesmith.models.ops import box_iou, cxcywh_to_xyxy, encode_boxes, sigmoid_focal_loss

# ---------------------------------------------------------------------------------------------
# shared box helpers
# ---------------------------------------------------------------------------------------------


def giou(a: Tensor, b: Tensor, eps: float = 1e-9) -> Tensor:
    """Generalised IoU of matching rows: a, b [..., 4] x1y1x2y2 -> [...] in (-1, 1]."""
    lt = torch.maximum(a[..., :2], b[..., :2])
    rb = torch.minimum(a[..., 2:], b[..., 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area_a = (a[..., 2:] - a[..., :2]).clamp(min=0).prod(-1)
    area_b = (b[..., 2:] - b[..., :2]).clamp(min=0).prod(-1)
    union = area_a + area_b - inter
    iou = inter / (union + eps)
    hull = (torch.maximum(a[..., 2:], b[..., 2:]) - torch.minimum(a[..., :2], b[..., :2])).clamp(min=0).prod(-1)
    return iou - (hull - union) / (hull + eps)


def wh_iou(wh1: Tensor, wh2: Tensor) -> Tensor:
    """IoU of boxes sharing a centre: wh1 [M, 2], wh2 [K, 2] -> [M, K]."""
    inter = torch.minimum(wh1[:, None], wh2[None]).prod(-1)
    return inter / (wh1.prod(-1)[:, None] + wh2.prod(-1)[None] - inter)


def _stack_targets(targets: list[Tensor], device: torch.device) -> Tensor:
    """[G, 6] rows (image index, class, x1, y1, x2, y2) of a batch's targets."""
    rows = [torch.cat((torch.full((len(t), 1), float(i)), t.reshape(-1, 5).float()), 1) for i, t in enumerate(targets)]
    return torch.cat(rows).to(device) if rows else torch.zeros(0, 6, device=device)


# ---------------------------------------------------------------------------------------------
# YOLOv3
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class YoloLossWeights:
    """Weights of the YOLOv3 loss terms (all summed over the batch, divided by the batch size)."""

    box: float = 2.0
    obj: float = 1.0
    noobj: float = 1.0
    cls: float = 1.0
    ignore_iou: float = 0.5


def yolo_assign(targets: list[Tensor], anchors: list[Tensor], strides: list[float],
                grids: list[tuple[int, int]]) -> list[dict[str, Tensor]]:
    """Best-anchor assignment of every truth, per scale: dict of index tensors b, a, gj, gi and the
    truths' rows (class, x1, y1, x2, y2) that scale is responsible for; duplicates keep the last truth."""
    device = anchors[0].device
    gt = _stack_targets(targets, device)
    all_wh = torch.cat(anchors)  # [sum na, 2]
    scale_of = torch.cat([torch.full((len(a),), s, dtype=torch.long) for s, a in enumerate(anchors)]).to(device)
    local_of = torch.cat([torch.arange(len(a)) for a in anchors]).to(device)
    wh = (gt[:, 4:6] - gt[:, 2:4]).clamp(min=1e-6)
    best = wh_iou(wh, all_wh).argmax(1) if len(gt) else torch.zeros(0, dtype=torch.long, device=device)
    out = []
    for s, (stride, (gh, gw)) in enumerate(zip(strides, grids)):
        sel = torch.nonzero(scale_of[best] == s).flatten()
        g = gt[sel]
        a = local_of[best[sel]]
        cx = (g[:, 2] + g[:, 4]) / 2
        cy = (g[:, 3] + g[:, 5]) / 2
        gi = (cx / stride).floor().long().clamp(0, gw - 1)
        gj = (cy / stride).floor().long().clamp(0, gh - 1)
        b = g[:, 0].long()
        key = ((b * len(anchors[s]) + a) * gh + gj) * gw + gi
        # keep the last truth of each (image, anchor, cell): the last row of each key after a stable sort
        order = torch.sort(key, stable=True).indices
        ks = key[order]
        last = torch.ones_like(ks, dtype=torch.bool)
        if len(ks) > 1:
            last[:-1] = ks[1:] != ks[:-1]
        keep = torch.sort(order[last]).values
        out.append({"b": b[keep], "a": a[keep], "gj": gj[keep], "gi": gi[keep], "gt": g[keep, 1:]})
    return out


def yolo_loss(raws: list[Tensor], targets: list[Tensor], anchors: list[Tensor], strides: list[float],
              num_classes: int, weights: YoloLossWeights = YoloLossWeights()) -> dict[str, Tensor]:
    """YOLOv3 loss. raws[s]: [N, na*(5+C), H, W] (darknet order tx, ty, tw, th, obj, classes per anchor);
    anchors[s]: [na, 2] (w, h) input pixels; strides[s]: input pixels per cell."""
    n = raws[0].shape[0]
    device = raws[0].device
    grids = [(int(r.shape[2]), int(r.shape[3])) for r in raws]
    assigned = yolo_assign(targets, anchors, strides, grids)
    gt_by_image = [t.reshape(-1, 5)[:, 1:].float().to(device) for t in targets]
    box_sum = torch.zeros((), device=device)
    obj_sum = torch.zeros((), device=device)
    noobj_sum = torch.zeros((), device=device)
    cls_sum = torch.zeros((), device=device)
    npos = 0
    for raw, anc, stride, (gh, gw), asg in zip(raws, anchors, strides, grids, assigned):
        na = len(anc)
        p = raw.reshape(n, na, 5 + num_classes, gh, gw).permute(0, 1, 3, 4, 2).float()  # [N, na, H, W, 5+C]
        obj_logit = p[..., 4]
        # decoded boxes of every prediction, for the ignore rule (no gradient needed)
        with torch.no_grad():
            ys, xs = torch.meshgrid(torch.arange(gh, device=device), torch.arange(gw, device=device), indexing="ij")
            cxy = (torch.sigmoid(p[..., :2]) + torch.stack((xs, ys), -1)) * stride
            pwh = torch.exp(p[..., 2:4].clamp(max=10)) * anc.reshape(1, na, 1, 1, 2)
            pred = torch.cat((cxy - pwh / 2, cxy + pwh / 2), -1)
            ignore = torch.zeros_like(obj_logit, dtype=torch.bool)
            for i in range(n):
                if len(gt_by_image[i]):
                    ignore[i] = box_iou(pred[i].reshape(-1, 4), gt_by_image[i]).amax(1).reshape(na, gh, gw) > weights.ignore_iou
        positive = torch.zeros_like(obj_logit, dtype=torch.bool)
        b, a, gj, gi, g = asg["b"], asg["a"], asg["gj"], asg["gi"], asg["gt"]
        positive[b, a, gj, gi] = True
        neg = ~positive & ~ignore
        noobj_sum = noobj_sum + F.binary_cross_entropy_with_logits(
            obj_logit[neg], torch.zeros_like(obj_logit[neg]), reduction="sum")
        if len(b):
            pp = p[b, a, gj, gi]  # [P, 5+C]
            cell = torch.stack((gi, gj), -1).float()
            pxy = (torch.sigmoid(pp[:, :2]) + cell) * stride
            pwh = torch.exp(pp[:, 2:4].clamp(max=10)) * anc[a]
            pbox = torch.cat((pxy - pwh / 2, pxy + pwh / 2), -1)
            box_sum = box_sum + (1.0 - giou(pbox, g[:, 1:5])).sum()
            obj_sum = obj_sum + F.binary_cross_entropy_with_logits(pp[:, 4], torch.ones_like(pp[:, 4]), reduction="sum")
            onehot = F.one_hot(g[:, 0].long(), num_classes).float()
            cls_sum = cls_sum + F.binary_cross_entropy_with_logits(pp[:, 5:], onehot, reduction="sum")
            npos += len(b)
    total = (weights.box * box_sum + weights.obj * obj_sum + weights.noobj * noobj_sum + weights.cls * cls_sum) / n
    return {"loss": total, "box": box_sum.detach() / n, "obj": obj_sum.detach() / n, "noobj": noobj_sum.detach() / n,
            "cls": cls_sum.detach() / n, "num_pos": torch.tensor(float(npos))}


# ---------------------------------------------------------------------------------------------
# SSD multibox
# ---------------------------------------------------------------------------------------------


def ssd_match(gt_boxes: Tensor, priors: Tensor, threshold: float = 0.5) -> tuple[Tensor, Tensor]:
    """Match priors to truths. gt_boxes [K, 4] x1y1x2y2 in [0, 1] units, priors [P, 4] (cx, cy, w, h)
    -> (index of the matched truth [P] long, positive [P] bool). Positive: IoU > threshold, or the
    prior is some truth's best prior (ssd.pytorch `match`; the later truth wins a shared best prior)."""
    p = priors.shape[0]
    if len(gt_boxes) == 0:
        return torch.zeros(p, dtype=torch.long, device=priors.device), torch.zeros(p, dtype=torch.bool, device=priors.device)
    overlaps = box_iou(gt_boxes, cxcywh_to_xyxy(priors))  # [K, P]
    best_prior = overlaps.argmax(1)  # [K]
    best_overlap, best_truth = overlaps.max(0)  # [P]
    best_overlap = best_overlap.clone()
    best_truth = best_truth.clone()
    best_overlap[best_prior] = 2.0
    for k in range(len(best_prior)):  # sequential on purpose: the later truth wins a shared prior
        best_truth[best_prior[k]] = k
    return best_truth, best_overlap > threshold


def hard_negative_mask(conf_loss: Tensor, positive: Tensor, neg_pos_ratio: float = 3.0) -> Tensor:
    """SSD's hard negative mining. conf_loss [N, P] (per-prior cross-entropy), positive [N, P] bool ->
    negatives kept [N, P] bool: per image, the min(ratio * positives, negatives) non-positive priors of
    highest loss (ties: lower index first)."""
    loss = conf_loss.detach().masked_fill(positive, float("-inf"))
    order = torch.sort(loss, dim=1, descending=True, stable=True).indices
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(loss.shape[1], device=loss.device).expand_as(order))
    num_pos = positive.sum(1, keepdim=True)
    num_neg = torch.minimum((neg_pos_ratio * num_pos).long(), positive.shape[1] - num_pos)
    return (rank < num_neg) & ~positive


def multibox_loss(loc: Tensor, conf: Tensor, targets: list[Tensor], priors: Tensor, image_size: tuple[int, int],
                  threshold: float = 0.5, neg_pos_ratio: float = 3.0,
                  variances: tuple[float, float] = (0.1, 0.2)) -> dict[str, Tensor]:
    """SSD multibox loss. loc [N, P, 4] encoded offsets, conf [N, P, C+1] logits (background 0),
    priors [P, 4] (cx, cy, w, h) in [0, 1] units, image_size (H, W) of the input targets are given in."""
    n, p, _ = loc.shape
    h, w = image_size
    scale = torch.tensor([w, h, w, h], dtype=torch.float32, device=loc.device)
    loc_t = torch.zeros(n, p, 4, device=loc.device)
    labels = torch.zeros(n, p, dtype=torch.long, device=loc.device)
    positive = torch.zeros(n, p, dtype=torch.bool, device=loc.device)
    for i, t in enumerate(targets):
        t = t.reshape(-1, 5).float().to(loc.device)
        boxes = t[:, 1:] / scale
        idx, pos = ssd_match(boxes, priors, threshold)
        positive[i] = pos
        if len(t):
            labels[i] = torch.where(pos, t[idx, 0].long() + 1, torch.zeros_like(idx))
            loc_t[i] = encode_boxes(boxes[idx].clamp(min=0), priors, form="ssd", variances=variances)
    num_pos = positive.sum()
    loc_loss = F.smooth_l1_loss(loc[positive].float(), loc_t[positive], reduction="sum", beta=1.0)
    ce = F.cross_entropy(conf.float().reshape(-1, conf.shape[-1]), labels.reshape(-1), reduction="none").reshape(n, p)
    keep = positive | hard_negative_mask(ce, positive, neg_pos_ratio)
    conf_loss = ce[keep].sum()
    denom = num_pos.clamp(min=1).float()
    return {"loss": (loc_loss + conf_loss) / denom, "loc": loc_loss.detach() / denom, "conf": conf_loss.detach() / denom,
            "num_pos": num_pos.float(), "num_neg": (keep & ~positive).sum().float()}


# ---------------------------------------------------------------------------------------------
# RetinaNet focal loss
# ---------------------------------------------------------------------------------------------


def retina_match(gt_boxes: Tensor, anchors: Tensor, fg_iou: float = 0.5, bg_iou: float = 0.4,
                 low_quality: bool = True) -> tuple[Tensor, Tensor, Tensor]:
    """gt_boxes [K, 4], anchors [A, 4] (x1y1x2y2, same units) -> (matched truth [A], positive [A], negative [A]).
    Positive: IoU >= fg_iou, or (low_quality) the anchor is some truth's best anchor; negative: IoU < bg_iou
    and not positive; the rest are ignored."""
    a = anchors.shape[0]
    if len(gt_boxes) == 0:
        z = torch.zeros(a, dtype=torch.long, device=anchors.device)
        return z, torch.zeros(a, dtype=torch.bool, device=anchors.device), torch.ones(a, dtype=torch.bool, device=anchors.device)
    iou = box_iou(gt_boxes, anchors)  # [K, A]
    best_iou, idx = iou.max(0)
    pos = best_iou >= fg_iou
    if low_quality:
        best_anchor = iou.argmax(1)
        idx = idx.clone()
        for k in range(len(best_anchor)):
            idx[best_anchor[k]] = k
        pos = pos.clone()
        pos[best_anchor] = True
    neg = (best_iou < bg_iou) & ~pos
    return idx, pos, neg


def focal_loss(cls_logits: Tensor, bbox_reg: Tensor, targets: list[Tensor], anchors: Tensor,
               fg_iou: float = 0.5, bg_iou: float = 0.4, alpha: float = 0.25, gamma: float = 2.0,
               low_quality: bool = True) -> dict[str, Tensor]:
    """RetinaNet loss. cls_logits [N, A, C], bbox_reg [N, A, 4] (R-CNN deltas, weights 1), anchors [A, 4]
    x1y1x2y2 input pixels; targets in input pixels."""
    n = cls_logits.shape[0]
    cls_total = torch.zeros((), device=cls_logits.device)
    box_total = torch.zeros((), device=cls_logits.device)
    npos = 0
    for i, t in enumerate(targets):
        t = t.reshape(-1, 5).float().to(cls_logits.device)
        idx, pos, neg = retina_match(t[:, 1:], anchors, fg_iou, bg_iou, low_quality)
        target = torch.zeros_like(cls_logits[i], dtype=torch.float32)
        if len(t):
            target[pos, t[idx[pos], 0].long()] = 1.0
        valid = pos | neg
        num = max(1, int(pos.sum()))
        cls_total = cls_total + sigmoid_focal_loss(cls_logits[i][valid].float(), target[valid], alpha, gamma,
                                                   reduction="sum") / num
        if pos.any():
            reg_t = encode_boxes(t[idx[pos], 1:], anchors[pos], form="rcnn")
            box_total = box_total + F.l1_loss(bbox_reg[i][pos].float(), reg_t, reduction="sum") / num
        npos += int(pos.sum())
    cls_mean, box_mean = cls_total / n, box_total / n
    return {"loss": cls_mean + box_mean, "cls": cls_mean.detach(), "box": box_mean.detach(),
            "num_pos": torch.tensor(float(npos))}


# ---------------------------------------------------------------------------------------------
# classifiers
# ---------------------------------------------------------------------------------------------


def classification_loss(logits: Tensor, labels: Tensor, label_smoothing: float = 0.0) -> dict[str, Tensor]:
    """Softmax cross-entropy: logits [N, C], labels [N] int -> mean over the batch."""
    loss = F.cross_entropy(logits.float(), labels.long(), label_smoothing=label_smoothing)
    return {"loss": loss, "ce": loss.detach()}
