"""runtime/preprocess.py's geometry and input handling at the edges, against hand-computed transforms and a
naive per-pixel reference (Pillow's bilinear resize, then the documented formula in float32)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from enginesmith.errors import EnginesmithError
from enginesmith.runtime.preprocess import PreprocessSpec, Transform, preprocess, preprocess_batch


def pil_resize(img: np.ndarray, w: int, h: int) -> np.ndarray:
    return np.asarray(Image.fromarray(img).resize((w, h), Image.BILINEAR))


def transform_tuple(t: Transform):
    return (t.ratio_x, t.ratio_y, t.pad_x, t.pad_y, t.original_size)


def test_letterbox_tall_image_pads_left_and_right():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (200, 50, 3), dtype=np.uint8)  # h 200, w 50 -> 64 x 16, centred: cols 24..39
    x, t = preprocess(img, PreprocessSpec((64, 64), resize="letterbox", scale=1.0, pad_value=7))
    assert transform_tuple(t) == (16 / 50, 64 / 200, 24.0, 0.0, (200, 50))
    expect = np.full((64, 64, 3), 7, np.float32)
    expect[:, 24:40] = pil_resize(img, 16, 64)
    np.testing.assert_array_equal(x, expect.transpose(2, 0, 1))
    # boxes: original -> input adds the left pad; input -> original removes it and clips to the image
    boxes = np.array([[0, 0, 50, 200], [10, 20, 30, 40]])  # integers on purpose: results are fractional
    np.testing.assert_allclose(t.to_input(boxes), [[24, 0, 40, 64], [27.2, 6.4, 33.6, 12.8]], rtol=1e-6)
    inp = np.array([[0, -5, 64, 70], [27.2, 6.4, 33.6, 12.8]])
    np.testing.assert_allclose(t.to_original(inp), [[0, 0, 50, 200], [10, 20, 30, 40]], rtol=1e-5, atol=1e-4)
    assert t.to_input(boxes).dtype == np.float32 and t.to_original(inp).dtype == np.float32


def test_letterbox_keeps_at_least_one_row_and_column():
    img = np.full((1, 300, 3), 255, np.uint8)  # r = 64/300 -> 0.21 rows, kept as 1
    x, t = preprocess(img, PreprocessSpec((64, 64), resize="letterbox", scale=1.0, pad_value=0))
    assert (t.ratio_y, t.pad_y) == (1.0, 31.0)
    assert x[0, 31].min() == 255 and x[0, 30].max() == 0 and x[0, 32].max() == 0
    img = np.full((300, 1, 3), 255, np.uint8)
    x, t = preprocess(img, PreprocessSpec((64, 64), resize="letterbox", scale=1.0, pad_value=0))
    assert (t.ratio_x, t.pad_x) == (1.0, 31.0)
    assert x[0, :, 31].min() == 255 and x[0, :, 30].max() == 0 and x[0, :, 32].max() == 0


def test_stretch_transform_and_clipping():
    img = np.zeros((50, 200, 3), np.uint8)
    _, t = preprocess(img, PreprocessSpec((100, 100), resize="stretch"))
    assert transform_tuple(t) == (0.5, 2.0, 0.0, 0.0, (50, 200))
    out = t.to_original(np.array([[-10.0, -10.0, 150.0, 150.0], [10.0, 20.0, 30.0, 40.0]]))
    np.testing.assert_allclose(out, [[0, 0, 200, 50], [20, 10, 60, 20]])


def test_center_crop_transform_on_a_wide_and_a_tall_image():
    # 300 x 400 (h x w) -> short side 256 (224 / 0.875): 256 x 341, crop 224 at (top 16, left 58)
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)
    x, t = preprocess(img, PreprocessSpec((224, 224), resize="center_crop", scale=1.0))
    assert transform_tuple(t) == (341 / 400, 256 / 300, -58.0, -16.0, (300, 400))
    np.testing.assert_array_equal(x, pil_resize(img, 341, 256)[16:240, 58:282].astype(np.float32).transpose(2, 0, 1))
    # 400 x 300 (tall): 341 x 256, crop at (top 58, left 16)
    img = rng.integers(0, 256, (400, 300, 3), dtype=np.uint8)
    x, t = preprocess(img, PreprocessSpec((224, 224), resize="center_crop", scale=1.0))
    assert transform_tuple(t) == (256 / 300, 341 / 400, -16.0, -58.0, (400, 300))
    np.testing.assert_array_equal(x, pil_resize(img, 256, 341)[58:282, 16:240].astype(np.float32).transpose(2, 0, 1))
    np.testing.assert_allclose(t.to_input(np.array([[0.0, 0.0, 300.0, 400.0]])), [[-16, -58, 240, 283]], atol=1e-4)


def test_gray_is_itu601_luma_in_float32():
    rng = np.random.default_rng(2)
    img = rng.integers(0, 256, (9, 11, 3), dtype=np.uint8)
    spec = PreprocessSpec((9, 11), resize="stretch", color="GRAY", scale=1 / 255, mean=(0.25,), std=(0.5,))
    x, _ = preprocess(img, spec)
    f = img.astype(np.float32)
    luma = f[..., 0] * np.float32(0.299) + f[..., 1] * np.float32(0.587) + f[..., 2] * np.float32(0.114)
    ref = (luma * np.float32(1 / 255) - np.float32(0.25)) / np.float32(0.5)
    assert x.shape == (1, 9, 11) and x.dtype == np.float32
    np.testing.assert_allclose(x[0], ref, rtol=1e-6, atol=1e-6)
    # pure colours give the weights themselves
    prim = np.zeros((1, 3, 3), np.uint8)
    prim[0, 0, 0] = prim[0, 1, 1] = prim[0, 2, 2] = 255
    x, _ = preprocess(prim, PreprocessSpec((1, 3), color="GRAY", scale=1 / 255, mean=(0.0,), std=(1.0,)))
    np.testing.assert_allclose(x[0, 0], [0.299, 0.587, 0.114], rtol=1e-6)


def test_gray_and_rgba_inputs():
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    x, _ = preprocess(gray, PreprocessSpec((3, 4), scale=1.0))
    np.testing.assert_array_equal(x, np.stack([gray, gray, gray]).astype(np.float32))  # repeated into R, G, B
    rgba = np.random.default_rng(3).integers(0, 256, (6, 5, 4), dtype=np.uint8)
    for color in ("RGB", "BGR"):
        x, _ = preprocess(rgba, PreprocessSpec((6, 5), color=color, scale=1.0))
        rgb = rgba[:, :, :3] if color == "RGB" else rgba[:, :, 2::-1]
        np.testing.assert_array_equal(x, rgb.astype(np.float32).transpose(2, 0, 1))  # alpha dropped
    x, _ = preprocess(rgba, PreprocessSpec((4, 4), resize="letterbox", scale=1.0))
    assert x.shape == (3, 4, 4)


@pytest.mark.parametrize("shape", [(4, 4, 2), (4, 4, 5), (4, 4, 1), (2, 4, 4, 3), (4,)])
def test_bad_image_shapes_are_one_line_errors(shape):
    with pytest.raises(EnginesmithError, match=r"expected an image of shape \(H, W, 3\), got \(" + str(shape[0])):
        preprocess(np.zeros(shape, np.uint8), PreprocessSpec((4, 4)))


def test_float_images_are_refused():
    with pytest.raises(EnginesmithError, match="expected a uint8 image, got dtype float32; convert with np.uint8 first"):
        preprocess(np.zeros((4, 4, 3), np.float32), PreprocessSpec((4, 4)))


def test_unknown_resize_mode():
    with pytest.raises(EnginesmithError, match="unknown resize mode 'squash'"):
        preprocess(np.zeros((4, 4, 3), np.uint8), PreprocessSpec((4, 4), resize="squash"))  # type: ignore[arg-type]


def test_batch_stacks_single_images():
    rng = np.random.default_rng(4)
    imgs = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in ((10, 20), (30, 15))]
    spec = PreprocessSpec((8, 8), resize="letterbox")
    out = preprocess_batch(imgs, spec)
    assert out.shape == (2, 3, 8, 8)
    for i, im in enumerate(imgs):
        np.testing.assert_array_equal(out[i], preprocess(im, spec)[0])


def test_spec_dict_round_trip_and_sizes():
    spec = PreprocessSpec((320, 416), resize="letterbox", color="BGR", scale=0.5, mean=(1.0, 2.0, 3.0),
                          std=(4.0, 5.0, 6.0), pad_value=0, crop_fraction=0.9, extra={"note": 1})
    d = spec.to_dict()
    assert d == {"input_size": [320, 416], "resize": "letterbox", "color": "BGR", "scale": 0.5,
                 "mean": [1.0, 2.0, 3.0], "std": [4.0, 5.0, 6.0], "pad_value": 0, "crop_fraction": 0.9}
    back = PreprocessSpec.from_dict(d)
    assert back == spec and back.input_size == (320, 416) and back.mean == (1.0, 2.0, 3.0)
    assert back.std == (4.0, 5.0, 6.0) and back.crop_fraction == 0.9 and back.pad_value == 0
    assert isinstance(back.scale, float) and isinstance(back.pad_value, int)
    old = {k: v for k, v in d.items() if k != "crop_fraction"}  # manifests written before crop_fraction
    assert PreprocessSpec.from_dict(old).crop_fraction == 0.875
    assert spec.with_size(64.0, 32.0).input_size == (64, 32)  # type: ignore[arg-type]
    assert spec.with_size(64, 32).resize == "letterbox" and spec.channels == 3
    assert PreprocessSpec((8, 8), color="GRAY").channels == 1
