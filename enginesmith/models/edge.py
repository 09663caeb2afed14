"""Edge-scale detectors for the offline set (16 classes, data/offline_detection.py), trained here.

Each is a paper architecture at a smaller input and/or width, built from the zoo's own pieces, with
the zoo's output contract: forward(x) -> boxes [N, A, 4] (x1, y1, x2, y2, input pixels) and
scores [N, A, C] (probabilities), all decoding inside the submodule `decode`; forward_raw(x) gives
the raw head for training (enginesmith/training/losses.py).

- `yolov3-tiny-256`: darknet's yolov3-tiny.cfg layer for layer (models/yolo_tiny.py's table) at
  256x256, 16 classes, with anchors re-fitted to the offline training split by k-means on box
  (w, h) with 1 - IoU distance (YOLOv2's recipe) at 256x256 letterboxed input, sorted by area, the
  three smallest on the stride-16 head. Grids 8x8 and 16x16: A = 3 * (64 + 256) = 960.
- `yolov3-tiny-3l-256`: AlexeyAB's darknet cfg/yolov3-tiny_3l.cfg (yolov3-tiny plus a third yolo layer
  at stride 8, fed by layer 6) at 256x256 with nine k-means anchors: A = 3 * (64 + 256 + 1024) = 4032.
  Half of the offline set's objects are under 30 px at this size; the stride-8 head is for them.
- `ssd-slim-256`: SSD (Liu et al. 2016) with the VGG16 base at a quarter of its width and with
  BatchNorm after every convolution (the paper's VGG has none; it starts from ImageNet weights,
  while these train from scratch, which BatchNorm makes possible - DSOD, Shen et al. 2017;
  ScratchDet, Zhu et al. 2019). Sources at strides 8, 16, 32, 64, 128, 256 (32x32 ... 1x1 at 256),
  4 or 6 default boxes per cell as SSD300, default-box scales s_k = 0.06, 0.15, 0.33, 0.51, 0.69, 0.87
  of the input side (SLIM_MIN; SSD300's are 0.1 .. 0.88). On the offline train split 65% of the truths
  get a default box with IoU > 0.5 with these (first scale 0.05-0.08: 64-66%; 0.04: 57%; 0.03: 39%, as
  an 8 px stride cannot centre small boxes on 8-15 px objects). The paper's box coding with variances
  (0.1, 0.2), softmax with background first (models/ssd.py SSDDecode). Input RGB / 255 with ImageNet
  mean/std, stretched to 256x256.

Trained from scratch by `enginesmith train MODEL --dataset OFFLINE_DIR` (training/recipes.py; ~20 min
each on a 2-core CPU): offline test-split mAP50 (all-point) measured 0.36 (yolov3-tiny-256, 24 epochs of
an earlier recipe), 0.40 (yolov3-tiny-3l-256), 0.39 (ssd-slim-256).

Checkpoint family: enginesmith's own. Training feeds each model its registered PreprocessSpec (training/
augment.py), RGB for all three, and the checkpoint records it ("preprocess", training/loop.py), so a build or
an eval of that checkpoint feeds the same without any option (runtime/preprocess_override.py).
"""

from __future__ import annotations

from functools import partial

import torch
from torch import Tensor, nn

from enginesmith.errors import EnginesmithError
from enginesmith.models.classes import OFFLINE_NAMES
from enginesmith.models.layers import SLIM_BASE, conv_bn_relu
from enginesmith.models.registry import ModelSpec, register
from enginesmith.models.ssd import VARIANCES, SSDConfig, SSDDecode, multibox_heads
from enginesmith.models.weights import load_weights
from enginesmith.models.yolo import ScaleDecode
from enginesmith.models.yolo_tiny import YOLOV3_TINY_CFG
from enginesmith.models.yolov2 import DarknetLayers, init_darknet_weights
from enginesmith.runtime.preprocess import PreprocessSpec

