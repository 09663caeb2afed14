"""YOLOv2 (Redmon & Farhadi, YOLO9000: Better, Faster, Stronger, CVPR 2017), layer for layer as
darknet's `cfg/yolo-voc.cfg` (see models/weights/darknet_cfg.py, YOLOV2_VOC_CFG).

Input [N, 3, H, W] RGB in [0, 1] (letterboxed; 416x416, or 544x544 for `yolov2-544`; sides
multiples of 32). Outputs, decoded in the graph under the submodule `decode`:
- boxes  [N, A, 4]: x1, y1, x2, y2 in input pixels;
- scores [N, A, C]: sigmoid(objectness) * softmax(class logits) (darknet's [region] with softmax=1);
A = 5 * (H/32) * (W/32) (845 at 416, 1445 at 544), ordered anchor, then row, then column.

Box decoding as darknet's region layer: xy = (sigmoid(t_xy) + cell) * 32, wh = exp(t_wh) * anchor *
32, with the five VOC anchors given in grid units (cells of 32 pixels).

| layers   | op                                                                      | output (416)  |
|----------|-------------------------------------------------------------------------|---------------|
| 0-22     | Darknet-19 without its classifier: 18 conv-BN-leaky + 5 maxpool 2/2      | 13x13x1024    |
| 23, 24   | conv 3x3x1024, conv 3x3x1024                                            | 13x13x1024    |
| 25-27    | route 16 (the 26x26x512 map), conv 1x1x64, reorg /2 (passthrough)       | 13x13x256     |
| 28       | route 27, 24 (concatenation)                                            | 13x13x1280    |
| 29, 30   | conv 3x3x1024, conv 1x1x(5*(5+C)) with bias, linear                     | 13x13x125     |
| 31       | region (decode)                                                         |               |

The passthrough `reorg` is darknet's own (reorg_cpu with forward=0), which is not a plain
space-to-depth: the 26x26x64 map is read as a 52x52x16 buffer and its 2x2 neighbourhoods are spread
over four groups of 16 channels; `DarknetReorg` reproduces it exactly so the official `.weights` give
the official outputs (tests/unit/test_yolo_family.py checks it against a transcription of the C loop).

`DarknetLayers` (the cfg-ordered executor) is shared with models/yolo_tiny.py.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from enginesmith.errors import EnginesmithError
from enginesmith.models.ops import make_grid
from enginesmith.models.registry import ModelSpec, register
from enginesmith.models.weights import load_weights
from enginesmith.models.yolo import build_darknet_layers, run_darknet_layers
from enginesmith.models.classes import VOC_NAMES
from enginesmith.runtime.preprocess import PreprocessSpec

INPUT_SIZE = (416, 416)
INPUT_SIZE_544 = (544, 544)
STRIDE = 32

# VOC anchors (w, h) in grid units (cells of 32 input pixels), from yolo-voc.cfg's [region].
ANCHORS: tuple[tuple[float, float], ...] = (
    (1.3221, 1.73145), (3.19275, 4.00944), (5.05587, 8.09892), (9.47112, 4.84053), (11.2364, 10.0071),
)

# ---------------------------------------------------------------------------------------------
# Config table: one entry per darknet layer, in cfg order.
#   ("conv", filters, size, stride)   conv + BN + leaky(0.1); filters=None: the detection conv
#                                     (na * (5 + C) filters, bias, linear)
#   ("maxpool", size, stride)         darknet maxpool (stride 1: padded right/bottom, see below)
#   ("route", (i, j, ...))            channel concatenation of those layers (relative or absolute)
#   ("reorg", stride)                 darknet's reorg (passthrough)
#   ("upsample", 2)                   nearest-neighbour x2
#   ("out", k)                        detection layer ([region] / [yolo]) number k: its input is a raw map
# ---------------------------------------------------------------------------------------------
Layer = tuple[Any, ...]

YOLOV2_CFG: tuple[Layer, ...] = (
    ("conv", 32, 3, 1), ("maxpool", 2, 2),                                               # 0-1
    ("conv", 64, 3, 1), ("maxpool", 2, 2),                                               # 2-3
    ("conv", 128, 3, 1), ("conv", 64, 1, 1), ("conv", 128, 3, 1), ("maxpool", 2, 2),     # 4-7
    ("conv", 256, 3, 1), ("conv", 128, 1, 1), ("conv", 256, 3, 1), ("maxpool", 2, 2),    # 8-11
    ("conv", 512, 3, 1), ("conv", 256, 1, 1), ("conv", 512, 3, 1),                       # 12-14
    ("conv", 256, 1, 1), ("conv", 512, 3, 1), ("maxpool", 2, 2),                         # 15-17
    ("conv", 1024, 3, 1), ("conv", 512, 1, 1), ("conv", 1024, 3, 1),                     # 18-20
    ("conv", 512, 1, 1), ("conv", 1024, 3, 1),                                           # 21-22
    ("conv", 1024, 3, 1), ("conv", 1024, 3, 1),                                          # 23-24
    ("route", (-9,)), ("conv", 64, 1, 1), ("reorg", 2), ("route", (-1, -4)),             # 25-28
    ("conv", 1024, 3, 1), ("conv", None, 1, 1), ("out", 0),                              # 29-31
)


class DarknetReorg(nn.Module):
    """darknet's reorg layer (reorg_cpu(..., forward=0)): [N, C, H, W] -> [N, 4C, H/2, W/2] (stride 2).

    out[n, k, j, i] (as a C x H x W buffer) = in[n, k % (C/4), 2j + (k // (C/4)) // 2, 2i + (k // (C/4)) % 2]
    where `in` is the input buffer read as (C/4) x 2H x 2W; the C x H x W result is then read as
    4C x H/2 x W/2. Reshapes and one transpose: exports as Reshape/Transpose.
    """

    def __init__(self, stride: int = 2) -> None:
        super().__init__()
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        s = self.stride
        _, c, h, w = (int(d) for d in x.shape)
        oc = c // (s * s)
        # the buffer as [N, oc, h, s(dy), w, s(dx)] (i.e. oc x (s*h) x (s*w) with h2 = j*s + dy)
        y = x.reshape(-1, oc, h, s, w, s).permute(0, 3, 5, 1, 2, 4)  # [N, dy, dx, oc, h, w]
        return y.reshape(-1, c * s * s, h // s, w // s)


class DarknetMaxPool(nn.Module):
    """darknet [maxpool]: padding size-1 on the right/bottom only (offset -pad/2 = 0 for size 2).

    For stride 2 on even maps this is nn.MaxPool2d(2, 2); for stride 1 (yolov3-tiny's 13x13 pool)
    the map keeps its size and the last row/column pools over the edge value (darknet skips the
    out-of-range taps, which a replicate pad reproduces exactly for a max).
    """

    def __init__(self, size: int, stride: int) -> None:
        super().__init__()
        self.size, self.stride = size, stride
        self.pool = nn.MaxPool2d(size, stride)

    def forward(self, x: Tensor) -> Tensor:
        if self.stride == 1 and self.size > 1:
            x = F.pad(x, (0, self.size - 1, 0, self.size - 1), mode="replicate")
        return self.pool(x)


class DarknetLayers(nn.Module):
    """Runs a cfg-ordered layer table; modules are registered in cfg order (one per layer), so a
    `.weights` file loads conv by conv. forward -> the raw maps that feed the "out" layers."""

    def __init__(self, table: tuple[Layer, ...], det_filters: int) -> None:
        super().__init__()
        self.table = table
        self.layers, self._keep = build_darknet_layers(table, det_filters, {
            "maxpool": lambda layer, cin: (DarknetMaxPool(layer[1], layer[2]), cin),
            "reorg": lambda layer, cin: (DarknetReorg(layer[1]), cin * layer[1] ** 2),
        })

    def forward(self, x: Tensor) -> list[Tensor]:
        return run_darknet_layers(self.table, self.layers, self._keep, x)


class RegionDecode(nn.Module):
    """darknet [region] (softmax=1): raw [N, na*(5+C), h, w] -> boxes [N, na*h*w, 4], scores [N, na*h*w, C]."""

    def __init__(self, anchors: tuple[tuple[float, float], ...], stride: int, grid_size: tuple[int, int],
                 num_classes: int) -> None:
        super().__init__()
        self.stride = float(stride)
        self.static_shape = (len(anchors), 5 + num_classes, int(grid_size[0]), int(grid_size[1]))
        px = torch.tensor(anchors, dtype=torch.float32) * stride  # grid units -> input pixels
        self.register_buffer("anchors", px.reshape(1, len(anchors), 1, 1, 2), persistent=False)
        self.register_buffer("grid", make_grid(*grid_size), persistent=False)

    def forward(self, raw: Tensor) -> tuple[Tensor, Tensor]:
        na, no, h, w = self.static_shape
        p = raw.reshape(-1, na, no, h, w).permute(0, 1, 3, 4, 2)  # [N, na, h, w, 5+C]
        xy = (torch.sigmoid(p[..., 0:2]) + self.grid) * self.stride
        wh = torch.exp(p[..., 2:4]) * self.anchors
        boxes = torch.cat((xy - 0.5 * wh, xy + 0.5 * wh), dim=-1)
        scores = torch.sigmoid(p[..., 4:5]) * torch.softmax(p[..., 5:], dim=-1)
        return boxes.reshape(-1, na * h * w, 4), scores.reshape(-1, na * h * w, no - 5)


class YOLOv2(nn.Module):
    """YOLOv2: x [N, 3, H, W] -> (boxes [N, A, 4] x1y1x2y2 input pixels, scores [N, A, C])."""

    def __init__(self, num_classes: int = 20, input_size: tuple[int, int] = INPUT_SIZE) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.body = DarknetLayers(YOLOV2_CFG, len(ANCHORS) * (5 + num_classes))
        h, w = self.input_size
        self.decode = RegionDecode(ANCHORS, STRIDE, (h // STRIDE, w // STRIDE), num_classes)

    def forward_raw(self, x: Tensor) -> Tensor:
        """The raw region map [N, 5*(5+C), H/32, W/32]."""
        return self.body(x)[0]

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.decode(self.forward_raw(x))


def init_darknet_weights(model: nn.Module) -> None:
    """Seeded init giving finite, varied activations in eval mode (no residuals to tame):
    bias-free convs kaiming-normal (leaky a=0.1, fan_in), BN identity (weight 1, bias 0, stats 0/1);
    detection convs std 0.5/sqrt(fan_in) and zero bias, so raw outputs are O(1) and exp(t_wh) finite."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                if m.bias is None:
                    nn.init.kaiming_normal_(m.weight, a=0.1, mode="fan_in", nonlinearity="leaky_relu")
                else:
                    nn.init.normal_(m.weight, std=0.5 / m.weight[0].numel() ** 0.5)
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
                m.reset_running_stats()


def check_input_size(size: tuple[int, int]) -> None:
    """Sides multiples of 32 and >= 32: the region grid is H/32 x W/32, and the passthrough reorg
    needs the 16-stride map to have even sides."""
    h, w = (int(s) for s in size)
    if h < 32 or w < 32 or h % 32 or w % 32:
        raise EnginesmithError(
            f"yolov2 needs input sides that are multiples of 32 and >= 32 (stride-32 grid; the passthrough "
            f"reorg halves the stride-16 map), got {h}x{w}; try 416x416 or 544x544"
        )


def build_yolov2(num_classes: int = 20, input_size: tuple[int, int] = INPUT_SIZE) -> YOLOv2:
    """Builder for the registry: YOLOv2 for `input_size` (grid baked in), seeded init, eval mode."""
    check_input_size(input_size)
    model = YOLOv2(num_classes, input_size)
    init_darknet_weights(model)
    return model.eval()


def num_anchors(input_size: tuple[int, int]) -> int:
    """A = 5 * (H/32) * (W/32)."""
    return len(ANCHORS) * (input_size[0] // STRIDE) * (input_size[1] // STRIDE)


def _preprocess(size: tuple[int, int]) -> PreprocessSpec:
    return PreprocessSpec(input_size=size, resize="letterbox", color="RGB", scale=1.0 / 255.0,
                          mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), pad_value=114)


PREPROCESS = _preprocess(INPUT_SIZE)
_PAPER = "Redmon & Farhadi, YOLO9000: Better, Faster, Stronger, CVPR 2017 (arXiv:1612.08242)"
_EXTRA = {"anchors": ANCHORS, "anchor_units": "grid cells (x32 input pixels)", "strides": (STRIDE,),
          "box_format": "xyxy", "darknet_cfg": "yolo-voc.cfg"}

SPEC = register(
    ModelSpec(
        name="yolov2", task="detection", builder=build_yolov2, input_size=INPUT_SIZE, num_classes=20,
        preprocess=PREPROCESS, output_names=("boxes", "scores"), check_input_size=check_input_size,
        load_weights=partial(load_weights, darknet_ok=True), class_names=VOC_NAMES,
        default_calibration="photos", paper=_PAPER, source_file=__file__, details=dict(_EXTRA), ci_input_size=(64, 64),
    )
)

SPEC_544 = register(
    ModelSpec(
        name="yolov2-544", task="detection", builder=build_yolov2, input_size=INPUT_SIZE_544, num_classes=20,
        preprocess=_preprocess(INPUT_SIZE_544), output_names=("boxes", "scores"), check_input_size=check_input_size,
        load_weights=partial(load_weights, darknet_ok=True), class_names=VOC_NAMES,
        default_calibration="photos", paper=_PAPER, source_file=__file__, details=dict(_EXTRA), ci_input_size=(64, 64),
    )
)
