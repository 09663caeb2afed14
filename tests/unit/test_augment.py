"""Augmentation: boxes follow the pixels (checked by finding painted rectangles in the warped image),
the centre-inside rule, no mirror for digits, determinism, and the model's own preprocessing at the end."""

from __future__ import annotations

import numpy as np
import pytest

from enginesmith.runtime.preprocess import PreprocessSpec, preprocess
from enginesmith.training.augment import (Affine, AugmentConfig, apply_affine_boxes, apply_affine_image,
                                          augment_sample, sample_affine, to_input)

COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]
BOXES = np.array([[20, 30, 60, 90], [100, 40, 180, 70], [30, 150, 90, 200], [150, 120, 230, 190]], dtype=np.float32)


def painted(h: int = 240, w: int = 260) -> np.ndarray:
    img = np.zeros((h, w, 3), dtype=np.uint8)
    for (x1, y1, x2, y2), c in zip(BOXES.astype(int), COLOURS):
        img[y1:y2, x1:x2] = c
    return img


def extent(img: np.ndarray, colour, tol: int = 60) -> np.ndarray | None:
    """Tight box (x1, y1, x2, y2, continuous pixels) of the pixels of `colour`, found directly."""
    d = np.abs(img.astype(int) - np.array(colour)).max(-1)
    ys, xs = np.nonzero(d < tol)
    if len(xs) == 0:
        return None
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=np.float32)


@pytest.mark.parametrize("a", [Affine(1.0, 0, 0), Affine(1.3, 12.0, -7.0), Affine(0.7, -20.0, 15.0),
                               Affine(1.1, 5.5, 3.25)])
def test_warped_boxes_match_the_painted_pixels(a) -> None:
    img = painted()
    h, w = img.shape[:2]
    out = apply_affine_image(img, a)
    boxes, labels = apply_affine_boxes(BOXES, np.arange(4), a, h, w)
    assert out.shape == img.shape
    for b, k in zip(boxes, labels):
        found = extent(out, COLOURS[k])
        assert found is not None
        np.testing.assert_allclose(found, b, atol=1.01)


def test_box_transform_by_hand() -> None:
    # 200x100 image, centre (100, 50): s=2, t=(10, -5): x' = 2(x - 100) + 110, y' = 2(y - 50) + 45
    boxes = np.array([[90, 40, 110, 60],     # -> (90, 25, 130, 65): inside
                      [150, 10, 190, 30],    # -> (210, -35, 290, 5): centre x 250 > 200 -> dropped
                      [140, 60, 160, 90]],   # -> (190, 65, 230, 125): centre (210, 95) x > 200 -> dropped
                     dtype=np.float32)
    got, labels = apply_affine_boxes(boxes, np.array([3, 4, 5]), Affine(2.0, 10.0, -5.0), 100, 200)
    np.testing.assert_allclose(got, [[90, 25, 130, 65]])
    assert labels.tolist() == [3]
    # a box whose centre stays inside is clipped to the image
    got, labels = apply_affine_boxes(np.array([[120, 20, 160, 40]], np.float32), np.array([1]),
                                     Affine(2.0, 10.0, -5.0), 100, 200)
    # -> (150, -15, 230, 25): centre (190, 5) inside; clipped to (150, 0, 200, 25)
    np.testing.assert_allclose(got, [[150, 0, 200, 25]])
    # slivers narrower than min_box_px are dropped
    got, _ = apply_affine_boxes(np.array([[10, 10, 11, 30]], np.float32), np.array([0]), Affine(1.0, 0, 0), 100, 200)
    assert len(got) == 0


