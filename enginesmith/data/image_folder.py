"""Calibration / evaluation images given as a folder of files (recursive, sorted, by suffix)."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np

from enginesmith.errors import EnginesmithError
from enginesmith.runtime.preprocess import IMAGE_SUFFIXES, load_image


def list_images(folder: str | Path) -> list[Path]:
    """All image files under `folder` (recursive), sorted by their path relative to `folder`.

    Files are recognised by suffix (case-insensitive, IMAGE_SUFFIXES); hidden files are skipped.
    Raises EnginesmithError if the folder is missing, not a directory or holds no images.
    """
    root = Path(folder).expanduser()
    if not root.exists():
        raise EnginesmithError(f"calibration folder not found: {root}; give an existing folder of images")
    if not root.is_dir():
        raise EnginesmithError(f"calibration path is not a folder: {root}; give a folder of images")
    files = sorted(
        (
            p
            for p in root.rglob("*")
            if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file() and not p.name.startswith(".")
        ),
        key=lambda p: p.relative_to(root).as_posix(),
    )
    if not files:
        suffixes = "/".join(IMAGE_SUFFIXES[:4])
        raise EnginesmithError(
            f"no images ({suffixes}/...) in {root}; put calibration images there or omit --calib to use the "
            "built-in photos"
        )
    return files


def iter_images(paths: list[Path]) -> Iterator[np.ndarray]:
    """Yield each file as (H, W, 3) uint8 RGB; an unreadable file is an EnginesmithError naming it."""
    for p in paths:
        yield load_image(p)
