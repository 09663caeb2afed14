"""`enginesmith train`: train a registered model on a dataset given by path, with its family's loss.

Detectors read the dataset's "train" split (helper readers: data/datasets.py open_dataset), see every
image through training/augment.py and the model's own PreprocessSpec, and are evaluated on the "val"
split at the end (evaluation/detection_metrics.py evaluate_detections, on the same predictions path as
`enginesmith eval`). Classifiers train on data/classification.py samples with softmax cross-entropy.

Deterministic for a seed: the initial weights (spec.create(seed)), the epoch order and every
augmentation (numpy generators seeded by (seed, epoch, image)) depend only on it; on one machine and
thread count the run repeats bit for bit (CPU kernels are deterministic; a different thread count may
change float summation order).

A checkpoint with the same (model, dataset fingerprint, epochs, seed, recipe) is reused, not retrained.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from enginesmith.data.classification import classification_samples
from enginesmith.data.datasets import open_dataset
from enginesmith.errors import EnginesmithError
from enginesmith.models import registry
from enginesmith.runtime.preprocess import load_image, preprocess_batch
from enginesmith.training.augment import AugmentConfig, augment_sample, to_input
from enginesmith.training.checkpoints import (dataset_fingerprint, default_checkpoint_path, matches, read_checkpoint,
                                              save_checkpoint)
from enginesmith.training.common import (Bar, ProgressFn, epoch_batches, evaluate_detector, lr_at, make_optimizer,
                                         optimizer_step, prefetch)
from enginesmith.training.criteria import detection_loss, init_detection_priors
from enginesmith.training.fast_rcnn import train_fast_rcnn
from enginesmith.training.faster_rcnn import train_faster_rcnn
from enginesmith.training.losses import classification_loss
from enginesmith.training.rcnn import train_rcnn
from enginesmith.training.recipes import Recipe, recipe_for

@dataclass
class TrainResult:
    """checkpoint: the .pt written (or reused); metrics: val metrics and training statistics."""

    checkpoint: Path
    metrics: dict[str, Any] = field(default_factory=dict)
    reused: bool = False


# ------------------------------------------------------------------------------------------- helpers


def cpu_threads() -> int:
    """The cores this process may use (affinity mask), for torch.set_num_threads."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


class EMA:
    """Exponential moving average of a model's weights and buffers; decay ramps up as
    decay * (1 - exp(-updates / 200)) so early averages are not dominated by the random init."""

    def __init__(self, model, decay: float) -> None:
        import copy

        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.decay = decay
        self.updates = 0

    def update(self, model) -> None:
        import torch

        self.updates += 1
        d = self.decay * (1 - math.exp(-self.updates / 200))
        with torch.no_grad():
            src = model.state_dict()
            for k, v in self.model.state_dict().items():
                if v.dtype.is_floating_point:
                    v.mul_(d).add_(src[k].detach(), alpha=1 - d)
                else:
                    v.copy_(src[k])


def _seeded_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, epoch, index])


# ------------------------------------------------------------------------------------------- detectors


def _targets_tensor(t: np.ndarray):
    import torch

    return torch.from_numpy(np.ascontiguousarray(t, dtype=np.float32).reshape(-1, 5))


def _load_images(dataset, bar_progress: bool | ProgressFn, what: str) -> list[np.ndarray]:
    bar = Bar(bar_progress, f"loading {what}", len(dataset))
    out = []
    for i in range(len(dataset)):
        out.append(dataset.load_image(i))
        if i % 16 == 15 or i == len(dataset) - 1:
            bar.update({"step": i + 1, "total": len(dataset), "text": f"{i + 1} images"})
    bar.close()
    return out


