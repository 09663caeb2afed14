"""runtime/images.py: every accepted image form becomes (H, W, 3) uint8 RGB by the stated rule, checked
against independent computations (Pillow's own conversions, hand-written expectations)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from enginesmith.errors import EnginesmithError
from enginesmith.runtime.images import from_uint16, read_image_file, to_rgb


@pytest.fixture(scope="module")
def rgb() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (23, 31, 3), dtype=np.uint8)


def test_rgb_array_unchanged_and_bgr_reversed(rgb):
    assert np.array_equal(to_rgb(rgb), rgb)
    assert np.array_equal(to_rgb(np.ascontiguousarray(rgb[:, :, ::-1]), channels="BGR"), rgb)
    out = to_rgb(rgb)
    assert out.dtype == np.uint8 and out.flags.c_contiguous


def test_gray_is_replicated(rgb):
    gray = rgb[:, :, 0]
    for g in (gray, gray[:, :, None]):
        out = to_rgb(g)
        assert out.shape == (23, 31, 3) and all(np.array_equal(out[:, :, c], gray) for c in range(3))


def test_alpha_is_dropped_for_arrays_and_pil(rgb):
    alpha = np.random.default_rng(1).integers(0, 256, (23, 31, 1), dtype=np.uint8)
    rgba = np.concatenate([rgb, alpha], axis=2)
    assert np.array_equal(to_rgb(rgba), rgb)
    bgra = np.concatenate([rgb[:, :, ::-1], alpha], axis=2)
    assert np.array_equal(to_rgb(bgra, channels="BGR"), rgb)
    assert np.array_equal(to_rgb(Image.fromarray(rgba, "RGBA")), rgb)  # same rule for PIL RGBA


def test_sixteen_bit_rule():
    v = np.array([[0, 1, 128, 129, 257, 32896, 65534, 65535]], dtype=np.uint16)
    expected = np.array([[0, 0, 0, 1, 1, 128, 255, 255]], dtype=np.uint8)  # round(v / 257)
    assert np.array_equal(from_uint16(v), expected)
    out = to_rgb(v)
    assert np.array_equal(out[:, :, 0], expected) and np.array_equal(out[:, :, 2], expected)
    rgb16 = np.stack([v, v[:, ::-1], v], axis=2)
    assert np.array_equal(to_rgb(rgb16)[:, :, 1], expected[:, ::-1])


def test_sixteen_bit_png_file_and_pil_mode(tmp_path):
    ramp = (np.arange(64 * 8, dtype=np.uint32) * 128).reshape(8, 64).clip(0, 65535).astype(np.uint16)
    path = tmp_path / "gray16.png"
    Image.fromarray(ramp).save(path)
    with Image.open(path) as im:
        assert im.mode.startswith("I")  # Pillow reads a 16-bit PNG as I;16 or I
    got = read_image_file(path)
    assert got.shape == (8, 64, 3)
    assert np.array_equal(got[:, :, 0], np.rint(ramp / 257.0).astype(np.uint8))


def test_pil_modes_match_pillow_conversion(rgb):
    im = Image.fromarray(rgb)
    for mode in ("L", "P", "CMYK", "YCbCr", "LA", "1"):
        converted = im.convert(mode)
        assert np.array_equal(to_rgb(converted), np.asarray(converted.convert("RGB"))), mode


def test_path_and_str_and_pil_agree(tmp_path, rgb):
    path = tmp_path / "x.png"
    Image.fromarray(rgb).save(path)
    assert np.array_equal(to_rgb(path), rgb) and np.array_equal(to_rgb(str(path)), rgb)
    assert np.array_equal(to_rgb(Image.open(path)), rgb)


@pytest.mark.parametrize("bad, words", [
    (np.zeros((4, 4, 3), np.float32), "float32"),
    (np.zeros((4, 4, 2), np.uint8), "shape"),
    (np.zeros((2, 4, 4, 3), np.uint8), "shape"),
    (np.zeros((0, 4, 3), np.uint8), "empty"),
    ([[1, 2], [3, 4]], "list"),
])
def test_refused_arrays_say_why(bad, words):
    with pytest.raises(EnginesmithError, match=words) as e:
        to_rgb(bad)
    assert "\n" not in str(e.value)


def test_undecodable_and_missing_files_are_one_line_errors(tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    with pytest.raises(EnginesmithError, match="cannot decode image .*broken.jpg") as e:
        to_rgb(bad)
    assert "\n" not in str(e.value)
    truncated = tmp_path / "truncated.png"
    Image.fromarray(np.zeros((64, 64, 3), np.uint8) + 7).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:60])
    with pytest.raises(EnginesmithError, match="cannot decode image"):
        to_rgb(truncated)
    with pytest.raises(EnginesmithError, match="image not found"):
        to_rgb(tmp_path / "nope.png")
    with pytest.raises(EnginesmithError, match="BGR"):
        to_rgb(np.zeros((4, 4, 3), np.uint8), channels="HSV")  # type: ignore[arg-type]
