"""YOLOv1 (Redmon, Divvala, Girshick, Farhadi, You Only Look Once, CVPR 2016), Fast YOLO, and the
YOLO paper's "YOLO VGG-16" (also a row of the SSD paper's Table 4).

Input [N, 3, 448, 448] RGB in [0, 1] (stretched to 448x448 as darknet v1 does; no letterbox).
The network regresses, for an S x S grid (S = 7 at 448: the stride is 64), B = 2 boxes per cell and
C = 20 class probabilities per cell: S*S*(5B + C) = 7*7*30 = 1470 outputs from a linear connected
layer. Outputs, decoded in the graph under the submodule `decode`:
- boxes  [N, A, 4]: x1, y1, x2, y2 in input pixels, A = S*S*B = 98 (cell-major, then box);
- scores [N, A, C]: P(class | cell) * confidence(box), clamped to [0, 1].

Output layout (darknet's detection_layer, the layout the official `.weights` were trained with; it is
NOT a per-cell interleaved 7x7x30 tensor): the 1470 values are
  [S*S*C class probabilities (cell i: i*C + c)] [S*S*B confidences (i*B + b)] [S*S*B*4 coords ((i*B + b)*4)]
with cell i = row*S + col. Per box, (x, y) is the centre offset inside its cell and (w, h) are the
square roots of width and height relative to the image (the paper's Sec. 2.2, cfg `sqrt=1`), so
  cx = (col + x) / S * W,  cy = (row + y) / S * H,  w = w_pred^2 * W,  h = h_pred^2 * H.
Class probabilities and confidences are linear outputs (cfg softmax=0; trained with sum-squared
error); darknet keeps a detection when prob * conf > thresh, so clamping the product at 0 changes
nothing for any positive threshold, and clamping at 1 keeps the contract's probabilities.

Architectures (config tables below):
- yolov1: the paper's Fig. 3, 24 conv layers (bias, leaky ReLU 0.1, no batch norm: that came with
  v2) + connected 4096 (leaky) + dropout 0.5 + connected 1470 (linear). ~271.7M parameters.
- fast-yolo: darknet's `cfg/yolov1-tiny.cfg` (pjreddie/darknet), the released Fast YOLO: conv 16, 32,
  64, 128, 256, 512 (each + maxpool 2/2), 1024, 256 (3x3, batch norm, leaky), connected 1470. The
  paper says "nine convolutional layers"; the released cfg has eight conv layers and the connected
  layer, which is what the released weights load into, so we follow it.
- yolo-vgg16: torchvision's VGG-16 `features` (13 conv + ReLU, 5 maxpools: 448 -> 14x14x512) followed
  by YOLO's detection layers as the paper adds them to a pretrained classifier (Sec. 2.2: "four
  convolutional layers and two fully connected layers"): conv 3x3x1024, 3x3x1024/2, 3x3x1024,
  3x3x1024 (leaky), connected 4096, dropout, connected 1470.

Other input sizes: sides multiples of 64 give an (H/64) x (W/64) grid and connected layers sized for
it (darknet sizes connected inputs from the previous layer the same way); the released weights only
fit 448x448. Darknet `.weights` (conv and connected layers) load through models/weights/darknet.py
(the model opts in with `darknet_connected = True`); see darknet_cfg.py for the cfg texts.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.models import vgg16

from enginesmith.errors import EnginesmithError
from enginesmith.models.classes import VOC_NAMES
from enginesmith.models.layers import ConvBNLeaky
from enginesmith.models.registry import ModelSpec, register
from enginesmith.models.weights import load_weights
from enginesmith.runtime.preprocess import PreprocessSpec

INPUT_SIZE = (448, 448)
STRIDE = 64
NUM_BOXES = 2


# ---------------------------------------------------------------------------------------------
# Config tables (darknet cfg order):
#   ("conv", filters, size, stride)   conv 'same' padding + leaky(0.1) (bias, or BN when the table says so)
#   ("maxpool",)                      maxpool 2x2 / 2
# ---------------------------------------------------------------------------------------------
Layer = tuple[Any, ...]


def _c(filters: int, size: int, stride: int = 1) -> Layer:
    return ("conv", filters, size, stride)


_M: Layer = ("maxpool",)

# The YOLO paper, Fig. 3 (24 convolutional layers).
YOLOV1_TABLE: tuple[Layer, ...] = (
    _c(64, 7, 2), _M,
    _c(192, 3), _M,
    _c(128, 1), _c(256, 3), _c(256, 1), _c(512, 3), _M,
    *(_c(256, 1), _c(512, 3)) * 4, _c(512, 1), _c(1024, 3), _M,
    *(_c(512, 1), _c(1024, 3)) * 2, _c(1024, 3), _c(1024, 3, 2),
    _c(1024, 3), _c(1024, 3),
)

# darknet cfg/yolov1-tiny.cfg (Fast YOLO).
FAST_YOLO_TABLE: tuple[Layer, ...] = (
    *(x for f in (16, 32, 64, 128, 256, 512) for x in (_c(f, 3), _M)),
    _c(1024, 3), _c(256, 3),
)

# YOLO's detection convs after a pretrained classifier's features (YOLO paper Sec. 2.2).
DETECTION_CONVS: tuple[Layer, ...] = (_c(1024, 3), _c(1024, 3, 2), _c(1024, 3), _c(1024, 3))


class ConvLeaky(nn.Module):
    """Darknet convolutional layer without batch norm (YOLOv1): conv with bias, LeakyReLU(0.1)."""

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride, padding=k // 2, bias=True)
        self.act = nn.LeakyReLU(0.1)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.conv(x))


def make_features(table: tuple[Layer, ...], batch_norm: bool, cin: int = 3) -> tuple[nn.Sequential, int]:
    """The conv/maxpool stack of a table -> (nn.Sequential, output channels)."""
    mods: list[nn.Module] = []
    for layer in table:
        if layer[0] == "conv":
            _, f, k, s = layer
            mods.append(ConvBNLeaky(cin, f, k, s) if batch_norm else ConvLeaky(cin, f, k, s))
            cin = f
        else:
            mods.append(nn.MaxPool2d(2, 2))
    return nn.Sequential(*mods), cin


class DetectionDecode(nn.Module):
    """YOLOv1 decoding (darknet detection_layer layout): raw [N, S*S*(C+5B)] -> boxes [N, S*S*B, 4],
    scores [N, S*S*B, C]."""

    def __init__(self, grid: tuple[int, int], num_boxes: int, num_classes: int, input_size: tuple[int, int]) -> None:
        super().__init__()
        gh, gw = grid
        self.cells, self.num_boxes, self.num_classes = gh * gw, num_boxes, num_classes
        rows, cols = torch.meshgrid(torch.arange(gh, dtype=torch.float32), torch.arange(gw, dtype=torch.float32),
                                    indexing="ij")
        offsets = torch.stack((cols.reshape(-1), rows.reshape(-1)), dim=-1).reshape(1, gh * gw, 1, 2)
        self.register_buffer("offsets", offsets, persistent=False)  # (col, row) of each cell
        h, w = input_size
        self.register_buffer("cell_size", torch.tensor([w / gw, h / gh]), persistent=False)
        self.register_buffer("image_size", torch.tensor([float(w), float(h)]), persistent=False)

    def forward(self, raw: Tensor) -> tuple[Tensor, Tensor]:
        s, b, c = self.cells, self.num_boxes, self.num_classes
        cls = raw[:, : s * c].reshape(-1, s, 1, c)
        conf = raw[:, s * c : s * (c + b)].reshape(-1, s, b, 1)
        coords = raw[:, s * (c + b) :].reshape(-1, s, b, 4)
        xy = (coords[..., 0:2] + self.offsets) * self.cell_size
        wh = coords[..., 2:4] * coords[..., 2:4] * self.image_size  # the network predicts sqrt(w), sqrt(h)
        boxes = torch.cat((xy - 0.5 * wh, xy + 0.5 * wh), dim=-1)
        scores = torch.clamp(cls * conf, 0.0, 1.0)
        return boxes.reshape(-1, s * b, 4), scores.reshape(-1, s * b, c)


class YOLOv1(nn.Module):
    """YOLOv1-style detector: features (stride 64) -> connected layers -> decode.

    x [N, 3, H, W] -> (boxes [N, A, 4] x1y1x2y2 input pixels, scores [N, A, C]), A = (H/64)*(W/64)*B.
    """

    darknet_connected = True  # .weights files hold the connected layers too (models/weights/darknet.py)

    def __init__(self, features: nn.Module, feat_channels: int, hidden: int | None, num_classes: int = 20,
                 input_size: tuple[int, int] = INPUT_SIZE, num_boxes: int = NUM_BOXES) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.input_size = (int(input_size[0]), int(input_size[1]))
        gh, gw = self.input_size[0] // STRIDE, self.input_size[1] // STRIDE
        self.grid = (gh, gw)
        self.features = features
        flat = feat_channels * gh * gw
        out = gh * gw * (num_classes + 5 * num_boxes)
        if hidden is None:
            self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(flat, out))
        else:
            self.classifier = nn.Sequential(
                nn.Flatten(), nn.Linear(flat, hidden), nn.LeakyReLU(0.1), nn.Dropout(0.5), nn.Linear(hidden, out)
            )
        self.decode = DetectionDecode(self.grid, num_boxes, num_classes, self.input_size)

    def forward_raw(self, x: Tensor) -> Tensor:
        """The raw connected-layer output [N, S*S*(C + 5B)] (1470 at 448 with 20 classes)."""
        return self.classifier(self.features(x))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.decode(self.forward_raw(x))


def init_yolov1_weights(model: YOLOv1) -> None:
    """Seeded init: convs and hidden connected layers kaiming-normal (leaky a=0.1, fan_in), zero
    bias; BN identity; the last connected layer std 0.5/sqrt(fan_in) with bias 0.5 on the class
    probabilities and confidences and 0.3 on the coordinates, so scores and box sizes are O(1),
    varied and mostly inside the image."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight, a=0.1, mode="fan_in", nonlinearity="leaky_relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
                m.reset_running_stats()
        last = model.classifier[-1]
        assert isinstance(last, nn.Linear)
        nn.init.normal_(last.weight, std=0.5 / last.in_features**0.5)
        nn.init.constant_(last.bias, 0.3)
        n_prob = model.decode.cells * (model.num_classes + model.decode.num_boxes)
        last.bias[:n_prob] = 0.5


