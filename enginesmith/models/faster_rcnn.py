"""Faster R-CNN (Ren, He, Girshick, Sun 2015) on torchvision's components, with static shapes.

Two networks:
- faster-rcnn-vgg16: the paper's VGG16 model (the row of the SSD paper's comparison table): VGG16
  conv1_1..conv5_3 + ReLU (stride 16, 512 channels, no pool5); RPN with a 3x3 512-d conv and 9 anchors
  per location (scales 128, 256, 512 x ratios 0.5, 1, 2); proposal NMS 0.7 over the top 6000, 300
  proposals kept (the paper's test setting); RoI max pooling 7x7 (torchvision.ops.RoIPool, scale 1/16);
  fc6/fc7 (4096) and cls_score (21) / bbox_pred (21*4). VOC: 20 classes + background.
  Input 600x600 by default (the paper resizes the shorter side to 600 with the longer <= 1000; our
  engines take one fixed size, so we stretch to 600x600); any sides >= 64 work. Proposals smaller than
  1e-3 px are dropped (torchvision's min_size; py-faster-rcnn's test code used 16 px at scale 1).
  137,073,622 parameters, 149.1 GMACs at 600x600.
- faster-rcnn-r50-fpn: torchvision.models.detection.fasterrcnn_resnet50_fpn (weights=None); the
  module names are torchvision's (backbone.body/fpn, rpn.head, roi_heads.box_head/box_predictor), so a
  torchvision state dict of that model loads as is. COCO: 91 classes incl. background (torchvision's
  indexing, with its "N/A" gaps). Test settings as torchvision's: 1000 pre-NMS proposals per FPN level,
  NMS 0.7 per level, 1000 proposals kept; RoIAlign 7x7 over P2-P5 (MultiScaleRoIAlign). Input 800x800
  (sides multiples of 32, >= 128). The backbone has nn.BatchNorm2d, as torchvision builds it with
  weights=None; its COCO checkpoints (FrozenBatchNorm2d: the same keys less num_batches_tracked) load
  too. 41,808,406 parameters = torchvision's published 41,755,286 + the 53,120 BN scales/shifts that
  FrozenBatchNorm2d holds as buffers; 134.38 GMACs at 800x800 (torchvision's published 134.38).

`num_classes` (registry, builders) counts the foreground classes, the score columns: 20 (VOC) and 90
(torchvision's COCO indices 1..90); the networks have num_classes + 1 outputs with background at 0.
Random init (builders) is seeded and rescaled once so the heads see O(1) activations (init_two_stage).

torchvision's GeneralizedRCNNTransform (resize + normalise) is bypassed: the input is the already
preprocessed fixed-size tensor [1, 3, H, W] (RGB/255, ImageNet mean/std, stretched). Batch 1 only
(static batch: the proposal selection is per image).

Outputs (all decoding under the submodule `decode`: decode.rpn turns anchors + RPN deltas into the
fixed set of proposals, with clipping, small-box removal, NMS and top-k; decode.detections applies the
box coder to the class-specific regressions):
- boxes  [1, A, 4]: for each of the A proposals, the regressed box (x1, y1, x2, y2, input pixels,
  clipped to the image) of its highest-scoring non-background class;
- scores [1, A, C]: softmax over the C+1 classes, background column dropped (C = num_classes).
A is fixed (300 for VGG16, 1000 for R50-FPN, or the number of pre-NMS candidates if smaller at small
inputs). When NMS keeps fewer proposals than A, the remaining rows are padding: boxes 0, scores 0.
Proposals are the same set torchvision's RPN returns, but ordered by FPN level, then anchor position
(row, column, anchor) rather than by objectness: a backend's rounding can swap two near-equal scores,
and with a sorted order that would swap whole output rows.

Longer than 400 lines: the paper's two networks (and the slim one) share the RPN, the RoI heads and the
decode; one file per family is the zoo's rule.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import Tensor, nn

from enginesmith.errors import EnginesmithError
from enginesmith.models.classes import OFFLINE_NAMES, VOC_NAMES
from enginesmith.models.layers import RoIPoolSingle, slim_vgg16_features, vgg16_conv5_3
from enginesmith.models.registry import ModelSpec, register
from enginesmith.models.weights import load_weights
from enginesmith.runtime.preprocess import PreprocessSpec

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# Config table: per model, the settings that differ (test-time settings of the paper / torchvision).
CONFIGS: dict[str, dict] = {
    "faster-rcnn-vgg16": dict(
        input_size=(600, 600), num_classes=20, anchor_sizes=((128, 256, 512),), aspect_ratios=((0.5, 1.0, 2.0),),
        pre_nms_top_n=6000, post_nms_top_n=300, nms_thresh=0.7, min_size=1e-3,
    ),
    "faster-rcnn-r50-fpn": dict(
        input_size=(800, 800), num_classes=90, anchor_sizes=((32,), (64,), (128,), (256,), (512,)),
        aspect_ratios=((0.5, 1.0, 2.0),) * 5, pre_nms_top_n=1000, post_nms_top_n=1000, nms_thresh=0.7,
        min_size=1e-3,
    ),
}


def coco_names() -> tuple[str, ...]:
    """torchvision's 91 COCO category names (index 0 "__background__", "N/A" gaps), from its weights metadata."""
    from torchvision.models.detection import FasterRCNN_ResNet50_FPN_Weights

    return tuple(FasterRCNN_ResNet50_FPN_Weights.COCO_V1.meta["categories"])


