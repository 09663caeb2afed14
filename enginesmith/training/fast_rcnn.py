"""Training Fast R-CNN (Girshick 2015, Sec. 2.3), scaled down for the offline set and a 2-core CPU.

Each step takes `recipe.batch_size` images (the paper's N = 2) and samples ROIS_PER_IMAGE RoIs from each
(the paper's R / N = 64), FG_FRACTION = 25% foreground (IoU >= 0.5 with a truth, labelled with its class),
the rest background with max IoU in [0.1, 0.5) (the paper's lower bound 0.1 as a heuristic for hard-example
mining), falling back to [0, 0.5) for an image with fewer than the background RoIs needed. RoIs are the
image's selective-search proposals (data/proposals.py, cached) plus its ground-truth boxes (torchvision's
RoIHeads appends the truths, as Fast R-CNN's training does). The loss is the paper's multi-task loss:
softmax log loss plus smooth L1 on the regression of the true class (torchvision's fastrcnn_loss; BoxCoder
weights 10, 10, 5, 5 as in models/fast_rcnn.py's decode), computed by torchvision's RoIHeads built on the
model's own submodules (roi_heads.box_roi_pool / box_head / box_predictor), so the trained weights are the
engine's. Images go through the model's own PreprocessSpec (320x320 stretch), proposals and truths through
the same Transform. Horizontal flip with probability 1/2 (proposals and truths flipped too) only for an image
whose objects are all mirror-symmetric classes (training/rcnn.py MIRROR_SAFE_CLASSES; a mirrored 2 is not a
2, as training/augment.py), so on the offline set (mostly digits) flips are rare.
The backbone runs under bfloat16 autocast on CPU (weights float32); the heads and losses in float32.

Validation: mAP on the val split with its proposals through runtime/two_stage.py fast_rcnn_raw +
detect_from_raw and evaluation/detection_metrics.py (training/rcnn.py evaluate_two_stage).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from enginesmith.runtime.preprocess import preprocess
from enginesmith.training.rcnn import box_iou, mirror_safe, split_proposal_list, validate_two_stage
from enginesmith.training.two_stage_loop import image_batch_maker, run_epochs

ROIS_PER_IMAGE = 64
FG_FRACTION = 0.25
FG_IOU = 0.5
BG_IOU_LOW = 0.1
BOX_WEIGHTS = (10.0, 10.0, 5.0, 5.0)


def make_roi_heads(net):
    """torchvision RoIHeads over the model's box_roi_pool / box_head / box_predictor (shared parameters) with
    Fast R-CNN's sampling: fg IoU >= 0.5, bg < 0.5, ROIS_PER_IMAGE per image, 25% foreground."""
    from torchvision.models.detection.roi_heads import RoIHeads

    r = net.roi_heads
    return RoIHeads(r.box_roi_pool, r.box_head, r.box_predictor, fg_iou_thresh=FG_IOU, bg_iou_thresh=FG_IOU,
                    batch_size_per_image=ROIS_PER_IMAGE, positive_fraction=FG_FRACTION, bbox_reg_weights=BOX_WEIGHTS,
                    score_thresh=0.05, nms_thresh=0.5, detections_per_img=100)


def select_proposals(proposals: np.ndarray, truths: np.ndarray, low: float = BG_IOU_LOW,
                     rois: int = ROIS_PER_IMAGE, fg_fraction: float = FG_FRACTION) -> np.ndarray:
    """Proposals [P, 4] -> the ones RoIHeads may sample: IoU >= low with some truth (foreground and the
    [low, 0.5) background), or all of them when fewer than the background RoIs needed lie in [low, 0.5)."""
    iou = box_iou(proposals, truths)
    best = iou.max(axis=1) if iou.shape[1] else np.zeros(len(proposals), np.float32)
    need_bg = rois - int(round(rois * fg_fraction))
    if int(((best >= low) & (best < FG_IOU)).sum()) < need_bg:
        return proposals
    return proposals[best >= low]


def flip_boxes(boxes: np.ndarray, width: int) -> np.ndarray:
    """Mirror x1y1x2y2 boxes [N, 4] in an image `width` px wide."""
    out = np.asarray(boxes, np.float32).reshape(-1, 4).copy()
    out[:, 0], out[:, 2] = width - boxes[:, 2], width - boxes[:, 0]
    return out


