"""The epoch loop shared by the two-stage detectors' trainers: R-CNN's CNN stage (training/rcnn.py finetune),
Fast R-CNN (training/fast_rcnn.py) and Faster R-CNN (training/faster_rcnn.py).

Per epoch: the images in a seeded order (numpy default_rng([seed, epoch]).permutation, full batches of
recipe.batch_size images, training/common.py epoch_batches), each batch built one step ahead in a background
thread (loop.py _prefetch); per step: the recipe's learning rate (loop.py lr_at: warm-up, then cosine), the
trainer's losses, a finite-loss check (one-line EnginesmithError), backward, gradient norm clipped to
`clip`, the optimiser step (loop.py make_optimizer). The history holds one row per epoch; a time budget
stops after the epoch whose successor would overrun it by more than 5% (with `replan`, after the first
epoch the schedule is also shortened once to the epochs that fit, as loop.py train_detector does).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from enginesmith.training.common import Bar, epoch_batches, lr_at, make_optimizer, optimizer_step, prefetch

# make_batch(batches, epoch) -> make(j) -> (x [N, 3, H, W] tensor, payload for step_losses, images flipped)
BatchMaker = Callable[[list[np.ndarray], int], Callable[[int], tuple[Any, Any, int]]]
# step_losses(x, payload) -> {"loss": 0-d tensor, ...}; every entry is summed into the epoch's history row
StepLosses = Callable[[Any, Any], dict[str, Any]]
# history_row(sums, seen, seconds, steps) -> the epoch's row after "epoch"
HistoryRow = Callable[[dict[str, float], int, float, int], dict[str, Any]]


@dataclass(frozen=True)
class EpochLoopResult:
    """history: one dict per epoch run; steps: optimiser steps taken; flips: images flipped (as make_batch
    counted them); seconds: wall time of the loop."""

    history: list[dict[str, Any]]
    steps: int
    flips: int
    seconds: float


def mean_losses_row(sums: dict[str, float], seen: int, seconds: float, steps: int) -> dict[str, Any]:
    """The default history row: seconds, images/s and each summed entry averaged over the epoch's steps."""
    return {"seconds": round(seconds, 2), "img_s": round(seen / seconds, 2),
            **{k: round(v / steps, 5) for k, v in sums.items()}}


def flip_image(safe: np.ndarray, labels: np.ndarray, seed: int, epoch: int, index: int) -> bool:
    """Horizontal flip of training image `index` in `epoch`: with probability 1/2 (numpy default_rng([seed,
    epoch, index])), only when all its labels (class ids, [K]) are mirror-safe (safe [C + 1] over background,
    classes: training/rcnn.py mirror_safe)."""
    rng = np.random.default_rng([seed, epoch, index])
    return bool(safe[np.asarray(labels, np.int64) + 1].all()) and rng.random() < 0.5


def image_batch_maker(samples: Sequence[Any], safe: np.ndarray, seed: int,
                      sample: Callable[[int, bool], tuple[np.ndarray, Any]]) -> BatchMaker:
    """A BatchMaker over whole images: sample(i, flip) -> (x [3, H, W] float32, item); a batch is
    (x [N, 3, H, W] channels_last tensor, [item per image], images flipped), flips by flip_image."""
    import torch

    def make_batch(batches: list[np.ndarray], epoch: int) -> Callable[[int], tuple[Any, list[Any], int]]:
        def make(j: int) -> tuple[Any, list[Any], int]:
            xs, items, flipped = [], [], 0
            for idx in batches[j]:
                i = int(idx)
                flip = flip_image(safe, samples[i].labels, seed, epoch, i)
                flipped += flip
                x, item = sample(i, flip)
                xs.append(x)
                items.append(item)
            x = torch.from_numpy(np.stack(xs)).contiguous(memory_format=torch.channels_last)
            return x, items, flipped
        return make

    return make_batch


def run_epochs(net, recipe, n: int, seed: int, make_batch: BatchMaker, step_losses: StepLosses, *, what: str,
               title: str, time_budget_s: float | None, progress, replan: bool = False, clip: float = 10.0,
               history_row: HistoryRow = mean_losses_row) -> EpochLoopResult:
    """Train `net` (updated in place) for recipe.epochs over n images with recipe's optimiser and schedule.
    what: the trainer's name in the divergence error ("Fast R-CNN"); title: the progress bar's."""
    ipb = max(1, min(recipe.batch_size, n))
    steps_per_epoch = len(epoch_batches(np.arange(n), ipb))
    planned = recipe.epochs
    total = planned * steps_per_epoch
    warmup = int(round(recipe.warmup_epochs * steps_per_epoch))
    opt = make_optimizer(net, recipe)
    bar = Bar(progress, title, total)
    history: list[dict[str, Any]] = []
    step = 0
    flips = 0
    t_start = time.perf_counter()
    try:
        epoch = 0
        while epoch < planned:
            net.train()
            order = np.random.default_rng([seed, epoch]).permutation(n)
            batches = epoch_batches(order, ipb)
            t_epoch = time.perf_counter()
            seen = 0
            sums: dict[str, float] = {}
            for x, payload, flipped in prefetch(make_batch(batches, epoch), len(batches)):
                losses = step_losses(x, payload)
                optimizer_step(net, opt, losses["loss"], lr_at(step, total, warmup, recipe.lr, recipe.final_lr_fraction),
                               clip, f"{what} training", step)
                step += 1
                seen += len(x)
                flips += flipped
                for k, v in losses.items():
                    sums[k] = sums.get(k, 0.0) + float(v.detach())
                bar.update({"epoch": epoch + 1, "epochs": planned, "step": step, "total": total,
                            "loss": sums["loss"] / max(1, step - epoch * steps_per_epoch),
                            "img_s": seen / max(1e-9, time.perf_counter() - t_epoch)})
            dt = time.perf_counter() - t_epoch
            history.append({"epoch": epoch + 1, **history_row(sums, seen, dt, len(batches))})
            epoch += 1
            if time_budget_s is not None and epoch < planned:
                elapsed = time.perf_counter() - t_start
                per_epoch = elapsed / epoch
                if replan and epoch == 1:
                    # re-plan once (as loop.py train_detector): the epochs that fit, the cosine stretched over them
                    fit = max(1, int(time_budget_s // per_epoch))
                    if fit < planned:
                        planned, total = fit, fit * steps_per_epoch
                if elapsed + per_epoch > time_budget_s * 1.05:
                    break
    finally:
        bar.close()
    return EpochLoopResult(history, step, int(flips), time.perf_counter() - t_start)


__all__ = ["run_epochs", "image_batch_maker", "flip_image", "mean_losses_row", "EpochLoopResult"]