def compute_anchors(
    anchor_generator: nn.Module, image_size: tuple[int, int], grid_sizes: list[tuple[int, int]]
) -> Tensor:
    """torchvision's anchors [M, 4] for one image of `image_size` whose feature maps have `grid_sizes`."""
    from torchvision.models.detection.image_list import ImageList

    h, w = image_size
    images = ImageList(torch.zeros(1, 1, h, w), [(h, w)])
    feats = [torch.zeros(1, 1, gh, gw) for gh, gw in grid_sizes]
    with torch.no_grad():
        return anchor_generator(images, feats)[0]


class ProposalDecode(nn.Module):
    """RPN outputs -> a fixed number of proposals, as torchvision's RegionProposalNetwork.filter_proposals
    (eval): per-level top-n by objectness, decode (BoxCoder weights 1,1,1,1), clip, drop boxes smaller
    than min_size, NMS per level, highest objectness first; padded to `post_nms_top_n` rows.

    Static shapes for export: instead of gathering the NMS survivors (a data-dependent count), a mask of
    survivors ranks them first in one top-k of fixed size; `valid` [P] marks real (1) and padding (0) rows.
    """

    def __init__(self, anchors: Tensor, level_counts: list[int], image_size: tuple[int, int],
                 pre_nms_top_n: int, post_nms_top_n: int, nms_thresh: float, min_size: float) -> None:
        super().__init__()
        from torchvision.models.detection._utils import BoxCoder

        self.box_coder = BoxCoder(weights=(1.0, 1.0, 1.0, 1.0))
        self.level_counts = [int(n) for n in level_counts]
        self.level_top = [min(pre_nms_top_n, n) for n in self.level_counts]
        self.num_candidates = sum(self.level_top)
        self.post_nms_top_n = min(post_nms_top_n, self.num_candidates)
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.nms_thresh = float(nms_thresh)
        self.min_size = float(min_size)
        self.register_buffer("anchors", anchors, persistent=False)
        # batched_nms's coordinate trick: level l is shifted by l * (max coordinate + 1), so boxes of
        # different levels never overlap (the image size is static, so the offsets are constants).
        span = float(max(self.image_size) + 1)
        offsets = torch.cat([torch.full((n,), i * span) for i, n in enumerate(self.level_top)])
        self.register_buffer("level_offsets", offsets, persistent=False)

    def forward(self, objectness: list[Tensor], deltas: list[Tensor]) -> tuple[Tensor, Tensor]:
        h, w = self.image_size
        sel_boxes, sel_logits = [], []
        start = 0
        for obj, dlt, n, top in zip(objectness, deltas, self.level_counts, self.level_top):
            # [1, A, gh, gw] -> [n] in (row, column, anchor) order, as torchvision's permute_and_flatten
            o = obj[0].permute(1, 2, 0).reshape(-1)
            d = dlt[0].reshape(-1, 4, dlt.shape[-2], dlt.shape[-1]).permute(2, 3, 0, 1).reshape(-1, 4)
            # the level's top-n by objectness, put back in anchor order (so the output order never
            # depends on near-ties between scores; only the set does)
            idx = o.topk(top).indices.sort().values
            boxes = self.box_coder.decode_single(d[idx], self.anchors[start : start + n][idx])
            sel_boxes.append(boxes)
            sel_logits.append(o[idx])
            start += n
        boxes = torch.cat(sel_boxes)
        logit = torch.cat(sel_logits)
        x1 = boxes[:, 0].clamp(0, w)
        y1 = boxes[:, 1].clamp(0, h)
        x2 = boxes[:, 2].clamp(0, w)
        y2 = boxes[:, 3].clamp(0, h)
        boxes = torch.stack((x1, y1, x2, y2), dim=1)
        big = ((x2 - x1) >= self.min_size) & ((y2 - y1) >= self.min_size)
        # small boxes get a degenerate box (zero area: it suppresses nothing) and are masked out below.
        # NMS ranks by the logit: the same order as torchvision's sigmoid probabilities, without the
        # ties that float32 sigmoid makes of large logits.
        nms_boxes = torch.where(big[:, None], boxes, torch.zeros_like(boxes)) + self.level_offsets[:, None]
        from torchvision.ops import nms

        keep = nms(nms_boxes, logit, self.nms_thresh)
        kept = torch.zeros_like(logit).scatter(0, keep, torch.ones_like(logit[:1]).expand(keep.shape[0]))
        kept = (kept > 0) & big
        # the best post_nms_top_n survivors; when fewer survive, padding rows are the non-survivors of
        # lowest candidate index (distinct keys below every logit, so no ties decide anything)
        position = torch.arange(self.num_candidates, dtype=logit.dtype, device=logit.device)
        key = torch.where(kept, logit, -1.0e6 - position)
        chosen = key.topk(self.post_nms_top_n).indices
        valid_chosen = kept[chosen]
        # output rows: survivors in candidate order (level, then anchor position), then padding
        order = torch.where(valid_chosen, chosen, chosen + self.num_candidates).sort().values
        order = torch.where(order >= self.num_candidates, order - self.num_candidates, order)
        valid = kept[order].to(logit.dtype)
        proposals = boxes[order] * valid[:, None]
        return proposals, valid


