"""Training: each family's loss (losses.py), augmentation (augment.py), the loop (loop.py), checkpoints
(checkpoints.py), recipes (recipes.py) and anchor fitting (anchors.py).

`train(...)` is what `enginesmith train` calls. Importing this package does not import torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:  # pragma: no cover
    from enginesmith.training.loop import TrainResult


def train(model: str, dataset: Path, epochs: int | None = None, out: Path | None = None, seed: int = 0,
          time_budget_s: float | None = None, progress: bool | Callable[[dict[str, Any]], None] = True,
          **kwargs: Any) -> "TrainResult":
    """Train registry model `model` on the dataset at `dataset`; see enginesmith.training.loop.train."""
    from enginesmith.training.loop import train as _train

    return _train(model, dataset, epochs=epochs, out=out, seed=seed, time_budget_s=time_budget_s,
                  progress=progress, **kwargs)


__all__ = ["train"]
