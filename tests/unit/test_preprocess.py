"""The numpy preprocessing contract, checked against independent computations."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from enginesmith.errors import EnginesmithError
from enginesmith.runtime.preprocess import PreprocessSpec, load_image, preprocess


def test_letterbox_geometry_and_padding():
    img = np.full((100, 200, 3), 200, dtype=np.uint8)
    spec = PreprocessSpec((64, 64), resize="letterbox", scale=1 / 255, pad_value=114)
    x, t = preprocess(img, spec)
    assert x.shape == (3, 64, 64) and x.dtype == np.float32
    # 200x100 -> 64x32, centred vertically: rows 16..47 are image, others pad
    assert np.allclose(x[:, 16:48, :], 200 / 255, atol=1e-6)
    assert np.allclose(x[:, :16, :], 114 / 255) and np.allclose(x[:, 48:, :], 114 / 255)
    assert (t.ratio_x, t.ratio_y, t.pad_x, t.pad_y) == (0.32, 0.32, 0.0, 16.0)
    box = np.array([[0, 16, 64, 48]], dtype=np.float32)
    assert np.allclose(t.to_original(box), [[0, 0, 200, 100]])


def test_stretch_mean_std_and_bgr_match_pillow_reference():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    spec = PreprocessSpec((20, 30), resize="stretch", color="BGR", scale=1 / 255, mean=(0.1, 0.2, 0.3), std=(0.5, 0.25, 2.0))
    x, _ = preprocess(img, spec)
    ref = np.asarray(Image.fromarray(img).resize((30, 20), Image.BILINEAR)).astype(np.float32)[:, :, ::-1] / 255
    ref = ((ref - [0.1, 0.2, 0.3]) / [0.5, 0.25, 2.0]).transpose(2, 0, 1)
    assert np.allclose(x, ref, atol=1e-5)


@pytest.mark.parametrize("color,mean,std", [("RGB", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
                                            ("BGR", (104.0, 117.0, 123.0), (1.0, 1.0, 1.0)), ("RGB", (0.5,), (0.25,))])
def test_normalisation_is_bit_identical_to_the_per_pixel_float32_formula(color, mean, std):
    """The plane-wise normalising gives exactly what (pixel * scale - mean) / std in float32 gives, pixel by pixel."""
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (41, 29, 3), dtype=np.uint8)
    scale = 1.0 if mean[0] > 1 else 1 / 255
    spec = PreprocessSpec((41, 29), resize="stretch", color=color, scale=scale, mean=mean, std=std)
    x, _ = preprocess(img, spec)
    ref = img.astype(np.float32)[:, :, ::-1] if color == "BGR" else img.astype(np.float32)
    ref = (ref * np.float32(scale) - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    assert x.dtype == np.float32 and x.flags.c_contiguous
    assert np.array_equal(x, ref.transpose(2, 0, 1))


def test_center_crop_and_gray():
    img = np.zeros((300, 400, 3), dtype=np.uint8)
    img[:, 200:] = 255
    spec = PreprocessSpec((224, 224), resize="center_crop", color="GRAY", scale=1 / 255, mean=(0,), std=(1,))
    x, t = preprocess(img, spec)
    assert x.shape == (1, 224, 224)
    # resized to 256 on the short side -> 341x256, crop centre: the edge sits in the middle column
    assert x[0, :, :100].max() < 0.05 and x[0, :, 124:].min() > 0.95
    assert t.pad_y == -16.0


def test_load_image_errors(tmp_path):
    with pytest.raises(EnginesmithError, match="not found"):
        load_image(tmp_path / "nope.jpg")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"garbage")
    with pytest.raises(EnginesmithError, match="bad.png"):
        load_image(bad)


def test_runtime_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, enginesmith.runtime.preprocess; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_to_input_is_the_inverse_of_to_original_inside_the_image():
    import numpy as np

    from enginesmith.runtime.preprocess import PreprocessSpec, preprocess

    image = np.zeros((300, 451, 3), np.uint8)
    for resize in ("stretch", "letterbox"):
        _, t = preprocess(image, PreprocessSpec(input_size=(320, 320), resize=resize))
        boxes = np.array([[10.0, 20.0, 200.0, 290.0], [0.0, 0.0, 451.0, 300.0]], np.float32)
        manual = boxes * [t.ratio_x, t.ratio_y, t.ratio_x, t.ratio_y] + [t.pad_x, t.pad_y, t.pad_x, t.pad_y]
        np.testing.assert_allclose(t.to_input(boxes), manual, rtol=1e-6)
        np.testing.assert_allclose(t.to_original(t.to_input(boxes)), boxes, atol=1e-3)
