"""Which loss a network trains with, read from its decode module (the zoo's contract), and the
prior-probability initialisation of its detection biases.

- YOLO family: `decode.scales` of models/yolo.py ScaleDecode (anchors [na, 2] px, stride) -> yolo_loss.
- SSD family: models/ssd.py SSDDecode (priors [P, 4] cx, cy, w, h in [0, 1]) -> multibox_loss.
- RetinaNet: models/retinanet.py RetinaDecode (anchors [A, 4] x1y1x2y2 px) -> focal_loss.
- classifiers (logits [N, C]) -> classification_loss.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor, nn

from enginesmith.errors import EnginesmithError
from enginesmith.models.ssd import SSDDecode
from enginesmith.models.yolo import ScaleDecode
from enginesmith.training.losses import YoloLossWeights, classification_loss, focal_loss, multibox_loss, yolo_loss

Family = Literal["yolo", "ssd", "retinanet", "classifier"]


def family_of(model: nn.Module) -> Family:
    """The loss family of a zoo model, from its decode module (or "classifier" when it has none)."""
    from enginesmith.models.retinanet import RetinaDecode

    decode = getattr(model, "decode", None)
    if decode is None:
        return "classifier"
    if isinstance(decode, SSDDecode):
        return "ssd"
    if isinstance(decode, RetinaDecode):
        return "retinanet"
    scales = getattr(decode, "scales", None)
    if scales is not None and all(isinstance(s, ScaleDecode) for s in scales):
        return "yolo"
    raise EnginesmithError(
        f"{type(model).__name__} has a decode module of type {type(decode).__name__}, which no trainer loss "
        "supports; `enginesmith train` trains YOLOv3-style, SSD, RetinaNet detectors and classifiers"
    )


def detection_loss(model: nn.Module, x: Tensor, targets: list[Tensor],
                   yolo_weights: YoloLossWeights = YoloLossWeights()) -> dict[str, Tensor]:
    """The family loss of `model` on a batch x [N, C, H, W] with targets [K_i, 5] (class, x1y1x2y2 input px)."""
    family = family_of(model)
    if family == "yolo":
        raws = model.forward_raw(x)
        scales = model.decode.scales
        return yolo_loss(raws, targets, [s.anchors for s in scales], [s.stride for s in scales],
                         int(scales[0].static_shape[1]) - 5, yolo_weights)
    if family == "ssd":
        loc, conf = model.forward_raw(x)
        return multibox_loss(loc, conf, targets, model.decode.priors, (int(x.shape[2]), int(x.shape[3])))
    if family == "retinanet":
        cls_logits, bbox_reg = model.forward_raw(x)
        return focal_loss(cls_logits, bbox_reg, targets, model.decode.anchors)
    raise EnginesmithError(f"{type(model).__name__} is a classifier; train it with classification_loss")


def classifier_loss(model: nn.Module, x: Tensor, labels: Tensor) -> dict[str, Tensor]:
    return classification_loss(model(x), labels)


def init_detection_priors(model: nn.Module, prior: float = 0.01) -> None:
    """Start every objectness / class output at probability `prior` (Lin et al. 2017, section 4.1), so
    the first steps are not spent pushing hundreds of negatives down. YOLO: objectness and class
    biases of the detection convs; SSD: background logit log(prior_bg (C-1) / (1 - prior_bg)) with
    prior_bg = 1 - prior. RetinaNet's head already has this init (torchvision)."""
    family = family_of(model)
    b = -math.log((1 - prior) / prior)
    with torch.no_grad():
        if family == "yolo":
            c = int(model.decode.scales[0].static_shape[1])
            for conv in _detection_convs(model, len(model.decode.scales)):
                bias = conv.bias.reshape(-1, c)
                bias[:, 4:] = b
        elif family == "ssd":
            conf_heads = getattr(model, "conf", None)
            if conf_heads is not None:
                for head in conf_heads:
                    c = model.num_classes
                    bias = head.bias.reshape(-1, c)
                    bias.zero_()
                    bias[:, 0] = math.log((1 - prior) * (c - 1) / prior)


def _detection_convs(model: nn.Module, count: int) -> list[nn.Conv2d]:
    """The biased convs that end the YOLO heads (darknet's detection convs: the only convs with a bias)."""
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.bias is not None]
    if len(convs) != count:
        raise EnginesmithError(f"expected {count} detection convs with a bias in {type(model).__name__}, found {len(convs)}")
    return convs