def train_detector(spec, train_set, val_set, recipe: Recipe, seed: int, time_budget_s: float | None,
                   progress: bool | ProgressFn, train_images: list[np.ndarray] | None = None,
                   val_images: list[np.ndarray] | None = None) -> tuple[Any, dict[str, Any]]:
    """Train spec's network on train_set with `recipe`; returns (trained module in eval mode, metrics)."""
    import torch

    num_classes = len(train_set.class_names)
    net = spec.create(num_classes=num_classes, seed=seed)
    init_detection_priors(net)
    net = net.to(memory_format=torch.channels_last).train()
    opt = make_optimizer(net, recipe)
    ema = EMA(net, recipe.ema) if recipe.ema > 0 else None
    images = train_images if train_images is not None else _load_images(train_set, progress, "train images")
    samples = train_set.samples
    pre = spec.preprocess

    n = len(samples)
    bs = min(recipe.batch_size, n)
    steps_per_epoch = len(epoch_batches(np.arange(n), bs))
    planned_epochs = recipe.epochs
    total_steps = planned_epochs * steps_per_epoch
    warmup = int(round(recipe.warmup_epochs * steps_per_epoch))
    bar = Bar(progress, f"train {spec.name}", total_steps)
    history: list[dict[str, Any]] = []
    step = 0
    t_start = time.perf_counter()
    epochs_run = 0
    loss_avg = float("nan")

    try:
        for epoch in range(planned_epochs):
            net.train()
            order = np.random.default_rng([seed, epoch]).permutation(n)
            batches = epoch_batches(order, bs)
            t_epoch = time.perf_counter()
            seen = 0
            sums: dict[str, float] = {}
            make = _batch_maker(samples, images, pre, seed, epoch, recipe, batches)
            for x, targets in prefetch(make, len(batches)):
                out = detection_loss(net, x, targets, recipe.yolo)
                loss = out["loss"]
                optimizer_step(net, opt, loss, lr_at(step, total_steps, warmup, recipe.lr, recipe.final_lr_fraction),
                               10.0, f"training {spec.name}", step, ema)
                step += 1
                seen += len(x)
                for k, v in out.items():
                    sums[k] = sums.get(k, 0.0) + float(v.detach())
                lv = float(loss.detach())
                loss_avg = lv if math.isnan(loss_avg) else 0.9 * loss_avg + 0.1 * lv
                bar.update({"epoch": epoch + 1, "epochs": planned_epochs, "step": step, "total": total_steps,
                            "loss": loss_avg, "img_s": seen / max(1e-9, time.perf_counter() - t_epoch)})
            epochs_run = epoch + 1
            dt = time.perf_counter() - t_epoch
            row = {"epoch": epochs_run, "seconds": round(dt, 2), "img_s": round(seen / dt, 2),
                   **{k: round(v / len(batches), 5) for k, v in sums.items()}}
            if recipe.eval_every and val_set is not None and epochs_run % recipe.eval_every == 0 \
                    and epochs_run < planned_epochs:
                m = evaluate_detector(ema.model if ema else net, pre, val_set, val_images)
                row["val_map"] = round(m["map"], 4)
                row["val_voc07_map"] = round(m["voc07_map"], 4)
            history.append(row)
            if time_budget_s is not None:
                fit, stop = _fit_time_budget(time_budget_s, time.perf_counter() - t_start, epochs_run, planned_epochs)
                if fit < planned_epochs:  # the cosine schedule stretched over the epochs that fit
                    planned_epochs = fit
                    total_steps = planned_epochs * steps_per_epoch
                    bar.update({"step": step, "total": total_steps, "text": f"re-planned to {fit} epochs"})
                if stop:
                    break
    finally:
        bar.close()
    train_seconds = time.perf_counter() - t_start
    final = ema.model if ema is not None else net
    final.eval()
    metrics: dict[str, Any] = {"train_seconds": round(train_seconds, 1), "epochs_run": epochs_run,
                               "train_images": n, "history": history, "threads": torch.get_num_threads()}
    if val_set is not None and len(val_set):
        metrics.update(_final_validation(final, pre, val_set, val_images, progress is True))
    return final, metrics


