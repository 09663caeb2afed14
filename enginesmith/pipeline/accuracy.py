"""The accuracy check of a build: the task metric of the engine against FP32 PyTorch on held-out data.

`--val DIR` names a dataset: for detectors a VOC folder or COCO json (data/datasets.py, split
`--val-split`, default "val"); for classifiers a folder of class subfolders, a detection set (object
crops) or "digits" (data/classification.py). The metric is VOC07 11-point mAP@0.5 for detectors (the
SSD paper's metric) and top-1 for classifiers, both in percentage points, and the budget is the
largest allowed drop (default 1.0 mAP point, 0.5 top-1 point).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from enginesmith.backends.targets import engine_precision, get_target
from enginesmith.data.classification import classification_samples
from enginesmith.data.datasets import open_dataset
from enginesmith.errors import EnginesmithError
from enginesmith.evaluation.classification_metrics import classification_metrics
from enginesmith.evaluation.detection_metrics import evaluate_detections
from enginesmith.evaluation.predict import predict_classes, predict_detections
from enginesmith.files import write_json_atomic
from enginesmith.pipeline.artifacts import Artifact, StageResult
from enginesmith.progress import progress_bar
from enginesmith.runtime.preprocess import PreprocessSpec

DEFAULT_BUDGET = {"detection": 1.0, "classification": 0.5}
METRIC_NAME = {"detection": "voc07_map", "classification": "top1"}

Infer = Callable[[np.ndarray], dict[str, np.ndarray]]

if TYPE_CHECKING:
    from enginesmith.pipeline.context import BuildContext


@dataclass(frozen=True)
class ValidationSet:
    """Held-out data for one task: `data` is a DetectionDataset or a ClassificationSet."""

    task: str
    path: Path
    split: str
    data: Any
    fingerprint: str

    def __len__(self) -> int:
        return len(self.data.samples) if self.task == "detection" else len(self.data.labels)

    @property
    def metric(self) -> str:
        return METRIC_NAME[self.task]


def load_validation(path: Path | str, task: str, split: str) -> ValidationSet:
    """Open `path` as held-out data for `task`; a clear error for tasks without a metric here."""
    if task not in METRIC_NAME:
        raise EnginesmithError(f"--val measures mAP for detectors and top-1 for classifiers; a {task} model has no "
                               "metric here yet, drop --val")
    if task == "detection":
        data = open_dataset(Path(path), split)
        if not len(data):
            raise EnginesmithError(f"the {split!r} split of {path} has no images; give a dataset with held-out images")
        digest = _detection_fingerprint(data)
    else:
        data = classification_samples("digits" if str(path) == "digits" else Path(path), split)
        digest = _classification_fingerprint(data)
    return ValidationSet(task, Path(path), split, data, digest)


def _detection_fingerprint(data: Any) -> str:
    h = hashlib.sha256(repr(tuple(data.class_names)).encode())
    for s in data.samples:
        h.update(s.image_id.encode())
        h.update(Path(s.image_path).read_bytes())
        for a in (s.boxes, s.labels, s.difficult):
            h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def _classification_fingerprint(data: Any) -> str:
    h = hashlib.sha256(repr(tuple(data.class_names)).encode())
    h.update(np.ascontiguousarray(data.labels).tobytes())
    for img in data.images:
        h.update(Path(img).read_bytes() if isinstance(img, (str, Path)) else np.ascontiguousarray(img).tobytes())
    return h.hexdigest()


def check_unchanged(val: ValidationSet) -> None:
    """Refuse a measurement if the held-out files changed while it read them: the cache key names the bytes
    hashed before the measurement, so they must be the bytes measured (read again and compared)."""
    now = _detection_fingerprint(val.data) if val.task == "detection" else _classification_fingerprint(val.data)
    if now != val.fingerprint:
        raise EnginesmithError(f"the held-out data {val.path} changed while the build measured it; run the build again "
                               "when it is stable")


def check_classes(val: ValidationSet, num_classes: int) -> None:
    n = len(val.data.class_names)
    if n != num_classes:
        raise EnginesmithError(f"the validation set {val.path} has {n} classes but the model has {num_classes}; "
                               "give --num-classes to match, or another --val")


def measure(infer: Infer, batch: int | None, val: ValidationSet, preprocess: PreprocessSpec,
            progress: Callable[[int], None] = lambda n: None) -> dict[str, Any]:
    """Run `infer` over the validation set and return {"metric": name, "value": points, ...details}.

    batch: the engine's static batch (the last batch is padded), or None for a dynamic one."""
    return score(val, predict(infer, batch, val.task, val.data, 0, len(val), preprocess, progress))


