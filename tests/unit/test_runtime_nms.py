"""runtime/nms.py's IoU-matrix fast path gives exactly what the one-row-per-kept-box loop gives
(the same float32 arithmetic), including boxes placed exactly on the IoU threshold and score ties."""

from __future__ import annotations

import numpy as np
import pytest

from enginesmith.runtime import nms as nms_mod
from enginesmith.runtime.nms import greedy_nms, iou_matrix, iou_one_to_many, nms_detections


def _random_boxes(rng: np.random.Generator, n: int) -> np.ndarray:
    xy = rng.uniform(0, 100, (n, 2)).astype(np.float32)
    wh = rng.uniform(0, 40, (n, 2)).astype(np.float32)
    wh[rng.random(n) < 0.05] = 0  # some zero-area boxes
    boxes = np.concatenate([xy, xy + wh], axis=1)
    flip = rng.random(n) < 0.2  # corners in the other diagonal order (ONNX allows it)
    boxes[flip] = boxes[flip][:, [2, 3, 0, 1]]
    return boxes


def test_iou_matrix_rows_equal_iou_one_to_many_bitwise():
    rng = np.random.default_rng(0)
    boxes = _random_boxes(rng, 300)
    m = iou_matrix(boxes)
    for i in range(len(boxes)):
        assert np.array_equal(m[i], iou_one_to_many(boxes[i], boxes)), i


def _loop_only(monkeypatch):
    monkeypatch.setattr(nms_mod, "MATRIX_NMS_MAX", 0)


@pytest.mark.parametrize("seed", range(12))
def test_matrix_path_equals_loop_path(seed, monkeypatch):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 400))
    boxes = _random_boxes(rng, n)
    scores = rng.random(n).astype(np.float32)
    scores[rng.random(n) < 0.3] = 0.5  # exact ties
    for thr in (0.0, 0.3, 0.45, 0.7):
        for limit in (None, 5):
            fast = greedy_nms(boxes, scores, thr, limit)
            with monkeypatch.context() as m:
                m.setattr(nms_mod, "MATRIX_NMS_MAX", 0)
                slow = greedy_nms(boxes, scores, thr, limit)
            assert np.array_equal(fast, slow), (seed, thr, limit)


def test_boxes_exactly_on_the_threshold(monkeypatch):
    # IoU with [0,0,10,10]: box 1 exactly 0.5 (kept: suppression needs IoU > thr), box 2 0.50001 (suppressed),
    # box 3 exactly 0.5 and touching box 1 (IoU 0): kept
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 5], [0, 4.9999, 10, 10], [0, 5, 10, 10]], np.float32)
    scores = np.array([0.9, 0.8, 0.7, 0.6], np.float32)
    fast = greedy_nms(boxes, scores, 0.5)
    _loop_only(monkeypatch)
    assert np.array_equal(fast, greedy_nms(boxes, scores, 0.5))
    assert list(fast) == [0, 1, 3]


@pytest.mark.parametrize("seed", range(4))
def test_nms_detections_same_either_path(seed, monkeypatch):
    rng = np.random.default_rng(100 + seed)
    boxes = np.stack([_random_boxes(rng, 150) for _ in range(2)])
    scores = rng.random((2, 150, 5)).astype(np.float32)
    for agnostic in (False, True):
        fast = nms_detections(boxes, scores, 0.45, 0.3, 20, agnostic)
        with monkeypatch.context() as m:
            m.setattr(nms_mod, "MATRIX_NMS_MAX", 0)
            slow = nms_detections(boxes, scores, 0.45, 0.3, 20, agnostic)
        assert np.array_equal(fast[0], slow[0]) and np.array_equal(fast[1], slow[1])
