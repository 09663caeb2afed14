"""Classification accuracy: top-1 / top-k from logits (numpy only).

An image counts as correct at k when its label is among the k highest logits. Ties go to the lower class
index (as a stable sort of -logits would), so a label tied with a better-ranked lower index can fall out
of the top k. With fewer than k classes, top-k is top-C (always 1.0).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from enginesmith.errors import EnginesmithError


def label_ranks(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Rank [N] (0 = best) of each label among its row of logits [N, C], ties to the lower class index."""
    logits = np.asarray(logits)
    labels = np.asarray(labels)
    if logits.ndim != 2 or labels.shape != (logits.shape[0],):
        raise EnginesmithError(f"expected logits [N, C] and labels [N], got {logits.shape} and {labels.shape}")
    n, c = logits.shape
    if n and (labels.min() < 0 or labels.max() >= c):
        raise EnginesmithError(
            f"labels go up to {int(labels.max())} but the model gives {c} classes (ids 0..{c - 1}); "
            "is the dataset the one the model was trained on?"
        )
    if not np.all(np.isfinite(logits)):
        raise EnginesmithError("the logits contain NaN or infinite values; the model or engine is broken")
    own = logits[np.arange(n), labels][:, None]
    lower = np.arange(c)[None, :] < labels[:, None]
    return np.sum((logits > own) | ((logits == own) & lower), axis=1)


def topk_accuracy(logits: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Fraction of rows whose label is in the top min(k, C) logits (logits [N, C], labels [N] int)."""
    if k < 1:
        raise EnginesmithError(f"top-k needs k >= 1, got {k}")
    ranks = label_ranks(logits, labels)
    return float(np.mean(ranks < k)) if len(ranks) else 0.0


def classification_metrics(logits: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """{"top1", "top5", "images"} as fractions; top5 is top-C when there are fewer than 5 classes."""
    ranks = label_ranks(logits, labels)
    n = len(ranks)
    return {
        "top1": float(np.mean(ranks < 1)) if n else 0.0,
        "top5": float(np.mean(ranks < 5)) if n else 0.0,
        "images": n,
    }


__all__ = ["label_ranks", "topk_accuracy", "classification_metrics"]
