"""The rows of `enginesmith models`, cached on disk keyed by a hash of the code that computes them.

Profiling every registered network (models/catalog.py) builds each one and runs it once: tens of seconds, and
the family files import torch and torchvision. The rows depend only on enginesmith's model code
(enginesmith/models/**/*.py, runtime/preprocess.py) and the torch/torchvision versions, so their sha256
(`source_fingerprint`, read without importing any of it) names a cache file in the user's cache folder
(`$XDG_CACHE_HOME/enginesmith`, else `~/.cache/enginesmith`). A changed model file gives another key: the rows
are computed again. The file is written atomically (files.write_json_atomic); an unreadable or malformed file
is recomputed, and an unwritable cache folder only costs the recomputation next time.
"""

from __future__ import annotations

import hashlib
import json
import os
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

from enginesmith.files import write_json_atomic

CATALOG_FORMAT = 1  # bump when the rows' fields change without a change of the files hashed below
PACKAGE = Path(__file__).resolve().parents[1]  # enginesmith/
VERSIONED = ("torch", "torchvision")  # their versions enter the key (parameter and MAC counts come from them)
PREFIX = "models-"


def source_files(package: Path = PACKAGE) -> list[Path]:
    """The files whose code the rows depend on: every module of models/ (recursively) and the preprocessing
    types (a spec's channel count), sorted."""
    return sorted([*(package / "models").rglob("*.py"), package / "runtime" / "preprocess.py"])


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "absent"


def source_fingerprint(package: Path = PACKAGE) -> str:
    """sha256 of the format, the torch/torchvision versions and each source file's path (relative to `package`)
    and bytes."""
    h = hashlib.sha256(f"catalog {CATALOG_FORMAT}\n".encode())
    for name in VERSIONED:
        h.update(f"{name} {_version(name)}\n".encode())
    for path in source_files(package):
        data = path.read_bytes()
        h.update(f"{path.relative_to(package).as_posix()} {len(data)}\n".encode())
        h.update(data)
    return h.hexdigest()


def user_cache_dir() -> Path:
    """$XDG_CACHE_HOME/enginesmith, else ~/.cache/enginesmith."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "enginesmith"


def _read_rows(path: Path) -> list[dict[str, Any]] | None:
    """The cached rows, or None when the file is missing, unreadable or not a list of rows."""
    try:
        rows = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(rows, list) or not all(isinstance(r, dict) and isinstance(r.get("name"), str) for r in rows):
        return None
    return rows


def cached_rows(compute: Callable[[], list[dict[str, Any]]], key: str, folder: Path) -> list[dict[str, Any]]:
    """The rows stored under `key` in `folder`, else `compute()` stored there (atomically; older keys' files
    removed). A folder that cannot be written is no error: the rows are returned uncached."""
    path = folder / f"{PREFIX}{key}.json"
    rows = _read_rows(path)
    if rows is not None:
        return rows
    rows = compute()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, rows)
        for old in folder.glob(f"{PREFIX}*.json"):
            if old != path:
                old.unlink(missing_ok=True)
    except OSError:
        pass
    return rows


def registered_rows() -> list[dict[str, Any]]:
    """Every registered model's row (catalog.model_rows), from the cache when the model code is unchanged."""

    def compute() -> list[dict[str, Any]]:
        from enginesmith.models.catalog import model_rows

        return model_rows()

    return cached_rows(compute, source_fingerprint(), user_cache_dir())