NUM_CLASSES = len(OFFLINE_NAMES)
EDGE_SIZE = (256, 256)

# ---------------------------------------------------------------------------------------------
# YOLOv3-tiny at 256
# ---------------------------------------------------------------------------------------------

# (w, h) in input pixels at 256x256 (letterboxed), k-means (1 - IoU) on the non-difficult boxes of the
# offline set's train split (2000 images, seed 0; training/anchors.py `kmeans_anchors`, seed 0), sorted by
# area, rounded: mean best IoU 0.70 (darknet's COCO anchors scaled by 256/416: 0.64). Mask (3, 4, 5) -> stride 32,
# (0, 1, 2) -> stride 16, as darknet's yolov3-tiny.cfg.
TINY256_ANCHORS: tuple[tuple[int, int], ...] = ((6, 11), (11, 18), (23, 24), (17, 36), (32, 51), (55, 81))
TINY_MASKS: tuple[tuple[int, ...], ...] = ((3, 4, 5), (0, 1, 2))
TINY_STRIDES: tuple[int, ...] = (32, 16)


class AnchorDecode(nn.Module):
    """YOLOv3 decoding of several raw maps with given anchors: raws -> boxes [N, A, 4], scores [N, A, C].

    `scales[i]` is a models/yolo.py ScaleDecode (its `anchors` [3, 2] px and `stride` are what the
    YOLO loss reads)."""

    def __init__(self, input_size: tuple[int, int], num_classes: int, anchors: tuple[tuple[int, int], ...],
                 masks: tuple[tuple[int, ...], ...], strides: tuple[int, ...]) -> None:
        super().__init__()
        h, w = input_size
        self.scales = nn.ModuleList(
            ScaleDecode([anchors[i] for i in mask], s, (h // s, w // s), num_classes) for mask, s in zip(masks, strides)
        )

    def forward(self, raws: list[Tensor]) -> tuple[Tensor, Tensor]:
        outs = [dec(r) for dec, r in zip(self.scales, raws)]
        return torch.cat([b for b, _ in outs], dim=1), torch.cat([s for _, s in outs], dim=1)


class TinyYOLOEdge(nn.Module):
    """A yolov3-tiny cfg with its own anchors: x [N, 3, H, W] -> (boxes [N, A, 4], scores [N, A, C])."""

    def __init__(self, num_classes: int = NUM_CLASSES, input_size: tuple[int, int] = EDGE_SIZE,
                 anchors: tuple[tuple[int, int], ...] = TINY256_ANCHORS, cfg: tuple = YOLOV3_TINY_CFG,
                 masks: tuple[tuple[int, ...], ...] = TINY_MASKS, strides: tuple[int, ...] = TINY_STRIDES) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.body = DarknetLayers(cfg, len(masks[0]) * (5 + num_classes))
        self.decode = AnchorDecode(self.input_size, num_classes, anchors, masks, strides)

    def forward_raw(self, x: Tensor) -> list[Tensor]:
        """The raw maps [N, 3*(5+C), H/s, W/s], one per stride (32, 16[, 8]), darknet channel order per anchor."""
        return self.body(x)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.decode(self.forward_raw(x))


def _check_multiple_of_32(name: str, heads: str):
    def check(size: tuple[int, int]) -> None:
        h, w = (int(v) for v in size)
        if h < 32 or w < 32 or h % 32 or w % 32:
            raise EnginesmithError(
                f"{name} needs input sides that are multiples of 32 and >= 32 (stride-32 head; {heads}), got {h}x{w}; "
                "use 256x256 (its trained size)"
            )

    return check


check_tiny_size = _check_multiple_of_32("yolov3-tiny-256", "the x2 upsample must line up with the stride-16 map")


TINY256_PREPROCESS = PreprocessSpec(
    input_size=EDGE_SIZE, resize="letterbox", color="RGB", scale=1.0 / 255.0, mean=(0.0, 0.0, 0.0),
    std=(1.0, 1.0, 1.0), pad_value=114,
)


def _register_tiny(name: str, cfg: tuple, anchors: tuple, masks: tuple, strides: tuple, check, paper: str) -> ModelSpec:
    """Register a yolov3-tiny layout at 256 with its own anchors (letterbox RGB/255, offline classes)."""

    def build(num_classes: int = NUM_CLASSES, input_size: tuple[int, int] = EDGE_SIZE) -> TinyYOLOEdge:
        check(input_size)
        model = TinyYOLOEdge(num_classes, input_size, anchors, cfg, masks, strides)
        init_darknet_weights(model)
        return model.eval()

    build.__name__ = f"build_{name.replace('-', '_')}"
    return register(
        ModelSpec(
            name=name, task="detection", builder=build, input_size=EDGE_SIZE, num_classes=NUM_CLASSES,
            preprocess=TINY256_PREPROCESS, output_names=("boxes", "scores"), check_input_size=check,
            load_weights=partial(load_weights, darknet_ok=True), class_names=OFFLINE_NAMES,
            default_calibration="photos", paper=paper, source_file=__file__,
            ci_input_size=(64, 64),
            details={"anchors": anchors, "masks": masks, "strides": strides, "box_format": "xyxy", "family": "yolo",
                     "trained_on": "offline"},
        )
    )


TINY256_SPEC = _register_tiny(
    "yolov3-tiny-256", YOLOV3_TINY_CFG, TINY256_ANCHORS, TINY_MASKS, TINY_STRIDES, check_tiny_size,
    "Redmon & Farhadi, YOLOv3: An Incremental Improvement, arXiv:1804.02767 (2018); darknet "
    "cfg/yolov3-tiny.cfg at 256x256 with anchors k-means-fitted to the offline set (YOLOv2's recipe)",
)

# ---------------------------------------------------------------------------------------------
# YOLOv3-tiny-3l at 256 (AlexeyAB darknet cfg/yolov3-tiny_3l.cfg): a third head at stride 8
# ---------------------------------------------------------------------------------------------

# After yolov3-tiny's 24 layers: route the stride-16 3x3x256 conv (layer 21), 1x1x128, upsample x2,
# concatenate layer 6 (the stride-8 3x3x128 conv), 3x3x128, the detection conv, yolo (mask 0, 1, 2).
TINY3L_CFG = YOLOV3_TINY_CFG + (
    ("route", (-3,)), ("conv", 128, 1, 1), ("upsample", 2), ("route", (-1, 6)),  # 24-27
    ("conv", 128, 3, 1), ("conv", None, 1, 1), ("out", 2),                      # 28-30
)
# 9 anchors, k-means as above (mean best IoU 0.75 on the train split), smallest first.
TINY3L_ANCHORS: tuple[tuple[int, int], ...] = (
    (5, 11), (11, 11), (8, 17), (13, 27), (20, 20), (20, 43), (33, 35), (37, 64), (67, 86))
TINY3L_MASKS: tuple[tuple[int, ...], ...] = ((6, 7, 8), (3, 4, 5), (0, 1, 2))
TINY3L_STRIDES: tuple[int, ...] = (32, 16, 8)


check_tiny3l_size = _check_multiple_of_32(
    "yolov3-tiny-3l-256", "two x2 upsamples must line up with the stride-16 and stride-8 maps")


TINY3L_SPEC = _register_tiny(
    "yolov3-tiny-3l-256", TINY3L_CFG, TINY3L_ANCHORS, TINY3L_MASKS, TINY3L_STRIDES, check_tiny3l_size,
    "Redmon & Farhadi, YOLOv3: An Incremental Improvement, arXiv:1804.02767 (2018); AlexeyAB darknet "
    "cfg/yolov3-tiny_3l.cfg (a third yolo layer at stride 8) at 256x256, anchors k-means-fitted to the offline set",
)

# ---------------------------------------------------------------------------------------------
# SSD, slim VGG16 base, 256x256
# ---------------------------------------------------------------------------------------------

# The base is models/layers.py SLIM_BASE (VGG16 at 1/4 width). Sources: conv4_3 (stride 8), conv7 (16).
SLIM_CONV4_3 = 12  # index in SLIM_BASE of conv4_3's last entry (3 pools before it: stride 8)
SLIM_FC = 256  # conv6 (3x3, dilation 6 in the paper; 3 here at the 16x16 map) and conv7 (1x1) width
# extras (in, out, kernel, stride, padding): 1x1 then 3x3/2 pairs; every second output is a source.
SLIM_EXTRAS = ((256, 64, 1, 1, 0), (64, 128, 3, 2, 1), (128, 32, 1, 1, 0), (32, 64, 3, 2, 1),
               (64, 32, 1, 1, 0), (32, 64, 3, 2, 1), (64, 32, 1, 1, 0), (32, 64, 3, 2, 1))
SLIM_MBOX = (4, 6, 6, 6, 4, 4)
SLIM_RATIOS = ((2,), (2, 3), (2, 3), (2, 3), (2,), (2,))
# default-box sizes as fractions of the input side (s_k of the paper; SSD300's are 0.1 .. 0.88).
SLIM_MIN = (0.06, 0.15, 0.33, 0.51, 0.69, 0.87)
SLIM_MAX = (0.15, 0.33, 0.51, 0.69, 0.87, 1.05)


def slim_feature_maps(size: int) -> tuple[int, ...]:
    """Source map sides for a square input: size/8, size/16, then ceil halvings (3x3/2 pad 1)."""
    maps = [size // 8, size // 16]
    while len(maps) < len(SLIM_MBOX):
        maps.append((maps[-1] + 1) // 2)
    return tuple(maps)


def slim_config(size: int) -> SSDConfig:
    fm = slim_feature_maps(size)
    return SSDConfig(
        size=size, extras=SLIM_EXTRAS, mbox=SLIM_MBOX, feature_maps=fm, steps=tuple(size / f for f in fm),
        min_sizes=tuple(s * size for s in SLIM_MIN), max_sizes=tuple(s * size for s in SLIM_MAX),
        aspect_ratios=SLIM_RATIOS,
    )


class SlimSSD(nn.Module):
    """SSD with a quarter-width VGG16 base (BatchNorm): x [N, 3, S, S] -> (boxes [N, P, 4], scores [N, P, C])."""

    def __init__(self, num_classes: int = NUM_CLASSES, size: int = 256) -> None:
        super().__init__()
        self.cfg = cfg = slim_config(size)
        self.num_classes = num_classes + 1  # background at index 0 of the conf head
        layers: list[nn.Module] = []
        cin = 3
        self.split = 0
        for i, v in enumerate(SLIM_BASE):
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers.append(conv_bn_relu(cin, int(v)))
                cin = int(v)
            if i == SLIM_CONV4_3:
                self.split = len(layers)
        self.vgg = nn.ModuleList(layers)
        # pool5 3x3/1, conv6 (3x3, dilated) and conv7 (1x1): fc6/fc7 made convolutional
        self.fc = nn.Sequential(nn.MaxPool2d(3, 1, 1), conv_bn_relu(cin, SLIM_FC, 3, dilation=3),
                                conv_bn_relu(SLIM_FC, SLIM_FC, 1))
        self.extras = nn.ModuleList(conv_bn_relu(i, o, k, s, p) for i, o, k, s, p in SLIM_EXTRAS)
        source_channels = [int(SLIM_BASE[SLIM_CONV4_3]), SLIM_FC] + [e[1] for e in SLIM_EXTRAS[1::2]]
        self.loc = nn.ModuleList(nn.Conv2d(c, m * 4, 3, padding=1) for c, m in zip(source_channels, SLIM_MBOX))
        self.conf = nn.ModuleList(
            nn.Conv2d(c, m * self.num_classes, 3, padding=1) for c, m in zip(source_channels, SLIM_MBOX)
        )
        self.decode = SSDDecode(cfg)

    def forward_raw(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """loc [N, P, 4] (encoded offsets, variances 0.1/0.2) and conf [N, P, C+1] logits (background 0)."""
        for layer in self.vgg[: self.split]:
            x = layer(x)
        sources = [x]
        for layer in self.vgg[self.split:]:
            x = layer(x)
        x = self.fc(x)
        sources.append(x)
        for k, layer in enumerate(self.extras):
            x = layer(x)
            if k % 2 == 1:
                sources.append(x)
        return multibox_heads(sources, self.loc, self.conf, self.num_classes)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.decode(*self.forward_raw(x))


def init_slim_ssd(model: SlimSSD) -> None:
    """Kaiming-normal convs (ReLU, fan_in), BN identity; heads std 0.5/sqrt(fan_in), conf bias giving
    background probability ~0.99 at the start (the prior-probability init of Lin et al. 2017)."""
    with torch.no_grad():
        heads = {id(m) for m in list(model.loc) + list(model.conf)}
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                if id(m) in heads:
                    nn.init.normal_(m.weight, std=0.5 / m.weight[0].numel() ** 0.5)
                    nn.init.zeros_(m.bias)
                else:
                    nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
                m.reset_running_stats()
        c = model.num_classes
        for head, m in zip(model.conf, SLIM_MBOX):
            bias = head.bias.reshape(m, c)
            bias[:, 0] = torch.log(torch.tensor(0.99 * (c - 1) / 0.01))


def check_slim_size(size: tuple[int, int]) -> None:
    h, w = (int(s) for s in size)
    if h != w or h < 64 or h % 32:
        raise EnginesmithError(
            f"ssd-slim-256 needs a square input whose side is a multiple of 32 and >= 64 (default boxes are "
            f"laid out on square maps of side/8 .. side/256), got {h}x{w}; use 256x256 (its trained size)"
        )


def build_slim_ssd(num_classes: int = NUM_CLASSES, input_size: tuple[int, int] = EDGE_SIZE) -> SlimSSD:
    """num_classes counts object classes; the conf head adds the background."""
    check_slim_size(input_size)
    model = SlimSSD(num_classes, int(input_size[0]))
    init_slim_ssd(model)
    return model.eval()


def slim_num_priors(size: int) -> int:
    return sum(f * f * m for f, m in zip(slim_feature_maps(size), SLIM_MBOX))


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

SLIM_PREPROCESS = PreprocessSpec(
    input_size=EDGE_SIZE, resize="stretch", color="RGB", scale=1.0 / 255.0, mean=IMAGENET_MEAN, std=IMAGENET_STD,
)

SLIM_SPEC = register(
    ModelSpec(
        name="ssd-slim-256", task="detection", builder=build_slim_ssd, input_size=EDGE_SIZE, num_classes=NUM_CLASSES,
        preprocess=SLIM_PREPROCESS, output_names=("boxes", "scores"), check_input_size=check_slim_size,
        load_weights=partial(load_weights, darknet_ok=False), class_names=OFFLINE_NAMES,
        default_calibration="photos",
        paper="Liu et al., SSD: Single Shot MultiBox Detector, ECCV 2016 (arXiv:1512.02325), VGG16 base at 1/4 "
        "width with BatchNorm for training from scratch (Shen et al., DSOD, ICCV 2017), 256x256",
        source_file=__file__,
        ci_input_size=(128, 128),
        details={"box_format": "xyxy", "family": "ssd", "num_priors": slim_num_priors(256), "variances": VARIANCES,
                 "scores": "softmax over background + 16 classes, background dropped", "trained_on": "offline"},
    )
)

__all__ = ["TinyYOLOEdge", "SlimSSD", "AnchorDecode", "TINY256_SPEC", "TINY3L_SPEC", "SLIM_SPEC", "slim_config"]
