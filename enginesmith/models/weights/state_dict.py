"""PyTorch state-dict checkpoints (.pt / .pth / .bin), loaded safely and strictly.

Accepted: a plain state dict, or a dict wrapping one under "state_dict", "model_state_dict" or "model" (training
checkpoints); "module." prefixes (DataParallel / DDP) are stripped. Loading uses
`torch.load(weights_only=True)`, so pickled code never runs.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from enginesmith.errors import EnginesmithError
from enginesmith.models.weights.sniff import ZIP_MAGIC, describe, head_bytes

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


STATE_DICT_HINT = "give a state dict saved with torch.save(model.state_dict(), path) (tensors only)"


def _unpickling_refusal(e: BaseException) -> str | None:
    """For torch.load(weights_only=True)'s refusal of pickled objects: what the file holds (e.g. 'GLOBAL
    __main__.Net'), else None. PyTorch's own text advises loading with weights_only=False, which would run the
    file's code: it is never shown."""
    text = str(e)
    if "Weights only load failed" not in text:
        return None
    for pattern in (r"Unsupported global: (GLOBAL [\w.<>]+)", r"(Unsupported class [\w.<>]+)"):
        found = re.search(pattern, text)
        if found:
            return found.group(1)
    return None


def read_state_dict(path: str | Path, mmap: bool = False) -> dict[str, torch.Tensor]:
    """Read and unwrap a checkpoint file -> {name: tensor}; EnginesmithError if it is not one.

    mmap=True maps a zip-format file instead of reading it (tensors are read only when touched): a cheap check of
    a large file. Nothing in the file is ever run: pickled objects are refused with a one-line error that says
    what the file must be instead."""
    p = Path(path)
    if not p.is_file():
        raise EnginesmithError(f"weights file not found: {p}")
    try:
        head = head_bytes(p)
        size = p.stat().st_size
    except OSError as e:
        raise EnginesmithError(f"cannot read weights file {p}: {e.strerror or e}") from None
    what = describe(head, size)
    if what is not None:
        raise EnginesmithError(f"cannot read {p} as a PyTorch checkpoint: the file is {what}; {STATE_DICT_HINT}")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True, mmap=mmap and head.startswith(ZIP_MAGIC))
    except Exception as e:  # corrupt zip, not a pickle, unsafe pickled objects, truncated file...
        refused = _unpickling_refusal(e)
        if refused is not None:
            raise EnginesmithError(
                f"cannot read {p} as a PyTorch checkpoint: it holds pickled Python objects ({refused}), not only "
                f"tensors, and enginesmith never runs code from a weights file; {STATE_DICT_HINT}"
            ) from None
        if not head.startswith(ZIP_MAGIC) and not head.startswith(b"\x80"):  # neither torch.save format
            raise EnginesmithError(
                f"cannot read {p} as a PyTorch checkpoint: it is not a file torch.save writes (neither a zip archive "
                f"nor a pickle; it starts with bytes {head[:8].hex(' ')}); {STATE_DICT_HINT}"
            ) from None
        raise EnginesmithError(
            f"cannot read {p} as a PyTorch checkpoint ({_first_line(e)}); {STATE_DICT_HINT}"
        ) from None
    return _unwrap(obj, p)


def check_state_dict_matches(model: nn.Module, sd: Mapping[str, torch.Tensor], path: Path) -> None:
    """Every key of `model` present in `sd`, no extra keys, same shapes; else a one-line EnginesmithError naming
    up to 5 keys of each kind or the first mismatched key with both shapes. `model` may be on the meta device."""
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
            f"checkpoint {path} does not match {type(model).__name__}: {'; '.join(parts)}; "
            "is it for another model or num_classes?"
        )
    for k, v in sd.items():
        if tuple(v.shape) != tuple(own[k].shape):
            raise EnginesmithError(
                f"checkpoint {path} does not match {type(model).__name__}: {k} has shape {tuple(v.shape)} in the file "
                f"but {tuple(own[k].shape)} in the model; wrong num_classes or model variant?"
            )


def load_state_dict_file(model: nn.Module, path: str | Path) -> None:
    """Load a checkpoint into `model` strictly: every key present, no extra keys, same shapes.

    Mismatches raise EnginesmithError naming up to 5 keys of each kind (missing, unexpected) or the
    first mismatched key with both shapes; the model is left unchanged on error.
    """
    p = Path(path)
    sd = read_state_dict(p)
    check_state_dict_matches(model, sd, p)
    model.load_state_dict(sd, strict=False)
