"""VGG (Simonyan & Zisserman, ICLR 2015): ConvNet configurations A, A-LRN, B, C, D, E of Table 1,
and the dense-testing form of Sec. 3.2.

Input [N, 3, 224, 224] RGB (ImageNet-normalised) -> logits [N, num_classes].

| name      | config | conv layers (Table 1; "M" = max-pool 2x2/2, "c1" = conv 1x1) | params, Table 2 | here (1000 cl.) |
|-----------|--------|---------------------------------------------------------------|-----------------|-----------------|
| vgg11     | A      | 64 M 128 M 256 256 M 512 512 M 512 512 M                      | 133 M           | 132,863,336     |
| vgg11-lrn | A-LRN  | A with LRN after the first conv                               | 133 M           | 132,863,336     |
| vgg13     | B      | 64 64 M 128 128 M 256 256 M 512 512 M 512 512 M               | 133 M           | 133,047,848     |
| vgg16-c   | C      | B + a conv 1x1 at the end of stages 3, 4, 5                   | 134 M           | 133,638,952     |
| vgg16     | D      | B + a conv 3x3 at the end of stages 3, 4, 5                   | 138 M           | 138,357,544     |
| vgg19     | E      | B + two conv 3x3 at the end of stages 3, 4, 5                 | 144 M           | 143,667,240     |

Every conv is 3x3 stride 1 pad 1 (1x1 pad 0 in C) followed by ReLU; no batch norm. The classifier is
FC-4096, ReLU, dropout 0.5, FC-4096, ReLU, dropout 0.5, FC-C (dropout is a no-op in the exported
eval model). A, B, D and E are torchvision's vgg11/13/16/19 (without BN), which are exactly these
tables; A-LRN and C are built here from the same config table into torchvision's VGG class (same
module names, so torchvision-layout state dicts load). The LRN of A-LRN is AlexNet's (n=5, k=2,
alpha=1e-4, beta=0.75; see alexnet.py).

FC networks take the paper's fixed 224x224 crop. Dense testing (Sec. 3.2): `vgg16-dense` and
`vgg19-dense` turn the FC layers into conv 7x7 (512 -> 4096), conv 1x1 (4096 -> 4096) and conv 1x1
(4096 -> C), so the network slides over any input whose sides are multiples of 32 and >= 224; the
class score map is spatially averaged into logits [N, C] (the paper also averages the scores of the
horizontally flipped image; that is left to the caller). `to_dense(fc_model)` and
`dense_state_dict(fc_state_dict)` convert trained FC weights, and the dense specs' load_weights
accepts a torchvision FC checkpoint as well as a dense one. At 224 dense and FC give the same logits.
"""

from __future__ import annotations

import copy
from functools import partial
from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from enginesmith.errors import EnginesmithError
from enginesmith.models.alexnet import paper_lrn
from enginesmith.models.registry import ModelSpec
from enginesmith.models.resnet import register_imagenet_classifier
from enginesmith.models.weights.state_dict import read_state_dict

INPUT_SIZE = (224, 224)
PAPER = "Simonyan & Zisserman, Very Deep Convolutional Networks for Large-Scale Image Recognition, ICLR 2015"

