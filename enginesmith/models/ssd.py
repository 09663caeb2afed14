"""SSD300 and SSD512 (Liu et al., SSD: Single Shot MultiBox Detector, ECCV 2016), VGG16 base.

Architecture as in the paper and the popular PyTorch re-implementation (amdegroot/ssd.pytorch,
ssd.py), so its VOC checkpoints load unchanged (weights/ssd_checkpoint.py):
- `vgg`: VGG16 conv1_1..conv5_3 (pool3 with ceil_mode, as Caffe), pool5 3x3/1, conv6 = 3x3 1024
  dilated 6 (fc6 made convolutional), conv7 = 1x1 1024 (fc7), each conv followed by ReLU, in one
  ModuleList (indices 0..34 exactly as ssd.pytorch).
- `L2Norm`: channel-wise L2 normalisation of conv4_3 with a learnable per-channel scale, init 20.
- `extras`: 1x1 / 3x3-stride-2 pairs (ReLU after each conv, applied functionally); every second
  one is a source. SSD512 ends with the paper's Caffe conv10_2 (4x4, pad 1).
- `loc` / `conf`: 3x3 multibox heads on the sources with 4 or 6 default boxes per location.
- `decode`: priors + variances (0.1, 0.2) -> boxes [N, P, 4] x1y1x2y2 in input pixels;
  scores = softmax over the 21 VOC classes (background first) with the background column dropped
  -> [N, P, 20]. P = 8732 (SSD300) or 24564 (SSD512).

Preprocessing: stretch to the input size, pixel values 0..255 minus a per-colour mean, no std scaling
(ssd.pytorch's BaseTransform: cv2.resize, float32, minus MEANS (104, 117, 123) on a BGR cv2 image). The channel
order depends on the checkpoint family (README "Checkpoint families"):
- checkpoints trained by ssd.pytorch's own train.py (`ssd300_mAP_77.43_v2.pth`, the one the README names, and
  any you train with it) see RGB: data/voc0712.py `pull_item` swaps `img[:, :, (2, 1, 0)]` after the transform,
  so the network is fed (R - 123, G - 117, B - 104). This is the default here: color RGB, mean (123, 117, 104).
- the Caffe-converted `ssd_300_VOC0712.pth` (weiliu89's weights) sees BGR, (B - 104, G - 117, R - 123): build
  it with `--channels bgr` (the mean follows its colours). Both have the same state-dict layout, so the file
  cannot tell which it is.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from enginesmith.errors import EnginesmithError
from enginesmith.models.ops import decode_boxes, ssd_priors
from enginesmith.models.classes import VOC_NAMES
from enginesmith.models.registry import ModelSpec, register
from enginesmith.models.weights.ssd_checkpoint import load_ssd_checkpoint
from enginesmith.runtime.preprocess import PreprocessSpec

NUM_CLASSES = 21  # 20 VOC classes + background (index 0) in the conf head
VARIANCES = (0.1, 0.2)

# VGG16 conv1_1..conv5_3: channels, "M" max-pool 2x2, "C" max-pool 2x2 with ceil_mode (ssd.pytorch base['300']).
VGG_BASE = (64, 64, "M", 128, 128, "M", 256, 256, 256, "C", 512, 512, 512, "M", 512, 512, 512)
CONV4_3_RELU = 22  # index in `vgg` after which conv4_3's output (ReLU'd) is the first source


@dataclass(frozen=True)
class SSDConfig:
    size: int
    # extra layers: (in, out, kernel, stride, padding); sources are the outputs of odd indices
    extras: tuple[tuple[int, int, int, int, int], ...]
    mbox: tuple[int, ...]  # default boxes per location, per source
    feature_maps: tuple[int, ...]
    steps: tuple[int, ...]
    min_sizes: tuple[float, ...]
    max_sizes: tuple[float, ...]
    aspect_ratios: tuple[tuple[int, ...], ...]


CONFIGS = {
    # ssd.pytorch data/config.py `voc` and ssd.py extras['300'] / mbox['300'].
    300: SSDConfig(
        size=300,
        extras=((1024, 256, 1, 1, 0), (256, 512, 3, 2, 1), (512, 128, 1, 1, 0), (128, 256, 3, 2, 1),
                (256, 128, 1, 1, 0), (128, 256, 3, 1, 0), (256, 128, 1, 1, 0), (128, 256, 3, 1, 0)),
        mbox=(4, 6, 6, 6, 4, 4),
        feature_maps=(38, 19, 10, 5, 3, 1),
        steps=(8, 16, 32, 64, 100, 300),
        min_sizes=(30, 60, 111, 162, 213, 264),
        max_sizes=(60, 111, 162, 213, 264, 315),
        aspect_ratios=((2,), (2, 3), (2, 3), (2, 3), (2,), (2,)),
    ),
    # The paper's Caffe SSD512 (VOC): conv6_1..conv10_2 (conv10_2 4x4 pad 1), 7 sources, and the prior
    # sizes of the widely used PyTorch SSD512 config (min 0.07 * 512, then steps of 0.15 * 512).
    512: SSDConfig(
        size=512,
        extras=((1024, 256, 1, 1, 0), (256, 512, 3, 2, 1), (512, 128, 1, 1, 0), (128, 256, 3, 2, 1),
                (256, 128, 1, 1, 0), (128, 256, 3, 2, 1), (256, 128, 1, 1, 0), (128, 256, 3, 2, 1),
                (256, 128, 1, 1, 0), (128, 256, 4, 1, 1)),
        mbox=(4, 6, 6, 6, 6, 4, 4),
        feature_maps=(64, 32, 16, 8, 4, 2, 1),
        steps=(8, 16, 32, 64, 128, 256, 512),
        min_sizes=(35.84, 76.8, 153.6, 230.4, 307.2, 384.0, 460.8),
        max_sizes=(76.8, 153.6, 230.4, 307.2, 384.0, 460.8, 537.6),
        aspect_ratios=((2,), (2, 3), (2, 3), (2, 3), (2, 3), (2,), (2,)),
    ),
}


def vgg_layers() -> list[nn.Module]:
    """ssd.pytorch `vgg(base['300'], 3)`: 35 modules, conv6 dilated 6, conv7 1x1."""
    layers: list[nn.Module] = []
    cin = 3
    for v in VGG_BASE:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        elif v == "C":
            layers.append(nn.MaxPool2d(2, 2, ceil_mode=True))
        else:
            layers += [nn.Conv2d(cin, int(v), 3, padding=1), nn.ReLU(inplace=True)]
            cin = int(v)
    layers += [
        nn.MaxPool2d(3, 1, 1),
        nn.Conv2d(512, 1024, 3, padding=6, dilation=6), nn.ReLU(inplace=True),
        nn.Conv2d(1024, 1024, 1), nn.ReLU(inplace=True),
    ]
    return layers


class L2Norm(nn.Module):
    """x / ||x||_2 over channels, times a learnable per-channel scale (ParseNet; SSD init 20)."""

    def __init__(self, channels: int = 512, scale: float = 20.0, eps: float = 1e-10) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.full((channels,), float(scale)))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        norm = x.pow(2).sum(dim=1, keepdim=True).sqrt() + self.eps
        return x / norm * self.weight.reshape(1, -1, 1, 1)


class SSDDecode(nn.Module):
    """loc [N, P, 4], conf [N, P, 21] -> boxes [N, P, 4] (x1y1x2y2, input pixels), scores [N, P, 20]."""

    def __init__(self, cfg: SSDConfig) -> None:
        super().__init__()
        priors = ssd_priors(cfg.size, cfg.feature_maps, cfg.steps, cfg.min_sizes, cfg.max_sizes, cfg.aspect_ratios, clip=True)
        self.register_buffer("priors", priors, persistent=False)
        self.scale = float(cfg.size)

    def forward(self, loc: Tensor, conf: Tensor) -> tuple[Tensor, Tensor]:
        boxes = decode_boxes(loc, self.priors, form="ssd", variances=VARIANCES) * self.scale
        scores = torch.softmax(conf, dim=-1)[..., 1:]
        return boxes, scores


class SSD(nn.Module):
    """SSD300 / SSD512 with ssd.pytorch's module names (vgg, L2Norm, extras, loc, conf)."""

    def __init__(self, size: int = 300, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        if size not in CONFIGS:
            raise EnginesmithError(f"SSD is defined for 300 or 512 inputs, got {size}")
        cfg = self.cfg = CONFIGS[size]
        self.num_classes = num_classes  # including background
        self.vgg = nn.ModuleList(vgg_layers())
        self.L2Norm = L2Norm(512, 20.0)
        self.extras = nn.ModuleList(nn.Conv2d(i, o, k, stride=s, padding=p) for i, o, k, s, p in cfg.extras)
        source_channels = [512, 1024] + [e[1] for e in cfg.extras[1::2]]
        assert len(source_channels) == len(cfg.mbox)
        self.loc = nn.ModuleList(nn.Conv2d(c, m * 4, 3, padding=1) for c, m in zip(source_channels, cfg.mbox))
        self.conf = nn.ModuleList(nn.Conv2d(c, m * num_classes, 3, padding=1) for c, m in zip(source_channels, cfg.mbox))
        self.decode = SSDDecode(cfg)

    def forward_raw(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """loc [N, P, 4] (encoded offsets) and conf [N, P, num_classes] (logits), ssd.pytorch order."""
        sources = []
        for k in range(CONV4_3_RELU + 1):
            x = self.vgg[k](x)
        sources.append(self.L2Norm(x))
        for k in range(CONV4_3_RELU + 1, len(self.vgg)):
            x = self.vgg[k](x)
        sources.append(x)
        for k, layer in enumerate(self.extras):
            x = torch.relu(layer(x))
            if k % 2 == 1:
                sources.append(x)
        return multibox_heads(sources, self.loc, self.conf, self.num_classes)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.decode(*self.forward_raw(x))


def multibox_heads(sources: list[Tensor], loc: nn.ModuleList, conf: nn.ModuleList, num_classes: int) -> tuple[Tensor, Tensor]:
    """Run the per-source 3x3 heads and flatten in ssd.pytorch's order (source, row, column, default box):
    loc [N, P, 4] and conf [N, P, num_classes]."""
    n = sources[0].shape[0]
    locs = [lh(s).permute(0, 2, 3, 1).reshape(n, -1) for s, lh in zip(sources, loc)]
    confs = [ch(s).permute(0, 2, 3, 1).reshape(n, -1) for s, ch in zip(sources, conf)]
    return torch.cat(locs, 1).reshape(n, -1, 4), torch.cat(confs, 1).reshape(n, -1, num_classes)


def init_ssd_weights(model: SSD) -> None:
    """Seeded init with finite, varied outputs: VGG and extras kaiming-normal (ReLU, fan_in; conv1_1
    scaled by 1/64 for the 0..255 input range), heads normal with std 0.5 / sqrt(fan_in) so loc offsets are O(1) (exp stays tame), biases 0.
    (ssd.pytorch starts the base from ImageNet VGG16 and xavier-initialises the rest.)"""
    with torch.no_grad():
        heads = {id(m) for m in list(model.loc) + list(model.conf)}
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                if id(m) in heads:
                    nn.init.normal_(m.weight, std=0.5 / m.weight[0].numel() ** 0.5)
                else:
                    nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                nn.init.zeros_(m.bias)
        model.L2Norm.weight.fill_(20.0)
        # the input is raw 0..255 pixels minus the mean (|x| up to ~150): bring conv1_1 back to O(1)
        # so conv7 and the extra sources are O(1) and loc offsets stay small
        model.vgg[0].weight.mul_(1.0 / 64.0)


def _builder(size: int):
    def build(num_classes: int = NUM_CLASSES - 1, input_size: tuple[int, int] = (size, size)) -> SSD:
        """num_classes counts object classes (20 for VOC); the conf head adds the background."""
        _check(size)(input_size)
        model = SSD(size, num_classes + 1)
        init_ssd_weights(model)
        return model.eval()

    build.__name__ = f"build_ssd{size}"
    return build


def _check(size: int):
    def check_input_size(input_size: tuple[int, int]) -> None:
        h, w = (int(s) for s in input_size)
        if (h, w) != (size, size):
            raise EnginesmithError(
                f"ssd{size} only takes its native {size}x{size} input (its default boxes and the "
                f"{'conv10_2 4x4' if size == 512 else 'last 3x3'} layers are sized for it), got {h}x{w}; "
                "use ssd300 for 300x300 or ssd512 for 512x512"
            )

    return check_input_size


def num_priors(size: int) -> int:
    cfg = CONFIGS[size]
    return sum(f * f * m for f, m in zip(cfg.feature_maps, cfg.mbox))


def _load(model: object, path) -> None:
    load_ssd_checkpoint(model, path)  # type: ignore[arg-type]


def _spec(size: int, ci_input_size: tuple[int, int] | None = None) -> ModelSpec:
    return register(
        ModelSpec(
            name=f"ssd{size}",
            task="detection",
            builder=_builder(size),
            input_size=(size, size),
            num_classes=NUM_CLASSES - 1,
            preprocess=PreprocessSpec(
                input_size=(size, size), resize="stretch", color="RGB", scale=1.0,
                mean=(123.0, 117.0, 104.0), std=(1.0, 1.0, 1.0),  # ssd.pytorch train.py checkpoints (docstring)
            ),
            output_names=("boxes", "scores"),
            check_input_size=_check(size),
            load_weights=_load,
            class_names=VOC_NAMES,
            default_calibration="photos",
            paper="Liu et al., SSD: Single Shot MultiBox Detector, ECCV 2016 (arXiv:1512.02325)",
            source_file=__file__,
            ci_input_size=ci_input_size,
            details={"box_format": "xyxy", "num_priors": num_priors(size), "variances": VARIANCES,
                     "scores": "softmax over background + 20 classes, background dropped"},
        )
    )


SSD300_SPEC = _spec(300, ci_input_size=(300, 300))
SSD512_SPEC = _spec(512)
