"""A minimal transcription of eriklindernoren/PyTorch-YOLOv3, the reference for cfg-built Darknet networks.

Source: github.com/eriklindernoren/PyTorch-YOLOv3, commit 1d621c8489e22c76ceb93bb2397ac6c8dfb5ceb7 (2024-11-17):
`pytorchyolo/utils/parse_config.py` parse_model_config, `pytorchyolo/models.py` create_modules, YOLOLayer,
Darknet.forward and Darknet.load_darknet_weights. Transcribed as written except:
- [net]: only width/height/channels are read (create_modules also parses training options our small cfgs omit);
- [maxpool] size 2 stride 1: the original pads right/bottom with ZeroPad2d, which differs from darknet whenever the
  edge values are negative (after leaky); darknet's maxpool_layer.c fills out-of-map cells with -FLT_MAX, so this
  transcription pads with -inf instead (the only semantic change);
- the .weights header is read as 3 int32 + int64 `seen` (the original reads 5 int32 = the same 20 bytes);
- [convolutional] activation "relu" and "linear" as the original (relu is not built there: refused here).
Nothing here imports enginesmith.
"""

from __future__ import annotations

from itertools import chain

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def parse_model_config(text: str) -> list[dict[str, str]]:
    """parse_config.py parse_model_config, on the text instead of a path."""
    lines = text.split("\n")
    lines = [x for x in lines if x and not x.startswith("#")]
    lines = [x.rstrip().lstrip() for x in lines]
    module_defs: list[dict[str, str]] = []
    for line in lines:
        if not line:
            continue
        if line.startswith("["):
            module_defs.append({})
            module_defs[-1]["type"] = line[1:-1].rstrip()
            if module_defs[-1]["type"] == "convolutional":
                module_defs[-1]["batch_normalize"] = 0  # type: ignore[assignment]
        else:
            key, value = line.split("=")
            module_defs[-1][key.rstrip()] = value.strip()
    return module_defs


class YOLOLayer(nn.Module):
    """models.py YOLOLayer (inference path, new_coords=False): x -> [N, na*h*w, 5+C] (cx, cy, w, h, obj, cls...)."""

    def __init__(self, anchors: list[tuple[int, int]], num_classes: int) -> None:
        super().__init__()
        self.num_anchors = len(anchors)
        self.no = num_classes + 5
        self.grid = torch.zeros(1)
        a = torch.tensor(list(chain(*anchors))).float().view(-1, 2)
        self.register_buffer("anchor_grid", a.clone().view(1, -1, 1, 1, 2))

    def forward(self, x: torch.Tensor, img_size: int) -> torch.Tensor:
        stride = img_size // x.size(2)
        bs, _, ny, nx = x.shape
        x = x.view(bs, self.num_anchors, self.no, ny, nx).permute(0, 1, 3, 4, 2).contiguous()
        if self.grid.shape[2:4] != x.shape[2:4]:
            yv, xv = torch.meshgrid([torch.arange(ny), torch.arange(nx)], indexing="ij")
            self.grid = torch.stack((xv, yv), 2).view((1, 1, ny, nx, 2)).float()
        x[..., 0:2] = (x[..., 0:2].sigmoid() + self.grid) * stride
        x[..., 2:4] = torch.exp(x[..., 2:4]) * self.anchor_grid
        x[..., 4:] = x[..., 4:].sigmoid()
        return x.view(bs, -1, self.no)