class DetectionDecode(nn.Module):
    """Box head outputs -> contract outputs: class-specific deltas decoded against the proposals
    (BoxCoder weights 10, 10, 5, 5, torchvision's and the paper's), clipped; softmax scores without
    background; per proposal the box of its best foreground class. Padding rows -> 0."""

    def __init__(self, image_size: tuple[int, int]) -> None:
        super().__init__()
        from torchvision.models.detection._utils import BoxCoder

        self.box_coder = BoxCoder(weights=(10.0, 10.0, 5.0, 5.0))
        self.image_size = (int(image_size[0]), int(image_size[1]))

    def forward(
        self, proposals: Tensor, valid: Tensor, class_logits: Tensor, box_regression: Tensor
    ) -> tuple[Tensor, Tensor]:
        h, w = self.image_size
        p, k = class_logits.shape
        boxes = self.box_coder.decode_single(box_regression.reshape(p * k, 4),
                                             proposals[:, None, :].expand(p, k, 4).reshape(p * k, 4))
        boxes = boxes.reshape(p, k, 4)
        x1 = boxes[..., 0].clamp(0, w)
        y1 = boxes[..., 1].clamp(0, h)
        x2 = boxes[..., 2].clamp(0, w)
        y2 = boxes[..., 3].clamp(0, h)
        boxes = torch.stack((x1, y1, x2, y2), dim=-1)
        scores = torch.softmax(class_logits, dim=-1)[:, 1:]
        best = scores.argmax(dim=1) + 1
        best_box = torch.gather(boxes, 1, best.reshape(p, 1, 1).expand(p, 1, 4)).reshape(p, 4)
        best_box = best_box * valid[:, None]
        scores = scores * valid[:, None]
        return best_box.unsqueeze(0), scores.unsqueeze(0)


class DecodeHeads(nn.Module):
    """All box decoding of a two-stage detector (kept in float by quantizers)."""

    def __init__(self, rpn: ProposalDecode, detections: DetectionDecode) -> None:
        super().__init__()
        self.rpn = rpn
        self.detections = detections


