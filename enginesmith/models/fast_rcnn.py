"""Fast R-CNN (Girshick 2015): one backbone pass over the image, RoI max pooling of the given proposals,
fc6/fc7, a softmax classifier and class-specific box regression.

The engine has two inputs, the second of dynamic length:
- images [1, 3, H, W] (preprocessed as the spec says, batch 1);
- rois [R, 4]: proposals x1, y1, x2, y2 in input pixels (selective search on the host,
  runtime/proposals.py, scaled from the original image), R >= 1 dynamic.
RoI pooling exports as ONNX MaxRoiPool (torchvision.ops.roi_pool; OpenVINO and ONNX Runtime run it).
Outputs follow the detector contract with A = R: boxes [1, R, 4] (per proposal the regressed box of its
best foreground class, clipped; the same decode as models/faster_rcnn.py DetectionDecode, BoxCoder
weights 10, 10, 5, 5) and scores [1, R, C] (softmax, background dropped). Host NMS: runtime/nms.py.

Networks:
- fast-rcnn-vgg16: the paper's VGG16 model (conv5_3 stride 16, RoI pool 7x7, fc6/fc7 4096, 21 classes
  for VOC), input 600x600 (the paper scales the shorter side to 600; engines take one fixed size).
- fast-rcnn-vgg16-slim: quarter-width VGG16 with BatchNorm (models/layers.py slim_vgg16_features, the base
  of rcnn-vgg16-slim and ssd-slim-256) without pool5, at 320x320; RoI pool 7x7 over 128 channels, fc6/fc7
  1024; the offline set's 16 classes; trained here (`enginesmith train fast-rcnn-vgg16-slim`).
"""

from __future__ import annotations

from functools import partial

import torch
from torch import Tensor, nn

from enginesmith.errors import EnginesmithError
from enginesmith.models.classes import OFFLINE_NAMES, VOC_NAMES
from enginesmith.models.faster_rcnn import DetectionDecode
from enginesmith.models.layers import RoIPoolSingle, init_box_head, slim_vgg16_features, vgg16_conv5_3
from enginesmith.models.registry import ModelSpec, register
from enginesmith.models.weights import load_weights
from enginesmith.runtime.preprocess import PreprocessSpec

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
ROI_INPUT = "rois"


class FastRCNN(nn.Module):
    """(images [1, 3, H, W], rois [R, 4] input pixels) -> (boxes [1, R, 4], scores [1, R, C]).

    Submodules use torchvision's names (roi_heads.box_roi_pool / box_head.fc6, fc7 / box_predictor.cls_score,
    bbox_pred), so torchvision's RoIHeads trains them (training/fast_rcnn.py)."""

    def __init__(self, backbone: nn.Module, channels: int, fc_dim: int, num_classes: int,
                 input_size: tuple[int, int], pool: int = 7, stride: int = 16) -> None:
        super().__init__()
        from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead

        self.backbone = backbone
        self.roi_heads = nn.Module()
        self.roi_heads.box_roi_pool = RoIPoolSingle(pool, 1.0 / stride)
        self.roi_heads.box_head = TwoMLPHead(channels * pool * pool, fc_dim)
        self.roi_heads.box_predictor = FastRCNNPredictor(fc_dim, num_classes + 1)
        self.decode = DetectionDecode(input_size)
        self.input_size = (int(input_size[0]), int(input_size[1]))
        init_box_head(self.roi_heads)

    def heads(self, x: Tensor, rois: Tensor) -> tuple[Tensor, Tensor]:
        """class_logits [R, C + 1], box_regression [R, (C + 1) * 4]."""
        if x.shape[0] != 1:
            raise EnginesmithError(f"Fast R-CNN engines take one image per call (the proposals belong to it), got "
                                   f"batch {x.shape[0]}; use --batch 1")
        feats = {"0": self.backbone(x)}
        pooled = self.roi_heads.box_roi_pool(feats, [rois], [self.input_size])
        return self.roi_heads.box_predictor(self.roi_heads.box_head(pooled))

    def forward(self, x: Tensor, rois: Tensor) -> tuple[Tensor, Tensor]:
        class_logits, box_regression = self.heads(x, rois)
        valid = torch.ones_like(rois[:, 0])
        return self.decode(rois, valid, class_logits, box_regression)


def build_fast_rcnn_vgg16(num_classes: int = 20, input_size: tuple[int, int] = (600, 600)) -> FastRCNN:
    _check("fast-rcnn-vgg16", input_size)
    return FastRCNN(vgg16_conv5_3(), 512, 4096, num_classes, input_size).eval()


def build_fast_rcnn_vgg16_slim(num_classes: int = 16, input_size: tuple[int, int] = (320, 320)) -> FastRCNN:
    _check("fast-rcnn-vgg16-slim", input_size)
    return FastRCNN(slim_vgg16_features(pool5=False), 128, 1024, num_classes, input_size).eval()


def _check(name: str, size: tuple[int, int]) -> None:
    """Sides >= 64 (at least 4x4 conv5_3 cells at stride 16)."""
    h, w = (int(s) for s in size)
    if h < 64 or w < 64:
        raise EnginesmithError(f"{name} needs input sides >= 64 (conv5_3 has stride 16; at least 4x4 feature cells), "
                               f"got {h}x{w}")


def _preprocess(size: tuple[int, int]) -> PreprocessSpec:
    return PreprocessSpec(input_size=size, resize="stretch", color="RGB", scale=1.0 / 255.0, mean=IMAGENET_MEAN,
                          std=IMAGENET_STD)


def _register(name: str, builder, size: tuple[int, int], num_classes: int, class_names: tuple[str, ...],
              paper: str, details: dict, ci_input_size: tuple[int, int] | None = None) -> ModelSpec:
    return register(ModelSpec(
        name=name, task="detection", builder=builder, input_size=size, num_classes=num_classes,
        preprocess=_preprocess(size), output_names=("boxes", "scores"), check_input_size=partial(_check, name),
        load_weights=partial(load_weights, darknet_ok=False), class_names=class_names, default_calibration="photos",
        paper=paper, source_file=__file__,
        two_stage="fast-rcnn", feeds="fast_rcnn_rois", static_batch=True, ci_input_size=ci_input_size,
        details={"box_format": "xyxy", "background_column": "dropped", **details},
    ))


PAPER = "Girshick, Fast R-CNN, ICCV 2015 (arXiv:1504.08083)"
SPEC_VGG16 = _register("fast-rcnn-vgg16", build_fast_rcnn_vgg16, (600, 600), 20, VOC_NAMES, PAPER + "; VGG16", {})
SPEC_SLIM = _register("fast-rcnn-vgg16-slim", build_fast_rcnn_vgg16_slim, (320, 320), len(OFFLINE_NAMES), OFFLINE_NAMES,
                      PAPER + "; quarter-width VGG16 with BatchNorm at 320x320 for the offline set",
                      {"edge": True}, ci_input_size=(128, 128))