def predict(infer: Infer, batch: int | None, task: str, data: Any, start: int, stop: int, preprocess: PreprocessSpec,
            progress: Callable[[int], None] = lambda n: None) -> Any:
    """`infer`'s predictions for images [start, stop) of `data` (a DetectionDataset or a ClassificationSet):
    detectors, a Predictions per image; classifiers, logits [stop - start, C]. Runner calls take `batch` images
    (or DYNAMIC_CHUNK for a dynamic batch) from `start` on, so a range starting at a multiple of that gets the
    calls, and padding, the whole set gets there."""
    if task == "detection":
        images = (data.load_image(i) for i in range(start, stop))
        return predict_detections(infer, images, preprocess, batch, progress=progress)
    return predict_classes(infer, data.images[start:stop], preprocess, batch, progress=progress)


def score(val: ValidationSet, preds: Any) -> dict[str, Any]:
    """The metric of `preds` (predict()'s, for the whole set in order) on `val`: the one place it is computed."""
    if val.task == "detection":
        m = evaluate_detections(preds, val.data)
        return {"metric": val.metric, "value": 100.0 * float(m["voc07_map"]), "map": 100.0 * float(m["map"]),
                "coco_ap": 100.0 * float(m.get("coco_ap", float("nan"))), "images": len(val),
                "voc_convention": m["voc_convention"]}
    m = classification_metrics(np.asarray(preds), np.asarray(val.data.labels))
    return {"metric": val.metric, "value": 100.0 * float(m["top1"]), "top5": 100.0 * float(m["top5"]), "images": len(val)}


def reference_accuracy_stage(exported: Artifact, ctx: BuildContext) -> Artifact:
    """The task metric of the FP32 PyTorch model on ctx.val: what every engine is judged against."""
    from enginesmith.backends.torch import TorchRunner  # torch: not in a shard's worker, which imports this module

    return _accuracy_stage("accuracy-fp32", [exported], {"runner": "pytorch-eager-fp32"},
                           lambda batch: _measure_here(lambda: TorchRunner(ctx.model, "images",
                                                                           list(ctx.spec.output_names)), batch, ctx),
                           ctx)


def engine_accuracy_stage(engine: Artifact, ctx: BuildContext) -> Artifact:
    """The task metric of the engine on ctx.val, run by its own backend: in this process, or with --cluster in
    shards on the build's executor (accuracy_shards.py; the same value, so the same cache entry)."""
    c = ctx.config

    def run(batch: int | None) -> dict[str, Any]:
        if c.cluster is None:
            return _measure_here(lambda: get_target(c.target).runner(engine.file, c.precision), batch, ctx)
        from enginesmith.pipeline.accuracy_shards import measure_on_cluster

        return measure_on_cluster(ctx.executor(), engine, c.target, c.precision, batch, ctx.val, ctx.preprocess)

    return _accuracy_stage("accuracy", [engine], {"target": c.target, "precision": engine_precision(c.precision)},
                           run, ctx)


def _measure_here(make_runner: Callable[[], Any], batch: int | None, ctx: BuildContext) -> dict[str, Any]:
    """measure() with the runner `make_runner()` gives, in this process, with a progress bar."""
    val = ctx.val
    with make_runner() as runner, progress_bar(f"{val.metric} on {len(val)} held-out images", len(val)) as update:
        return measure(lambda x: runner.infer({"images": x}), batch, val, ctx.preprocess, update)


def _accuracy_stage(name: str, parents: list[Artifact], params: dict[str, Any],
                    run: Callable[[int | None], dict[str, Any]], ctx: BuildContext) -> Artifact:
    """The metric `run(batch)` measures on ctx.val, cached (keyed by the data's fingerprint, split, metric and the
    preprocessing fed; not by where it ran, which does not change the value)."""
    val = ctx.val
    batch = None if ctx.config.dynamic_batch else ctx.config.batch  # static-batch models take only that
    params = {**params, "val": val.fingerprint, "split": val.split, "metric": val.metric,
              "preprocess": ctx.preprocess.to_dict()}  # the channel order and normalisation change the metric

    def produce(tmp: Path) -> StageResult:
        result = run(batch)
        check_unchanged(val)  # the images measured are the ones the cache key names
        write_json_atomic(tmp / "accuracy.json", result)
        return StageResult(["accuracy.json"], result)

    return ctx.record(ctx.cache.run(name, parents, params, produce))