def create_modules(module_defs: list[dict]) -> nn.ModuleList:
    """models.py create_modules (see the module docstring for the maxpool change)."""
    hyperparams = module_defs.pop(0)
    output_filters = [int(hyperparams["channels"])]
    module_list = nn.ModuleList()
    for module_i, module_def in enumerate(module_defs):
        modules = nn.Sequential()
        if module_def["type"] == "convolutional":
            bn = int(module_def["batch_normalize"])
            filters = int(module_def["filters"])
            kernel_size = int(module_def["size"])
            pad = (kernel_size - 1) // 2
            modules.add_module(f"conv_{module_i}", nn.Conv2d(output_filters[-1], filters, kernel_size,
                                                             stride=int(module_def["stride"]), padding=pad, bias=not bn))
            if bn:
                modules.add_module(f"batch_norm_{module_i}", nn.BatchNorm2d(filters, momentum=0.1, eps=1e-5))
            if module_def["activation"] == "leaky":
                modules.add_module(f"leaky_{module_i}", nn.LeakyReLU(0.1))
            elif module_def["activation"] == "mish":
                modules.add_module(f"mish_{module_i}", nn.Mish())
            elif module_def["activation"] == "logistic":
                modules.add_module(f"sigmoid_{module_i}", nn.Sigmoid())
            elif module_def["activation"] == "swish":
                modules.add_module(f"swish_{module_i}", nn.SiLU())
            elif module_def["activation"] != "linear":
                raise AssertionError(f"the reference builds no {module_def['activation']} activation")
        elif module_def["type"] == "maxpool":
            kernel_size = int(module_def["size"])
            stride = int(module_def["stride"])
            if kernel_size == 2 and stride == 1:  # original: nn.ZeroPad2d((0, 1, 0, 1)); darknet: -FLT_MAX
                modules.add_module(f"_debug_padding_{module_i}", nn.ConstantPad2d((0, 1, 0, 1), float("-inf")))
            modules.add_module(f"maxpool_{module_i}", nn.MaxPool2d(kernel_size, stride, int((kernel_size - 1) // 2)))
        elif module_def["type"] == "upsample":
            modules.add_module(f"upsample_{module_i}", nn.Upsample(scale_factor=int(module_def["stride"]),
                                                                   mode="nearest"))
        elif module_def["type"] == "route":
            layers = [int(x) for x in module_def["layers"].split(",")]
            filters = sum([output_filters[1:][i] for i in layers]) // int(module_def.get("groups", 1))
            modules.add_module(f"route_{module_i}", nn.Sequential())
        elif module_def["type"] == "shortcut":
            filters = output_filters[1:][int(module_def["from"])]
            modules.add_module(f"shortcut_{module_i}", nn.Sequential())
        elif module_def["type"] == "yolo":
            anchor_idxs = [int(x) for x in module_def["mask"].split(",")]
            anchors = [int(x) for x in module_def["anchors"].split(",")]
            anchors = [(anchors[i], anchors[i + 1]) for i in range(0, len(anchors), 2)]
            anchors = [anchors[i] for i in anchor_idxs]
            modules.add_module(f"yolo_{module_i}", YOLOLayer(anchors, int(module_def["classes"])))
        module_list.append(modules)
        output_filters.append(filters)
    return module_list


class Darknet(nn.Module):
    """models.py Darknet: forward (eval) -> [N, A, 5+C]; `raws` keeps each yolo layer's input (the raw head map)."""

    def __init__(self, cfg_text: str) -> None:
        super().__init__()
        self.module_defs = parse_model_config(cfg_text)
        self.module_list = create_modules([dict(d) for d in self.module_defs])
        self.module_defs = self.module_defs[1:]
        self.raws: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        img_size = x.size(2)
        layer_outputs, yolo_outputs = [], []
        self.raws = []
        for module_def, module in zip(self.module_defs, self.module_list):
            if module_def["type"] in ["convolutional", "upsample", "maxpool"]:
                x = module(x)
            elif module_def["type"] == "route":
                combined = torch.cat([layer_outputs[int(i)] for i in module_def["layers"].split(",")], 1)
                group_size = combined.shape[1] // int(module_def.get("groups", 1))
                group_id = int(module_def.get("group_id", 0))
                x = combined[:, group_size * group_id: group_size * (group_id + 1)]
            elif module_def["type"] == "shortcut":
                x = layer_outputs[-1] + layer_outputs[int(module_def["from"])]
            elif module_def["type"] == "yolo":
                self.raws.append(x.clone())
                x = module[0](x, img_size)
                yolo_outputs.append(x)
            layer_outputs.append(x)
        return torch.cat(yolo_outputs, 1)

    def load_darknet_weights(self, path: str) -> None:
        """models.py load_darknet_weights (no cutoff): BN bias, weight, mean, var (or conv bias), then conv weight."""
        with open(path, "rb") as f:
            f.read(20)
            weights = np.fromfile(f, dtype=np.float32)
        ptr = 0
        for module_def, module in zip(self.module_defs, self.module_list):
            if module_def["type"] != "convolutional":
                continue
            conv_layer = module[0]
            tensors = ([module[1].bias, module[1].weight, module[1].running_mean, module[1].running_var]
                       if int(module_def["batch_normalize"]) else [conv_layer.bias])
            for t in [*tensors, conv_layer.weight]:
                n = t.numel()
                t.data.copy_(torch.from_numpy(weights[ptr: ptr + n]).view_as(t))
                ptr += n
        assert ptr == len(weights), f"{len(weights) - ptr} floats left over"


def write_random_weights(path: str, cfg_text: str, seed: int) -> None:
    """A .weights file for the cfg (header 0, 2, 0, seen int64) with random, well-scaled values, written through
    the reference's own modules: BN bias/weight/mean/var (or conv bias) then the conv weight, per conv in order."""
    model = Darknet(cfg_text)
    rng = np.random.default_rng(seed)
    parts = [np.array([0, 2, 0], dtype="<i4").tobytes(), np.array([0], dtype="<i8").tobytes()]
    for module_def, module in zip(model.module_defs, model.module_list):
        if module_def["type"] != "convolutional":
            continue
        conv = module[0]
        n, fan_in = conv.out_channels, conv.weight[0].numel()
        if int(module_def["batch_normalize"]):
            vals = [rng.normal(0, 0.1, n), rng.uniform(0.6, 1.4, n), rng.normal(0, 0.2, n), rng.uniform(0.5, 1.5, n)]
            std = (2.0 / fan_in) ** 0.5
        else:
            vals, std = [rng.normal(0, 0.1, n)], 0.5 / fan_in**0.5
        vals.append(rng.normal(0, std, conv.weight.numel()))
        parts += [v.astype("<f4").tobytes() for v in vals]
    with open(path, "wb") as f:
        f.write(b"".join(parts))


def boxes_scores(out: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """[N, A, 5+C] (cx, cy, w, h, obj, cls) -> boxes [N, A, 4] x1y1x2y2 and scores obj * cls [N, A, C]."""
    o = out.double().numpy()
    xy, wh = o[..., 0:2], o[..., 2:4]
    return np.concatenate([xy - wh / 2, xy + wh / 2], axis=-1), o[..., 4:5] * o[..., 5:]


def swap_maxpool_padding_to_zero(model: Darknet) -> None:
    """Put back the original's ZeroPad2d (for a test that shows the padding matters)."""
    for module in model.module_list:
        for name, m in module.named_children():
            if name.startswith("_debug_padding_"):
                setattr(module, name, nn.ZeroPad2d((0, 1, 0, 1)))


__all__ = ["Darknet", "parse_model_config", "write_random_weights", "boxes_scores", "F"]
