"""The PyTorch network of a user's Darknet `.cfg` (`build-engine darknet --cfg PATH`), and its ModelSpec.

Input [N, 3, H, W] RGB in [0, 1] (letterboxed; H x W from [net] height/width or --input-size). Outputs, decoded in
the graph under the submodule `decode` (the detector contract of every YOLO here):
- boxes  [N, A, 4]: x1, y1, x2, y2 in input pixels;
- scores [N, A, C]: sigmoid(objectness) * sigmoid(class) for [yolo], * softmax(classes) for [region];
A = sum over heads of len(mask) * h * w, heads in cfg order, then anchor, row, column.

Decoding as darknet's yolo_layer.c / region_layer.c: x = (col + sigmoid(tx) * s - (s - 1) / 2) * W / w (s =
scale_x_y), w = exp(tw) * anchor (input pixels; [region] anchors are grid cells, converted by the plan).
Modules are registered one per cfg layer, in cfg order, with each conv's BatchNorm right after it, so a `.weights`
file loads conv by conv through models/weights/darknet.py. The layer checks are models/darknet_plan.py's.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from enginesmith.errors import EnginesmithError
from enginesmith.models.classes import COCO_NAMES, VOC_NAMES
from enginesmith.models.darknet_plan import CfgPlan, CfgSource, Head, PlanLayer, plan_cfg
from enginesmith.models.ops import make_grid
from enginesmith.models.registry import ModelSpec
from enginesmith.models.weights import load_weights
from enginesmith.models.yolov2 import DarknetReorg, init_darknet_weights
from enginesmith.runtime.preprocess import PreprocessSpec


class Mish(nn.Module):
    """darknet's mish: x * tanh(softplus(x)) (softplus is x itself above 20, as darknet's threshold)."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.tanh(F.softplus(x))


def activation(name: str) -> nn.Module:
    """A darknet activation by its cfg name (darknet_plan.ACTIVATIONS)."""
    return {"leaky": lambda: nn.LeakyReLU(0.1), "linear": nn.Identity, "relu": nn.ReLU, "logistic": nn.Sigmoid,
            "mish": Mish, "swish": nn.SiLU}[name]()


class CfgConv(nn.Module):
    """[convolutional]: conv (bias only without batch norm), BatchNorm2d (eps 1e-5), activation."""

    def __init__(self, cin: int, o: dict[str, Any]) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, o["filters"], o["size"], o["stride"], o["pad"], groups=o["groups"], bias=not o["bn"])
        self.bn = nn.BatchNorm2d(o["filters"]) if o["bn"] else None
        self.act = activation(o["activation"])

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x)
        return self.act(self.bn(x) if self.bn is not None else x)


