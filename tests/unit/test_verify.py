"""Stage verification arithmetic against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from enginesmith.errors import EnginesmithError
from enginesmith.pipeline.verify import Tolerance, check, compare


def test_compare_hand_values():
    ref = {"logits": np.array([[1.0, 0.0], [0.0, 2.0]])}
    got = {"logits": np.array([[1.0, 0.5], [0.0, 2.0]])}
    c = compare(ref, got)
    assert c.max_abs == 0.5 and c.max_rel == 0.25
    assert c.cosine == pytest.approx(5 / (np.sqrt(5) * np.sqrt(5.25)))
    assert c.top1_agreement == 1.0


def test_top1_disagreement_and_tolerance_failures():
    ref = {"logits": np.array([[1.0, 0.0], [0.0, 2.0]])}
    got = {"logits": np.array([[0.0, 1.0], [0.0, 2.0]])}
    c = compare(ref, got)
    assert c.top1_agreement == 0.5
    with pytest.raises(EnginesmithError, match="cosine"):
        check(c, Tolerance(min_cosine=0.99), "stage")
    with pytest.raises(EnginesmithError, match="relative error"):
        check(c, Tolerance(max_rel=0.1), "stage")


def test_shape_change_and_nan_are_errors():
    with pytest.raises(EnginesmithError, match="shape"):
        compare({"a": np.zeros((2, 3))}, {"a": np.zeros((3, 2))})
    with pytest.raises(EnginesmithError, match="NaN"):
        compare({"a": np.zeros(2)}, {"a": np.array([0.0, np.nan])})