class FasterRCNN(nn.Module):
    """Faster R-CNN with static shapes: x [1, 3, H, W] -> (boxes [1, A, 4], scores [1, A, C]).

    `backbone` returns a feature map or an OrderedDict of maps (FPN); `rpn` holds torchvision's
    AnchorGenerator (`rpn.anchor_generator`) and RPNHead (`rpn.head`); `roi_heads` holds
    `box_roi_pool`, `box_head` and `box_predictor` - torchvision's names, so its state dicts load.
    """

    def __init__(self, backbone: nn.Module, rpn: nn.Module, roi_heads: nn.Module, input_size: tuple[int, int],
                 grid_sizes: list[tuple[int, int]], pre_nms_top_n: int, post_nms_top_n: int, nms_thresh: float,
                 min_size: float) -> None:
        super().__init__()
        self.backbone = backbone
        self.rpn = rpn
        self.roi_heads = roi_heads
        self.input_size = (int(input_size[0]), int(input_size[1]))
        anchors = compute_anchors(rpn.anchor_generator, self.input_size, grid_sizes)
        per_loc = rpn.anchor_generator.num_anchors_per_location()
        counts = [a * gh * gw for a, (gh, gw) in zip(per_loc, grid_sizes)]
        self.decode = DecodeHeads(
            ProposalDecode(anchors, counts, self.input_size, pre_nms_top_n, post_nms_top_n, nms_thresh, min_size),
            DetectionDecode(self.input_size),
        )

    @property
    def num_proposals(self) -> int:
        return self.decode.rpn.post_nms_top_n

    def _features(self, x: Tensor) -> tuple[list[Tensor], dict[str, Tensor]]:
        feats = self.backbone(x)
        if isinstance(feats, Tensor):
            feats = {"0": feats}
        return list(feats.values()), feats

    def forward_parts(self, x: Tensor) -> dict[str, Tensor]:
        """Intermediate tensors (for tests): proposals [P, 4], valid [P], class_logits, box_regression."""
        if x.shape[0] != 1:
            raise EnginesmithError(
                f"Faster R-CNN engines take batch 1 (static batch; proposals are selected per image), got batch "
                f"{x.shape[0]}; use --batch 1 without --dynamic-batch"
            )
        feat_list, feats = self._features(x)
        objectness, deltas = self.rpn.head(feat_list)
        proposals, valid = self.decode.rpn(objectness, deltas)
        pooled = self.roi_heads.box_roi_pool(feats, [proposals], [self.input_size])
        class_logits, box_regression = self.roi_heads.box_predictor(self.roi_heads.box_head(pooled))
        return {"proposals": proposals, "valid": valid, "class_logits": class_logits, "box_regression": box_regression}

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        p = self.forward_parts(x)
        return self.decode.detections(p["proposals"], p["valid"], p["class_logits"], p["box_regression"])


def _feature_layers(model: FasterRCNN) -> list[nn.Module]:
    """The layers whose outputs are the features the heads see (the FPN output convs, or conv5_3)."""
    if hasattr(model.backbone, "fpn"):
        return [m for m in model.backbone.fpn.layer_blocks.modules() if isinstance(m, nn.Conv2d)]
    return [m for m in model.backbone if isinstance(m, nn.Conv2d)][-1:]


def _rescale(layers: list[nn.Module], factor: float) -> None:
    for m in layers:
        m.weight.mul_(factor)
        if m.bias is not None:
            m.bias.mul_(factor)


