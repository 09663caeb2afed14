"""The user's input files, read once: hashed from the same bytes the build then uses.

A weights file or checkpoint is copied into the cache while it is hashed
(`<cache>/inputs/<sha256[:32]><suffix>`, written atomically) and the build loads that copy. So the
cache key's `weights` hash always names the bytes that went into the engine: replacing the user's file
during a build changes neither, and the next build hashes the new file and builds anew.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from enginesmith.errors import EnginesmithError
from enginesmith.files import remove_stale_temps, temp_name

INPUTS = "inputs"


@dataclass(frozen=True)
class StagedFile:
    """A user's file as the build uses it: `path` is the content-addressed copy, `source` the user's path."""

    source: Path
    path: Path
    sha256: str
    size: int


def stage_file(source: Path, cache_root: Path, chunk: int = 1 << 22) -> StagedFile:
    """Copy `source` into `<cache_root>/inputs/` while hashing it; return the copy (named by its sha256)."""
    source = Path(source)
    folder = Path(cache_root) / INPUTS
    folder.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(folder)
    tmp = folder / temp_name("tmp")
    h, size = hashlib.sha256(), 0
    try:
        with open(source, "rb") as src, open(tmp, "wb") as dst:
            while block := src.read(chunk):
                h.update(block)
                dst.write(block)
                size += len(block)
            dst.flush()
            os.fsync(dst.fileno())
        digest = h.hexdigest()
        final = folder / f"{digest[:32]}{source.suffix.lower()}"  # the loaders choose by suffix
        os.replace(tmp, final)  # same name = same bytes: replacing an existing copy changes nothing
    except FileNotFoundError:
        tmp.unlink(missing_ok=True)
        raise EnginesmithError(f"weights file not found: {source}") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return StagedFile(source, final, digest, size)
