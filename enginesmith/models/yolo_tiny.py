"""YOLOv3-tiny (Redmon & Farhadi 2018, darknet's `cfg/yolov3-tiny.cfg`), layer for layer.

Input [N, 3, H, W] RGB in [0, 1] (letterboxed; 416x416 by default, 320 and 608 as in the darknet
README; any sides that are multiples of 32). Outputs, decoded in the graph under `decode`:
- boxes  [N, A, 4]: x1, y1, x2, y2 in input pixels;
- scores [N, A, C]: sigmoid(objectness) * sigmoid(class logit) (models/ops.py `yolo_decode`);
A = 3 * ((H/32)(W/32) + (H/16)(W/16)) (2535 at 416), stride 32 first, then anchor, row, column.

| layers | op                                                                   | output (416) |
|--------|----------------------------------------------------------------------|--------------|
| 0-9    | conv 3x3 16, 32, 64, 128, 256 (BN, leaky), each + maxpool 2/2         | 13x13x256    |
| 10-11  | conv 3x3x512, maxpool size 2 stride 1 (darknet pads right/bottom)    | 13x13x512    |
| 12-15  | conv 3x3x1024, 1x1x256, 3x3x512, 1x1x(3*(5+C)) bias linear           | 13x13x255    |
| 16     | yolo, mask 3,4,5 (anchors 81,82 135,169 344,319)                      |              |
| 17-20  | route 13, conv 1x1x128, upsample x2, route 19, 8                     | 26x26x384    |
| 21-22  | conv 3x3x256, 1x1x(3*(5+C)) bias linear                              | 26x26x255    |
| 23     | yolo, mask 0,1,2 (anchors 10,14 23,27 37,58)                          |              |

The second [yolo] uses mask 0,1,2 as in pjreddie/darknet's official cfg (AlexeyAB's fork briefly had
1,2,3 and changed it to 0,1,2 the next day, commit 74956888). Anchors are in input pixels.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import Tensor, nn

from enginesmith.errors import EnginesmithError
from enginesmith.models.registry import ModelSpec, register
from enginesmith.models.weights import load_weights
from enginesmith.models.yolo import COCO_NAMES, ScaleDecode
from enginesmith.models.yolov2 import DarknetLayers, Layer, init_darknet_weights
from enginesmith.runtime.preprocess import PreprocessSpec

INPUT_SIZE = (416, 416)

ANCHORS: tuple[tuple[int, int], ...] = ((10, 14), (23, 27), (37, 58), (81, 82), (135, 169), (344, 319))
MASKS: tuple[tuple[int, ...], ...] = ((3, 4, 5), (0, 1, 2))
STRIDES: tuple[int, ...] = (32, 16)

YOLOV3_TINY_CFG: tuple[Layer, ...] = (
    ("conv", 16, 3, 1), ("maxpool", 2, 2),     # 0-1
    ("conv", 32, 3, 1), ("maxpool", 2, 2),     # 2-3
    ("conv", 64, 3, 1), ("maxpool", 2, 2),     # 4-5
    ("conv", 128, 3, 1), ("maxpool", 2, 2),    # 6-7
    ("conv", 256, 3, 1), ("maxpool", 2, 2),    # 8-9
    ("conv", 512, 3, 1), ("maxpool", 2, 1),    # 10-11
    ("conv", 1024, 3, 1),                      # 12
    ("conv", 256, 1, 1), ("conv", 512, 3, 1), ("conv", None, 1, 1), ("out", 0),   # 13-16
    ("route", (-4,)), ("conv", 128, 1, 1), ("upsample", 2), ("route", (-1, 8)),  # 17-20
    ("conv", 256, 3, 1), ("conv", None, 1, 1), ("out", 1),                      # 21-23
)


class TinyDecode(nn.Module):
    """Both scales' decoding (kept in float by quantizers): raw maps -> boxes [N, A, 4], scores [N, A, C]."""

    def __init__(self, input_size: tuple[int, int], num_classes: int) -> None:
        super().__init__()
        h, w = input_size
        self.scales = nn.ModuleList(
            ScaleDecode([ANCHORS[i] for i in mask], s, (h // s, w // s), num_classes) for mask, s in zip(MASKS, STRIDES)
        )

    def forward(self, raws: list[Tensor]) -> tuple[Tensor, Tensor]:
        outs = [dec(r) for dec, r in zip(self.scales, raws)]
        return torch.cat([b for b, _ in outs], dim=1), torch.cat([s for _, s in outs], dim=1)


class YOLOv3Tiny(nn.Module):
    """YOLOv3-tiny: x [N, 3, H, W] -> (boxes [N, A, 4] x1y1x2y2 input pixels, scores [N, A, C])."""

    def __init__(self, num_classes: int = 80, input_size: tuple[int, int] = INPUT_SIZE) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.body = DarknetLayers(YOLOV3_TINY_CFG, len(MASKS[0]) * (5 + num_classes))
        self.decode = TinyDecode(self.input_size, num_classes)

    def forward_raw(self, x: Tensor) -> list[Tensor]:
        """The two raw detection maps [N, 3*(5+C), H/s, W/s] for s = 32, 16."""
        return self.body(x)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.decode(self.forward_raw(x))


def check_input_size(size: tuple[int, int]) -> None:
    """Sides multiples of 32 and >= 32: the x2 upsample of the stride-32 map must line up with layer 8."""
    h, w = (int(s) for s in size)
    if h < 32 or w < 32 or h % 32 or w % 32:
        raise EnginesmithError(
            f"yolov3-tiny needs input sides that are multiples of 32 and >= 32 (stride-32 head; upsample+route "
            f"must line up), got {h}x{w}; try 416x416, 320x320 or 608x608"
        )


def build_yolov3_tiny(num_classes: int = 80, input_size: tuple[int, int] = INPUT_SIZE) -> YOLOv3Tiny:
    """Builder for the registry: YOLOv3-tiny for `input_size` (grids baked in), seeded init, eval mode."""
    check_input_size(input_size)
    model = YOLOv3Tiny(num_classes, input_size)
    init_darknet_weights(model)
    return model.eval()


def num_anchors(input_size: tuple[int, int]) -> int:
    """A = 3 * sum over strides 32, 16 of (H/s * W/s)."""
    h, w = input_size
    return sum(len(m) * (h // s) * (w // s) for m, s in zip(MASKS, STRIDES))


PREPROCESS = PreprocessSpec(
    input_size=INPUT_SIZE, resize="letterbox", color="RGB", scale=1.0 / 255.0, mean=(0.0, 0.0, 0.0),
    std=(1.0, 1.0, 1.0), pad_value=114,
)

SPEC = register(
    ModelSpec(
        name="yolov3-tiny", task="detection", builder=build_yolov3_tiny, input_size=INPUT_SIZE, num_classes=80,
        preprocess=PREPROCESS, output_names=("boxes", "scores"), check_input_size=check_input_size,
        load_weights=partial(load_weights, darknet_ok=True), class_names=COCO_NAMES,
        default_calibration="photos",
        paper="Redmon & Farhadi, YOLOv3: An Incremental Improvement, arXiv:1804.02767 (2018); "
        "darknet cfg/yolov3-tiny.cfg",
        source_file=__file__,
        details={"anchors": ANCHORS, "masks": MASKS, "strides": STRIDES, "box_format": "xyxy",
                 "darknet_cfg": "yolov3-tiny.cfg", "input_sizes": ((320, 320), (416, 416), (608, 608))},
        ci_input_size=(64, 64),
    )
)