def training_sample(image: np.ndarray, proposals: np.ndarray, truths: np.ndarray, labels: np.ndarray, spec,
                    flip: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One image -> (x [3, H, W] float32 preprocessed, rois [R, 4] input px, truths [K, 4] input px, labels [K]
    int64 = class + 1), after an optional horizontal flip."""
    truths = np.asarray(truths, np.float32).reshape(-1, 4)
    props = np.asarray(proposals, np.float32).reshape(-1, 4)
    if flip:
        w = image.shape[1]
        image = np.ascontiguousarray(image[:, ::-1])
        truths, props = flip_boxes(truths, w), flip_boxes(props, w)
    props = select_proposals(props, truths)
    x, t = preprocess(image, spec)

    def to_input(b: np.ndarray) -> np.ndarray:
        b = b.copy()
        b[:, 0::2] = b[:, 0::2] * np.float32(t.ratio_x) + np.float32(t.pad_x)
        b[:, 1::2] = b[:, 1::2] * np.float32(t.ratio_y) + np.float32(t.pad_y)
        return b

    return x, to_input(props), to_input(truths), np.asarray(labels, np.int64) + 1


def fast_rcnn_losses(net, heads, x, rois: list, targets: list[dict]) -> dict[str, Any]:
    """x [N, 3, H, W] (channels_last), rois: N tensors [R_i, 4] input px, targets: N {"boxes", "labels"} ->
    {"loss_classifier", "loss_box_reg", "loss"}."""
    import torch

    with torch.autocast("cpu", dtype=torch.bfloat16):
        feats = net.backbone(x)
    feats = feats.float()
    size = (int(x.shape[2]), int(x.shape[3]))
    heads.train()
    _, losses = heads({"0": feats}, rois, [size] * len(rois), targets)
    losses["loss"] = losses["loss_classifier"] + losses["loss_box_reg"]
    return losses


def train_fast_rcnn(spec, train_set, val_set, recipe, seed: int, time_budget_s: float | None,
                    progress) -> tuple[Any, dict[str, Any]]:
    """Fast R-CNN's multi-task training on train_set, then val mAP; returns (FastRCNN in eval mode, metrics)."""
    import torch

    net = spec.create(num_classes=len(train_set.class_names), seed=seed).to(memory_format=torch.channels_last)
    heads = make_roi_heads(net)
    phases: dict[str, float] = {}
    t0 = time.perf_counter()
    props = split_proposal_list(train_set)
    phases["proposals"] = time.perf_counter() - t0
    samples = train_set.samples

    def sample(i: int, flip: bool) -> tuple[np.ndarray, tuple[Any, dict[str, Any]]]:
        s = samples[i]
        x, r, g, lab = training_sample(train_set.load_image(i), props[i], s.boxes, s.labels, spec.preprocess, flip)
        return x, (torch.from_numpy(r), {"boxes": torch.from_numpy(g), "labels": torch.from_numpy(lab)})

    def step_losses(x, items: list[tuple[Any, dict[str, Any]]]) -> dict[str, Any]:
        return fast_rcnn_losses(net, heads, x, [r for r, _ in items], [t for _, t in items])

    run = run_epochs(net, recipe, len(samples), seed,
                     image_batch_maker(samples, mirror_safe(train_set.class_names), seed, sample), step_losses,
                     what="Fast R-CNN", title=f"train {spec.name}", time_budget_s=time_budget_s, progress=progress)
    phases["train"] = run.seconds
    net.eval()
    metrics: dict[str, Any] = {"train_seconds": round(phases["train"], 1), "epochs_run": len(run.history),
                               "train_images": len(samples), "history": run.history,
                               "threads": torch.get_num_threads(), "flipped_images": run.flips}
    validate_two_stage("fast-rcnn", net, spec, val_set, progress, metrics, phases)
    return net, metrics


__all__ = ["train_fast_rcnn", "make_roi_heads", "select_proposals", "training_sample", "fast_rcnn_losses",
           "flip_boxes"]
