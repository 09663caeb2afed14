"""Shards: a list of items cut into contiguous ranges, each a Job, and their results gathered in order.

The one home of the shard cutting and gathering that `enginesmith eval --cluster` (benchmarks/sharded_eval.py) and
`build-engine --val D --cluster` (pipeline/accuracy_shards.py) share. A shard's function returns a dict with
"predictions" (one per item of its range, in order) and "wall_seconds"; the caller computes its metric once over
the concatenated predictions, with the code it uses in one process."""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path
from typing import Any, Iterator, Sequence

from enginesmith.cluster.executor import Executor
from enginesmith.cluster.jobs import Done, Job
from enginesmith.errors import EnginesmithError

SHARDS_PER_NODE = 2  # default on Ray: two shards per live node (one runs while the other's worker starts)
LOCAL_SHARDS = 4  # default with --cluster local (its child processes run one after another)


BUILTIN_DIGITS = "digits"  # classification_samples' built-in source: a name, not a path
SHARED_PATH = "must be readable on every worker (a shared path)"


def shared_path(path: str | Path) -> str:
    """`path` as workers get it: absolute (against this process's working folder), symlinks kept."""
    return os.path.abspath(os.path.expanduser(str(path)))


def dataset_arg(dataset: str | Path) -> str:
    """A dataset as workers get it: the built-in "digits" by name, anything else as shared_path."""
    if str(dataset) == BUILTIN_DIGITS and not Path(dataset).expanduser().exists():
        return BUILTIN_DIGITS
    return shared_path(dataset)


def manifest_file_sha256(folder: str | Path) -> str:
    """sha256 of folder/manifest.json: a worker checks it reads the engine the caller means."""
    return hashlib.sha256((Path(folder) / "manifest.json").read_bytes()).hexdigest()


def shard_ranges(n: int, shards: int, align: int = 1) -> list[tuple[int, int]]:
    """Contiguous [start, stop) ranges covering range(n) in order: `shards` of them, or fewer when range(n) has
    fewer than `shards` blocks of `align` images (more shards than images gives one shard per image at align 1).
    Every start is a multiple of `align`; shard sizes in blocks differ by at most one, the larger ones last."""
    if n < 0 or shards < 1 or align < 1:
        raise ValueError(f"shard_ranges needs n >= 0, shards >= 1, align >= 1; got {n}, {shards}, {align}")
    blocks = -(-n // align)
    k = min(shards, blocks)
    cuts = [i * blocks // k * align for i in range(k)] + [n]
    return [(cuts[i], min(cuts[i + 1], n)) for i in range(k)]


def default_shards(executor: Executor) -> int:
    """SHARDS_PER_NODE per live node of a Ray executor (one that lists `nodes()`), else LOCAL_SHARDS."""
    nodes = getattr(executor, "nodes", None)
    return SHARDS_PER_NODE * max(1, len(nodes())) if callable(nodes) else LOCAL_SHARDS


def run_shards(executor: Executor, jobs: list[Job], ranges: Sequence[tuple[int, int]],
               progress: bool) -> list[tuple[dict[str, Any], Done]]:
    """Every job's (value, Done), in job order; the first failed shard raises its one line (the others stop: a
    Ray executor cancels what is still running when its iterator is closed). A line per finished shard goes to
    stderr when `progress`."""
    index = {job.key: k for k, job in enumerate(jobs)}
    results: list[tuple[dict[str, Any], Done] | None] = [None] * len(jobs)
    dones: Iterator[Done] = executor.run(jobs)
    try:
        for finished, done in enumerate(dones, 1):
            k = index[done.job.key]
            a, b = ranges[k]
            on = done.host or "a worker"
            if not done.ok:
                raise EnginesmithError(f"{done.job.key} (images {a}-{b - 1}) failed on {on}: {done.error}; no metric "
                                       "is computed from part of the dataset")
            value = done.value
            got = len(value["predictions"]) if isinstance(value, dict) and "predictions" in value else None
            if got != b - a:
                raise EnginesmithError(f"{done.job.key} (images {a}-{b - 1}) on {on} returned {got} predictions for "
                                       f"{b - a} images")
            results[k] = (value, done)
            if progress:
                node = "" if done.node in ("", "local") else f" (node {done.node[:8]})"
                print(f"{done.job.key}: images {a}-{b - 1} done on {on}{node} in {value['wall_seconds']:.1f} s "
                      f"[{finished}/{len(jobs)}]", file=sys.stderr, flush=True)
    finally:
        close = getattr(dones, "close", None)
        if close is not None:
            close()
    missing = [jobs[k].key for k, r in enumerate(results) if r is None]
    if missing:
        raise EnginesmithError(f"{', '.join(missing)} never finished on {executor.name}; no metric is computed")
    return [r for r in results if r is not None]