class CfgMaxPool(nn.Module):
    """[maxpool]: windows from -padding/2, out = (w + padding - size)/stride + 1. The plan refuses windows without an
    input cell, so edge-replicate padding gives darknet's max exactly (its out-of-map cells are -FLT_MAX)."""

    def __init__(self, size: int, stride: int, padding: int) -> None:
        super().__init__()
        self.pads = (padding // 2, padding - padding // 2) * 2
        self.pool = nn.MaxPool2d(size, stride)

    def forward(self, x: Tensor) -> Tensor:
        return self.pool(F.pad(x, self.pads, mode="replicate") if any(self.pads) else x)


class Marker(nn.Module):
    """Route / shortcut / yolo / region / dropout: the network's forward does their work (no weights)."""

    def __init__(self, kind: str, act: nn.Module | None = None) -> None:
        super().__init__()
        self.kind = kind
        self.act = act if act is not None else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(x)

    def extra_repr(self) -> str:
        return self.kind


def layer_module(layer: PlanLayer, cin: int) -> nn.Module:
    """The module of one plan layer whose input has `cin` channels."""
    o = layer.opts
    if layer.kind == "convolutional":
        return CfgConv(cin, o)
    if layer.kind == "maxpool":
        return CfgMaxPool(o["size"], o["stride"], o["padding"])
    if layer.kind == "upsample":
        return nn.Upsample(scale_factor=o["stride"], mode="nearest")
    if layer.kind == "reorg":
        return DarknetReorg(o["stride"])
    return Marker(layer.kind, activation(o["activation"]) if layer.kind == "shortcut" else None)


class HeadDecode(nn.Module):
    """One head: raw [N, na*(5+C), h, w] -> boxes [N, na*h*w, 4] (x1y1x2y2 input pixels), scores [N, na*h*w, C]."""

    def __init__(self, head: Head) -> None:
        super().__init__()
        h, w = head.grid
        self.shape = (len(head.anchors), 5 + head.num_classes, h, w)
        self.scale, self.softmax = head.scale_xy, head.class_activation == "softmax"
        sy, sx = head.stride
        self.register_buffer("stride", torch.tensor([sx, sy], dtype=torch.float32), persistent=False)
        self.register_buffer("anchors", torch.tensor(head.anchors, dtype=torch.float32).reshape(1, -1, 1, 1, 2),
                             persistent=False)
        self.register_buffer("grid", make_grid(h, w), persistent=False)

    def forward(self, raw: Tensor) -> tuple[Tensor, Tensor]:
        na, no, h, w = self.shape
        p = raw.reshape(-1, na, no, h, w).permute(0, 1, 3, 4, 2)  # [N, na, h, w, 5+C]
        t = torch.sigmoid(p[..., 0:2])
        if self.scale != 1.0:
            t = t * self.scale - 0.5 * (self.scale - 1.0)
        xy = (t + self.grid) * self.stride
        wh = torch.exp(p[..., 2:4]) * self.anchors
        boxes = torch.cat((xy - 0.5 * wh, xy + 0.5 * wh), dim=-1)
        cls = torch.softmax(p[..., 5:], dim=-1) if self.softmax else torch.sigmoid(p[..., 5:])
        scores = torch.sigmoid(p[..., 4:5]) * cls
        return boxes.reshape(-1, na * h * w, 4), scores.reshape(-1, na * h * w, no - 5)


class CfgDecode(nn.Module):
    """Every head's decoding (kept in float by quantizers): raw maps in cfg order -> boxes [N, A, 4], scores [N, A, C]."""

    def __init__(self, heads: tuple[Head, ...]) -> None:
        super().__init__()
        self.heads = nn.ModuleList(HeadDecode(h) for h in heads)

    def forward(self, raws: list[Tensor]) -> tuple[Tensor, Tensor]:
        outs = [dec(r) for dec, r in zip(self.heads, raws)]
        return torch.cat([b for b, _ in outs], dim=1), torch.cat([s for _, s in outs], dim=1)


class DarknetCfgNet(nn.Module):
    """The network of a cfg plan: x [N, 3, H, W] -> (boxes [N, A, 4] x1y1x2y2 input pixels, scores [N, A, C])."""

    def __init__(self, plan: CfgPlan) -> None:
        super().__init__()
        self.plan = plan
        self.num_classes, self.input_size = plan.num_classes, plan.input_size
        cins = [3] + [layer.shape[0] for layer in plan.layers[:-1]]
        self.layers = nn.ModuleList(layer_module(layer, cin) for layer, cin in zip(plan.layers, cins))
        self._keep = frozenset(k for layer in plan.layers for k in layer.opts.get("sources", ()))
        self._keep |= {layer.opts["source"] for layer in plan.layers if layer.kind == "shortcut"}
        self.decode = CfgDecode(plan.heads)

    def forward_raw(self, x: Tensor) -> list[Tensor]:
        """The raw maps [N, na*(5+C), h, w] that feed the heads, in cfg order (before decoding)."""
        saved: dict[int, Tensor] = {}
        raws: list[Tensor] = []
        for i, (layer, m) in enumerate(zip(self.plan.layers, self.layers)):
            kind, o = layer.kind, layer.opts
            if kind == "route":
                g, gid = o["groups"], o["group_id"]
                parts = [saved[k] if g == 1 else saved[k].chunk(g, dim=1)[gid] for k in o["sources"]]
                x = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
            elif kind == "shortcut":
                x = m(x + saved[o["source"]])
            elif kind in ("yolo", "region"):
                raws.append(x)
            elif kind != "dropout":
                x = m(x)
            if i in self._keep:
                saved[i] = x
        return raws

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.decode(self.forward_raw(x))


def init_cfg_net(model: DarknetCfgNet) -> None:
    """Seeded init with finite, varied outputs (yolov2.init_darknet_weights); the batch norm that ends a residual
    branch gets weight 0.2 so deep shortcut stacks do not grow the activations (as models/yolo.py)."""
    init_darknet_weights(model)
    with torch.no_grad():
        for i, layer in enumerate(model.plan.layers):
            prev = model.layers[i - 1] if i else None
            if layer.kind == "shortcut" and isinstance(prev, CfgConv) and prev.bn is not None:
                prev.bn.weight.fill_(0.2)


def build_cfg_net(text: str, file: str, num_classes: int, input_size: tuple[int, int]) -> DarknetCfgNet:
    """The cfg's network at `input_size`, seeded init, eval mode. The class count is the cfg's own."""
    plan = plan_cfg(text, file, input_size)
    if num_classes != plan.num_classes:
        raise EnginesmithError(f"{file} defines {plan.num_classes} classes (classes= in its [{plan.heads[0].kind}] "
                               f"layers), not {num_classes}: the class count comes from the cfg; drop --num-classes")
    model = DarknetCfgNet(plan)
    init_cfg_net(model)
    return model.eval()


def read_names(path: str | Path, classes: int) -> tuple[str, ...]:
    """A Darknet `.names` file: one class name a line (blank lines skipped); there must be `classes` of them."""
    p = Path(path)
    if not p.is_file():
        raise EnginesmithError(f"names file not found: {p}")
    names = tuple(n.strip() for n in p.read_text(encoding="utf-8", errors="replace").splitlines() if n.strip())
    if len(names) != classes:
        raise EnginesmithError(f"{p} has {len(names)} class names, but the cfg has classes={classes}; give one name "
                               "a line, in class order")
    return names


def default_names(classes: int) -> tuple[str, ...]:
    """Without --names: COCO's 80 names for 80 classes, VOC's 20 for 20 (the published cfgs), else "0".."C-1"."""
    return COCO_NAMES if classes == len(COCO_NAMES) else VOC_NAMES if classes == len(VOC_NAMES) else \
        tuple(str(i) for i in range(classes))


def cfg_spec(source: CfgSource, names: str | Path | None = None) -> ModelSpec:
    """The ModelSpec of a cfg (the model `darknet`): built from `source.text`, the bytes `source.sha256` names."""
    plan = plan_cfg(source.text, source.name)
    h, w = plan.input_size
    return ModelSpec(
        name="darknet", task="detection", builder=partial(build_cfg_net, source.text, source.name),
        input_size=(h, w), num_classes=plan.num_classes,
        preprocess=PreprocessSpec(input_size=(h, w), resize="letterbox", color="RGB", scale=1.0 / 255.0,
                                  mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), pad_value=114),
        output_names=("boxes", "scores"), check_input_size=lambda size: _check_size(source, size),
        load_weights=partial(load_weights, darknet_ok=True),
        class_names=read_names(names, plan.num_classes) if names else default_names(plan.num_classes),
        paper=f"Darknet cfg {source.name}", source_file=__file__,
        details={"box_format": "xyxy", "heads": [h.kind for h in plan.heads]},
        definition={"format": "darknet-cfg", "file": source.name, "sha256": source.sha256},
    )


def _check_size(source: CfgSource, size: tuple[int, int]) -> None:
    """An input size the cfg can take: every layer's plan at that size (one line naming the cfg line otherwise)."""
    plan_cfg(source.text, source.name, size)


__all__ = ["DarknetCfgNet", "CfgDecode", "HeadDecode", "build_cfg_net", "cfg_spec", "read_names", "default_names"]
