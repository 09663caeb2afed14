"""RetinaNet (Lin, Goyal, Girshick, He, Dollar 2017, "Focal Loss for Dense Object Detection"), on
torchvision's retinanet_resnet50_fpn.

ResNet-50 FPN P3-P7 (P6/P7 from stride-2 3x3 convs), 9 anchors per location (sizes 2^0, 2^(1/3),
2^(2/3) x 32..512, ratios 0.5, 1, 2), class and box subnets of four 3x3 256-d convs each. The module
names are torchvision's (backbone.body/fpn, head.classification_head/regression_head), so a
torchvision state dict of retinanet_resnet50_fpn loads as is. Its COCO head has 91 outputs in
torchvision's indexing (column 0 "__background__" and the "N/A" gaps are never positive in training;
they are kept so that checkpoints load and class indices are torchvision's).

torchvision's GeneralizedRCNNTransform is bypassed: input [N, 3, H, W] already preprocessed (RGB/255,
ImageNet mean/std, stretched to 800x800 by default; sides multiples of 32).
Outputs (the contract; every anchor decoded, no NMS; decoding under the submodule `decode`):
- boxes  [N, A, 4]: anchors + regression (BoxCoder weights 1, 1, 1, 1, torchvision's), x1, y1, x2, y2
  in input pixels, clipped to the image;
- scores [N, A, C]: sigmoid of the class logits (C = 91);
A = 9 * sum over P3..P7 of h_l * w_l (ordered level, row, column, anchor, as torchvision's head).
The loss is the paper's alpha-balanced focal loss, `focal_loss` (checked against torchvision.ops.sigmoid_focal_loss).

34,068,119 parameters = torchvision's published 34,014,999 + the 53,120 BatchNorm scales/shifts that its
COCO model keeps as FrozenBatchNorm2d buffers (weights=None builds nn.BatchNorm2d; both checkpoint
layouts load); 151.54 GMACs at 800x800 (torchvision's published 151.54).
"""

from __future__ import annotations

from functools import partial

import torch
from torch import Tensor, nn

from enginesmith.errors import EnginesmithError
from enginesmith.models.faster_rcnn import IMAGENET_MEAN, IMAGENET_STD, compute_anchors, fpn_grid_sizes
from enginesmith.models.registry import ModelSpec, register
from enginesmith.models.weights import load_weights
from enginesmith.runtime.preprocess import PreprocessSpec

INPUT_SIZE = (800, 800)
NUM_CLASSES = 91  # torchvision's COCO head
STRIDES = (8, 16, 32, 64, 128)  # P3..P7


def focal_loss(
    logits: Tensor, targets: Tensor, alpha: float = 0.25, gamma: float = 2.0, reduction: str = "none"
) -> Tensor:
    """The paper's alpha-balanced focal loss (eq. 5): FL(p_t) = -alpha_t (1 - p_t)^gamma log(p_t).

    p = sigmoid(logits); p_t = p for targets 1, 1 - p for targets 0; alpha_t = alpha for targets 1,
    1 - alpha for targets 0 (alpha < 0 disables the balancing). log(p_t) is computed as
    -BCE-with-logits for numerical stability. reduction: "none" | "mean" | "sum".
    """
    p = torch.sigmoid(logits)
    ce = nn.functional.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    if reduction != "none":
        raise ValueError(f"reduction must be 'none', 'mean' or 'sum', got {reduction!r}")
    return loss


class RetinaDecode(nn.Module):
    """All box decoding (kept in float by quantizers): regression [N, A, 4] + anchors -> clipped boxes;
    class logits [N, A, C] -> sigmoid scores."""

    def __init__(self, anchors: Tensor, image_size: tuple[int, int]) -> None:
        super().__init__()
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.register_buffer("anchors", anchors, persistent=False)
        from math import log

        self.clip = log(1000.0 / 16)  # torchvision's BoxCoder bbox_xform_clip

    def forward(self, cls_logits: Tensor, bbox_regression: Tensor) -> tuple[Tensor, Tensor]:
        h, w = self.image_size
        a = self.anchors
        widths = a[:, 2] - a[:, 0]
        heights = a[:, 3] - a[:, 1]
        cx = a[:, 0] + 0.5 * widths
        cy = a[:, 1] + 0.5 * heights
        dx, dy, dw, dh = bbox_regression.unbind(-1)  # weights 1, 1, 1, 1
        dw = dw.clamp(max=self.clip)
        dh = dh.clamp(max=self.clip)
        pcx = dx * widths + cx
        pcy = dy * heights + cy
        pw = torch.exp(dw) * widths
        ph = torch.exp(dh) * heights
        # torchvision's BoxCoder: x2 = cx + 0.5 * w (written as c_to_c_w = 0.5 * w)
        x1 = (pcx - 0.5 * pw).clamp(0, w)
        y1 = (pcy - 0.5 * ph).clamp(0, h)
        x2 = (pcx + 0.5 * pw).clamp(0, w)
        y2 = (pcy + 0.5 * ph).clamp(0, h)
        return torch.stack((x1, y1, x2, y2), dim=-1), torch.sigmoid(cls_logits)


