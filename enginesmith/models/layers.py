"""Network building blocks shared by more than one model family (one home each; the families import them).

- conv_bn_relu, SLIM_BASE, slim_vgg16_features: the quarter-width VGG16 with BatchNorm of ssd-slim-256 (edge.py),
  rcnn-slim (rcnn.py), fast-rcnn-vgg16-slim (fast_rcnn.py) and faster-rcnn-vgg16-slim (faster_rcnn.py).
- vgg16_conv5_3: torchvision's VGG16 conv1_1 .. conv5_3 (Fast and Faster R-CNN VGG16).
- RoIPoolSingle, init_box_head: the single-level RoI pooling and the paper's box-head init (Fast/Faster R-CNN).
- ConvBNLeaky: Darknet's conv + BN + leaky layer (YOLOv1..v3, the tiny and edge YOLOs).
"""

from __future__ import annotations

from torch import Tensor, nn

# VGG16 conv1_1..conv5_3 at 1/4 width; "M" max-pool 2/2.
SLIM_BASE = (16, 16, "M", 32, 32, "M", 64, 64, 64, "M", 128, 128, 128, "M", 128, 128, 128)


def conv_bn_relu(cin: int, cout: int, k: int = 3, stride: int = 1, padding: int | None = None,
                 dilation: int = 1) -> nn.Sequential:
    pad = k // 2 * dilation if padding is None else padding
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, pad, dilation=dilation, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


def slim_vgg16_features(pool5: bool = True) -> nn.Sequential:
    """Quarter-width VGG16 with BatchNorm (SLIM_BASE): conv1_1 .. conv5_3 (+ pool5). 128 channels,
    stride 32 with pool5, 16 without."""
    layers: list[nn.Module] = []
    cin = 3
    for v in SLIM_BASE:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers.append(conv_bn_relu(cin, int(v)))
            cin = int(v)
    if pool5:
        layers.append(nn.MaxPool2d(2, 2))
    for m in nn.Sequential(*layers).modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    return nn.Sequential(*layers)


def vgg16_conv5_3() -> nn.Sequential:
    """VGG16 (configuration D) conv1_1 .. conv5_3 + ReLU, without pool5: stride 16, 512 channels."""
    from torchvision.models import vgg16

    return vgg16(weights=None).features[:30]


class RoIPoolSingle(nn.Module):
    """torchvision.ops.RoIPool for a single-level backbone: (features dict, [boxes], image sizes) -> pooled."""

    def __init__(self, output_size: int, spatial_scale: float) -> None:
        super().__init__()
        from torchvision.ops import RoIPool

        self.pool = RoIPool((output_size, output_size), spatial_scale)

    def forward(self, features: dict[str, Tensor], boxes: list[Tensor], image_shapes: list[tuple[int, int]]) -> Tensor:
        return self.pool(features["0"], boxes)


def init_box_head(roi_heads: nn.Module) -> None:
    """The Fast R-CNN paper's init of roi_heads.box_head (fc6/fc7: Kaiming fan_in) and box_predictor (cls_score
    N(0, 0.01), bbox_pred N(0, 0.001), zero biases), in that order (seeded builders depend on it)."""
    for m in roi_heads.box_head.modules():
        if isinstance(m, nn.Linear):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            nn.init.zeros_(m.bias)
    pred = roi_heads.box_predictor
    nn.init.normal_(pred.cls_score.weight, std=0.01)
    nn.init.normal_(pred.bbox_pred.weight, std=0.001)
    nn.init.zeros_(pred.cls_score.bias)
    nn.init.zeros_(pred.bbox_pred.bias)


class ConvBNLeaky(nn.Module):
    """Darknet convolutional layer with batch_normalize=1, activation=leaky: conv (no bias), BN, LeakyReLU(0.1)."""

    def __init__(self, cin: int, cout: int, k: int, stride: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride, padding=k // 2, bias=False)
        self.bn = nn.BatchNorm2d(cout)  # darknet's BN epsilon (1e-5 in its CUDNN path; .00001 on CPU)
        self.act = nn.LeakyReLU(0.1)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.bn(self.conv(x)))