def test_no_flip_for_digits_and_flip_only_symmetric_classes() -> None:
    rng = np.random.default_rng(0)
    default = [sample_affine(rng, 100, 100, np.array([0, 11]), AugmentConfig()) for _ in range(200)]
    assert not any(a.flip for a in default)
    cfg = AugmentConfig(flip_classes=(10, 11, 15))
    shapes_only = [sample_affine(rng, 100, 100, np.array([10, 15]), cfg).flip for _ in range(200)]
    assert 60 < sum(shapes_only) < 140
    with_digit = [sample_affine(rng, 100, 100, np.array([10, 2]), cfg).flip for _ in range(200)]
    assert not any(with_digit)
    # a mirrored image moves its boxes to W - x
    img = painted()
    a = Affine(1.0, 0.0, 0.0, flip=True)
    out = apply_affine_image(img, a)
    boxes, labels = apply_affine_boxes(BOXES, np.arange(4), a, *img.shape[:2])
    for b, k in zip(boxes, labels):
        np.testing.assert_allclose(extent(out, COLOURS[k]), b, atol=0.01)
    np.testing.assert_allclose(boxes[0], [260 - 60, 30, 260 - 20, 90])


@pytest.mark.parametrize("spec", [
    PreprocessSpec(input_size=(128, 128), resize="letterbox", scale=1 / 255.0),
    PreprocessSpec(input_size=(96, 160), resize="stretch", scale=1 / 255.0, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)),
])
def test_targets_are_in_input_pixels_of_the_models_preprocessing(spec) -> None:
    img = painted()
    cfg = AugmentConfig(brightness=0, contrast=0, saturation=0)
    x, targets = augment_sample(img, BOXES, np.arange(4), spec, np.random.default_rng(7), cfg)
    assert x.shape == (3, *spec.input_size) and x.dtype == np.float32
    # undo the normalisation and find the colours in the network input itself
    pix = (x.transpose(1, 2, 0) * np.array(spec.std) + np.array(spec.mean)) / spec.scale
    pix = np.clip(pix + 0.5, 0, 255).astype(np.uint8)
    assert len(targets) >= 1
    for row in targets:
        found = extent(pix, COLOURS[int(row[0])], tol=80)
        np.testing.assert_allclose(found, row[1:], atol=1.6)


def test_off_is_exactly_the_models_preprocessing() -> None:
    img = painted()
    spec = PreprocessSpec(input_size=(64, 64), resize="letterbox")
    x, targets = augment_sample(img, BOXES, np.arange(4), spec, np.random.default_rng(0), AugmentConfig.off())
    ref, _ = preprocess(img, spec)
    np.testing.assert_array_equal(x, ref)
    # letterbox of 260x240 into 64x64: resized to 64 x round(240 * 64 / 260) = 64 x 59, 2 px pad on top
    np.testing.assert_allclose(targets[:, 1], BOXES[:, 0] * 64 / 260, rtol=1e-6)
    np.testing.assert_allclose(targets[:, 2], BOXES[:, 1] * 59 / 240 + 2, rtol=1e-6)
    np.testing.assert_allclose(targets[:, 4], BOXES[:, 3] * 59 / 240 + 2, rtol=1e-6)


def test_same_seed_same_sample_and_photometric_changes_pixels() -> None:
    img = painted()
    spec = PreprocessSpec(input_size=(64, 64), resize="letterbox")
    a1 = augment_sample(img, BOXES, np.arange(4), spec, np.random.default_rng([1, 2, 3]))
    a2 = augment_sample(img, BOXES, np.arange(4), spec, np.random.default_rng([1, 2, 3]))
    np.testing.assert_array_equal(a1[0], a2[0])
    np.testing.assert_array_equal(a1[1], a2[1])
    a3 = augment_sample(img, BOXES, np.arange(4), spec, np.random.default_rng([1, 2, 4]))
    assert not np.array_equal(a1[0], a3[0])


def test_to_input_without_boxes() -> None:
    x, t = to_input(painted(), np.zeros((0, 4)), np.zeros(0), PreprocessSpec(input_size=(32, 32)))
    assert x.shape == (3, 32, 32) and t.shape == (0, 5)
