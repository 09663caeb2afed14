"""Top-1 / top-5 against a naive loop (sorted() per row), including ties and fewer than 5 classes."""

from __future__ import annotations

import numpy as np
import pytest

from enginesmith.evaluation.classification_metrics import classification_metrics, topk_accuracy
from enginesmith.errors import EnginesmithError


def naive_topk(logits, labels, k):
    hits = 0
    for row, label in zip(logits.tolist(), labels.tolist()):
        order = sorted(range(len(row)), key=lambda c: (-row[c], c))  # ties to the lower class index
        hits += label in order[:k]
    return hits / len(labels)


@pytest.mark.parametrize("seed", range(20))
def test_topk_matches_naive_loop(seed):
    rng = np.random.default_rng(seed)
    n, c = int(rng.integers(1, 60)), int(rng.integers(1, 12))
    logits = rng.normal(size=(n, c)).astype(np.float32)
    if seed % 2:  # coarse values: many ties
        logits = np.round(logits * 2) / 2
    labels = rng.integers(0, c, n)
    m = classification_metrics(logits, labels)
    assert m["top1"] == pytest.approx(naive_topk(logits, labels, 1))
    assert m["top5"] == pytest.approx(naive_topk(logits, labels, min(5, c)))
    for k in (1, 2, 3, 7):
        assert topk_accuracy(logits, labels, k) == pytest.approx(naive_topk(logits, labels, k))


def test_hand_cases():
    logits = np.array([[0.1, 0.9, 0.0], [0.5, 0.2, 0.3], [1.0, 1.0, 0.0]])
    labels = np.array([1, 2, 1])
    # row 0: label 1 is best; row 1: label 2 is second; row 2: label 1 ties with class 0 and ranks second
    assert classification_metrics(logits, labels)["top1"] == pytest.approx(1 / 3)
    assert topk_accuracy(logits, labels, 2) == pytest.approx(1.0)
    assert classification_metrics(logits, labels)["top5"] == 1.0  # 3 classes: top-5 is top-3


def test_bad_input():
    with pytest.raises(EnginesmithError, match="3 classes"):
        classification_metrics(np.zeros((2, 3)), np.array([0, 3]))
    with pytest.raises(EnginesmithError, match="logits"):
        classification_metrics(np.zeros((2, 3)), np.array([0]))
    with pytest.raises(EnginesmithError, match="NaN"):
        classification_metrics(np.array([[np.nan, 0.0]]), np.array([0]))
