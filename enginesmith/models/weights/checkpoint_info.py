"""The metadata a training checkpoint carries beside its weights (torch-free to import; torch is
loaded only when a file is read)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin")


def read_checkpoint_info(path: Path) -> dict[str, Any]:
    """The metadata of a training checkpoint (model, num_classes, input_size, class_names); {} for a plain
    state dict or a file torch cannot read (spec.load_weights then says what is wrong with it)."""
    if Path(path).suffix.lower() not in CHECKPOINT_SUFFIXES:
        return {}
    try:
        import torch

        obj = torch.load(Path(path), map_location="cpu", weights_only=True)
    except Exception:
        return {}
    if not isinstance(obj, dict):
        return {}
    info = {k: obj[k] for k in ("num_classes", "input_size", "class_names") if k in obj}
    if isinstance(obj.get("model"), str):
        info["model"] = obj["model"]
    return info
