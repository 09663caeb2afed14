"""pipeline/verify.py's compare/check at their edges (zero vectors, empty outputs, exact tolerances), against
hand-computed values and numpy's own Pearson correlation (np.corrcoef)."""

from __future__ import annotations

import numpy as np
import pytest

from enginesmith.errors import EnginesmithError
from enginesmith.pipeline.verify import Comparison, Tolerance, check, compare


def test_cosine_of_zero_and_unit_vectors():
    zero, unit, other = np.zeros(2), np.array([1.0, 0.0]), np.array([1.0, 1.0])
    assert compare({"y": zero}, {"y": zero}).cosine == 1.0  # both silent: identical
    assert compare({"y": zero}, {"y": unit}).cosine == 0.0  # one silent: nothing in common
    assert compare({"y": unit}, {"y": zero}).cosine == 0.0
    assert compare({"y": zero}, {"y": other}).cosine == 0.0
    assert compare({"y": other}, {"y": zero}).cosine == 0.0
    # a unit-norm vector is an ordinary vector: cos = 1 / sqrt(2)
    assert compare({"y": unit}, {"y": other}).cosine == pytest.approx(1 / np.sqrt(2))
    assert compare({"y": other}, {"y": unit}).cosine == pytest.approx(1 / np.sqrt(2))
    assert compare({"y": unit}, {"y": unit}).cosine == pytest.approx(1.0)


def test_pearson_is_numpys_correlation():
    rng = np.random.default_rng(0)
    ref = rng.normal(3.0, 1.0, (4, 5))  # a non-zero mean: Pearson is not the cosine
    got = ref + rng.normal(0.0, 0.5, (4, 5))
    c = compare({"logits": ref}, {"logits": got})
    assert c.pearson == pytest.approx(np.corrcoef(ref.ravel(), got.ravel())[0, 1])
    assert c.pearson < c.cosine
    assert c.to_dict()["pearson"] == c.pearson


def test_worst_case_over_outputs():
    ref = {"a": np.array([1.0, 2.0, 3.0]), "b": np.array([1.0, 0.0, 0.0])}
    got = {"a": np.array([1.0, 2.0, 3.0]), "b": np.array([1.0, 1.0, 0.0])}
    c = compare(ref, got)
    assert c.max_abs == 1.0 and c.max_rel == 1.0
    assert c.cosine == pytest.approx(1 / np.sqrt(2))
    b_r, b_g = ref["b"] - ref["b"].mean(), got["b"] - got["b"].mean()
    assert c.pearson == pytest.approx(b_r @ b_g / np.linalg.norm(b_r) / np.linalg.norm(b_g))


def test_relative_error_small_and_zero_references():
    # max|ref| = 0.5 < 1: rel = 0.1 / 0.5
    c = compare({"y": np.array([0.5, -0.25])}, {"y": np.array([0.4, -0.25])})
    assert c.max_abs == pytest.approx(0.1) and c.max_rel == pytest.approx(0.2)
    # an all-zero reference: the relative error falls back to the absolute one (no division by zero)
    c = compare({"y": np.zeros(3)}, {"y": np.array([0.0, 0.25, 0.0])})
    assert c.max_abs == 0.25 and c.max_rel == 0.25


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy's mean of an empty array
def test_empty_outputs_and_no_outputs():
    c = compare({"y": np.zeros((0, 4))}, {"y": np.zeros((0, 4))})
    assert (c.max_abs, c.max_rel, c.cosine, c.pearson, c.top1_agreement) == (0.0, 0.0, 1.0, 1.0, None)
    c = compare({}, {"extra": np.ones(3)})  # nothing to compare: perfect agreement
    assert (c.max_abs, c.max_rel, c.cosine, c.pearson, c.top1_agreement) == (0.0, 0.0, 1.0, 1.0, None)


def test_top1_only_for_2d_logits():
    two_d = np.array([[1.0, 0.0], [0.0, 2.0]])
    flipped = np.array([[0.0, 1.0], [0.0, 2.0]])
    assert compare({"scores": two_d}, {"scores": flipped}).top1_agreement is None
    assert compare({"logits": two_d.ravel()}, {"logits": flipped.ravel()}).top1_agreement is None
    assert compare({"logits": two_d}, {"logits": flipped}).top1_agreement == 0.5


def test_missing_and_reshaped_outputs_name_the_output():
    with pytest.raises(EnginesmithError, match=r"output 'scores' missing from the stage's outputs \(\['boxes'\]\)"):
        compare({"scores": np.ones(2)}, {"boxes": np.ones(2)})
    with pytest.raises(EnginesmithError, match=r"output 'y' changed shape: \(2,\) -> \(1, 2\)"):
        compare({"y": np.ones(2)}, {"y": np.ones((1, 2))})
    with pytest.raises(EnginesmithError, match="output 'y' has NaN or Inf values"):
        compare({"y": np.ones(2)}, {"y": np.array([1.0, np.inf])})


def test_check_limits_are_inclusive():
    at_limit = Comparison(max_abs=1.0, max_rel=1e-3, cosine=0.999, pearson=0.999, top1_agreement=None)
    check(at_limit, Tolerance(max_rel=1e-3, min_cosine=0.999), "stage")  # equal to the limits: passes
    check(at_limit, Tolerance(max_rel=1e-3), "stage")  # no cosine limit
    check(at_limit, Tolerance(min_cosine=0.999), "stage")  # no relative limit
    check(at_limit, Tolerance(), "stage")
    with pytest.raises(EnginesmithError, match=r"export changed the outputs beyond tolerance: relative error 0.001 > 0.0009"):
        check(at_limit, Tolerance(max_rel=9e-4), "export")
    with pytest.raises(EnginesmithError, match=r"int8 changed the outputs beyond tolerance: cosine 0.99900 < 0.9991"):
        check(at_limit, Tolerance(min_cosine=0.9991), "int8")


def test_summary_and_dict():
    c = Comparison(max_abs=0.5, max_rel=0.25, cosine=0.9, pearson=0.8, top1_agreement=0.75)
    assert c.summary() == "max|Δ| 0.5 (rel 0.25), cosine 0.900000, top-1 agreement 75.0%"
    assert Comparison(0.5, 0.25, 0.9, 0.8, None).summary() == "max|Δ| 0.5 (rel 0.25), cosine 0.900000"
    assert c.to_dict() == {"max_abs": 0.5, "max_rel": 0.25, "cosine": 0.9, "pearson": 0.8, "top1_agreement": 0.75}
