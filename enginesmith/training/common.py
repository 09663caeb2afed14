"""What the training loop (loop.py) and the family trainers (rcnn.py, fast_rcnn.py, faster_rcnn.py,
two_stage_loop.py) share: the learning-rate schedule, the optimizer, batching with a background prefetch, the
progress bar, and a torch detector's validation mAP."""

from __future__ import annotations

import math
import queue
import threading
from typing import TYPE_CHECKING, Any, Callable, Iterator

import numpy as np

from enginesmith.errors import EnginesmithError
from enginesmith.evaluation.detection_metrics import evaluate_detections
from enginesmith.evaluation.predict import predict_detections

if TYPE_CHECKING:  # pragma: no cover - recipes.py imports torch; only the annotation needs Recipe
    from enginesmith.training.recipes import Recipe

ProgressFn = Callable[[dict[str, Any]], None]


def lr_at(step: int, total_steps: int, warmup_steps: int, lr: float, final_fraction: float) -> float:
    """Linear warm-up from lr/10 to lr over warmup_steps, then cosine from lr to lr * final_fraction."""
    if warmup_steps > 0 and step < warmup_steps:
        return lr * (0.1 + 0.9 * step / warmup_steps)
    span = max(1, total_steps - warmup_steps)
    t = min(1.0, (step - warmup_steps) / span)
    return lr * (final_fraction + (1 - final_fraction) * 0.5 * (1 + math.cos(math.pi * t)))


def make_optimizer(model, recipe: Recipe):
    """AdamW or SGD (Nesterov, momentum 0.9); weight decay on conv/linear weights only (not BN, not biases)."""
    import torch

    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim > 1 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": recipe.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if recipe.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=recipe.lr, betas=(0.9, 0.999))
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=recipe.lr, momentum=0.9, nesterov=True)
    raise EnginesmithError(f"unknown optimizer {recipe.optimizer!r} in the recipe; use 'adamw' or 'sgd'")


def optimizer_step(net: Any, opt: Any, loss: Any, lr: float, clip: float, what: str, step: int, ema: Any = None) -> None:
    """One step on `loss` (a scalar tensor) at learning rate `lr`: a finite check (`what` names the training in the
    error), backward, the gradient norm clipped to `clip`, the optimizer, then the EMA of the weights if any."""
    import torch

    if not torch.isfinite(loss):
        raise EnginesmithError(f"{what} diverged (loss {float(loss)} at step {step}); lower the learning rate in the "
                               "recipe")
    for g in opt.param_groups:
        g["lr"] = lr
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(net.parameters(), clip)
    opt.step()
    if ema is not None:
        ema.update(net)


def epoch_batches(order: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Full batches only (a last batch of 1 would break BatchNorm); the remainder is dropped this epoch."""
    n = len(order) // batch_size
    return [order[i * batch_size:(i + 1) * batch_size] for i in range(max(1, n))]


def prefetch(make: Callable[[int], Any], count: int, depth: int = 2) -> Iterator[Any]:
    """Yield make(0..count-1) computed one step ahead in a background thread (PIL and numpy release the GIL)."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def work() -> None:
        try:
            for i in range(count):
                if stop.is_set():
                    return
                q.put((i, make(i), None))
        except BaseException as e:  # surfaced in the consumer
            q.put((-1, None, e))

    t = threading.Thread(target=work, daemon=True)
    t.start()
    try:
        for _ in range(count):
            _, item, err = q.get()
            if err is not None:
                raise err
            yield item
    finally:
        stop.set()
        while t.is_alive():
            try:
                q.get_nowait()
            except queue.Empty:
                t.join(timeout=0.05)


class Bar:
    """A rich progress bar on stderr (epoch, loss, img/s), or a callback, or nothing."""

    def __init__(self, progress: bool | ProgressFn, description: str, total: int) -> None:
        self.callback = progress if callable(progress) else None
        self.bar = None
        if progress is True:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
                TimeRemainingColumn

            self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                                console=Console(stderr=True), transient=False)
            self.bar.start()
            self.task = self.bar.add_task(description, total=total, info="")

    def update(self, info: dict[str, Any]) -> None:
        if self.callback is not None:
            self.callback(info)
        if self.bar is not None:
            text = (f"epoch {info['epoch']}/{info['epochs']}  loss {info['loss']:.3f}  {info['img_s']:.1f} img/s"
                    if "loss" in info else info.get("text", ""))
            self.bar.update(self.task, completed=info.get("step", 0), total=info.get("total"), info=text)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def evaluate_detector(net, spec_pre, dataset, images: list[np.ndarray] | None = None,
                      progress: bool | ProgressFn = False) -> dict[str, Any]:
    """mAP of a torch detector on a DetectionDataset, through evaluation/predict.py and detection_metrics.py."""
    import torch

    net.eval()

    def infer(x: np.ndarray) -> dict[str, np.ndarray]:
        with torch.no_grad():
            boxes, scores = net(torch.from_numpy(x).contiguous(memory_format=torch.channels_last))
        return {"boxes": boxes.numpy(), "scores": scores.numpy()}

    imgs = images if images is not None else (dataset.load_image(i) for i in range(len(dataset)))
    bar = Bar(progress, f"evaluating {dataset.split}", len(dataset))
    done = [0]

    def tick(n: int) -> None:
        done[0] += n
        bar.update({"step": done[0], "total": len(dataset), "text": f"{done[0]} images"})

    try:
        preds = predict_detections(infer, imgs, spec_pre, None, progress=tick)
    finally:
        bar.close()
    return evaluate_detections(preds, dataset)