def check_input_size(size: tuple[int, int]) -> None:
    """Sides multiples of 64 (the grid stride) and >= 64; the released weights need 448x448."""
    h, w = (int(s) for s in size)
    if h < 64 or w < 64 or h % 64 or w % 64:
        raise EnginesmithError(
            f"yolov1-family models need input sides that are multiples of 64 (grid stride 64; 448x448 gives the "
            f"paper's 7x7 grid and is the only size the released weights fit), got {h}x{w}; try 448x448"
        )


def _finish(model: YOLOv1) -> YOLOv1:
    init_yolov1_weights(model)
    return model.eval()


def build_yolov1(num_classes: int = 20, input_size: tuple[int, int] = INPUT_SIZE) -> YOLOv1:
    """The paper's YOLO (Fig. 3): 24 conv + connected 4096 + connected S*S*(C+10)."""
    check_input_size(input_size)
    features, c = make_features(YOLOV1_TABLE, batch_norm=False)
    return _finish(YOLOv1(features, c, 4096, num_classes, input_size))


def build_fast_yolo(num_classes: int = 20, input_size: tuple[int, int] = INPUT_SIZE) -> YOLOv1:
    """Fast YOLO as darknet's yolov1-tiny.cfg: 8 conv (BN) + connected S*S*(C+10)."""
    check_input_size(input_size)
    features, c = make_features(FAST_YOLO_TABLE, batch_norm=True)
    return _finish(YOLOv1(features, c, None, num_classes, input_size))


