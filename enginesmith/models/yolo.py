"""YOLOv3 (Redmon & Farhadi 2018), layer for layer as darknet's `cfg/yolov3.cfg`.

Input [N, 3, H, W] RGB in [0, 1] (letterboxed, 416x416 by default; sides multiples of 32): the
Darknet `.weights` family (darknet's load_image_stb gives RGB / 255, no mean; its letterbox pads with
0.5 where enginesmith pads with 114 / 255, and resizes without Pillow's antialiasing).
Outputs, decoded in the graph under the submodule `decode` (ONNX node names contain "/decode/"):
- boxes  [N, A, 4]: x1, y1, x2, y2 in input pixels;
- scores [N, A, C]: sigmoid(objectness) * sigmoid(class logit);
A = 3 * sum(h_i * w_i) over the strides 32, 16, 8 (10647 at 416x416), ordered scale by scale in cfg
order (stride 32 first), then anchor, then row, then column.

The network is built from `YOLOV3_CFG`, a transcription of the 107 cfg layers (conv, shortcut,
route, upsample, yolo); modules are registered in cfg order, so a Darknet `.weights` file loads conv
by conv (see models/weights/darknet.py). Darknet-53 backbone: conv-BN-leakyReLU(0.1), residual
blocks 1, 2, 8, 8, 4; three detection heads whose last 1x1 conv has a bias and no BN.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Callable

import torch
from torch import Tensor, nn

from enginesmith.errors import EnginesmithError
from enginesmith.models.classes import COCO_NAMES
from enginesmith.models.layers import ConvBNLeaky
from enginesmith.models.ops import make_grid, yolo_decode
from enginesmith.models.registry import ModelSpec, register
from enginesmith.models.weights import load_weights
from enginesmith.runtime.preprocess import PreprocessSpec

INPUT_SIZE = (416, 416)

# COCO anchors (w, h) in input pixels, and the masks of the three yolo layers in cfg order.
ANCHORS: tuple[tuple[int, int], ...] = (
    (10, 13), (16, 30), (33, 23), (30, 61), (62, 45), (59, 119), (116, 90), (156, 198), (373, 326),
)
MASKS: tuple[tuple[int, ...], ...] = ((6, 7, 8), (3, 4, 5), (0, 1, 2))


# ---------------------------------------------------------------------------------------------
# Config table: one entry per darknet layer, in cfg order.
#   ("conv", filters, size, stride)   conv + BN + leaky(0.1); filters=None: the detection conv
#                                     (3 * (5 + C) filters, bias, linear activation)
#   ("shortcut", from)                x + layers[from] (relative index)
#   ("route", (i, j, ...))            channel concatenation of those layers (relative or absolute)
#   ("upsample", 2)                   nearest-neighbour x2
#   ("yolo", mask_index)              detection layer using MASKS[mask_index]
# ---------------------------------------------------------------------------------------------
Layer = tuple[Any, ...]


def _residual(filters: int, n: int) -> list[Layer]:
    out: list[Layer] = []
    for _ in range(n):
        out += [("conv", filters // 2, 1, 1), ("conv", filters, 3, 1), ("shortcut", -3)]
    return out


def _darknet53() -> list[Layer]:
    layers: list[Layer] = [("conv", 32, 3, 1)]
    for filters, n in ((64, 1), (128, 2), (256, 8), (512, 8), (1024, 4)):
        layers.append(("conv", filters, 3, 2))
        layers += _residual(filters, n)
    return layers  # 75 layers (0..74); 36, 61, 74 end the stride-8, -16, -32 stages


def _head(filters: int, mask_index: int) -> list[Layer]:
    return [
        ("conv", filters, 1, 1), ("conv", filters * 2, 3, 1),
        ("conv", filters, 1, 1), ("conv", filters * 2, 3, 1),
        ("conv", filters, 1, 1), ("conv", filters * 2, 3, 1),
        ("conv", None, 1, 1), ("yolo", mask_index),
    ]


YOLOV3_CFG: tuple[Layer, ...] = tuple(
    _darknet53()
    + _head(512, 0)  # 75..82, stride 32
    + [("route", (-4,)), ("conv", 256, 1, 1), ("upsample", 2), ("route", (-1, 61))]  # 83..86
    + _head(256, 1)  # 87..94, stride 16
    + [("route", (-4,)), ("conv", 128, 1, 1), ("upsample", 2), ("route", (-1, 36))]  # 95..98
    + _head(128, 2)  # 99..106, stride 8
)


class Passthrough(nn.Module):
    """Shortcut / route / yolo layers: no weights; the model's forward does their work."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    def forward(self, x: Tensor) -> Tensor:  # pragma: no cover - never called
        return x

    def extra_repr(self) -> str:
        return self.kind


