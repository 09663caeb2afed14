"""Measure a model's accuracy on a dataset: a PyTorch model (registry name + checkpoint) or a built engine.

`predictor_for(target)` gives a Predictor: images (H, W, 3) uint8 RGB -> per image Predictions (boxes
[K, 4] x1y1x2y2 original pixels, scores [K], labels [K]) for detectors, or logits [N, C] for
classifiers. Both kinds run the same numpy preprocessing (the model spec's, or the engine manifest's)
and, for detectors, the same host NMS (runtime/nms.py) on the raw `boxes`/`scores` head with a low
score threshold (mAP needs the low-confidence tail), then map boxes back to the original image; the
loop is evaluation/predict.py's, which the build's accuracy check (pipeline/accuracy.py) also runs.

`evaluate(target, dataset)` opens the dataset, checks the model's classes against it, runs every image
with a progress bar and returns the metrics with the throughput. The metrics have one home,
`detection_result` / `classification_result` (predictions in dataset order -> the result), which the
sharded path (`evaluate(..., cluster=...)`, benchmarks/sharded_eval.py) calls on the gathered predictions too.

Longer than 400 lines: the three predictor makers (engine folder, checkpoint, registered model) share
their output contract and their checks; the prediction loop itself is evaluation/predict.py.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from enginesmith.backends.targets import get_target
from enginesmith.backends.torch import TorchRunner
from enginesmith.benchmarks.proposal_arc import predict_split, two_stage_target
from enginesmith.data.classification import ClassificationSet, classification_samples
from enginesmith.data.datasets import open_dataset
from enginesmith.data.proposals import split_proposals
from enginesmith.models.weights.checkpoint_info import CHECKPOINT_SUFFIXES, read_checkpoint_info
from enginesmith.evaluation.detection_metrics import Predictions, evaluate_detections, voc_convention, voc_metric_label
# The post-processing is evaluation/predict.py's (low score threshold: mAP needs the low-confidence
# tail), shared with the build's accuracy check so both report the same numbers.
from enginesmith.evaluation.predict import EVAL_IOU_THRESHOLD as EVAL_NMS_IOU
from enginesmith.evaluation.predict import (EVAL_MAX_DETECTIONS, EVAL_SCORE_THRESHOLD, predict_classes,
                                            predict_detections)
from enginesmith.errors import EnginesmithError
from enginesmith.evaluation.classification_metrics import classification_metrics
from enginesmith.models import registry
from enginesmith.pipeline.export import INPUT_NAME
from enginesmith.progress import progress_bar
from enginesmith.runtime.manifest import engine_info
from enginesmith.runtime.trained import is_untrained, untrained_message
from enginesmith.runtime.preprocess import PreprocessSpec, load_image
from enginesmith.runtime.preprocess_override import PreprocessOverride, resolve_preprocess

DEFAULT_BATCH = 8
TASKS = ("detection", "classification")


@dataclass
class Predictor:
    """One model behind a Runner (engine or PyTorch) with its preprocessing and post-processing.

    `runner` is any backends Runner (`infer({input_name: NCHW float32}) -> {name: array}`); it always
    gets exactly `batch` images per call (the engine's static batch, else the chosen batch size; the
    last batch is padded). Use as a context manager (or call close()) to release the runner.
    """

    runner: Any
    input_name: str
    task: str
    preprocess: PreprocessSpec
    class_names: tuple[str, ...]
    batch: int
    description: str
    score_threshold: float = EVAL_SCORE_THRESHOLD
    max_detections: int = EVAL_MAX_DETECTIONS
    nms_iou: float = EVAL_NMS_IOU
    warnings: list[str] = field(default_factory=list)  # one line each, added to the metrics' warnings
    infer_seconds: float = field(default=0.0, init=False)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __enter__(self) -> "Predictor":
        self.runner.activate()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self.runner.deactivate()

    def infer(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """One batch (batch, C, H, W) float32 -> the runner's outputs (time spent is added to infer_seconds)."""
        self.runner.activate()
        t0 = time.perf_counter()
        out = self.runner.infer({self.input_name: x})
        self.infer_seconds += time.perf_counter() - t0
        return out

    def predict(self, images: Iterable[np.ndarray | Path], progress: Callable[[int], None] = lambda n: None
                ) -> list[Predictions] | np.ndarray:
        """images ((H, W, 3) uint8 RGB or paths, streamed) -> detectors: a Predictions per image (boxes
        x1y1x2y2 in original-image pixels); classifiers: logits [N, C]. progress(n) after each batch of n."""
        if self.task == "classification":
            return predict_classes(self._checked("logits"), images, self.preprocess, self.batch, progress)
        return predict_detections(self._checked("boxes", "scores"), images, self.preprocess, self.batch,
                                  self.score_threshold, self.nms_iou, self.max_detections, progress)

    def __call__(self, images: Sequence[np.ndarray]) -> list[Predictions] | np.ndarray:
        """predict() on a list of images."""
        if not len(images):
            return [] if self.task == "detection" else np.zeros((0, self.num_classes), np.float32)
        return self.predict(images)

    def _checked(self, *names: str) -> Callable[[np.ndarray], dict[str, np.ndarray]]:
        def infer(x: np.ndarray) -> dict[str, np.ndarray]:
            out = self.infer(x)
            if any(n not in out for n in names):
                need = "its raw 'boxes' and 'scores'" if self.task == "detection" else "'logits'"
                raise EnginesmithError(f"{self.description} gives outputs {sorted(out)}; evaluating it needs {need} "
                                       "(rebuild the engine with this version of build-engine)")
            return out

        return infer


