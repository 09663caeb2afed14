"""PyTorch state-dict checkpoints (.pt / .pth / .bin), loaded safely and strictly.

Accepted: a plain state dict, or a dict wrapping one under "state_dict", "model_state_dict" or "model" (training
checkpoints); "module." prefixes (DataParallel / DDP) are stripped. Loading uses
`torch.load(weights_only=True)`, so pickled code never runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from enginesmith.errors import EnginesmithError

_SHOW = 5  # names listed per kind of mismatch


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def _names(keys: list[str]) -> str:
    shown = ", ".join(keys[:_SHOW])
    return shown + (f" (+{len(keys) - _SHOW} more)" if len(keys) > _SHOW else "")


def _unwrap(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model_state_dict", "model"):
            inner = obj.get(key)
            if isinstance(inner, Mapping):
                obj = inner
                break
    if not isinstance(obj, Mapping):
        raise EnginesmithError(
            f"{path} holds a {type(obj).__name__}, not a state dict; save model.state_dict() with torch.save"
        )
    tensors: dict[str, torch.Tensor] = {}
    for key, value in obj.items():
        if not isinstance(value, torch.Tensor):
            continue
        k = str(key)
        while k.startswith("module."):
            k = k[len("module.") :]
        tensors[k] = value
    if not tensors:
        raise EnginesmithError(f"{path} holds no tensors; expected a state dict saved with torch.save(model.state_dict())")
    return tensors


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read and unwrap a checkpoint file -> {name: tensor}; EnginesmithError if it is not one."""
    p = Path(path)
    if not p.is_file():
        raise EnginesmithError(f"weights file not found: {p}")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt zip, not a pickle, unsafe pickled objects, truncated file...
        raise EnginesmithError(
            f"cannot read {p} as a PyTorch checkpoint ({_first_line(e)}); "
            "give a state dict saved with torch.save(model.state_dict(), path)"
        ) from None
    return _unwrap(obj, p)


def load_state_dict_file(model: nn.Module, path: str | Path) -> None:
    """Load a checkpoint into `model` strictly: every key present, no extra keys, same shapes.

    Mismatches raise EnginesmithError naming up to 5 keys of each kind (missing, unexpected) or the
    first mismatched key with both shapes; the model is left unchanged on error.
    """
    p = Path(path)
    sd = read_state_dict(p)
    own = model.state_dict()
    missing = [k for k in own if k not in sd and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in sd if k not in own]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys: {_names(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys: {_names(unexpected)}")
        raise EnginesmithError(
            f"checkpoint {p} does not match {type(model).__name__}: {'; '.join(parts)}; "
            "is it for another model or num_classes?"
        )
    for k, v in sd.items():
        if tuple(v.shape) != tuple(own[k].shape):
            raise EnginesmithError(
                f"checkpoint {p} does not match {type(model).__name__}: {k} has shape {tuple(v.shape)} in the file "
                f"but {tuple(own[k].shape)} in the model; wrong num_classes or model variant?"
            )
    model.load_state_dict(sd, strict=False)
