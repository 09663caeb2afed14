"""The SSD300/SSD512 VOC checkpoint layout of amdegroot/ssd.pytorch (e.g. ssd300_mAP_77.43_v2.pth).

That file is a plain state dict saved with torch.save(net.state_dict()):
    vgg.N.weight / vgg.N.bias        N = conv indices of the 35-module VGG list (0, 2, 5, ..., 31, 33)
    L2Norm.weight                    [512], the conv4_3 scale
    extras.N.weight / extras.N.bias  N = 0..7 (SSD300) or 0..9 (SSD512)
    loc.N.weight / loc.N.bias        N = source index, [boxes * 4, C, 3, 3]
    conf.N.weight / conf.N.bias      N = source index, [boxes * 21, C, 3, 3]
enginesmith's SSD (models/ssd.py) keeps exactly these module names, so our own state dict *is* this
layout and the mapping below is the identity on names; it exists to check the file key by key and to
say which layer is wrong. Wrapped dicts ("state_dict"/"model") and "module." prefixes (DataParallel)
are accepted.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from enginesmith.errors import EnginesmithError
from enginesmith.models.weights.state_dict import read_state_dict

_VGG_NAMES = {0: "conv1_1", 2: "conv1_2", 5: "conv2_1", 7: "conv2_2", 10: "conv3_1", 12: "conv3_2", 14: "conv3_3",
              17: "conv4_1", 19: "conv4_2", 21: "conv4_3", 24: "conv5_1", 26: "conv5_2", 28: "conv5_3",
              31: "conv6 (fc6, dilated)", 33: "conv7 (fc7)"}


def describe_key(key: str) -> str:
    """A human name for an ssd.pytorch key: 'vgg.21.weight' -> 'vgg.21.weight (conv4_3)'."""
    parts = key.split(".")
    what = ""
    if parts[0] == "vgg" and len(parts) > 1 and parts[1].isdigit():
        what = _VGG_NAMES.get(int(parts[1]), "")
    elif parts[0] == "L2Norm":
        what = "conv4_3 L2Norm scale"
    elif parts[0] == "extras" and len(parts) > 1 and parts[1].isdigit():
        what = f"extra layer {int(parts[1])}"
    elif parts[0] in ("loc", "conf") and len(parts) > 1 and parts[1].isdigit():
        what = f"{parts[0]} head of source {int(parts[1])}"
    return f"{key} ({what})" if what else key


def ssd_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's weights in ssd.pytorch's layout (persistent entries only; priors are rebuilt)."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def save_ssd_checkpoint(model: nn.Module, path: str | Path) -> None:
    """Write `model` as an ssd.pytorch checkpoint (plain state dict, torch.save)."""
    torch.save(ssd_state_dict(model), Path(path))


def map_ssd_checkpoint(sd: dict[str, torch.Tensor], model: nn.Module, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Check an ssd.pytorch state dict against `model` key by key -> the state dict to load.

    EnginesmithError names the first missing / unexpected key or wrong shape, with its layer.
    """
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    hint = "is it an SSD300 file given to ssd512 (or the reverse), or trained with another number of classes?"
    if missing:
        raise EnginesmithError(
            f"{source} is not a complete ssd.pytorch SSD{model.cfg.size} checkpoint: {len(missing)} missing keys, "  # type: ignore[attr-defined]
            f"first {describe_key(missing[0])}; {hint}"
        )
    if unexpected:
        raise EnginesmithError(
            f"{source} does not match SSD{model.cfg.size}: {len(unexpected)} unexpected keys, "  # type: ignore[attr-defined]
            f"first {describe_key(unexpected[0])}; {hint}"
        )
    out = {}
    for k, ref in own.items():
        v = sd[k]
        if tuple(v.shape) != tuple(ref.shape):
            raise EnginesmithError(
                f"{source} does not match SSD{model.cfg.size}: {describe_key(k)} has shape {tuple(v.shape)} in the "  # type: ignore[attr-defined]
                f"file but {tuple(ref.shape)} in the model; {hint}"
            )
        if not torch.is_floating_point(v) or not torch.isfinite(v).all():
            raise EnginesmithError(f"{source}: {describe_key(k)} holds non-finite or non-float values; the file is corrupt")
        out[k] = v.to(ref.dtype)
    return out


def load_ssd_checkpoint(model: nn.Module, path: str | Path) -> None:
    """Load an ssd.pytorch checkpoint (or our own SSD state dict: the same layout) into `model`.

    The model is unchanged when anything is wrong (EnginesmithError naming the file and the key).
    """
    p = Path(path)
    if not p.exists():
        raise EnginesmithError(f"weights file not found: {p}")
    if not p.is_file():
        raise EnginesmithError(f"weights path {p} is not a file; give an ssd.pytorch .pth checkpoint")
    if p.suffix.lower() == ".weights":
        raise EnginesmithError(f"{p} is a Darknet .weights file; SSD takes an ssd.pytorch .pth state dict")
    sd = read_state_dict(p)  # safe torch.load; truncated/corrupt files -> EnginesmithError
    model.load_state_dict(map_ssd_checkpoint(sd, model, str(p)), strict=True)
