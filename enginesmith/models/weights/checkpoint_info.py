"""The metadata a training checkpoint carries beside its weights (torch-free to import; torch is
loaded only when a file is read).

Fields read (all optional): `model` (a registered name), `num_classes` (a positive whole number),
`class_names` (a list of strings, as many as num_classes when both are given) and `input_size` (two
positive whole numbers, H and W) and `preprocess` (what it was trained on: any of `color` "RGB" | "BGR" | "GRAY",
`scale`, `mean`, `std`; enginesmith's trainer records its model's PreprocessSpec there, and
runtime/preprocess_override.py honours it). A field that is present but malformed is a one-line EnginesmithError
naming the file and the field: a build must not guess what the checkpoint meant.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from enginesmith.errors import EnginesmithError

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin")


def _whole(v: Any) -> bool:
    """A plain int (not a bool, which Python counts as one)."""
    return isinstance(v, int) and not isinstance(v, bool)


def _shown(v: Any) -> str:
    text = repr(v)
    return (text[:40] + "...") if len(text) > 43 else text


def check_checkpoint_info(info: dict[str, Any], path: Path) -> dict[str, Any]:
    """Validate the metadata fields (see the module docstring); return them normalised (tuples, ints)."""
    def bad(field: str, want: str) -> EnginesmithError:
        return EnginesmithError(
            f"checkpoint {path}: field {field!r} is {_shown(info[field])} ({type(info[field]).__name__}), but it must be "
            f"{want}; re-save the checkpoint with a correct {field!r} (or save only model.state_dict())"
        )

    out = dict(info)
    if "num_classes" in info:
        n = info["num_classes"]
        if not _whole(n) or n < 1:
            raise bad("num_classes", "a positive whole number of classes")
    if "class_names" in info:
        names = info["class_names"]
        if not isinstance(names, (list, tuple)) or not names or not all(isinstance(c, str) for c in names):
            raise bad("class_names", "a non-empty list of strings")
        if "num_classes" in info and len(names) != info["num_classes"]:
            raise EnginesmithError(
                f"checkpoint {path}: field 'class_names' lists {len(names)} names but 'num_classes' is "
                f"{info['num_classes']}; re-save the checkpoint with one name per class"
            )
        out["class_names"] = list(names)
    if "input_size" in info:
        size = info["input_size"]
        if not isinstance(size, (list, tuple)) or len(size) != 2 or not all(_whole(s) and s >= 1 for s in size):
            raise bad("input_size", "two positive whole numbers [height, width]")
        out["input_size"] = (int(size[0]), int(size[1]))
    if "preprocess" in info:
        out["preprocess"] = _recorded_preprocess(info["preprocess"], bad)
    return out


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _recorded_preprocess(pre: Any, bad: Any) -> dict[str, Any]:
    """The `preprocess` field's color / scale / mean / std, checked (other keys, e.g. input_size, are not read)."""
    want = 'a dict with color "RGB" | "BGR" | "GRAY" and numbers scale > 0, mean [...], std [...] > 0'
    if not isinstance(pre, dict):
        raise bad("preprocess", want)
    out: dict[str, Any] = {}
    if "color" in pre:
        if pre["color"] not in ("RGB", "BGR", "GRAY"):
            raise bad("preprocess", want)
        out["color"] = pre["color"]
    if "scale" in pre:
        if not _number(pre["scale"]) or pre["scale"] <= 0:
            raise bad("preprocess", want)
        out["scale"] = float(pre["scale"])
    for k in ("mean", "std"):
        if k in pre:
            v = pre[k]
            if not isinstance(v, (list, tuple)) or not v or not all(_number(x) for x in v) or \
                    (k == "std" and min(v) <= 0):
                raise bad("preprocess", want)
            out[k] = tuple(float(x) for x in v)
    return out


def read_checkpoint_info(path: Path) -> dict[str, Any]:
    """The metadata of a training checkpoint (model, num_classes, input_size, class_names, preprocess), validated; {} for a
    plain state dict or a file torch cannot read (spec.load_weights / check_weights_file then says what is
    wrong with it). A zip-format checkpoint is memory-mapped, so its tensors are not read here."""
    if Path(path).suffix.lower() not in CHECKPOINT_SUFFIXES:
        return {}
    try:
        import torch

        with open(path, "rb") as f:
            is_zip = f.read(4) == b"PK\x03\x04"
        obj = torch.load(Path(path), map_location="cpu", weights_only=True, mmap=is_zip)
    except Exception:
        return {}
    if not isinstance(obj, dict):
        return {}
    info = {k: obj[k] for k in ("num_classes", "input_size", "class_names", "preprocess") if k in obj}
    if isinstance(obj.get("model"), str):
        info["model"] = obj["model"]
    return check_checkpoint_info(info, Path(path))
