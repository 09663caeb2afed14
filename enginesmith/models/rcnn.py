"""R-CNN (Girshick, Donahue, Darrell, Malik 2014): region proposals, a CNN per warped region, per-class
linear SVMs, class-specific box regression, NMS.

The engine is the per-region part: warped regions [N, 3, S, S] (N = proposals, a dynamic batch) ->
- scores [N, C]: sigmoid of the C per-class linear SVM margins on fc7 (the SVMs are trained with
  scikit-learn, training/rcnn.py, and stored as one nn.Linear; the sigmoid is monotone, so rankings and mAP
  are the margins', and thresholds read as in the other detectors: 0.5 = margin 0);
- deltas [N, C, 4]: class-specific box regression (tx, ty, tw, th; the paper's Appendix C) on pool5, a
  ridge regression trained with scikit-learn, also one nn.Linear.
Proposals (selective search, runtime/proposals.py), the warp with 16 px context at 227 (runtime/region_warp.py),
box decoding and NMS run on the host: runtime/two_stage.py RCNNDetector.
`fc8` (C + 1 softmax) is the fine-tuning classifier; it is not an engine output (the paper drops it for
the SVMs, Sec. 2.3 and Appendix B).

Networks:
- rcnn-alexnet: AlexNet (models/alexnet.py) at 227x227, fc7 4096, pool5 9216, VOC 20 classes.
- rcnn-vgg16: VGG16 (configuration D) at 224x224, fc7 4096, pool5 25088, VOC 20 classes (the paper's
  "R-CNN VGG16" row, 66.0 mAP on VOC 2007 with box regression).
- rcnn-vgg16-slim: VGG16 at a quarter of its width with BatchNorm after every convolution (models/edge.py
  SLIM_BASE, the same base as ssd-slim-256 and fast-rcnn-vgg16-slim) at 64x64, pool5 128x2x2 = 512, fc6/fc7
  1024, the offline set's 16 classes; trained here from scratch (`enginesmith train rcnn-vgg16-slim`).
"""

from __future__ import annotations

from functools import partial

import torch
from torch import Tensor, nn

from enginesmith.errors import EnginesmithError
from enginesmith.models.alexnet import AlexNet
from enginesmith.models.classes import OFFLINE_NAMES, VOC_NAMES
from enginesmith.models.layers import slim_vgg16_features
from enginesmith.models.registry import ModelSpec, register
from enginesmith.models.weights import load_weights
from enginesmith.runtime.preprocess import PreprocessSpec

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class RegionDecode(nn.Module):
    """SVM margins -> scores in (0, 1); flat regression -> [N, C, 4]. Kept in float by the quantizers."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes

    def forward(self, margins: Tensor, deltas: Tensor) -> tuple[Tensor, Tensor]:
        return torch.sigmoid(margins), deltas.reshape(deltas.shape[0], self.num_classes, 4)


class RCNN(nn.Module):
    """x [N, 3, S, S] warped regions -> (scores [N, C], deltas [N, C, 4]); forward_train(x) -> fc8 logits
    [N, C + 1] (background at 0) and the features (pool5 flat, fc7) for the SVMs and regressors."""

    def __init__(self, features: nn.Module, pool5_dim: int, fc_dim: int, num_classes: int, dropout: float = 0.5) -> None:
        super().__init__()
        self.features = features
        self.fc = nn.Sequential(nn.Linear(pool5_dim, fc_dim), nn.ReLU(inplace=True), nn.Dropout(dropout),  # fc6
                                nn.Linear(fc_dim, fc_dim), nn.ReLU(inplace=True), nn.Dropout(dropout))  # fc7
        self.fc8 = nn.Linear(fc_dim, num_classes + 1)
        self.svm = nn.Linear(fc_dim, num_classes)
        self.bbox_reg = nn.Linear(pool5_dim, num_classes * 4)
        self.decode = RegionDecode(num_classes)
        self.num_classes = num_classes
        for m in [*self.fc.modules(), self.fc8, self.svm]:
            if isinstance(m, nn.Linear):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.bbox_reg.weight, std=0.1 / pool5_dim ** 0.5)
        nn.init.zeros_(self.bbox_reg.bias)

    def region_features(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(pool5 [N, P5] flattened, fc7 [N, D] after ReLU)."""
        pool5 = torch.flatten(self.features(x), 1)
        return pool5, self.fc(pool5)

    def forward_train(self, x: Tensor) -> Tensor:
        return self.fc8(self.region_features(x)[1])

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        pool5, fc7 = self.region_features(x)
        return self.decode(self.svm(fc7), self.bbox_reg(pool5))


