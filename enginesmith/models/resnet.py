"""ResNets (He, Zhang, Ren, Sun 2016): torchvision's implementations of the paper's architectures, and
the paper's plain-34 baseline (written here: torchvision has no plain networks).

Input [N, 3, H, W] RGB (ImageNet-normalised, 224x224 by default) -> logits [N, num_classes].
Checkpoint family: torchvision's weights (and state dicts trained with torchvision's transforms) see RGB,
pixels / 255, minus the ImageNet mean (0.485, 0.456, 0.406) over std (0.229, 0.224, 0.225), after Resize(256)
and CenterCrop(224): the default here. A Caffe-converted ResNet takes BGR 0-255 minus its mean:
`--channels bgr --mean ... --std 1,1,1` (its scale stays 1/255, so give the mean in 0-1 units).

| name      | blocks (conv2_x..conv5_x) | block      | params (1000 classes) | paper FLOPs (mult-adds, 224) |
|-----------|---------------------------|------------|-----------------------|------------------------------|
| resnet18  | 2, 2, 2, 2                | basic      | 11,689,512            | 1.8 x 10^9                   |
| resnet34  | 3, 4, 6, 3                | basic      | 21,797,672            | 3.6 x 10^9                   |
| plain34   | 3, 4, 6, 3                | plain      | 21,623,848            | 3.6 x 10^9                   |
| resnet50  | 3, 4, 6, 3                | bottleneck | 25,557,032            | 3.8 x 10^9                   |
| resnet101 | 3, 4, 23, 3               | bottleneck | 44,549,160            | 7.6 x 10^9                   |
| resnet152 | 3, 8, 36, 3               | bottleneck | 60,192,808            | 11.3 x 10^9                  |

torchvision's bottleneck ResNets are "v1.5": the stride-2 of a downsampling block sits on the 3x3
conv instead of the first 1x1, which costs a little more (resnet50 4.1 G, resnet101 7.8 G,
resnet152 11.5 G MACs at 224) for the same parameters; the layer table is otherwise the paper's.
plain34 is ResNet-34 with every shortcut (identity and 1x1 projection) removed, so it has ResNet-34's
parameters minus the three projection convs and their batch norms (conv, BN, ReLU after every conv,
as in the paper's Fig. 3 middle), and the same 3.6 G FLOPs.
"""

from __future__ import annotations

from functools import partial
from typing import Callable

import torch
from torch import nn

from enginesmith.errors import EnginesmithError
from enginesmith.models.registry import ModelSpec, register
from enginesmith.models.weights import load_weights
from enginesmith.runtime.preprocess import PreprocessSpec

INPUT_SIZE = (224, 224)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PAPER = "He et al., Deep Residual Learning for Image Recognition, CVPR 2016"

# name -> (torchvision builder name or None for ours, blocks per stage)
CONFIGS: dict[str, tuple[str | None, tuple[int, int, int, int]]] = {
    "resnet18": ("resnet18", (2, 2, 2, 2)),
    "resnet34": ("resnet34", (3, 4, 6, 3)),
    "resnet50": ("resnet50", (3, 4, 6, 3)),
    "resnet101": ("resnet101", (3, 4, 23, 3)),
    "resnet152": ("resnet152", (3, 8, 36, 3)),
    "plain34": (None, (3, 4, 6, 3)),
}


def stride_check(name: str, stride: int = 32, minimum: int = 32, example: str = "224x224") -> Callable[[tuple[int, int]], None]:
    """check_input_size for a network of total stride `stride`: sides multiples of it and >= `minimum`."""

    def check(size: tuple[int, int]) -> None:
        h, w = (int(s) for s in size)
        if h < minimum or w < minimum or h % stride or w % stride:
            raise EnginesmithError(
                f"{name} needs input sides that are multiples of {stride} and >= {minimum} (its total stride is "
                f"{stride}, so other sizes drop border pixels), got {h}x{w}; try {example}"
            )

    return check


check_input_size = stride_check("resnet50")  # kept: the module-level name resnet50 always had


