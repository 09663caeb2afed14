"""Sharded evaluation: `enginesmith eval ENGINE --dataset D --cluster local|ray|ray://HOST:PORT|auto [--shards N]`.

The images evaluated (the split, after --limit) are cut into contiguous shards; each shard is a Job
(cluster/jobs.py) whose function, `predict_shard`, runs the engine's predictor on that shard's images wherever the
executor places it (cluster/executor.py: local child processes, or Ray tasks) and returns its raw predictions in
order. The caller concatenates them in dataset order and computes the metric once, with the functions the
single-process path uses (evaluate.detection_result / classification_result), so the result is the same.

Exactly the same, not nearly: shards are cut at multiples of the engine's batch (the static batch, else
--batch), so every runner call of a shard gets the images, and the last call the padding, that it gets in one
process; preprocessing and post-processing are per image and the same code.

Where things are: the engine folder and the dataset go to the workers by path (made absolute here; symlinks are
kept, not resolved, so a shared mount reached by a link keeps its name). Every worker must read the same paths (a
shared filesystem). The caller checks what it can check itself (the engine's manifest, the dataset and its ground
truth, the classes) and no more; a worker that cannot read a path fails its shard in one line saying so, and a
worker that reads another engine or other images there (the manifest's sha256, the shard's image ids or labels
differ) fails likewise. A failed shard fails the whole evaluation in one line naming the shard and its error:
no metric is computed from part of the dataset. A line per finished shard goes to stderr.

Engine folders only: a checkpoint or a registered model name runs in one process (`--cluster` is refused).
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Any

import numpy as np

from enginesmith.benchmarks.evaluate import (DEFAULT_BATCH, EVAL_MAX_DETECTIONS, EVAL_NMS_IOU, EVAL_SCORE_THRESHOLD,
                                             check_classifier_classes, check_engine_options, class_mapping,
                                             classification_result, classification_split, detection_result,
                                             detection_split, engine_facts, engine_predictor,
                                             load_classification_item, note_untrained, run_predictor)
from enginesmith.cluster.executor import Executor, executor_for
from enginesmith.cluster.jobs import Job
from enginesmith.cluster.shards import (BUILTIN_DIGITS, SHARED_PATH, dataset_arg, manifest_file_sha256, shared_path,
                                        LOCAL_SHARDS, SHARDS_PER_NODE, default_shards,  # noqa: F401  (re-exported)
                                        run_shards, shard_ranges)
from enginesmith.data.classification import classification_samples
from enginesmith.data.datasets import open_dataset
from enginesmith.errors import EnginesmithError
from enginesmith.evaluation.detection_metrics import Predictions
from enginesmith.runtime.manifest import engine_info
from enginesmith.runtime.preprocess_override import PreprocessOverride

SHARD_FUNC = "enginesmith.benchmarks.sharded_eval:predict_shard"
# ---------------------------------------------------------------------------------------------- the caller


def evaluate_on_cluster(target: str | Path, dataset: str | Path, cluster: str | Executor | None,
                        shards: int | None = None, split: str = "test", weights: Path | None = None,
                        num_classes: int | None = None, input_size: tuple[int, int] | None = None,
                        batch_size: int = DEFAULT_BATCH, limit: int | None = None, progress: bool = True,
                        score_threshold: float = EVAL_SCORE_THRESHOLD, max_detections: int = EVAL_MAX_DETECTIONS,
                        voc_metric: str = "devkit", preprocess: PreprocessOverride | None = None) -> dict[str, Any]:
    """evaluate()'s result for engine folder `target` on `split` of `dataset`, computed from `shards` (default:
    `default_shards`) contiguous shards run as jobs on `cluster`: a --cluster value (executor_for; the executor is
    closed at the end) or an executor (left open). Plus "cluster": the executor's name and, per shard, its images
    [start, stop), node, host and seconds. Refused in one line: a target that is not an engine folder, a two-stage
    (R-CNN) engine, options an engine folder does not take, --shards without --cluster or below 1."""
    if cluster is None:
        raise EnginesmithError("--shards needs --cluster (local, ray, ray://HOST:PORT or auto): without it the "
                               "evaluation runs in this process, unsharded")
    if shards is not None and shards < 1:
        raise EnginesmithError(f"--shards must be at least 1, got {shards}")
    path = Path(target)
    if not path.is_dir():
        raise EnginesmithError(f"--cluster evaluates engine folders only; {target} is a checkpoint or a model name: "
                               "drop --cluster (it runs in this process) or evaluate an engine built from it")
    check_engine_options(path, weights, num_classes, input_size, preprocess)
    facts = engine_facts(path, batch_size)  # the manifest, checked (no backend is needed here)
    if engine_info(path).raw.get("two_stage"):
        raise EnginesmithError(f"{target} is a two-stage engine (R-CNN / Fast R-CNN) that runs with its host "
                               "stages and cached proposals in one process: drop --cluster")
    where = f"dataset {dataset} ({split})"
    if facts.task == "detection":
        data: Any = detection_split(dataset, split, limit)
        class_mapping(facts.class_names, data.class_names, facts.description, f"dataset {data.root} ({data.split})")
        expect: list[Any] = [s.image_id for s in data.samples]
    else:
        data = classification_split(dataset, split, limit)
        check_classifier_classes(facts.class_names, data.class_names, facts.description, where, len(data.images),
                                 len(data.labels))
        expect = [int(v) for v in data.labels]
    executor = executor_for(cluster) if isinstance(cluster, str) else cluster
    try:
        ranges = shard_ranges(len(expect), shards or default_shards(executor), align=facts.batch)
        common = {"engine": shared_path(path), "dataset": dataset_arg(dataset), "split": split, "task": facts.task,
                  "manifest_sha256": manifest_file_sha256(path), "batch_size": facts.batch,
                  "score_threshold": score_threshold, "max_detections": max_detections, "nms_iou": EVAL_NMS_IOU}
        jobs = [Job(key=f"shard {k + 1}/{len(ranges)}", func=SHARD_FUNC,
                    kwargs={**common, "start": a, "stop": b, "expect": expect[a:b]})
                for k, (a, b) in enumerate(ranges)]
        t0 = time.perf_counter()
        results = run_shards(executor, jobs, ranges, progress)
        wall = time.perf_counter() - t0
    finally:
        if isinstance(cluster, str):
            executor.close()
    n = len(expect)
    timing = {"images": n, "seconds": wall, "images_per_s": n / wall if wall > 0 else 0.0,
              "inference_seconds": sum(r["infer_seconds"] for r, _ in results), "batch": facts.batch,
              "shards": len(ranges), "cluster": executor.name}
    if facts.task == "detection":
        preds: list[Predictions] = [p for r, _ in results for p in r["predictions"]]
        metrics = detection_result(preds, data, facts.class_names, facts.description, timing, voc_metric,
                                   postprocess={"score_threshold": score_threshold, "max_detections": max_detections,
                                                "nms_iou": EVAL_NMS_IOU})
    else:
        logits = np.concatenate([np.asarray(r["predictions"]) for r, _ in results])
        metrics = classification_result(logits, data.labels, facts.class_names, data.class_names, facts.description,
                                        timing, where)
    metrics["cluster"] = {"executor": executor.name, "shards": [
        {"shard": k + 1, "images": [a, b], "node": d.node, "host": d.host, "seconds": r["seconds"]}
        for k, ((r, d), (a, b)) in enumerate(zip(results, ranges))]}
    metrics.update(dataset=str(dataset), split=split)
    return note_untrained(metrics, target, None)


# ---------------------------------------------------------------------------------------------- the worker


def _readable(path: str, what: str, host: str) -> None:
    if not os.path.exists(path):
        raise EnginesmithError(f"{what} {path} does not exist on worker {host}: the {what} path {SHARED_PATH}")
    if not os.access(path, os.R_OK):
        raise EnginesmithError(f"{what} {path} cannot be read on worker {host}: the {what} path {SHARED_PATH}")


def _same(got: list[Any], expect: list[Any], what: str, host: str, detail: str) -> None:
    if got != list(expect):
        raise EnginesmithError(f"the {what} on worker {host} is not the one this evaluation checked ({detail} differ): "
                               f"the {what} path {SHARED_PATH}, the same on every worker")


def predict_shard(engine: str, dataset: str, split: str, task: str, start: int, stop: int, expect: list[Any],
                  manifest_sha256: str, batch_size: int, score_threshold: float = EVAL_SCORE_THRESHOLD,
                  max_detections: int = EVAL_MAX_DETECTIONS, nms_iou: float = EVAL_NMS_IOU) -> dict[str, Any]:
    """A shard's job, run on a worker: the engine folder `engine` (absolute path) on images [start, stop) of `split`
    of `dataset` (absolute path, or "digits"), which must be the ones the caller checked: `expect` holds their
    image ids (detection) or labels (classification), `manifest_sha256` the engine manifest's hash.

    Returns {"predictions", "seconds" (preprocessing + inference + NMS, image decoding excluded), "wall_seconds"
    (this function), "infer_seconds"}. predictions: detectors, a Predictions per image in order (boxes [K, 4]
    float32 x1y1x2y2 in original-image pixels, scores [K] float32, labels [K] int64 engine class ids); classifiers,
    logits [stop - start, C] float32. Runner calls get `batch_size` images (the last one padded)."""
    t0 = time.perf_counter()
    host = socket.gethostname()
    try:
        _readable(engine, "engine folder", host)
        _readable(os.path.join(engine, "manifest.json"), "engine folder", host)
        if manifest_file_sha256(engine) != manifest_sha256:
            raise EnginesmithError(f"the engine folder {engine} on worker {host} is not the engine this evaluation "
                                   f"checked (its manifest.json differs): the engine folder path {SHARED_PATH}, the "
                                   "same on every worker")
        if not (task == "classification" and dataset == BUILTIN_DIGITS):
            _readable(dataset, "dataset", host)
        predictor = engine_predictor(Path(engine), batch_size, score_threshold=score_threshold,
                                     max_detections=max_detections, nms_iou=nms_iou)
        if predictor.batch != batch_size:
            raise EnginesmithError(f"the engine {engine} on worker {host} has batch {predictor.batch}, not "
                                   f"{batch_size}: the engine folder path {SHARED_PATH}, the same on every worker")
        with predictor:
            if task == "detection":
                ds = open_dataset(Path(dataset), split)
                _same([s.image_id for s in ds.samples[start:stop]], expect, "dataset", host,
                      f"the image ids of images {start}-{stop - 1}")
                preds, seconds = run_predictor(predictor, range(start, stop), ds.load_image, stop - start)
            else:
                cs = classification_samples(dataset, split)
                _same([int(v) for v in cs.labels[start:stop]], expect, "dataset", host,
                      f"the labels of images {start}-{stop - 1}")
                logits, seconds = run_predictor(predictor, cs.images[start:stop], load_classification_item,
                                                stop - start)
                preds = np.asarray(logits)
    except OSError as e:  # a path that vanished or turned unreadable between the checks and the reads
        where = f" {e.filename}" if e.filename else ""
        raise EnginesmithError(f"cannot read{where} on worker {host} ({e.strerror or type(e).__name__}): the engine "
                               f"folder and the dataset paths {SHARED_PATH}") from None
    return {"predictions": preds, "seconds": seconds, "wall_seconds": time.perf_counter() - t0,
            "infer_seconds": predictor.infer_seconds}


__all__ = ["evaluate_on_cluster", "predict_shard", "shard_ranges", "default_shards", "SHARD_FUNC"]
