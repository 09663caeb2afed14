"""The engine's `--val` metric in shards: `build-engine MODEL --val D --cluster local|ray|ray://HOST:PORT|HOST:PORT|auto`.

The held-out images are cut into contiguous shards (cluster/shards.py, at multiples of the runner call's size: the
static batch, else the dynamic chunk), each a Job running `predict_val_shard` wherever the build's executor places
it: it opens the engine with its own backend and returns its predictions for that shard (accuracy.predict). The
caller concatenates them in dataset order and computes the metric once with accuracy.score, the code the
unsharded measurement uses: every runner call gets the images and padding it gets in one process, so the value is
the same, and the accuracy stage's cache entry is the one a build without --cluster makes and reuses.

This module imports no torch: a shard's worker imports it. The engine's cache folder and the held-out data go by
absolute path and must be readable on every worker (a shared filesystem with Ray on several machines); a worker
that reads another engine (its cache manifest differs) or other images (the shard's image ids or labels differ)
fails its shard in one line, and a failed shard fails the build: no metric is computed from part of the data.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Any

import numpy as np

from enginesmith.backends.targets import get_target
from enginesmith.cluster.executor import Executor
from enginesmith.cluster.jobs import Job
from enginesmith.cluster.shards import (BUILTIN_DIGITS, SHARED_PATH, dataset_arg, default_shards, manifest_file_sha256,
                                        run_shards, shard_ranges)
from enginesmith.data.classification import classification_samples
from enginesmith.data.datasets import open_dataset
from enginesmith.errors import EnginesmithError
from enginesmith.evaluation.predict import DYNAMIC_CHUNK
from enginesmith.pipeline.accuracy import ValidationSet, predict, score
from enginesmith.pipeline.artifacts import Artifact
from enginesmith.runtime.preprocess import PreprocessSpec

SHARD_FUNC = "enginesmith.pipeline.accuracy_shards:predict_val_shard"


def measure_on_cluster(executor: Executor, engine: Artifact, target: str, precision: str, batch: int | None,
                       val: ValidationSet, preprocess: PreprocessSpec, shards: int | None = None,
                       progress: bool = True) -> dict[str, Any]:
    """accuracy.measure()'s result for the engine stage `engine` (run by `target`'s runner at `precision`) on
    `val`, from `shards` (default: default_shards) shards run as jobs on `executor` (left open)."""
    expect = _expected(val)
    ranges = shard_ranges(len(expect), shards or default_shards(executor), align=batch or DYNAMIC_CHUNK)
    common = {"engine_folder": os.path.abspath(engine.folder), "engine_file": engine.manifest["files"][0],
              "manifest_sha256": manifest_file_sha256(engine.folder), "target": target, "precision": precision,
              "val": dataset_arg(val.path), "task": val.task, "split": val.split, "preprocess": preprocess,
              "batch": batch}
    jobs = [Job(key=f"accuracy shard {k + 1}/{len(ranges)}", func=SHARD_FUNC,
                kwargs={**common, "start": a, "stop": b, "expect": expect[a:b]}) for k, (a, b) in enumerate(ranges)]
    results = run_shards(executor, jobs, ranges, progress)
    if val.task == "detection":
        preds: Any = [p for value, _ in results for p in value["predictions"]]
    else:
        preds = np.concatenate([np.asarray(value["predictions"]) for value, _ in results])
    return score(val, preds)


def _expected(val: ValidationSet) -> list[Any]:
    """What a worker must find for each image: its image id (detection) or label (classification)."""
    if val.task == "detection":
        return [s.image_id for s in val.data.samples]
    return [int(v) for v in val.data.labels]


# ---------------------------------------------------------------------------------------------- the worker


def predict_val_shard(engine_folder: str, engine_file: str, manifest_sha256: str, target: str, precision: str,
                      val: str, task: str, split: str, preprocess: PreprocessSpec, batch: int | None, start: int,
                      stop: int, expect: list[Any]) -> dict[str, Any]:
    """A shard's job, run on a worker: the engine `engine_file` of the cache folder `engine_folder` (whose
    manifest.json hashes to `manifest_sha256`) on images [start, stop) of `split` of `val` (absolute path or
    "digits"), which must hold `expect` there (image ids or labels), preprocessed by `preprocess` (a frozen
    dataclass: it pickles whole). Returns {"predictions" (accuracy.predict's),
    "wall_seconds"}."""
    t0 = time.perf_counter()
    host = socket.gethostname()
    try:
        _check_engine(engine_folder, manifest_sha256, host)
        data = _shard_data(val, task, split, start, stop, expect, host)
        with get_target(target).runner(Path(engine_folder) / engine_file, precision) as runner:
            preds = predict(lambda x: runner.infer({"images": x}), batch, task, data, start, stop, preprocess)
    except OSError as e:  # a path that vanished or turned unreadable between the checks and the reads
        where = f" {e.filename}" if e.filename else ""
        raise EnginesmithError(f"cannot read{where} on worker {host} ({e.strerror or type(e).__name__}): the engine "
                               f"cache folder and the --val data {SHARED_PATH}") from None
    return {"predictions": preds, "wall_seconds": time.perf_counter() - t0}


def _check_engine(folder: str, manifest_sha256: str, host: str) -> None:
    manifest = os.path.join(folder, "manifest.json")
    if not os.path.isfile(manifest):
        raise EnginesmithError(f"the engine cache folder {folder} does not exist on worker {host}: it {SHARED_PATH}")
    if manifest_file_sha256(folder) != manifest_sha256:
        raise EnginesmithError(f"the engine cache folder {folder} on worker {host} is not the engine this build "
                               f"measures (its manifest.json differs): it {SHARED_PATH}, the same on every worker")


def _shard_data(val: str, task: str, split: str, start: int, stop: int, expect: list[Any], host: str) -> Any:
    """The held-out set on this worker, checked to hold `expect` at [start, stop)."""
    if val != BUILTIN_DIGITS and not os.path.exists(val):
        raise EnginesmithError(f"--val {val} does not exist on worker {host}: it {SHARED_PATH}")
    if task == "detection":
        data: Any = open_dataset(Path(val), split)
        got: list[Any] = [s.image_id for s in data.samples[start:stop]]
    else:
        data = classification_samples(val if val == BUILTIN_DIGITS else Path(val), split)
        got = [int(v) for v in data.labels[start:stop]]
    if got != list(expect):
        raise EnginesmithError(f"the --val data on worker {host} is not the data this build measures (images "
                               f"{start}-{stop - 1} differ): it {SHARED_PATH}, the same on every worker")
    return data