class PlainBlock(nn.Module):
    """Two 3x3 conv-BN layers with ReLU after each, and no shortcut (the paper's plain baseline)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(x)))


class PlainNet(nn.Module):
    """A plain (shortcut-free) network with ResNet's stem, stage widths and head; torchvision's module names."""

    def __init__(self, blocks: tuple[int, ...] = (3, 4, 6, 3), num_classes: int = 1000) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        layers, in_ch = [], 64
        for i, (n, width) in enumerate(zip(blocks, (64, 128, 256, 512))):
            stage = [PlainBlock(in_ch if j == 0 else width, width, 2 if (j == 0 and i > 0) else 1) for j in range(n)]
            layers.append(nn.Sequential(*stage))
            in_ch = width
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)
        # torchvision's ResNet init: He (fan_out) for convs, BN weight 1 / bias 0
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def build_resnet(name: str, num_classes: int = 1000, input_size: tuple[int, int] = INPUT_SIZE) -> nn.Module:
    """torchvision.models.<name>(weights=None) (torchvision's init, seeded by the caller), or PlainNet for plain34."""
    import torchvision.models as tvm

    stride_check(name)(input_size)
    tv_name, blocks = CONFIGS[name]
    if tv_name is None:
        return PlainNet(blocks, num_classes).eval()
    return getattr(tvm, tv_name)(weights=None, num_classes=num_classes).eval()


def build_resnet50(num_classes: int = 1000, input_size: tuple[int, int] = INPUT_SIZE) -> nn.Module:
    """torchvision.models.resnet50 with no weights (torchvision's init, seeded by the caller)."""
    return build_resnet("resnet50", num_classes, input_size)


def imagenet_class_names() -> tuple[str, ...]:
    """The 1000 ImageNet category names shipped inside torchvision's weights metadata (no download)."""
    try:
        from torchvision.models import ResNet50_Weights

        return tuple(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])
    except Exception:  # pragma: no cover - very old torchvision
        return ()


def imagenet_preprocess(input_size: tuple[int, int] = INPUT_SIZE) -> PreprocessSpec:
    """RGB, shorter side to input/0.875 then centre crop, pixel/255, ImageNet mean/std."""
    return PreprocessSpec(
        input_size=tuple(input_size), resize="center_crop", color="RGB", scale=1.0 / 255.0,
        mean=IMAGENET_MEAN, std=IMAGENET_STD,
    )


PREPROCESS = imagenet_preprocess(INPUT_SIZE)


def register_imagenet_classifier(name: str, builder: Callable[..., nn.Module], check_input_size: Callable[[tuple[int, int]], None],
                                 paper: str, source_file: str, *, input_size: tuple[int, int] = INPUT_SIZE,
                                 output_names: tuple[str, ...] = ("logits",), load: Callable[..., None] | None = None,
                                 ci_input_size: tuple[int, int] | None = None, details: dict | None = None) -> ModelSpec:
    """Register an ImageNet classifier: RGB centre crop with ImageNet mean/std at `input_size`, 1000
    classes with ImageNet names, photo calibration, state-dict checkpoints (or `load`)."""
    size = tuple(input_size)
    return register(
        ModelSpec(
            name=name,
            task="classification",
            builder=builder,
            input_size=size,  # type: ignore[arg-type]
            num_classes=1000,
            preprocess=imagenet_preprocess(size),  # type: ignore[arg-type]
            output_names=output_names,
            check_input_size=check_input_size,
            load_weights=load or partial(load_weights, darknet_ok=False),
            class_names=imagenet_class_names(),
            default_calibration="photos",
            paper=paper,
            source_file=source_file,
            ci_input_size=ci_input_size,
            details=details or {},
        )
    )

# heavy ones (resnet101/152) only run in the zoo harness under -m slow
_CI = {"resnet18": (64, 64), "resnet34": (64, 64), "resnet50": (64, 64), "plain34": (64, 64)}
_PAPERS = {"plain34": PAPER + " (plain-34 baseline, Table 1 / Fig. 3 middle)"}

SPECS: dict[str, ModelSpec] = {
    _name: register_imagenet_classifier(
        _name,
        build_resnet50 if _name == "resnet50" else partial(build_resnet, _name),
        check_input_size if _name == "resnet50" else stride_check(_name),
        _PAPERS.get(_name, PAPER),
        __file__,
        ci_input_size=_CI.get(_name),
    )
    for _name in CONFIGS
}
SPEC = SPECS["resnet50"]