def _fit_time_budget(budget_s: float, elapsed: float, epochs_run: int, planned: int) -> tuple[int, bool]:
    """(epochs planned now, stop now). After the first epoch the plan is cut once to as many epochs as fit the
    budget at that pace; training stops before an epoch that would end past 1.05 x the budget."""
    per_epoch = elapsed / epochs_run
    if epochs_run == 1 and planned > 1:
        planned = min(planned, max(1, int(budget_s // per_epoch)))
    return planned, elapsed + per_epoch > budget_s * 1.05 and epochs_run < planned


def _batch_maker(samples: list, images: list[np.ndarray], pre: Any, seed: int, epoch: int, recipe: Recipe,
                 order: list[np.ndarray]) -> Callable[[int], tuple[Any, list[Any]]]:
    """j -> the j-th batch of `order` (index arrays): augmented images (N, C, H, W) channels_last and their
    target tensors [K, 5] (class, x1, y1, x2, y2); each sample's augmentation seeded by (seed, epoch, index)."""
    import torch

    def make(j: int):
        xs, ts = [], []
        for idx in order[j]:
            s = samples[int(idx)]
            x, t = augment_sample(images[int(idx)], s.boxes, s.labels, pre, _seeded_rng(seed, epoch, int(idx)),
                                  recipe.augment)
            xs.append(x)
            ts.append(_targets_tensor(t))
        return torch.from_numpy(np.stack(xs)).contiguous(memory_format=torch.channels_last), ts
    return make


def _final_validation(final: Any, pre: Any, val_set: Any, val_images: list[np.ndarray] | None,
                      progress: bool) -> dict[str, Any]:
    """The trained network's VOC/COCO metrics on the val split, and how long they took."""
    t0 = time.perf_counter()
    m = evaluate_detector(final, pre, val_set, val_images, progress=progress)
    val = {k: m[k] for k in ("voc07_map", "map", "coco_ap", "coco_ap50", "coco_ap75") if k in m}
    val["per_class"] = m.get("per_class")
    return {"val": val, "val_seconds": round(time.perf_counter() - t0, 1)}


# ------------------------------------------------------------------------------------------- classifiers


def train_classifier(spec, train_set, val_set, recipe: Recipe, seed: int, time_budget_s: float | None,
                     progress: bool | ProgressFn) -> tuple[Any, dict[str, Any]]:
    """Softmax cross-entropy on (image, label) samples preprocessed with the model's PreprocessSpec."""
    import torch

    names = tuple(train_set.class_names)
    net = spec.create(num_classes=len(names), seed=seed).train()
    if sum(p.numel() for p in net.parameters()) < 1_000_000:
        torch.set_num_threads(1)  # a LeNet-sized net: one thread is as fast and does not stall on a shared CPU
    x_all = torch.from_numpy(preprocess_batch(list(_class_images(train_set)), spec.preprocess))
    y_all = torch.from_numpy(np.array(train_set.labels, dtype=np.int64))
    opt = make_optimizer(net, recipe)
    n = len(x_all)
    bs = min(recipe.batch_size, n)
    steps_per_epoch = len(epoch_batches(np.arange(n), bs))
    total = recipe.epochs * steps_per_epoch
    warmup = int(round(recipe.warmup_epochs * steps_per_epoch))
    bar = Bar(progress, f"train {spec.name}", total)
    step, t0, epochs_run = 0, time.perf_counter(), 0
    try:
        for epoch in range(recipe.epochs):
            order = np.random.default_rng([seed, epoch]).permutation(n)
            t_epoch, seen = time.perf_counter(), 0
            for idx in epoch_batches(order, bs):
                for g in opt.param_groups:
                    g["lr"] = lr_at(step, total, warmup, recipe.lr, recipe.final_lr_fraction)
                ix = torch.from_numpy(idx)
                loss = classification_loss(net(x_all[ix]), y_all[ix])["loss"]
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                step += 1
                seen += len(idx)
                bar.update({"epoch": epoch + 1, "epochs": recipe.epochs, "step": step, "total": total,
                            "loss": float(loss.detach()), "img_s": seen / max(1e-9, time.perf_counter() - t_epoch)})
            epochs_run = epoch + 1
            if time_budget_s is not None and time.perf_counter() - t0 > time_budget_s:
                break
    finally:
        bar.close()
    net.eval()
    metrics: dict[str, Any] = {"train_seconds": round(time.perf_counter() - t0, 1), "epochs_run": epochs_run,
                               "train_images": n}
    if val_set is not None and len(val_set.labels):
        xv = torch.from_numpy(preprocess_batch(list(_class_images(val_set)), spec.preprocess))
        with torch.no_grad():
            logits = torch.cat([net(xv[i:i + 256]) for i in range(0, len(xv), 256)])
        yv = torch.from_numpy(np.array(val_set.labels, dtype=np.int64))
        top5 = logits.topk(min(5, logits.shape[1]), dim=1).indices
        metrics["val"] = {"top1": float((logits.argmax(1) == yv).double().mean()),
                          "top5": float((top5 == yv[:, None]).any(1).double().mean())}
    return net, metrics


def _class_images(cset) -> Iterator[np.ndarray]:
    for im in cset.images:
        yield im if isinstance(im, np.ndarray) else load_image(im)


# ------------------------------------------------------------------------------------------- entry point


def train(model: str, dataset: Path, epochs: int | None = None, out: Path | None = None, seed: int = 0,
          time_budget_s: float | None = None, progress: bool | ProgressFn = True,
          recipe: Recipe | None = None, threads: int | None = None) -> TrainResult:
    """Train registry model `model` on the dataset at `dataset` and write a checkpoint.

    epochs overrides the recipe's; out is the checkpoint path (default: the cache, see checkpoints.py);
    time_budget_s caps the training time (after the first epoch the schedule is re-planned to the epochs
    that fit); progress: True for a rich bar on stderr, False for none, or a callable taking a dict.
    Reuses a checkpoint trained with the same (model, dataset, epochs, seed, recipe)."""
    import torch

    spec = registry.get(model)
    base = recipe_for(spec.name, spec.task, epochs)
    recipe = replace(recipe, epochs=int(epochs)) if recipe is not None and epochs is not None else (recipe or base)
    if recipe.epochs < 1:
        raise EnginesmithError(f"epochs must be >= 1, got {recipe.epochs}")
    dataset = Path(dataset).expanduser()
    if spec.task == "detection":
        train_set = open_dataset(dataset, "train")
        val_set = _optional_split(lambda: open_dataset(dataset, "val"))
        class_names = tuple(train_set.class_names)
    elif spec.task == "classification":
        train_set = classification_samples(dataset, "train")
        val_set = _optional_split(lambda: classification_samples(dataset, "val"))
        class_names = tuple(train_set.class_names)
    else:
        raise EnginesmithError(f"{spec.name} is a {spec.task} model; `enginesmith train` trains detectors and classifiers")
    if not len(train_set.samples if hasattr(train_set, "samples") else train_set.labels):
        raise EnginesmithError(f"the train split of {dataset} is empty; nothing to train on")
    fingerprint = dataset_fingerprint(dataset, class_names) if dataset.exists() \
        else _name_fingerprint(str(dataset), class_names)
    run_key = _run_key(recipe, time_budget_s)
    is_default = recipe == recipe_for(spec.name, spec.task, recipe.epochs) and time_budget_s is None
    path = Path(out) if out is not None else default_checkpoint_path(
        spec.name, fingerprint, recipe.epochs, seed, None if is_default else run_key)
    if path.is_file():
        try:
            meta = read_checkpoint(path)
        except EnginesmithError:
            meta = {}
        if matches(meta, spec.name, fingerprint, recipe.epochs, seed, run_key):
            return TrainResult(path, dict(meta.get("metrics", {})), reused=True)

    saved_threads = torch.get_num_threads()
    torch.set_num_threads(threads or cpu_threads())
    try:
        two_stage = spec.two_stage if spec.task == "detection" else None
        if two_stage == "rcnn":
            net, metrics = train_rcnn(spec, train_set, val_set, recipe, seed, time_budget_s, progress)
        elif two_stage == "fast-rcnn":
            net, metrics = train_fast_rcnn(spec, train_set, val_set, recipe, seed, time_budget_s, progress)
        elif spec.trainer == "faster-rcnn":
            net, metrics = train_faster_rcnn(spec, train_set, val_set, recipe, seed, time_budget_s, progress)
        elif spec.task == "detection":
            net, metrics = train_detector(spec, train_set, val_set, recipe, seed, time_budget_s, progress)
        else:
            net, metrics = train_classifier(spec, train_set, val_set, recipe, seed, time_budget_s, progress)
    finally:
        torch.set_num_threads(saved_threads)
    state = {k: v.detach().contiguous().clone() for k, v in net.state_dict().items()}
    payload = {"model": spec.name, "state_dict": state, "num_classes": len(class_names),
               "input_size": list(spec.input_size), "class_names": list(class_names), "dataset": fingerprint,
               "preprocess": spec.preprocess.to_dict(),  # what it was trained on (channel order, mean, std, scale)
               "epochs": recipe.epochs, "seed": seed, "recipe": recipe.to_dict(), "recipe_key": run_key,
               "time_budget_s": time_budget_s, "metrics": metrics}
    save_checkpoint(path, payload)
    return TrainResult(path, metrics)


def _run_key(recipe: Recipe, time_budget_s: float | None) -> str:
    return recipe.key() if time_budget_s is None else f"{recipe.key()}-t{int(time_budget_s)}"


def _name_fingerprint(name: str, class_names: tuple[str, ...]) -> str:
    import hashlib

    return hashlib.sha256((name + "\0" + "\n".join(class_names)).encode()).hexdigest()


def _optional_split(read: Callable[[], Any]):
    try:
        return read()
    except EnginesmithError:
        return None


__all__ = ["TrainResult", "train", "train_detector", "train_classifier", "EMA",
           "AugmentConfig", "to_input"]