def _check_exact(name: str, size_wanted: tuple[int, int], size: tuple[int, int]) -> None:
    if tuple(int(s) for s in size) != size_wanted:
        raise EnginesmithError(f"{name} warps every region to exactly {size_wanted[0]}x{size_wanted[1]} (fc6 is sized "
                               f"for that pool5), got {size[0]}x{size[1]}; drop --input-size")


def build_rcnn_alexnet(num_classes: int = 20, input_size: tuple[int, int] = (227, 227)) -> RCNN:
    _check_exact("rcnn-alexnet", (227, 227), input_size)
    return RCNN(AlexNet(1000).features, 256 * 6 * 6, 4096, num_classes).eval()


def build_rcnn_vgg16(num_classes: int = 20, input_size: tuple[int, int] = (224, 224)) -> RCNN:
    from torchvision.models import vgg16

    _check_exact("rcnn-vgg16", (224, 224), input_size)
    return RCNN(vgg16(weights=None).features, 512 * 7 * 7, 4096, num_classes).eval()


def build_rcnn_vgg16_slim(num_classes: int = 16, input_size: tuple[int, int] = (64, 64)) -> RCNN:
    _check_exact("rcnn-vgg16-slim", (64, 64), input_size)
    return RCNN(slim_vgg16_features(pool5=True), 128 * 2 * 2, 1024, num_classes).eval()


def region_preprocess(size: tuple[int, int]) -> PreprocessSpec:
    """Warped regions: RGB / 255, ImageNet mean/std; the warp itself is runtime/region_warp.py's."""
    return PreprocessSpec(input_size=size, resize="stretch", color="RGB", scale=1.0 / 255.0, mean=IMAGENET_MEAN,
                          std=IMAGENET_STD)


def _register(name: str, builder, size: tuple[int, int], num_classes: int, class_names: tuple[str, ...],
              paper: str, details: dict, ci_input_size: tuple[int, int] | None = None) -> ModelSpec:
    return register(ModelSpec(
        name=name, task="detection", builder=builder, input_size=size, num_classes=num_classes,
        preprocess=region_preprocess(size), output_names=("scores", "deltas"),
        check_input_size=partial(_check_exact, name, size), load_weights=partial(load_weights, darknet_ok=False),
        class_names=class_names, default_calibration="photos", paper=paper, source_file=__file__,
        two_stage="rcnn", feeds="rcnn_regions", ci_input_size=ci_input_size, details={"box_format": "xyxy", **details},
    ))


PAPER = "Girshick, Donahue, Darrell, Malik, Rich feature hierarchies for accurate object detection and semantic " \
        "segmentation, CVPR 2014 (arXiv:1311.2524 v5)"
SPEC_ALEXNET = _register("rcnn-alexnet", build_rcnn_alexnet, (227, 227), 20, VOC_NAMES, PAPER + "; AlexNet (T-Net)", {})
SPEC_VGG16 = _register("rcnn-vgg16", build_rcnn_vgg16, (224, 224), 20, VOC_NAMES, PAPER + "; VGG16 (O-Net)", {})
SPEC_SLIM = _register("rcnn-vgg16-slim", build_rcnn_vgg16_slim, (64, 64), len(OFFLINE_NAMES), OFFLINE_NAMES,
                      PAPER + "; quarter-width VGG16 with BatchNorm at 64x64 for the offline set",
                      {"edge": True}, ci_input_size=(64, 64))