def init_two_stage(model: FasterRCNN, size: int = 128) -> None:
    """Seeded init with O(1) activations where the outputs are decided.

    Random VGG16 / ResNet-50 weights leave the features at std ~0.15 (VGG16) or ~50 (ResNet-50 FPN),
    and torchvision's std-0.01 RPN init then gives objectness probabilities all ~0.5, whose ranking
    (and so the proposal set) is decided by rounding. So, measured once on a seeded N(0, 1) input of
    size x size (scale statistics of convolutions do not depend on the image size): the feature
    layers are rescaled to unit std (ReLU nets are positively homogeneous), the RPN conv and the
    fc6/fc7 layers get Kaiming (fan-in) init, and the last layers are scaled so that objectness
    logits and class logits have std 2 and box deltas std 0.2 (RPN) / 1 (box head, i.e. 0.1 and 0.2
    after the 10, 10, 5, 5 weights). Any checkpoint loaded afterwards replaces all of this.
    """
    model.eval()  # BatchNorm must not update its running statistics here
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 3, size, size, generator=gen)
    head = model.rpn.head
    pred = model.roi_heads.box_predictor
    with torch.no_grad():
        for conv in head.conv.modules():
            if isinstance(conv, nn.Conv2d):
                nn.init.kaiming_normal_(conv.weight, mode="fan_in", nonlinearity="relu")
                nn.init.zeros_(conv.bias)
        for fc in (model.roi_heads.box_head.fc6, model.roi_heads.box_head.fc7):
            nn.init.kaiming_normal_(fc.weight, mode="fan_in", nonlinearity="relu")
            nn.init.zeros_(fc.bias)
        for m in (head.cls_logits, head.bbox_pred, pred.cls_score, pred.bbox_pred):
            nn.init.normal_(m.weight, std=1.0 / (m.weight[0].numel() ** 0.5))
            nn.init.zeros_(m.bias)
        feats = model._features(x)[0]
        _rescale(_feature_layers(model), 1.0 / torch.cat([f.flatten() for f in feats]).std().item())
        feat_list, feat_dict = model._features(x)
        objectness, deltas = head(feat_list)
        _rescale([head.cls_logits], 2.0 / torch.cat([o.flatten() for o in objectness]).std().item())
        _rescale([head.bbox_pred], 0.2 / torch.cat([d.flatten() for d in deltas]).std().item())
        xy = torch.rand(64, 2, generator=gen) * (size * 0.75)
        wh = 8 + torch.rand(64, 2, generator=gen) * (size * 0.25)
        rois = torch.cat([xy, xy + wh], dim=1)
        hidden = model.roi_heads.box_head(model.roi_heads.box_roi_pool(feat_dict, [rois], [(size, size)]))
        _rescale([pred.cls_score], 2.0 / pred.cls_score(hidden).std().item())
        _rescale([pred.bbox_pred], 1.0 / pred.bbox_pred(hidden).std().item())


def _check(name: str, multiple: int, size: tuple[int, int]) -> None:
    h, w = (int(s) for s in size)
    if h < 4 * multiple or w < 4 * multiple or h % multiple or w % multiple:
        raise EnginesmithError(
            f"{name} needs input sides that are multiples of {multiple} and >= {4 * multiple} (the backbone's "
            f"stride; anchors and RoI scales are baked for whole feature cells), got {h}x{w}; "
            f"try {CONFIGS[name]['input_size'][0]}x{CONFIGS[name]['input_size'][1]}"
        )


check_r50_fpn = partial(_check, "faster-rcnn-r50-fpn", 32)


def build_faster_rcnn_vgg16(num_classes: int = 20, input_size: tuple[int, int] = (600, 600)) -> FasterRCNN:
    """The paper's VGG16 Faster R-CNN (num_classes foreground classes + background), seeded init."""
    check_input_size_vgg16(input_size)
    return build_stride16("faster-rcnn-vgg16", vgg16_conv5_3(), 512, 4096, num_classes, input_size)


