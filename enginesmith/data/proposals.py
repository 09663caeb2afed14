"""Selective-search proposals for every image of a detection split, computed once and cached.

R-CNN and Fast R-CNN train and are evaluated on precomputed proposals, as in the papers. The cache file
is `<cache>/proposals/<split>-<mode>-p<max>-<digest[:16]>.npz` (digest: sha256 over image ids and image
bytes, mode, max proposals, OpenCV version), one array per image id (float32 [P, 4], x1, y1, x2, y2 in
original pixels), written atomically. Images are processed in a process pool (selective search is
single-threaded). Torch-free.
"""

from __future__ import annotations

import hashlib
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from enginesmith.data.detection import DetectionDataset
from enginesmith.progress import progress_bar
from enginesmith.runtime.images import read_image_file
from enginesmith.runtime.proposals import DEFAULT_MAX_PROPOSALS, selective_search


def _cache_root() -> Path:
    return Path(os.environ.get("ENGINESMITH_CACHE", "build/.cache"))


def _one(args: tuple[str, str, int]) -> tuple[np.ndarray, float]:
    path, mode, max_proposals = args
    image = read_image_file(path)
    t0 = time.perf_counter()
    boxes = selective_search(image, mode, max_proposals)
    return boxes, time.perf_counter() - t0


def proposals_digest(dataset: DetectionDataset, mode: str, max_proposals: int) -> str:
    import cv2

    # "srand0": boxes ranked with the C rand() seeded by runtime/proposals.py (reproducible order)
    h = hashlib.sha256(f"{mode}:{max_proposals}:{cv2.__version__}:srand0".encode())
    for s in dataset.samples:
        h.update(s.image_id.encode() + b"\0")
        h.update(hashlib.sha256(Path(s.image_path).read_bytes()).digest())
    return h.hexdigest()


def split_proposals(dataset: DetectionDataset, mode: str = "fast", max_proposals: int = DEFAULT_MAX_PROPOSALS,
                    workers: int | None = None, cache_dir: Path | None = None) -> dict[str, np.ndarray]:
    """image_id -> proposals [P, 4] for every image of `dataset`, from the cache or computed (with a progress
    bar). The mean selective-search seconds per image are stored under the key "__seconds__" ([1])."""
    digest = proposals_digest(dataset, mode, max_proposals)
    path = (cache_dir or _cache_root()) / "proposals" / f"{dataset.split}-{mode}-p{max_proposals}-{digest[:16]}.npz"
    if path.is_file():
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    jobs = [(str(s.image_path), mode, max_proposals) for s in dataset.samples]
    out: dict[str, np.ndarray] = {}
    seconds = 0.0
    workers = workers or min(len(jobs), os.cpu_count() or 1) or 1
    with progress_bar(f"selective search ({mode}) on {len(jobs)} {dataset.split} images", len(jobs)) as update, \
            ProcessPoolExecutor(workers) as pool:
        for i, (boxes, dt) in enumerate(pool.map(_one, jobs, chunksize=4)):
            out[dataset.samples[i].image_id] = boxes
            seconds += dt
            update(i + 1)
    out["__seconds__"] = np.asarray([seconds / max(len(jobs), 1)], np.float64)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}.npz")
    np.savez(tmp, **out)
    os.replace(tmp, path)
    return out


__all__ = ["split_proposals", "proposals_digest"]