# Table 1: ints are conv 3x3 widths, "M" max-pool, "LRN" local response normalisation, "c<width>" conv 1x1.
CONFIGS: dict[str, list] = {
    "A": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "A-LRN": [64, "LRN", "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "B": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "C": [64, 64, "M", 128, 128, "M", 256, 256, "c256", "M", 512, 512, "c512", "M", 512, 512, "c512", "M"],
    "D": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "E": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}
# registered name -> (config, torchvision builder that is exactly that config, or None to build it here)
MODELS: dict[str, tuple[str, str | None]] = {
    "vgg11": ("A", "vgg11"),
    "vgg11-lrn": ("A-LRN", None),
    "vgg13": ("B", "vgg13"),
    "vgg16-c": ("C", None),
    "vgg16": ("D", "vgg16"),
    "vgg19": ("E", "vgg19"),
}
DENSE: dict[str, str] = {"vgg16-dense": "vgg16", "vgg19-dense": "vgg19"}


def make_features(cfg: list) -> nn.Sequential:
    """The conv part of a Table 1 column (torchvision's `features` layout)."""
    layers: list[nn.Module] = []
    in_ch = 3
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        elif v == "LRN":
            layers.append(paper_lrn())
        elif isinstance(v, str) and v.startswith("c"):
            layers += [nn.Conv2d(in_ch, int(v[1:]), 1), nn.ReLU(inplace=True)]
            in_ch = int(v[1:])
        else:
            layers += [nn.Conv2d(in_ch, int(v), 3, padding=1), nn.ReLU(inplace=True)]
            in_ch = int(v)
    return nn.Sequential(*layers)


def build_vgg(name: str, num_classes: int = 1000, input_size: tuple[int, int] = INPUT_SIZE) -> nn.Module:
    """An FC VGG: torchvision's where it is the paper's config, else torchvision's VGG class on our features."""
    import torchvision.models as tvm
    from torchvision.models.vgg import VGG

    fc_check(name)(input_size)
    cfg, tv_name = MODELS[name]
    if tv_name is not None:
        model = getattr(tvm, tv_name)(weights=None, num_classes=num_classes)
    else:
        model = VGG(make_features(CONFIGS[cfg]), num_classes=num_classes, init_weights=True)
    # torchvision's AdaptiveAvgPool2d((7, 7)) is the identity at the only size these take (224: a 7x7
    # map); it is dropped (it has no parameters) because its ONNX export needs static shapes, which
    # the exporter loses after an LRN (A-LRN).
    model.avgpool = nn.Identity()
    return model.eval()


class VGGDense(nn.Module):
    """Dense-testing VGG (Sec. 3.2): features -> conv 7x7/1x1/1x1 head -> score map averaged -> logits [N, C].

    The classifier keeps torchvision's indices (0, 3, 6), so a converted FC state dict loads by name.
    """

    def __init__(self, features: nn.Sequential, num_classes: int = 1000) -> None:
        super().__init__()
        self.features = features
        self.classifier = nn.Sequential(
            nn.Conv2d(512, 4096, 7), nn.ReLU(inplace=True), nn.Dropout(0.5),  # fc6
            nn.Conv2d(4096, 4096, 1), nn.ReLU(inplace=True), nn.Dropout(0.5),  # fc7
            nn.Conv2d(4096, num_classes, 1),  # fc8
        )
        for m in self.classifier.modules():  # torchvision's VGG init for the FC layers it replaces
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scores = self.classifier(self.features(x))  # [N, C, H/32 - 6, W/32 - 6] class score map
        return scores.mean(dim=(2, 3))


def dense_state_dict(fc: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Convert an FC VGG state dict (torchvision layout) to VGGDense's: FC weights reshaped to convs.

    fc6 [4096, 512*7*7] -> [4096, 512, 7, 7] (torch.flatten of a C,H,W map is channel-major, so this
    is a pure reshape); fc7/fc8 [out, in] -> [out, in, 1, 1]. Already-dense tensors pass unchanged.
    """
    out = dict(fc)
    for key, shape in (("classifier.0.weight", (512, 7, 7)), ("classifier.3.weight", None), ("classifier.6.weight", None)):
        w = out.get(key)
        if w is not None and w.dim() == 2:
            out[key] = w.reshape(w.shape[0], *(shape or (w.shape[1], 1, 1)))
    return out


def to_dense(fc_model: nn.Module) -> VGGDense:
    """A VGGDense carrying a (trained) FC VGG's weights; at 224x224 both give the same logits."""
    sd = fc_model.state_dict()
    dense = VGGDense(copy.deepcopy(fc_model.features), num_classes=sd["classifier.6.weight"].shape[0])
    dense.load_state_dict(dense_state_dict(sd))
    return dense.eval()


def build_vgg_dense(fc_name: str, num_classes: int = 1000, input_size: tuple[int, int] = INPUT_SIZE) -> VGGDense:
    dense_check(fc_name + "-dense")(input_size)
    return VGGDense(make_features(CONFIGS[MODELS[fc_name][0]]), num_classes).eval()


def load_dense_weights(model: nn.Module, path: str | Path) -> None:
    """Load a dense or FC (torchvision-layout) VGG checkpoint into a VGGDense, strictly."""
    p = Path(path)
    if not p.exists():
        raise EnginesmithError(f"weights file not found: {p}")
    sd = dense_state_dict(read_state_dict(p))
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    if missing or unexpected:
        raise EnginesmithError(
            f"checkpoint {p} does not match {type(model).__name__}: missing {missing[:5]}, unexpected {unexpected[:5]}; "
            "give a VGG state dict of the same configuration (FC torchvision layout or dense)"
        )
    for k, v in sd.items():
        if tuple(v.shape) != tuple(own[k].shape):
            raise EnginesmithError(
                f"checkpoint {p} does not match {type(model).__name__}: {k} has shape {tuple(v.shape)} in the file "
                f"but {tuple(own[k].shape)} in the model; wrong num_classes or configuration?"
            )
    model.load_state_dict(sd)


def fc_check(name: str):
    def check(size: tuple[int, int]) -> None:
        if tuple(int(s) for s in size) != INPUT_SIZE:
            raise EnginesmithError(
                f"{name} takes exactly 224x224 input (its FC layers need a 7x7 map), got {size[0]}x{size[1]}; "
                f"use --input-size 224 ({', '.join(DENSE)} take larger inputs)"
            )

    return check


def dense_check(name: str):
    def check(size: tuple[int, int]) -> None:
        h, w = (int(s) for s in size)
        if h < 224 or w < 224 or h % 32 or w % 32:
            raise EnginesmithError(
                f"{name} needs input sides that are multiples of 32 and >= 224 (its conv 7x7 head needs a 7x7 map "
                f"at stride 32), got {h}x{w}; try 224x224, 256x256 or 384x384"
            )

    return check


SPECS: dict[str, ModelSpec] = {}
for _name, (_cfg, _tv) in MODELS.items():
    # >130M parameters: only vgg11 runs in the CI zoo harness (at its only size, 224)
    SPECS[_name] = register_imagenet_classifier(
        _name, partial(build_vgg, _name), fc_check(_name), f"{PAPER} (configuration {_cfg})", __file__,
        ci_input_size=INPUT_SIZE if _name == "vgg11" else None, details={"config": _cfg},
    )
for _name, _fc in DENSE.items():
    SPECS[_name] = register_imagenet_classifier(
        _name, partial(build_vgg_dense, _fc), dense_check(_name),
        f"{PAPER} (configuration {MODELS[_fc][0]}, dense evaluation, Sec. 3.2)", __file__,
        load=load_dense_weights, details={"config": MODELS[_fc][0], "dense": True},
    )
