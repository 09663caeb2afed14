"""Training Faster R-CNN (Ren, He, Girshick, Sun 2015), approximate joint training, scaled down for the
offline set and a 2-core CPU.

The losses come from torchvision's training machinery built around the model's OWN modules, so every
update lands in the static-shape models/faster_rcnn.py FasterRCNN whose state_dict the checkpoint stores
and the engine exports:
- torchvision RegionProposalNetwork over `net.rpn.anchor_generator` and `net.rpn.head` (the anchors are
  the ones the engine's ProposalDecode baked; tests/unit/test_train_faster_rcnn.py checks they are equal):
  RPN_BATCH = 256 anchors per image, 50% positive (IoU >= 0.7 with a truth, or a truth's best anchor),
  negatives IoU < 0.3; binary cross-entropy on objectness plus smooth L1 (beta 1/9) on the sampled
  positives' deltas (BoxCoder weights 1, 1, 1, 1). Its proposals for the second stage: NMS 0.7 over the
  top RPN_TRAIN_PRE_NMS by objectness, RPN_TRAIN_POST_NMS kept (the paper's 2000 proposals for training,
  scaled with the anchor count as the test setting 300 is), detached: "approximate joint training", no
  gradient through the proposal coordinates (Sec. 3.2).
- torchvision RoIHeads over `net.roi_heads.box_roi_pool` (RoIPoolSingle: called as (features dict,
  proposals list, image_shapes)), `box_head` and `box_predictor`: the proposals plus the truths,
  ROIS_PER_IMAGE = 128 sampled per image, 25% foreground (IoU >= 0.5, labelled with the truth's class),
  background IoU < 0.5; softmax log loss plus smooth L1 on the true class's deltas (BoxCoder weights 10,
  10, 5, 5: models/faster_rcnn.py DetectionDecode's).
The loss is the sum of the four terms. GeneralizedRCNNTransform is not used: images go through the
model's own PreprocessSpec (320x320 stretch, ImageNet mean/std), exactly what the engine is fed, and
the truths through the same Transform (training/augment.py to_input).

From scratch, as fast-rcnn-vgg16-slim trains (same backbone, same initial backbone weights for a seed):
before training the heads are re-initialised as the papers do (RPN 3x3 conv Kaiming, objectness and
delta layers N(0, 0.01); fc6/fc7 Kaiming, cls_score N(0, 0.01), bbox_pred N(0, 0.001), as
models/fast_rcnn.py), replacing init_two_stage's O(1)-logit init, which is for untrained exports.
Each step takes recipe.batch_size images (2, the paper's). Horizontal flip with probability 1/2 only for an
image whose objects are all mirror-symmetric classes (training/rcnn.py MIRROR_SAFE_CLASSES; a mirrored 2
is not a 2), as the Fast R-CNN trainer does, so the arc's rows see the same data. The backbone runs under
bfloat16 autocast on CPU (weights float32); RPN, heads and losses in float32.

Validation: VOC07 mAP on the val split through loop.py evaluate_detector (evaluation/predict.py and
detection_metrics.py, the single-pass detectors' path: the model's own outputs, host NMS), one image
per forward (the engine's static batch 1).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from enginesmith.training.augment import to_input

from enginesmith.training.common import evaluate_detector

from enginesmith.training.fast_rcnn import flip_boxes

from enginesmith.training.rcnn import mirror_safe

from enginesmith.training.two_stage_loop import image_batch_maker, run_epochs

RPN_BATCH = 256
RPN_POS_FRACTION = 0.5
RPN_FG_IOU = 0.7
RPN_BG_IOU = 0.3
RPN_NMS = 0.7
RPN_TRAIN_PRE_NMS = 2000
RPN_TRAIN_POST_NMS = 600
ROIS_PER_IMAGE = 128
FG_FRACTION = 0.25
FG_IOU = 0.5
BOX_WEIGHTS = (10.0, 10.0, 5.0, 5.0)
GRAD_CLIP = 10.0


def make_training_heads(net):
    """(torchvision RegionProposalNetwork, RoIHeads) sharing the parameters of `net` (a models/faster_rcnn.py
    FasterRCNN with a single feature map "0"). Test-time settings are the engine's (net.decode.rpn)."""
    from torchvision.models.detection.roi_heads import RoIHeads
    from torchvision.models.detection.rpn import RegionProposalNetwork

    dec = net.decode.rpn
    rpn = RegionProposalNetwork(
        net.rpn.anchor_generator, net.rpn.head, fg_iou_thresh=RPN_FG_IOU, bg_iou_thresh=RPN_BG_IOU,
        batch_size_per_image=RPN_BATCH, positive_fraction=RPN_POS_FRACTION,
        pre_nms_top_n={"training": RPN_TRAIN_PRE_NMS, "testing": max(dec.level_top)},
        post_nms_top_n={"training": RPN_TRAIN_POST_NMS, "testing": dec.post_nms_top_n}, nms_thresh=dec.nms_thresh)
    r = net.roi_heads
    heads = RoIHeads(r.box_roi_pool, r.box_head, r.box_predictor, fg_iou_thresh=FG_IOU, bg_iou_thresh=FG_IOU,
                     batch_size_per_image=ROIS_PER_IMAGE, positive_fraction=FG_FRACTION,
                     bbox_reg_weights=BOX_WEIGHTS, score_thresh=0.05, nms_thresh=0.5, detections_per_img=100)
    return rpn, heads