class VGG16Features(nn.Module):
    """torchvision VGG-16 `features` (weights=None) followed by YOLO's four detection convs."""

    def __init__(self) -> None:
        super().__init__()
        self.vgg = vgg16(weights=None).features
        self.detection, _ = make_features(DETECTION_CONVS, batch_norm=False, cin=512)

    def forward(self, x: Tensor) -> Tensor:
        return self.detection(self.vgg(x))


def build_yolo_vgg16(num_classes: int = 20, input_size: tuple[int, int] = INPUT_SIZE) -> YOLOv1:
    """YOLO VGG-16: VGG-16 conv layers + YOLO's detection convs and connected layers."""
    check_input_size(input_size)
    return _finish(YOLOv1(VGG16Features(), 1024, 4096, num_classes, input_size))


def num_anchors(input_size: tuple[int, int], num_boxes: int = NUM_BOXES) -> int:
    """A = (H/64) * (W/64) * B (98 at 448)."""
    return (input_size[0] // STRIDE) * (input_size[1] // STRIDE) * num_boxes


PREPROCESS = PreprocessSpec(
    input_size=INPUT_SIZE, resize="stretch", color="RGB", scale=1.0 / 255.0, mean=(0.0, 0.0, 0.0),
    std=(1.0, 1.0, 1.0),
)
_PAPER = "Redmon, Divvala, Girshick & Farhadi, You Only Look Once: Unified, Real-Time Object Detection, CVPR 2016"
_EXTRA = {"grid": (7, 7), "num_boxes": NUM_BOXES, "stride": STRIDE, "box_format": "xyxy",
          "output_layout": "darknet detection_layer: [S*S*C probs][S*S*B conf][S*S*B*4 coords], sqrt wh"}


def _spec(name: str, builder: Any, details: dict[str, Any], darknet: bool = True,
          ci_input_size: tuple[int, int] | None = None) -> ModelSpec:
    return register(
        ModelSpec(
            name=name, task="detection", builder=builder, input_size=INPUT_SIZE, num_classes=20,
            preprocess=PREPROCESS, output_names=("boxes", "scores"), check_input_size=check_input_size,
            load_weights=partial(load_weights, darknet_ok=darknet), class_names=VOC_NAMES,
            default_calibration="photos", paper=_PAPER, source_file=__file__, details={**_EXTRA, **details},
            ci_input_size=ci_input_size,
        )
    )


# yolov1 (~272M parameters) and yolo-vgg16 (~259M) are heavy: full-size builds only under -m slow.
SPEC = _spec("yolov1", build_yolov1, {"darknet_cfg": "yolo.cfg (paper, Fig. 3)"})
SPEC_FAST = _spec("fast-yolo", build_fast_yolo, {"darknet_cfg": "yolov1-tiny.cfg"},
                  ci_input_size=(128, 128))
SPEC_VGG16 = _spec("yolo-vgg16", build_yolo_vgg16, {"backbone": "torchvision vgg16 features"}, darknet=False)
