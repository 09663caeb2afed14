"""runtime/nms.py against the contract in its module docstring: candidates strictly above score_threshold,
equal scores ordered by (class, box index), stable greedy order, float32 inputs, shapes checked. Expected values
are written by hand from that contract."""

from __future__ import annotations

import numpy as np
import pytest

from enginesmith.runtime.nms import greedy_nms, nms_detections


def _far_boxes(n: int) -> np.ndarray:
    """n unit boxes 10 apart: no two overlap."""
    x = np.arange(n, dtype=np.float32) * 10
    return np.stack([x, np.zeros(n, np.float32), x + 1, np.ones(n, np.float32)], axis=1)


@pytest.mark.parametrize("agnostic", [False, True])
def test_a_score_equal_to_the_threshold_is_not_a_candidate(agnostic):
    boxes = _far_boxes(2)[None]
    scores = np.array([[[0.5], [0.5000001]]], np.float32)
    dets, n = nms_detections(boxes, scores, 0.5, 0.5, 10, agnostic)
    assert n.tolist() == [1] and dets[0, 0, :4].tolist() == boxes[0, 1].tolist()


def test_scores_are_read_as_float32():
    # 0.5 + 1e-12 is 0.5 in float32: not above a 0.5 threshold, as an engine computing in float32 sees it
    dets, n = nms_detections(_far_boxes(1)[None].astype(np.float64), np.array([[[0.5 + 1e-12]]]), 0.5, 0.5, 5)
    assert n.tolist() == [0] and dets.dtype == np.float32


def test_equal_scores_are_ordered_by_class_then_box_index():
    boxes = _far_boxes(3)[None]
    scores = np.zeros((1, 3, 2), np.float32)
    scores[0, 0, 1] = 0.9  # box 0, class 1
    scores[0, 1, 0] = 0.9  # box 1, class 0
    scores[0, 2, 0] = 0.9  # box 2, class 0
    dets, n = nms_detections(boxes, scores, 0.5, 0.1, 10)
    assert n.tolist() == [3]
    assert dets[0, :3, 5].tolist() == [0, 0, 1] and dets[0, :3, 0].tolist() == [10.0, 20.0, 0.0]


@pytest.mark.parametrize("count", [40, 2000])  # the matrix path and the one-to-many path
def test_greedy_order_is_stable_for_equal_scores(count):
    rng = np.random.default_rng(0)
    scores = rng.choice(np.array([0.5, 0.7], np.float32), size=count)
    kept = greedy_nms(_far_boxes(count), scores, 0.5)
    want = np.concatenate([np.nonzero(scores == 0.7)[0], np.nonzero(scores == 0.5)[0]])  # lower index first
    assert kept.dtype == np.int64 and kept.tolist() == want.tolist()


@pytest.mark.parametrize("boxes_shape, scores_shape", [
    ((5, 4), (1, 5, 2)),         # boxes not 3-D
    ((1, 5, 5), (1, 5, 2)),      # boxes' last dimension not 4
    ((1, 5, 4), (5, 2)),         # scores not 3-D
    ((1, 5, 4), (1, 6, 2)),      # A differs
    ((1, 5, 4), (2, 5, 2)),      # N differs
])
def test_bad_shapes_are_refused_naming_both(boxes_shape, scores_shape):
    with pytest.raises(ValueError) as e:
        nms_detections(np.zeros(boxes_shape, np.float32), np.zeros(scores_shape, np.float32))
    assert str(e.value) == (f"expected boxes [N, A, 4] and scores [N, A, C], got {boxes_shape} and {scores_shape}")


@pytest.mark.parametrize("agnostic", [False, True])
def test_no_classes_gives_no_detections_even_below_a_negative_threshold(agnostic):
    dets, n = nms_detections(_far_boxes(2)[None], np.zeros((1, 2, 0), np.float32), 0.5, -1.0, 4, agnostic)
    assert n.tolist() == [0] and dets.shape == (1, 4, 6) and not dets.any()