def init_for_training(net) -> None:
    """Re-initialise the RPN and box heads as the papers (see the module docstring); the backbone is kept."""
    from torch import nn

    from enginesmith.models.layers import init_box_head

    rpn_head = net.rpn.head
    for m in rpn_head.conv.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            nn.init.zeros_(m.bias)
    for m in (rpn_head.cls_logits, rpn_head.bbox_pred):
        nn.init.normal_(m.weight, std=0.01)
        nn.init.zeros_(m.bias)
    init_box_head(net.roi_heads)


def training_sample(image: np.ndarray, boxes: np.ndarray, labels: np.ndarray, spec,
                    flip: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image HxWx3 uint8 RGB with boxes [K, 4] x1y1x2y2 original px and labels [K] (0-based) ->
    (x [3, H, W] float32 preprocessed, boxes [K, 4] input px, labels [K] int64 = class + 1), after an
    optional horizontal flip."""
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    if flip:
        w = image.shape[1]
        image = np.ascontiguousarray(image[:, ::-1])
        boxes = flip_boxes(boxes, w)
    x, t = to_input(image, boxes, np.asarray(labels), spec)
    return x, np.ascontiguousarray(t[:, 1:]), np.asarray(labels, np.int64).reshape(-1) + 1


def faster_rcnn_losses(net, rpn, heads, x, targets: list[dict]) -> dict[str, Any]:
    """x [N, 3, H, W] preprocessed (channels_last), targets: N {"boxes" [K, 4] input px, "labels" [K] = class + 1}
    -> {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg", "loss"} (the sum)."""
    import torch
    from torchvision.models.detection.image_list import ImageList

    with torch.autocast("cpu", dtype=torch.bfloat16):
        feats = net.backbone(x)
    feats = {"0": feats.float()}
    sizes = [(int(x.shape[2]), int(x.shape[3]))] * int(x.shape[0])
    rpn.train()
    heads.train()
    proposals, rpn_losses = rpn(ImageList(x, sizes), feats, targets)
    _, det_losses = heads(feats, proposals, sizes, targets)
    losses = {**rpn_losses, **det_losses}
    losses["loss"] = sum(losses.values())
    return losses


class PerImage:
    """Wraps a batch-1 FasterRCNN for evaluate_detector: x [N, 3, H, W] -> (boxes [N, A, 4], scores [N, A, C]),
    one image per forward."""

    def __init__(self, net) -> None:
        self.net = net

    def eval(self) -> "PerImage":
        self.net.eval()
        return self

    def __call__(self, x):
        import torch

        outs = [self.net(x[i:i + 1]) for i in range(int(x.shape[0]))]
        return torch.cat([o[0] for o in outs]), torch.cat([o[1] for o in outs])


def train_faster_rcnn(spec, train_set, val_set, recipe, seed: int, time_budget_s: float | None,
                      progress) -> tuple[Any, dict[str, Any]]:
    """Approximate joint training on train_set, then val mAP; returns (FasterRCNN in eval mode, metrics)."""
    import torch

    net = spec.create(num_classes=len(train_set.class_names), seed=seed)
    torch.manual_seed(seed)
    init_for_training(net)
    net = net.to(memory_format=torch.channels_last)
    rpn, heads = make_training_heads(net)
    samples = train_set.samples
    pre = spec.preprocess

    def sample(i: int, flip: bool) -> tuple[np.ndarray, dict[str, Any]]:
        s = samples[i]
        x, b, lab = training_sample(train_set.load_image(i), s.boxes, s.labels, pre, flip)
        return x, {"boxes": torch.from_numpy(b), "labels": torch.from_numpy(lab)}

    run = run_epochs(net, recipe, len(samples), seed,
                     image_batch_maker(samples, mirror_safe(train_set.class_names), seed, sample),
                     lambda x, targets: faster_rcnn_losses(net, rpn, heads, x, targets), what="Faster R-CNN",
                     title=f"train {spec.name}", time_budget_s=time_budget_s, progress=progress, replan=True,
                     clip=GRAD_CLIP)
    net.eval()
    metrics: dict[str, Any] = {"train_seconds": round(run.seconds, 1), "epochs_run": len(run.history),
                               "train_images": len(samples), "history": run.history,
                               "threads": torch.get_num_threads(), "flipped_images": run.flips, "steps": run.steps}
    if val_set is not None and len(val_set):
        t0 = time.perf_counter()
        m = evaluate_detector(PerImage(net), pre, val_set, progress=progress is True)
        metrics["val"] = {k: m[k] for k in ("voc07_map", "map", "coco_ap", "coco_ap50", "coco_ap75") if k in m}
        metrics["val"]["images"] = len(val_set)
        metrics["val"]["per_class"] = m.get("per_class")
        metrics["val_seconds"] = round(time.perf_counter() - t0, 1)
    return net, metrics


__all__ = ["train_faster_rcnn", "make_training_heads", "init_for_training", "training_sample", "faster_rcnn_losses",
           "PerImage"]
