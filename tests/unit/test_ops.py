"""yolo_decode against a slow per-cell loop written straight from the YOLOv3 paper's equations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from enginesmith.models.ops import box_iou, make_grid, yolo_decode


def _sig(v: float) -> float:
    return 1.0 / (1.0 + math.exp(-v))


def reference_decode(raw: np.ndarray, anchors: list[tuple[float, float]], stride: float):
    """Loop over batch, anchor, row, column: b_x = (sig(t_x) + c_x) * s, b_w = p_w * exp(t_w)."""
    n, ch, h, w = raw.shape
    na = len(anchors)
    no = ch // na
    boxes, scores = [], []
    for b in range(n):
        bb, ss = [], []
        for a in range(na):
            for y in range(h):
                for x in range(w):
                    t = raw[b, a * no : (a + 1) * no, y, x]
                    cx = (_sig(t[0]) + x) * stride
                    cy = (_sig(t[1]) + y) * stride
                    bw = math.exp(t[2]) * anchors[a][0]
                    bh = math.exp(t[3]) * anchors[a][1]
                    bb.append([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2])
                    ss.append([_sig(t[4]) * _sig(c) for c in t[5:]])
        boxes.append(bb)
        scores.append(ss)
    return np.array(boxes, dtype=np.float64), np.array(scores, dtype=np.float64)


@pytest.mark.parametrize("seed", range(6))
def test_yolo_decode_matches_loop_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n, na = int(rng.integers(1, 3)), 3
    c = int(rng.integers(1, 6))
    h, w = int(rng.integers(1, 5)), int(rng.integers(1, 5))
    stride = float(rng.choice([8, 16, 32]))
    anchors = [(float(rng.uniform(5, 300)), float(rng.uniform(5, 300))) for _ in range(na)]
    raw = rng.normal(0, 2, size=(n, na * (5 + c), h, w)).astype(np.float32)

    boxes, scores = yolo_decode(torch.from_numpy(raw), torch.tensor(anchors), stride)
    ref_boxes, ref_scores = reference_decode(raw.astype(np.float64), anchors, stride)
    assert boxes.shape == (n, na * h * w, 4) and scores.shape == (n, na * h * w, c)
    np.testing.assert_allclose(boxes.numpy(), ref_boxes, rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(scores.numpy(), ref_scores, rtol=1e-5, atol=1e-6)

    # A precomputed grid buffer gives the same result as the implicit one.
    b2, s2 = yolo_decode(torch.from_numpy(raw), torch.tensor(anchors), stride, make_grid(h, w))
    assert torch.equal(b2, boxes) and torch.equal(s2, scores)


def test_make_grid_is_x_then_y() -> None:
    g = make_grid(2, 3)
    assert g.shape == (2, 3, 2)
    assert g[1, 2].tolist() == [2.0, 1.0]


def test_box_iou_known_values() -> None:
    a = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    b = torch.tensor([[0.0, 0.0, 10.0, 10.0], [5.0, 0.0, 15.0, 10.0], [20.0, 20.0, 30.0, 30.0]])
    np.testing.assert_allclose(box_iou(a, b).numpy(), [[1.0, 50 / 150, 0.0]], rtol=1e-6)