class ScaleDecode(nn.Module):
    """Decode one detection map: raw [N, 3*(5+C), h, w] -> boxes [N, 3*h*w, 4], scores [N, 3*h*w, C]."""

    def __init__(
        self, anchors: list[tuple[int, int]], stride: int, grid_size: tuple[int, int], num_classes: int
    ) -> None:
        super().__init__()
        self.stride = float(stride)
        self.static_shape = (len(anchors), 5 + num_classes, int(grid_size[0]), int(grid_size[1]))
        self.register_buffer("anchors", torch.tensor(anchors, dtype=torch.float32), persistent=False)
        self.register_buffer("grid", make_grid(*grid_size), persistent=False)

    def forward(self, raw: Tensor) -> tuple[Tensor, Tensor]:
        return yolo_decode(raw, self.anchors, self.stride, self.grid, self.static_shape)


class YoloDecode(nn.Module):
    """All box decoding (kept in float by quantizers): three raw maps -> boxes [N, A, 4], scores [N, A, C]."""

    def __init__(self, input_size: tuple[int, int], num_classes: int, strides: tuple[int, ...] = (32, 16, 8)) -> None:
        super().__init__()
        h, w = input_size
        self.scales = nn.ModuleList(
            ScaleDecode([ANCHORS[i] for i in mask], s, (h // s, w // s), num_classes) for mask, s in zip(MASKS, strides)
        )

    def forward(self, raws: list[Tensor]) -> tuple[Tensor, Tensor]:
        outs = [dec(r) for dec, r in zip(self.scales, raws)]
        boxes = torch.cat([b for b, _ in outs], dim=1)
        scores = torch.cat([s for _, s in outs], dim=1)
        return boxes, scores


LayerFactory = Callable[[Layer, int], tuple[nn.Module, int]]


def build_darknet_layers(
    table: tuple[Layer, ...], det_filters: int, extra: dict[str, LayerFactory] | None = None
) -> tuple[nn.ModuleList, frozenset[int]]:
    """One module per cfg layer, in cfg order (so a `.weights` file loads conv by conv), and the
    indices of the layers whose outputs routes and shortcuts read later.

    Kinds: conv (filters None = the biased detection conv), route, upsample, shortcut, yolo / out
    (markers of the raw maps), plus any kind in `extra`: factory(layer, in_channels) -> (module, out_channels).
    """
    extra = extra or {}
    channels: list[int] = []  # output channels of every layer
    layers: list[nn.Module] = []
    cin = 3
    for i, layer in enumerate(table):
        kind = layer[0]
        if kind == "conv":
            _, filters, k, stride = layer
            if filters is None:
                layers.append(nn.Conv2d(cin, det_filters, k, stride, padding=k // 2, bias=True))
                cout = det_filters
            else:
                layers.append(ConvBNLeaky(cin, filters, k, stride))
                cout = filters
        elif kind == "route":
            cout = sum(channels[j if j >= 0 else i + j] for j in layer[1])
            layers.append(Passthrough(f"route {layer[1]}"))
        elif kind == "upsample":
            layers.append(nn.Upsample(scale_factor=layer[1], mode="nearest"))
            cout = cin
        elif kind in extra:
            module, cout = extra[kind](layer, cin)
            layers.append(module)
        elif kind in ("shortcut", "yolo", "out"):
            layers.append(Passthrough(f"{kind} {layer[1]}"))
            cout = cin
        else:  # pragma: no cover - tables are fixed
            raise ValueError(f"unknown darknet layer kind {kind!r}")
        channels.append(cout)
        cin = cout
    keep: set[int] = set()
    for i, layer in enumerate(table):
        if layer[0] == "shortcut":
            keep.add(i + layer[1])
        elif layer[0] == "route":
            keep.update(j if j >= 0 else i + j for j in layer[1])
    return nn.ModuleList(layers), frozenset(keep)


def run_darknet_layers(table: tuple[Layer, ...], layers: nn.ModuleList, keep: frozenset[int], x: Tensor) -> list[Tensor]:
    """Run a table built by `build_darknet_layers`; return the raw maps at its yolo / out markers."""
    saved: dict[int, Tensor] = {}
    raws: list[Tensor] = []
    for i, (layer, m) in enumerate(zip(table, layers)):
        kind = layer[0]
        if kind == "shortcut":
            x = x + saved[i + layer[1]]
        elif kind == "route":
            parts = [saved[j if j >= 0 else i + j] for j in layer[1]]
            x = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
        elif kind in ("yolo", "out"):
            raws.append(x)
        else:
            x = m(x)
        if i in keep:
            saved[i] = x
    return raws


class YOLOv3(nn.Module):
    """YOLOv3: x [N, 3, H, W] -> (boxes [N, A, 4] x1y1x2y2 input pixels, scores [N, A, C])."""

    def __init__(self, num_classes: int = 80, input_size: tuple[int, int] = INPUT_SIZE) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.input_size = (int(input_size[0]), int(input_size[1]))
        det_filters = len(MASKS[0]) * (5 + num_classes)
        self.layers, self._keep = build_darknet_layers(YOLOV3_CFG, det_filters)
        self.decode = YoloDecode(self.input_size, num_classes)

    def forward_raw(self, x: Tensor) -> list[Tensor]:
        """The three raw detection maps [N, 3*(5+C), H/s, W/s] for s = 32, 16, 8 (before decoding)."""
        return run_darknet_layers(YOLOV3_CFG, self.layers, self._keep, x)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.decode(self.forward_raw(x))


def init_yolo_weights(model: YOLOv3) -> None:
    """Seeded init giving finite, varied activations through all 75 convs in eval mode.

    Convs: kaiming-normal for leaky ReLU (a=0.1, fan_in), BN weight 1 / bias 0 / running stats
    (0, 1). Eval-mode BN is then ~identity, so each residual block would add the variance of its
    branch; the last BN of each residual branch gets weight 0.2 so 23 blocks grow the activation
    scale by ~(1.04)^(23/2) rather than 2^(23/2). The detection convs get std 0.5/sqrt(fan_in) and
    zero bias, so raw outputs are O(1) (std ~0.6-1.2 at 416 on uniform noise): exp(t_wh) stays
    finite and scores vary across anchors.
    """
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                if m.bias is None:
                    nn.init.kaiming_normal_(m.weight, a=0.1, mode="fan_in", nonlinearity="leaky_relu")
                else:
                    fan_in = m.weight[0].numel()
                    nn.init.normal_(m.weight, std=0.5 / fan_in**0.5)
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
                m.reset_running_stats()
        for i, layer in enumerate(YOLOV3_CFG):
            if layer[0] == "shortcut":
                last = model.layers[i - 1]
                assert isinstance(last, ConvBNLeaky)
                last.bn.weight.fill_(0.2)


def build_yolov3(num_classes: int = 80, input_size: tuple[int, int] = INPUT_SIZE) -> YOLOv3:
    """Builder for the registry: YOLOv3 for `input_size` (grids are baked for it), seeded init, eval mode."""
    check_input_size(input_size)
    model = YOLOv3(num_classes, input_size)
    init_yolo_weights(model)
    return model.eval()


def check_input_size(size: tuple[int, int]) -> None:
    """Both sides multiples of 32 and >= 32: the stride-32 head needs whole cells, and the x2
    upsample + route concatenations only line up when every stage halves evenly."""
    h, w = (int(s) for s in size)
    if h < 32 or w < 32 or h % 32 or w % 32:
        raise EnginesmithError(
            f"yolov3 needs input sides that are multiples of 32 and >= 32 (stride-32 head; upsample+route must "
            f"line up), got {h}x{w}; try 416x416, 320x320 or 608x608"
        )


def num_anchors(input_size: tuple[int, int]) -> int:
    """A = 3 * sum over strides 32, 16, 8 of (H/s * W/s)."""
    h, w = input_size
    return sum(len(m) * (h // s) * (w // s) for m, s in zip(MASKS, (32, 16, 8)))


PREPROCESS = PreprocessSpec(
    input_size=INPUT_SIZE, resize="letterbox", color="RGB", scale=1.0 / 255.0, mean=(0.0, 0.0, 0.0),
    std=(1.0, 1.0, 1.0), pad_value=114,
)

SPEC = register(
    ModelSpec(
        name="yolov3",
        task="detection",
        builder=build_yolov3,
        input_size=INPUT_SIZE,
        num_classes=80,
        preprocess=PREPROCESS,
        output_names=("boxes", "scores"),
        check_input_size=check_input_size,
        load_weights=partial(load_weights, darknet_ok=True),
        class_names=COCO_NAMES,
        default_calibration="photos",
        paper="Redmon & Farhadi, YOLOv3: An Incremental Improvement, arXiv:1804.02767 (2018)",
        source_file=__file__,
        ci_input_size=(64, 64), details={"anchors": ANCHORS, "masks": MASKS, "strides": (32, 16, 8), "box_format": "xyxy"},
    )
)
