"""`enginesmith cache info|clean`: what the stage cache holds, and pruning it by stage, age or size.

Entries are `<cache>/<stage>/<key24>/` folders (pipeline/artifacts.py) and the staged input files in
`<cache>/inputs/` (pipeline/inputs.py). An entry's last use is its folder's mtime (a reuse touches it).
An entry whose key lock is held (a build is making it right now) is never removed; a temp folder is
removed only when its writer is gone (files.is_stale_temp).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from enginesmith.errors import EnginesmithError
from enginesmith.files import file_lock, folder_bytes, is_stale_temp, temp_name
from enginesmith.pipeline.artifacts import LOCKS
from enginesmith.pipeline.inputs import INPUTS


@dataclass(frozen=True)
class Entry:
    """One cache entry: a stage folder (or a staged input file), its size and last use (epoch seconds)."""

    stage: str
    path: Path
    bytes: int
    last_used: float


@dataclass
class CacheUsage:
    """Entries by stage, plus temp folders left by builds that are still running or were killed."""

    root: Path
    entries: list[Entry] = field(default_factory=list)
    temps: list[Path] = field(default_factory=list)

    def by_stage(self) -> dict[str, list[Entry]]:
        out: dict[str, list[Entry]] = {}
        for e in self.entries:
            out.setdefault(e.stage, []).append(e)
        return dict(sorted(out.items()))

    @property
    def bytes(self) -> int:
        return sum(e.bytes for e in self.entries)


def cache_usage(root: Path) -> CacheUsage:
    """Every entry under `root` (a missing folder is an empty cache)."""
    root = Path(root)
    usage = CacheUsage(root)
    if not root.is_dir():
        return usage
    for stage_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for p in sorted(stage_dir.iterdir()):
            if p.name.startswith("."):
                if p.name != LOCKS:
                    usage.temps.append(p)
                continue
            with contextlib.suppress(OSError):
                size = p.stat().st_size if p.is_file() else folder_bytes(p)
                usage.entries.append(Entry(stage_dir.name, p, size, p.stat().st_mtime))
    return usage


def _remove_entry(entry: Entry) -> bool:
    """Remove one entry unless a build holds its lock; True when removed."""
    if entry.stage == INPUTS:
        with contextlib.suppress(FileNotFoundError):
            entry.path.unlink()
        return True
    lock = entry.path.parent / LOCKS / f"{entry.path.name}.lock"
    with file_lock(lock, blocking=False) as held:
        if not held:
            return False
        trash = entry.path.with_name(temp_name("trash"))
        with contextlib.suppress(FileNotFoundError):
            os.replace(entry.path, trash)
            shutil.rmtree(trash, ignore_errors=True)
    with contextlib.suppress(OSError):
        lock.unlink()
    return True


def clean_cache(root: Path, older_than_days: float | None = None, max_gb: float | None = None,
                stages: tuple[str, ...] = ()) -> tuple[list[Entry], list[Entry]]:
    """Remove entries: of `stages` (all when empty), last used more than `older_than_days` ago, and then the
    least recently used until the cache is at most `max_gb`. No filter at all removes every entry.
    Returns (removed, skipped because a build is using them). Stale temp folders are always removed."""
    if older_than_days is not None and older_than_days < 0:
        raise EnginesmithError(f"--older-than must be zero or more days, got {older_than_days}")
    if max_gb is not None and max_gb < 0:
        raise EnginesmithError(f"--max-size must be zero or more GB, got {max_gb}")
    usage = cache_usage(root)
    known = {e.stage for e in usage.entries}
    unknown = [s for s in stages if s not in known]
    if unknown:
        raise EnginesmithError(f"no cache entries for stage {unknown[0]!r} in {root}; stages present: "
                               f"{', '.join(sorted(known)) or 'none'}")
    for t in usage.temps:
        if is_stale_temp(t):
            shutil.rmtree(t, ignore_errors=True) if t.is_dir() else t.unlink(missing_ok=True)
    pool = [e for e in usage.entries if not stages or e.stage in stages]
    pool.sort(key=lambda e: e.last_used)  # least recently used first
    doomed: list[Entry] = []
    if older_than_days is not None:
        cutoff = time.time() - older_than_days * 86400.0
        doomed += [e for e in pool if e.last_used < cutoff]
    if max_gb is not None:
        total = sum(e.bytes for e in usage.entries) - sum(e.bytes for e in doomed)
        for e in pool:
            if total <= max_gb * 1e9:
                break
            if e not in doomed:
                doomed.append(e)
                total -= e.bytes
    if older_than_days is None and max_gb is None:
        doomed = pool
    removed, busy = [], []
    for e in doomed:
        (removed if _remove_entry(e) else busy).append(e)
    return removed, busy