# ---------------------------------------------------------------------------------------------- makers


@dataclass(frozen=True)
class EngineFacts:
    """What evaluation needs of an engine folder's manifest, read and checked without its backend (so a caller
    that only gathers a sharded evaluation needs no engine runtime): task, class names, the batch every runner
    call gets (the engine's static batch, else the chosen batch size) and the description results name."""

    folder: Path
    manifest: dict[str, Any]
    task: str
    class_names: tuple[str, ...]
    batch: int
    description: str


def engine_facts(folder: Path, batch_size: int = DEFAULT_BATCH) -> EngineFacts:
    """An engine folder made by build-engine, checked (manifest.json, runtime/manifest.py's checks, the fields
    evaluation reads, a task it measures) -> its EngineFacts; one-line EnginesmithError otherwise."""
    folder = Path(folder)
    mpath = folder / "manifest.json"
    if not mpath.is_file():
        raise EnginesmithError(
            f"{folder} has no manifest.json, so it is not an engine folder; give a folder made by "
            "`enginesmith build-engine` (e.g. build/MODEL/TARGET-PRECISION) or a registered model name"
        )
    engine_info(folder)  # untrusted input: schema marker, every field's type, engine file inside the folder
    try:
        manifest = json.loads(mpath.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise EnginesmithError(f"cannot read {mpath}: {e}; rebuild the engine") from None
    missing = [k for k in ("target", "precision", "engine", "input", "task", "preprocess", "class_names") if k not in manifest]
    if missing:
        raise EnginesmithError(f"{mpath} lacks {', '.join(missing)}; rebuild the engine with `enginesmith build-engine`")
    task = manifest["task"]
    if task not in TASKS:
        raise EnginesmithError(
            f"{folder} holds a {task} engine ({manifest.get('model', '?')}); evaluate measures detection (mAP) "
            "and classification (top-1/top-5) models only"
        )
    batch_dim = manifest["input"]["shape"][0]
    return EngineFacts(folder=folder, manifest=manifest, task=task, class_names=tuple(manifest["class_names"]),
                       batch=int(batch_dim) if isinstance(batch_dim, int) else max(1, batch_size),
                       description=f"{manifest.get('model', '?')} {manifest['target']} {manifest['precision']} engine "
                                   f"({folder})")


def engine_predictor(folder: Path, batch_size: int = DEFAULT_BATCH, **post: Any) -> Predictor:
    """A Predictor for an engine folder made by build-engine (manifest.json + the engine file).

    `post` may set score_threshold, max_detections, nms_iou."""
    facts = engine_facts(folder, batch_size)
    manifest, target = facts.manifest, facts.manifest["target"]
    t = get_target(target)
    ok, why = t.available()
    if not ok:
        raise EnginesmithError(f"{facts.folder} is a {target} engine but {target} is not usable here: {why}")
    runner = t.runner(facts.folder / manifest["engine"], manifest["precision"])
    return Predictor(
        runner=runner, input_name=manifest["input"]["name"], task=facts.task,
        preprocess=PreprocessSpec.from_dict(manifest["preprocess"]), class_names=facts.class_names,
        batch=facts.batch, description=facts.description, **post,
    )


def torch_predictor(model: Any, task: str, preprocess_spec: PreprocessSpec, class_names: Sequence[str],
                    output_names: Sequence[str], batch_size: int = DEFAULT_BATCH, description: str = "PyTorch model",
                    **post: Any) -> Predictor:
    """A Predictor for an in-memory torch.nn.Module (eval mode, CPU) with the given preprocessing."""
    if task not in TASKS:
        raise EnginesmithError(f"{description} is a {task} model; evaluate measures detection and classification models only")
    return Predictor(runner=TorchRunner(model, INPUT_NAME, list(output_names)), input_name=INPUT_NAME, task=task,
                     preprocess=preprocess_spec, class_names=tuple(class_names), batch=max(1, batch_size),
                     description=description, **post)


def model_predictor(name: str, weights: Path | None = None, num_classes: int | None = None,
                    input_size: tuple[int, int] | None = None, batch_size: int = DEFAULT_BATCH, seed: int = 0,
                    preprocess: PreprocessOverride | None = None, **post: Any) -> Predictor:
    """A Predictor for registered model `name`, with `weights` loaded when given.

    num_classes / input_size / class names / preprocessing come from the arguments (`preprocess`: --channels,
    --mean, --std), else from the checkpoint's metadata ("num_classes", "input_size", "class_names",
    "preprocess" in a training checkpoint), else from the model spec."""
    spec = registry.get(name)
    if spec.task not in TASKS:
        raise EnginesmithError(f"{spec.name} is a {spec.task} model; evaluate measures detection and classification models only")
    info: dict[str, Any] = {}
    if weights is not None:
        if not Path(weights).is_file():
            raise EnginesmithError(f"weights file not found: {weights}")
        info = read_checkpoint_info(Path(weights))
        if info.get("model") and info["model"] != spec.name:
            raise EnginesmithError(f"checkpoint {weights} is for {info['model']}, not {spec.name}; give the matching model")
        if num_classes and info.get("num_classes") and int(info["num_classes"]) != num_classes:
            raise EnginesmithError(f"checkpoint {weights} has {info['num_classes']} classes but {num_classes} were asked for")
    classes = int(num_classes or info.get("num_classes") or spec.num_classes)
    size = tuple(input_size or info.get("input_size") or spec.input_size)
    model = spec.create(num_classes=classes, input_size=size, seed=seed)  # type: ignore[arg-type]
    if weights is not None:
        spec.load_weights(model, Path(weights))
    names = info.get("class_names")
    if not names or len(names) != classes:
        names = spec.class_names if len(spec.class_names) == classes else [str(i) for i in range(classes)]
    batch = 1 if spec.static_batch else batch_size
    what = f"{spec.name} (PyTorch, {'weights ' + str(weights) if weights else 'untrained, seed ' + str(seed)})"
    pre, warnings = resolve_preprocess(spec.preprocess.with_size(*size), preprocess, info.get("preprocess"), spec.name,
                                       str(weights))
    predictor = torch_predictor(model, spec.task, pre, names, spec.output_names, batch, what, **post)
    predictor.warnings.extend(warnings)
    return predictor


def untrained_warning(target: str | Path, weights: Path | None = None) -> str | None:
    """The one-line warning (runtime/trained.py) when `target` is untrained: an engine folder whose manifest says it
    was built without weights, or a registered model name given no --weights; None otherwise (a checkpoint file, a
    model with weights, an engine built from weights or from before the record)."""
    path = Path(target)
    if (path / "manifest.json").is_file():
        info = engine_info(path)
        return untrained_message(f"engine {path} ({info.model})", info.task) if is_untrained(info) else None
    if path.is_file() or weights is not None:
        return None
    what = f"model {target} without --weights"
    return (f"{what} is seeded and untrained: its accuracy is meaningless; give --weights CHECKPOINT (or a checkpoint "
            "file, or an engine built with --weights)")


def check_engine_options(folder: Path, weights: Path | None = None, num_classes: int | None = None,
                         input_size: tuple[int, int] | None = None, preprocess: PreprocessOverride | None = None) -> None:
    """One line for the options an engine folder does not take (they are built into it)."""
    if weights is not None or num_classes is not None or input_size is not None:
        raise EnginesmithError(f"{folder} is an engine folder: its weights, classes and input size are built in; "
                               "drop --weights/--num-classes/--input-size")
    if preprocess is not None and not preprocess.empty:
        raise EnginesmithError(f"{folder} is an engine folder: its preprocessing (manifest.json) is built in; drop "
                               "--channels/--mean/--std, or rebuild the engine with them")


def predictor_for(target: str | Path, weights: Path | None = None, num_classes: int | None = None,
                  input_size: tuple[int, int] | None = None, batch_size: int = DEFAULT_BATCH,
                  score_threshold: float = EVAL_SCORE_THRESHOLD, max_detections: int = EVAL_MAX_DETECTIONS,
                  nms_iou: float = EVAL_NMS_IOU, seed: int = 0, preprocess: PreprocessOverride | None = None
                  ) -> Predictor:
    """`target` is an engine folder (manifest.json), a training checkpoint file naming its model, or a
    registered model name (with optional `weights`). The engine's own preprocessing and class names
    are used; num_classes / input_size / weights / preprocess (--channels, --mean, --std) apply to PyTorch
    models only."""
    post = {"score_threshold": score_threshold, "max_detections": max_detections, "nms_iou": nms_iou}
    path = Path(target)
    if path.is_dir():
        check_engine_options(path, weights, num_classes, input_size, preprocess)
        return engine_predictor(path, batch_size, **post)
    if path.is_file():
        if weights is not None:
            raise EnginesmithError(f"give either a checkpoint file ({path}) or a model name with --weights, not both")
        info = read_checkpoint_info(path)
        if not info.get("model"):
            raise EnginesmithError(f"{path} does not say which model it is for; give the model name and --weights {path}")
        return model_predictor(info["model"], path, num_classes, input_size, batch_size, seed, preprocess, **post)
    text = str(target)
    if "/" in text or "\\" in text or path.suffix.lower() in CHECKPOINT_SUFFIXES:
        raise EnginesmithError(f"{text} not found: give an engine folder, a checkpoint file or a registered model name")
    return model_predictor(text, weights, num_classes, input_size, batch_size, seed, preprocess, **post)


# ---------------------------------------------------------------------------------------------- classes


def _generic(names: Sequence[str]) -> bool:
    return list(names) == [str(i) for i in range(len(names))]


def class_mapping(model_names: Sequence[str], dataset_names: Sequence[str], what: str, where: str) -> tuple[np.ndarray | None, list[str]]:
    """How model class ids map to dataset class ids: (None for the identity, or an int array [M] with -1 for
    model classes the dataset lacks; warnings). Names are matched when both sides have real names (not
    "0".."C-1"); otherwise the counts must agree."""
    m, d = len(model_names), len(dataset_names)
    if list(model_names) == list(dataset_names):
        return None, []
    if _generic(model_names) or _generic(dataset_names):
        if m != d:
            raise EnginesmithError(f"{what} predicts {m} classes but {where} has {d}; evaluate it on the dataset it "
                                   "was trained for (or give --num-classes / a checkpoint for that dataset)")
        return None, []
    index = {n: i for i, n in enumerate(dataset_names)}
    if set(dataset_names) <= set(model_names) and m != d:
        mapping = np.array([index.get(n, -1) for n in model_names], dtype=np.int64)
        return mapping, [f"classes matched by name: {d} of the model's {m} classes are in the dataset"]
    if m != d:
        raise EnginesmithError(f"{what} predicts {m} classes but {where} has {d} (and their names differ); "
                               "evaluate it on the dataset it was trained for")
    if set(model_names) == set(dataset_names):
        raise EnginesmithError(f"{what} and {where} have the same {m} class names in a different order; the class ids "
                               "would be confused: rebuild/retrain with the dataset's classes.txt order")
    diff = [f"{a}/{b}" for a, b in zip(model_names, dataset_names) if a != b]
    return None, [f"class names differ from the dataset's (model/dataset): {', '.join(diff[:5])}"
                  + (f" (+{len(diff) - 5} more)" if len(diff) > 5 else "") + "; compared by class id"]


def _remap(p: Predictions, mapping: np.ndarray | None) -> Predictions:
    if mapping is None:
        return p
    new = mapping[p.labels]
    keep = new >= 0
    return Predictions(p.boxes[keep], p.scores[keep], new[keep])


# ---------------------------------------------------------------------------------------------- evaluate


class _Timed:
    """Iterate images (arrays or paths), loading paths and timing the loading (excluded from throughput)."""

    def __init__(self, items: Iterable[Any], load: Callable[[Any], np.ndarray]) -> None:
        self.items, self.load, self.seconds = items, load, 0.0

    def __iter__(self):
        for item in self.items:
            t0 = time.perf_counter()
            image = self.load(item)
            self.seconds += time.perf_counter() - t0
            yield image


def _timing(n: int, total_s: float, predictor: Predictor) -> dict[str, float]:
    return {"images": n, "seconds": total_s, "images_per_s": n / total_s if total_s > 0 else 0.0,
            "inference_seconds": predictor.infer_seconds, "batch": predictor.batch}


def run_predictor(predictor: Predictor, items: Iterable[Any], load: Callable[[Any], np.ndarray], total: int,
                  progress: bool = False, on_progress: Callable[[int], None] | None = None) -> tuple[Any, float]:
    """predictor.predict over the items (each turned into an image by `load`) with an optional progress bar ->
    (predictions: a Predictions per image, or logits [N, C]; seconds excluding image loading)."""
    from contextlib import nullcontext

    timed = _Timed(items, load)
    seen = [0]
    with (progress_bar(f"evaluating {total} images", total) if progress else nullcontext(lambda n: None)) as update:
        def step(n: int) -> None:
            seen[0] += n
            update(seen[0])
            if on_progress:
                on_progress(seen[0])

        t0 = time.perf_counter()
        out = predictor.predict(timed, step)
        seconds = time.perf_counter() - t0 - timed.seconds
    return out, seconds


def load_classification_item(item: np.ndarray | Path) -> np.ndarray:
    """A classification sample (an (H, W, 3) uint8 array, or an image path) as an (H, W, 3) uint8 RGB array."""
    return item if isinstance(item, np.ndarray) else load_image(item)


# The one home of each metric: the single-process path (evaluate_detector / evaluate_classifier) and the sharded
# path (benchmarks/sharded_eval.py) compute their results with these functions from the gathered predictions.


def detection_result(preds: Sequence[Predictions], dataset: Any, model_classes: Sequence[str] | None, description: str,
                     timing: dict[str, Any], voc_metric: str = "devkit", warnings: Sequence[str] = (),
                     postprocess: dict[str, Any] | None = None) -> dict[str, Any]:
    """The metrics of detections on a DetectionDataset: preds[i] is image i's Predictions (boxes [K, 4] float32
    x1y1x2y2 original-image pixels, scores [K] float32, labels [K] int64 model class ids), in dataset order.
    Model class ids are mapped to the dataset's by `class_mapping` (model_classes None: they are the dataset's);
    then evaluate_detections (VOC convention `voc_metric`, COCO through pycocotools) plus task, model, timing,
    warnings (`warnings` first, then the class mapping's) and postprocess."""
    if len(preds) != len(dataset):
        raise EnginesmithError(f"{len(preds)} predictions for the {len(dataset)} images of dataset {dataset.root} "
                               f"({dataset.split})")
    mapping, notes = (None, []) if model_classes is None else class_mapping(
        model_classes, dataset.class_names, description, f"dataset {dataset.root} ({dataset.split})")
    metrics = evaluate_detections([_remap(p, mapping) for p in preds], dataset, convention=voc_metric)
    metrics.update(task="detection", model=description, timing=timing, warnings=[*warnings, *notes],
                   postprocess=postprocess)
    return metrics


def check_classifier_classes(model_classes: Sequence[str], class_names: Sequence[str], description: str,
                             where: str, n_images: int, n_labels: int) -> list[str]:
    """One line unless a classifier's classes are the dataset's (by count, or by name in the same order) and
    there is one label per image (at least one image); else the class-name warnings (usually none)."""
    mapping, warnings = class_mapping(model_classes, class_names, description, where)
    if mapping is not None:
        raise EnginesmithError(f"{description} predicts {len(model_classes)} classes but {where} has "
                               f"{len(class_names)}; evaluate it on the dataset it was trained for")
    if n_labels != n_images:
        raise EnginesmithError(f"{where}: {n_images} images but {n_labels} labels")
    if not n_labels:
        raise EnginesmithError(f"{where} has no images to evaluate")
    return warnings


def classification_result(logits: np.ndarray, labels: Sequence[int] | np.ndarray, model_classes: Sequence[str],
                          class_names: Sequence[str], description: str, timing: dict[str, Any],
                          where: str = "the dataset", warnings: Sequence[str] = ()) -> dict[str, Any]:
    """top1/top5 of logits [N, C] (image i's scores in row i, dataset order) against int labels [N] indexing
    class_names, plus task, model, timing and warnings (`warnings` first, then the class names')."""
    labels = np.asarray(labels, dtype=np.int64)
    logits = np.asarray(logits)
    notes = check_classifier_classes(model_classes, class_names, description, where, len(logits), len(labels))
    metrics = classification_metrics(logits, labels)
    metrics.update(task="classification", model=description, timing=timing, warnings=[*warnings, *notes])
    return metrics


def postprocess_of(predictor: Predictor) -> dict[str, Any]:
    """The detection post-processing a result records: score_threshold, max_detections, nms_iou."""
    return {"score_threshold": predictor.score_threshold, "max_detections": predictor.max_detections,
            "nms_iou": predictor.nms_iou}


def evaluate_detector(predictor: Predictor, dataset: Any, progress: bool = True,
                      on_progress: Callable[[int], None] | None = None, voc_metric: str = "devkit") -> dict[str, Any]:
    """Run `predictor` on every image of a DetectionDataset -> evaluate_detections' metrics (VOC convention
    `voc_metric`: devkit | continuous) plus "timing" (images/s over preprocessing + inference + NMS; image
    decoding excluded) and "warnings"."""
    # classes that cannot be matched are refused before any image runs
    class_mapping(predictor.class_names, dataset.class_names, predictor.description,
                  f"dataset {dataset.root} ({dataset.split})")
    preds, seconds = run_predictor(predictor, range(len(dataset)), dataset.load_image, len(dataset), progress,
                                   on_progress)
    return detection_result(preds, dataset, predictor.class_names, predictor.description,
                            _timing(len(dataset), seconds, predictor), voc_metric, predictor.warnings,
                            postprocess_of(predictor))


def evaluate_classifier(predictor: Predictor, images: Sequence[Any], labels: Sequence[int] | np.ndarray,
                        class_names: Sequence[str], progress: bool = True,
                        on_progress: Callable[[int], None] | None = None, where: str = "the dataset") -> dict[str, Any]:
    """top1/top5 (+ "timing", "warnings") of `predictor` on images ((H, W, 3) uint8 arrays or image paths)
    with int labels [N] indexing class_names."""
    check_classifier_classes(predictor.class_names, class_names, predictor.description, where, len(images), len(labels))
    logits, seconds = run_predictor(predictor, images, load_classification_item, len(labels), progress, on_progress)
    return classification_result(np.asarray(logits), labels, predictor.class_names, class_names, predictor.description,
                                 _timing(len(labels), seconds, predictor), where, predictor.warnings)


def evaluate(target: str | Path, dataset: str | Path, split: str = "test", weights: Path | None = None,
             num_classes: int | None = None, input_size: tuple[int, int] | None = None,
             batch_size: int = DEFAULT_BATCH, limit: int | None = None, progress: bool = True,
             score_threshold: float = EVAL_SCORE_THRESHOLD, max_detections: int = EVAL_MAX_DETECTIONS,
             seed: int = 0, voc_metric: str = "devkit", preprocess: PreprocessOverride | None = None,
             cluster: str | None = None, shards: int | None = None) -> dict[str, Any]:
    """Evaluate an engine folder, a checkpoint or a registered model (see predictor_for) on `split` of
    `dataset` (detectors: a VOC folder or COCO json, see data/datasets.py open_dataset; classifiers:
    anything data/classification.py classification_samples takes, e.g. a folder of class folders or
    "digits"). `limit` keeps the first N images; `voc_metric` is the VOC convention (devkit | continuous,
    evaluation/detection_metrics.py). Returns the metrics dict (fractions in [0, 1]) with "timing"
    (images/s), "dataset", "split", "warnings" and "trained" (False, with a warning first in "warnings", for an
    engine built without weights or a model name given none). `preprocess` (--channels, --mean, --std) applies to
    PyTorch models. R-CNN / Fast R-CNN run with their host stages
    (benchmarks/proposal_arc.py) on the split's selective-search proposals (data/proposals.py, cached).
    `cluster` (local | ray | ray://HOST:PORT | HOST:PORT | auto; engine folders only) splits the images into
    `shards` contiguous shards run as jobs there (benchmarks/sharded_eval.py); the metrics equal this process's."""
    voc_convention(voc_metric)  # a bad name is refused before any work
    if cluster is not None or shards is not None:
        from enginesmith.benchmarks.sharded_eval import evaluate_on_cluster

        return evaluate_on_cluster(target, dataset, cluster, shards, split=split, weights=weights,
                                   num_classes=num_classes, input_size=input_size, batch_size=batch_size, limit=limit,
                                   progress=progress, score_threshold=score_threshold, max_detections=max_detections,
                                   voc_metric=voc_metric, preprocess=preprocess)
    if (Path(target) / "manifest.json").is_file():
        engine_info(target)  # an engine folder is checked before anything reads it (two_stage_target too)
    if (Path(target) / "manifest.json").is_file() and preprocess is not None and not preprocess.empty:
        raise EnginesmithError(f"{target} is an engine folder: its preprocessing (manifest.json) is built in; drop "
                               "--channels/--mean/--std, or rebuild the engine with them")
    host = two_stage_target(target, weights, preprocess)
    if host is not None:
        try:
            return note_untrained(_evaluate_two_stage(host, dataset, split, limit, progress, voc_metric), target,
                                   weights)
        finally:
            host.close()
    predictor = predictor_for(target, weights, num_classes, input_size, batch_size, score_threshold,
                              max_detections, seed=seed, preprocess=preprocess)
    with predictor:
        if predictor.task == "detection":
            metrics = evaluate_detector(predictor, detection_split(dataset, split, limit), progress,
                                        voc_metric=voc_metric)
        else:
            cs = classification_split(dataset, split, limit)
            metrics = evaluate_classifier(predictor, cs.images, cs.labels, cs.class_names, progress,
                                          where=f"dataset {dataset} ({split})")
    metrics.update(dataset=str(dataset), split=split)
    return note_untrained(metrics, target, weights)


def detection_split(dataset: str | Path, split: str, limit: int | None = None) -> Any:
    """The DetectionDataset evaluated: `split` of `dataset`, its first `limit` images; one line when empty."""
    ds = open_dataset(Path(dataset), split)
    if limit is not None:
        ds = type(ds)(ds.root, ds.split, ds.class_names, list(ds.samples[: max(0, limit)]))
    if not len(ds):
        raise EnginesmithError(f"dataset {dataset} ({split}) has no images to evaluate")
    return ds


def classification_split(dataset: str | Path, split: str, limit: int | None = None) -> ClassificationSet:
    """The ClassificationSet evaluated: `split` of `dataset`, its first `limit` samples; one line when empty."""
    cs = classification_samples(dataset, split)
    images, labels = cs.images, np.asarray(cs.labels)
    if limit is not None:
        images, labels = images[: max(0, limit)], labels[: max(0, limit)]
    if not len(labels):
        raise EnginesmithError(f"dataset {dataset} ({split}) has no images to evaluate")
    return ClassificationSet(list(images), labels, cs.class_names)


def note_untrained(metrics: dict[str, Any], target: str | Path, weights: Path | None) -> dict[str, Any]:
    """metrics with "trained" (False for an untrained engine or model) and, then, the warning among its warnings."""
    warning = untrained_warning(target, weights)
    metrics["trained"] = warning is None
    if warning is not None:
        metrics["warnings"] = [warning, *metrics.get("warnings", [])]
    return metrics


def _evaluate_two_stage(host: Any, dataset: str | Path, split: str, limit: int | None, progress: bool,
                        voc_metric: str = "devkit") -> dict[str, Any]:
    ds = detection_split(dataset, split, limit)
    proposals = split_proposals(ds)
    t0 = time.perf_counter()
    preds = predict_split(host, ds, proposals, progress)
    seconds = time.perf_counter() - t0
    # the host stages give the dataset's class ids already (no class mapping)
    metrics = detection_result(preds, ds, None, host.description, voc_metric=voc_metric,
                               timing={"images": len(ds), "seconds": seconds,
                                       "images_per_s": len(ds) / seconds if seconds else 0.0, "batch": 1,
                                       "proposals": "selective search, precomputed (data/proposals.py)"})
    del metrics["postprocess"]  # the host model's own (per-class NMS in runtime/two_stage.py)
    metrics.update(dataset=str(dataset), split=split)
    return metrics


def render_metrics(metrics: dict[str, Any], per_class: bool = True, warnings: bool = True) -> str:
    """evaluate()'s result as plain text for the terminal (metrics in percent, as the SSD paper's table);
    warnings=False leaves out the "warning: ..." lines (the CLI prints them on stderr)."""
    t = metrics["timing"]
    lines = [f"model    {metrics['model']}",
             f"dataset  {metrics.get('dataset', '?')} ({metrics.get('split', '?')}), {t['images']} images"]
    if metrics["task"] == "detection":
        lines += [f"VOC metric: {voc_metric_label(metrics['voc_convention'])}",
                  f"mAP@0.5 VOC07 11-point  {100 * metrics['voc07_map']:6.2f}",
                  f"mAP@0.5 all-point       {100 * metrics['map']:6.2f}",
                  f"COCO AP@[.5:.95]        {100 * metrics['coco_ap']:6.2f}",
                  f"COCO AP50 / AP75        {100 * metrics['coco_ap50']:6.2f} / {100 * metrics['coco_ap75']:.2f}",
                  f"classes with ground truth: {metrics['classes_evaluated']} of {len(metrics['per_class'])} "
                  "(the others are left out of the means)"]
        if per_class:
            lines.append(f"  {'class':<16} {'VOC07':>7} {'AP':>7} {'GT':>6} {'dets':>7}")
            for name, c in metrics["per_class"].items():
                v07 = "-" if c["voc07"] is None else f"{100 * c['voc07']:.2f}"
                ap = "-" if c["ap"] is None else f"{100 * c['ap']:.2f}"
                lines.append(f"  {name:<16} {v07:>7} {ap:>7} {c['positives']:>6} {c['detections']:>7}")
    else:
        lines += [f"top-1  {100 * metrics['top1']:6.2f}", f"top-5  {100 * metrics['top5']:6.2f}"]
    if "shards" in t:  # sharded (benchmarks/sharded_eval.py): the whole run's wall clock
        lines.append(f"speed  {t['images_per_s']:.1f} images/s (batch {t['batch']}; {t['shards']} shards on "
                     f"{t['cluster']}: wall clock of the whole run, worker start, engine loading and image decoding "
                     "included)")
    else:
        lines.append(f"speed  {t['images_per_s']:.1f} images/s (batch {t['batch']}; preprocessing + inference"
                     + (" on precomputed selective-search proposals" if "proposals" in t else "")
                     + (" + NMS" if metrics["task"] == "detection" else "") + ", image decoding excluded)")
    lines += [f"warning: {w}" for w in metrics.get("warnings", [])] if warnings else []
    return "\n".join(lines)


__all__ = ["Predictor", "EngineFacts", "engine_facts", "detection_result", "classification_result", "detection_split",
           "classification_split", "render_metrics", "predictor_for", "engine_predictor", "model_predictor", "torch_predictor", "evaluate",
           "evaluate_detector", "evaluate_classifier", "untrained_warning", "class_mapping", "read_checkpoint_info",
           "EVAL_SCORE_THRESHOLD", "EVAL_MAX_DETECTIONS", "EVAL_NMS_IOU"]