class RetinaNet(nn.Module):
    """RetinaNet: x [N, 3, H, W] -> (boxes [N, A, 4], scores [N, A, C]); torchvision's module names."""

    def __init__(self, num_classes: int = NUM_CLASSES, input_size: tuple[int, int] = INPUT_SIZE) -> None:
        super().__init__()
        from torchvision.models.detection import retinanet_resnet50_fpn

        tv = retinanet_resnet50_fpn(weights=None, weights_backbone=None, num_classes=num_classes)
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.backbone = tv.backbone
        self.anchor_generator = tv.anchor_generator
        self.head = tv.head
        anchors = compute_anchors(self.anchor_generator, self.input_size, fpn_grid_sizes(self.input_size, STRIDES))
        self.decode = RetinaDecode(anchors, self.input_size)

    def forward_raw(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """torchvision's head outputs: cls_logits [N, A, C], bbox_regression [N, A, 4]."""
        feats = list(self.backbone(x).values())
        out = self.head(feats)
        return out["cls_logits"], out["bbox_regression"]

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.decode(*self.forward_raw(x))


def init_retinanet(model: RetinaNet, size: int = 128) -> None:
    """Seeded init with O(1) activations in the heads (torchvision's own head init is kept otherwise).

    Random ResNet-50 weights leave the FPN outputs at std ~50; measured once on a seeded N(0, 1)
    input, the FPN output convs are rescaled to unit feature std, the subnet convs get Kaiming
    (fan-in) init, and the final convs are scaled so class logits have std 1 around the paper's
    prior bias -log((1 - 0.01) / 0.01) and box deltas std 0.2. A loaded checkpoint replaces all of it.
    """
    model.eval()  # BatchNorm must not update its running statistics here
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 3, size, size, generator=gen)
    cls_head, reg_head = model.head.classification_head, model.head.regression_head
    with torch.no_grad():
        for sub in (cls_head.conv, reg_head.conv):
            for m in sub.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                    nn.init.zeros_(m.bias)
        for last in (cls_head.cls_logits, reg_head.bbox_reg):
            nn.init.normal_(last.weight, std=1.0 / last.weight[0].numel() ** 0.5)
        nn.init.zeros_(reg_head.bbox_reg.bias)
        fpn_convs = [m for m in model.backbone.fpn.layer_blocks.modules() if isinstance(m, nn.Conv2d)]
        feats = model.backbone(x)
        s = 1.0 / torch.cat([f.flatten() for f in feats.values()]).std().item()
        for m in fpn_convs:  # P6/P7 are convs (zero bias) on P5 and ReLU(P6): they scale with it
            m.weight.mul_(s)
            m.bias.mul_(s)
        logits, deltas = model.forward_raw(x)
        bias = cls_head.cls_logits.bias.clone()
        w = cls_head.cls_logits.weight
        w.mul_(1.0 / (logits - bias[0]).std().item())
        reg_head.bbox_reg.weight.mul_(0.2 / deltas.std().item())


def build_retinanet_r50_fpn(num_classes: int = NUM_CLASSES, input_size: tuple[int, int] = INPUT_SIZE) -> RetinaNet:
    """torchvision's retinanet_resnet50_fpn (no weights) with the contract's decode; seeded init, eval."""
    check_input_size(input_size)
    model = RetinaNet(num_classes, input_size)
    init_retinanet(model)
    return model.eval()


def check_input_size(size: tuple[int, int]) -> None:
    """Both sides multiples of 32 and >= 128 (stride-32 C5; P6/P7 then have at least 2x2 / 1x1 cells)."""
    h, w = (int(s) for s in size)
    if h < 128 or w < 128 or h % 32 or w % 32:
        raise EnginesmithError(
            f"retinanet-r50-fpn needs input sides that are multiples of 32 and >= 128 (ResNet-50 stride 32; "
            f"anchors are baked for whole feature cells), got {h}x{w}; try 800x800 or 512x512"
        )


def num_anchors(input_size: tuple[int, int]) -> int:
    """A = 9 * sum over P3..P7 of h_l * w_l."""
    return 9 * sum(gh * gw for gh, gw in fpn_grid_sizes(input_size, STRIDES))


def coco_names() -> tuple[str, ...]:
    """torchvision's 91 COCO category names (index 0 "__background__", "N/A" gaps), from its weights metadata."""
    from torchvision.models.detection import RetinaNet_ResNet50_FPN_Weights

    return tuple(RetinaNet_ResNet50_FPN_Weights.COCO_V1.meta["categories"])


PREPROCESS = PreprocessSpec(
    input_size=INPUT_SIZE, resize="stretch", color="RGB", scale=1.0 / 255.0, mean=IMAGENET_MEAN, std=IMAGENET_STD
)

SPEC = register(
    ModelSpec(
        name="retinanet-r50-fpn",
        task="detection",
        builder=build_retinanet_r50_fpn,
        input_size=INPUT_SIZE,
        num_classes=NUM_CLASSES,
        preprocess=PREPROCESS,
        output_names=("boxes", "scores"),
        check_input_size=check_input_size,
        load_weights=partial(load_weights, darknet_ok=False),
        class_names=coco_names(),
        default_calibration="photos",
        paper="Lin, Goyal, Girshick, He, Dollar, Focal Loss for Dense Object Detection, ICCV 2017 (arXiv:1708.02002)",
        source_file=__file__,
        details={"box_format": "xyxy", "strides": STRIDES, "anchors_per_location": 9, "score": "sigmoid",
                 "background_column": 0},
        ci_input_size=(128, 128),
    )
)
