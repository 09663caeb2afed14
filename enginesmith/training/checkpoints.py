"""Training checkpoints: where they live, what identifies them, atomic writes and safe reads.

A checkpoint is `torch.save({"model": name, "state_dict": ..., "num_classes": C, "input_size": [H, W],
"class_names": [...], "preprocess": {...}, "dataset": fingerprint, "epochs": n, "seed": s, "recipe": {...},
"recipe_key": hash, "metrics": {...}})` ("preprocess": the model's PreprocessSpec it was trained on, which a
build honours); models/weights/state_dict.py unwraps "state_dict", so a checkpoint loads with
the model's own `spec.load_weights(model, path)`.

Default place: $ENGINESMITH_CACHE (default build/.cache)/checkpoints/<model>-<fingerprint[:12]>-e<epochs>.pt,
with "-s<seed>-r<recipe key>" added when the seed or the recipe is not the model's default.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any, Sequence

from enginesmith.errors import EnginesmithError

REQUIRED_KEYS = ("model", "state_dict", "num_classes", "input_size", "class_names", "dataset", "epochs")


def cache_root() -> Path:
    return Path(os.environ.get("ENGINESMITH_CACHE", "build/.cache"))


def dataset_fingerprint(root: Path, class_names: Sequence[str]) -> str:
    """sha256 over the annotation files (names and bytes, sorted by relative path) and the class names.

    VOC folder (what open_dataset reads when Annotations/ exists): Annotations/*.xml and the split lists
    ImageSets/Main/*.txt; COCO: the .json file given, or annotations/*.json under a folder. Images are not hashed (their annotations name
    them and give their sizes)."""
    root = Path(root)
    if root.is_file():
        files = [root]
        base = root.parent
    else:
        voc = sorted([*root.glob("Annotations/*.xml"), *root.glob("ImageSets/Main/*.txt")])
        files = voc if (root / "Annotations").is_dir() else sorted(root.glob("annotations/*.json"))
        base = root
    if not files:
        raise EnginesmithError(f"no annotation files found under {root} (expected Annotations/*.xml or annotations/*.json)")
    h = hashlib.sha256()
    for f in files:
        rel = f.relative_to(base).as_posix() if f != base else f.name
        h.update(rel.encode() + b"\0")
        h.update(hashlib.sha256(f.read_bytes()).digest())
    h.update(b"\0classes\0" + "\n".join(class_names).encode())
    return h.hexdigest()


def default_checkpoint_path(model: str, fingerprint: str, epochs: int, seed: int = 0,
                            recipe_key: str | None = None) -> Path:
    """<cache>/checkpoints/<model>-<fingerprint[:12]>-e<epochs>[-s<seed>][-r<recipe key>].pt"""
    name = f"{model}-{fingerprint[:12]}-e{epochs}"
    if seed:
        name += f"-s{seed}"
    if recipe_key:
        name += f"-r{recipe_key}"
    return cache_root() / "checkpoints" / f"{name}.pt"


def save_checkpoint(path: Path, payload: dict[str, Any]) -> Path:
    """torch.save `payload` to `path` atomically (temporary file in the same folder, then os.replace)."""
    import torch

    missing = [k for k in REQUIRED_KEYS if k not in payload]
    if missing:
        raise ValueError(f"checkpoint payload lacks {missing}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)  # mkstemp makes 0600; a checkpoint is an ordinary file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_checkpoint(path: Path) -> dict[str, Any]:
    """Read a training checkpoint (weights_only: no pickled code runs); EnginesmithError if it is not one."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise EnginesmithError(f"checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, not a torch file, ...
        raise EnginesmithError(f"cannot read {path} as an enginesmith checkpoint ({type(e).__name__}); "
                               "delete it and train again") from None
    if not isinstance(obj, dict) or any(k not in obj for k in REQUIRED_KEYS):
        raise EnginesmithError(f"{path} is not an enginesmith training checkpoint (it lacks the keys "
                               f"{', '.join(REQUIRED_KEYS)}); give one written by `enginesmith train`")
    return obj


def matches(meta: dict[str, Any], model: str, fingerprint: str, epochs: int, seed: int, recipe_key: str) -> bool:
    """Whether a stored checkpoint was trained with exactly this (model, dataset, epochs, seed, recipe)."""
    return (meta.get("model") == model and meta.get("dataset") == fingerprint and int(meta.get("epochs", -1)) == epochs
            and int(meta.get("seed", -1)) == seed and meta.get("recipe_key") == recipe_key)