def build_stride16(config: str, backbone: nn.Module, channels: int, fc_dim: int, num_classes: int,
                   input_size: tuple[int, int]) -> FasterRCNN:
    """A Faster R-CNN on one stride-16 feature map of `channels` channels (`backbone`, built by the caller
    first, so a seed gives the same backbone as other models): RPN 3x3 conv over `channels` with CONFIGS[config]
    anchors and test settings, RoI max pooling 7x7 at 1/16, fc6/fc7 of fc_dim, num_classes + 1 outputs;
    init_two_stage."""
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.models.detection.rpn import RPNHead

    cfg = CONFIGS[config]
    h, w = input_size
    rpn = nn.Module()
    rpn.anchor_generator = AnchorGenerator(cfg["anchor_sizes"], cfg["aspect_ratios"])
    rpn.head = RPNHead(channels, rpn.anchor_generator.num_anchors_per_location()[0])
    roi_heads = nn.Module()
    roi_heads.box_roi_pool = RoIPoolSingle(7, 1.0 / 16)
    roi_heads.box_head = TwoMLPHead(channels * 7 * 7, fc_dim)
    roi_heads.box_predictor = FastRCNNPredictor(fc_dim, num_classes + 1)
    model = FasterRCNN(backbone, rpn, roi_heads, input_size, [(h // 16, w // 16)], cfg["pre_nms_top_n"],
                       cfg["post_nms_top_n"], cfg["nms_thresh"], cfg["min_size"])
    init_two_stage(model)
    return model.eval()


def fpn_grid_sizes(input_size: tuple[int, int], strides: tuple[int, ...]) -> list[tuple[int, int]]:
    """Feature-map sizes of a ResNet FPN: each stride-2 stage (k3 p1 or pool k1) gives ceil(size / 2)."""
    out = []
    for s in strides:
        gh, gw = input_size
        t = 1
        while t < s:
            gh, gw, t = -(-gh // 2), -(-gw // 2), t * 2
        out.append((gh, gw))
    return out


def build_faster_rcnn_r50_fpn(num_classes: int = 90, input_size: tuple[int, int] = (800, 800)) -> FasterRCNN:
    """torchvision's fasterrcnn_resnet50_fpn (num_classes + 1 outputs incl. background), static decode."""
    from torchvision.models.detection import fasterrcnn_resnet50_fpn

    check_r50_fpn(input_size)
    cfg = CONFIGS["faster-rcnn-r50-fpn"]
    tv = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=num_classes + 1)
    rpn = nn.Module()
    rpn.anchor_generator = tv.rpn.anchor_generator
    rpn.head = tv.rpn.head
    roi_heads = nn.Module()
    roi_heads.box_roi_pool = tv.roi_heads.box_roi_pool
    roi_heads.box_head = tv.roi_heads.box_head
    roi_heads.box_predictor = tv.roi_heads.box_predictor
    model = FasterRCNN(tv.backbone, rpn, roi_heads, input_size, fpn_grid_sizes(input_size, (4, 8, 16, 32, 64)),
                       cfg["pre_nms_top_n"], cfg["post_nms_top_n"], cfg["nms_thresh"], cfg["min_size"])
    init_two_stage(model)
    return model.eval()


def check_input_size_vgg16(size: tuple[int, int]) -> None:
    """Sides >= 64 (at least 4x4 conv5_3 cells). Any size works, as in the paper (600 on the shorter
    side): the four 2x2 max pools floor, so conv5_3 is (H // 16) x (W // 16)."""
    h, w = (int(s) for s in size)
    if h < 64 or w < 64:
        raise EnginesmithError(
            f"faster-rcnn-vgg16 needs input sides >= 64 (VGG16 conv5_3 has stride 16; at least 4x4 feature cells), "
            f"got {h}x{w}; try 600x600"
        )


def check_input_size_r50_fpn(size: tuple[int, int]) -> None:
    """Sides multiples of 32 (ResNet-50 C5 stride) and >= 128."""
    check_r50_fpn(size)


def _preprocess(size: tuple[int, int]) -> PreprocessSpec:
    return PreprocessSpec(input_size=size, resize="stretch", color="RGB", scale=1.0 / 255.0, mean=IMAGENET_MEAN,
                          std=IMAGENET_STD)


SPEC_VGG16 = register(
    ModelSpec(
        name="faster-rcnn-vgg16",
        task="detection",
        builder=build_faster_rcnn_vgg16,
        input_size=CONFIGS["faster-rcnn-vgg16"]["input_size"],
        num_classes=20,
        preprocess=_preprocess(CONFIGS["faster-rcnn-vgg16"]["input_size"]),
        output_names=("boxes", "scores"),
        check_input_size=check_input_size_vgg16,
        load_weights=partial(load_weights, darknet_ok=False),
        class_names=VOC_NAMES,
        default_calibration="photos",
        paper="Ren, He, Girshick, Sun, Faster R-CNN: Towards Real-Time Object Detection with Region Proposal "
              "Networks, NIPS 2015 (arXiv:1506.01497); VGG16 row of the SSD paper's Table 7",
        source_file=__file__,
        # no ci_input_size: 137M parameters (fc6 alone is 25088x4096), too heavy for CI builds
        static_batch=True, details={"box_format": "xyxy", "num_proposals": 300, "background_column": "dropped"},
    )
)

SPEC_R50_FPN = register(
    ModelSpec(
        name="faster-rcnn-r50-fpn",
        task="detection",
        builder=build_faster_rcnn_r50_fpn,
        input_size=CONFIGS["faster-rcnn-r50-fpn"]["input_size"],
        num_classes=90,
        preprocess=_preprocess(CONFIGS["faster-rcnn-r50-fpn"]["input_size"]),
        output_names=("boxes", "scores"),
        check_input_size=check_input_size_r50_fpn,
        load_weights=partial(load_weights, darknet_ok=False),
        class_names=coco_names()[1:],
        default_calibration="photos",
        paper="Ren et al., Faster R-CNN, NIPS 2015, with Lin et al., Feature Pyramid Networks for Object Detection, "
              "CVPR 2017; torchvision fasterrcnn_resnet50_fpn",
        source_file=__file__,
        static_batch=True, ci_input_size=(128, 128),
        details={"box_format": "xyxy", "num_proposals": 1000, "background_column": "dropped"},
    )
)


# ------------------------------------------------------------------------------------------- slim (issue 8)
# faster-rcnn-vgg16-slim: the learned-proposal row of the R-CNN -> Fast R-CNN -> Faster R-CNN arc on the
# offline set (16 classes), with exactly fast-rcnn-vgg16-slim's network: quarter-width VGG16 with BatchNorm
# without pool5 (models/layers.py slim_vgg16_features: stride 16, 128 channels), 320x320 stretched, RoI max
# pooling 7x7 at 1/16, fc6/fc7 1024, 17 outputs (background at 0). The RPN (3x3 conv, 128 channels) has 12
# anchors per location: sizes 16, 32, 64, 128 x aspect ratios (h/w) 1, 2, 3. Fitted to the offline set: in
# 320x320 input pixels its train boxes have sqrt(w*h) 8.8 .. 98 (5th .. 95th percentile, median 31) and
# h/w 0.95 .. 3.8 (median 2.1: digits are tall); ratios (1, 2, 3) put 44% of the boxes at IoU >= 0.7 with
# an anchor of their shape against 36% for (0.5, 1, 2). Test settings scaled from the paper's with the
# anchor count (20x20 cells x 12 = 4800 at 320x320): NMS 0.7 over the top 2000, 300 proposals kept.
# Trained by training/faster_rcnn.py (`enginesmith train faster-rcnn-vgg16-slim`).
CONFIGS["faster-rcnn-vgg16-slim"] = dict(
    input_size=(320, 320), num_classes=16, anchor_sizes=((16, 32, 64, 128),), aspect_ratios=((1.0, 2.0, 3.0),),
    pre_nms_top_n=2000, post_nms_top_n=300, nms_thresh=0.7, min_size=1e-3,
)


def check_input_size_vgg16_slim(size: tuple[int, int]) -> None:
    """Sides >= 64 (at least 4x4 conv5_3 cells at stride 16; the max pools floor)."""
    h, w = (int(s) for s in size)
    if h < 64 or w < 64:
        raise EnginesmithError(
            f"faster-rcnn-vgg16-slim needs input sides >= 64 (conv5_3 has stride 16; at least 4x4 feature cells), "
            f"got {h}x{w}; try 320x320"
        )


def build_faster_rcnn_vgg16_slim(num_classes: int = 16, input_size: tuple[int, int] = (320, 320)) -> FasterRCNN:
    """Quarter-width VGG16-BN Faster R-CNN (num_classes foreground classes + background), seeded init."""
    check_input_size_vgg16_slim(input_size)
    # the backbone is built first: for a seed, fast-rcnn-vgg16-slim's initial backbone
    return build_stride16("faster-rcnn-vgg16-slim", slim_vgg16_features(pool5=False), 128, 1024, num_classes,
                          input_size)


def _offline_names() -> tuple[str, ...]:
    return tuple(OFFLINE_NAMES)


SPEC_VGG16_SLIM = register(
    ModelSpec(
        name="faster-rcnn-vgg16-slim",
        task="detection",
        builder=build_faster_rcnn_vgg16_slim,
        input_size=CONFIGS["faster-rcnn-vgg16-slim"]["input_size"],
        num_classes=16,
        preprocess=_preprocess(CONFIGS["faster-rcnn-vgg16-slim"]["input_size"]),
        output_names=("boxes", "scores"),
        check_input_size=check_input_size_vgg16_slim,
        load_weights=partial(load_weights, darknet_ok=False),
        class_names=_offline_names(),
        default_calibration="photos",
        paper="Ren, He, Girshick, Sun, Faster R-CNN, NIPS 2015 (arXiv:1506.01497); quarter-width VGG16 with "
              "BatchNorm at 320x320 for the offline set (the backbone of fast-rcnn-vgg16-slim)",
        source_file=__file__,
        static_batch=True, ci_input_size=(128, 128), trainer="faster-rcnn",
        details={"box_format": "xyxy", "num_proposals": 300, "background_column": "dropped", "edge": True},
    )
)
