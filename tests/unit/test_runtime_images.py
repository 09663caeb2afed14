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


# ----------------------------------------------------------------------------- decode_image_bytes, bombs
def png_claiming(width: int, height: int) -> bytes:
    """A real, tiny PNG file whose IHDR claims width x height 8-bit RGB (a decompression bomb's header: the
    pixels are never there; Pillow only learns that when it decodes)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + chunk(b"IEND", b""))


def _mode_files(tmp_path, rgb) -> list:
    """Real files in the modes and formats read_image_file handles, written by Pillow."""
    rng = np.random.default_rng(3)
    gray = rgb[:, :, 0]
    alpha = rng.integers(0, 256, gray.shape, dtype=np.uint8)
    files = []

    def save(im: Image.Image, name: str, **kw) -> None:
        path = tmp_path / name
        im.save(path, **kw)
        files.append(path)

    save(Image.fromarray(rgb), "rgb.png")
    save(Image.fromarray(rgb), "rgb.jpg", quality=90)
    save(Image.fromarray(rgb), "rgb.bmp")
    save(Image.fromarray(rgb), "rgb.webp", lossless=True)
    save(Image.fromarray(gray), "gray.png")
    save(Image.fromarray(np.stack([gray, alpha], axis=2), "LA"), "la.png")
    save(Image.fromarray(np.concatenate([rgb, alpha[:, :, None]], axis=2), "RGBA"), "rgba.png")
    save(Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=16), "palette.png",
         transparency=0)
    save(Image.fromarray(gray > 128), "bilevel.png")
    save(Image.fromarray(rgb).convert("CMYK"), "cmyk.jpg")
    save(Image.fromarray(gray.astype(np.uint16) * 256), "gray16.png")
    save(Image.fromarray(rgb), "rgb.tif")
    return files


def test_decode_image_bytes_matches_read_image_file(tmp_path, rgb):
    from enginesmith.runtime.images import decode_image_bytes

    for path in _mode_files(tmp_path, rgb):
        from_file = read_image_file(path)
        from_bytes = decode_image_bytes(path.read_bytes(), str(path))
        assert from_file.shape == (23, 31, 3) and from_file.dtype == np.uint8, path.name
        assert np.array_equal(from_bytes, from_file), path.name
    # and the rule itself, for one file per family: gray replicated, alpha dropped, 16-bit divided by 257
    gray = read_image_file(tmp_path / "gray.png")
    assert all(np.array_equal(gray[:, :, c], rgb[:, :, 0]) for c in range(3))
    assert np.array_equal(read_image_file(tmp_path / "rgba.png"), rgb)
    assert np.array_equal(read_image_file(tmp_path / "gray16.png")[:, :, 0],
                          np.rint(rgb[:, :, 0].astype(np.float64) * 256 / 257).astype(np.uint8))


@pytest.mark.parametrize("width, height", [(50000, 50000), (10000, 10000), (200000, 500)])
def test_decompression_bombs_refused_by_path_and_bytes(tmp_path, width, height):
    """50000x50000 is over twice Pillow's limit (its DecompressionBombError), 10000x10000 between the limit and
    twice it (only a DecompressionBombWarning from Pillow); both are one-line refusals, with warnings as errors."""
    import warnings

    from enginesmith.runtime.images import MAX_IMAGE_PIXELS, decode_image_bytes, image_file_size

    data = png_claiming(width, height)
    path = tmp_path / "bomb.png"
    path.write_bytes(data)
    messages = []
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a warning escaping would be an exception here
        for call in (lambda: read_image_file(path), lambda: decode_image_bytes(data, str(path)),
                     lambda: image_file_size(path), lambda: to_rgb(str(path))):
            with pytest.raises(EnginesmithError) as e:
                call()
            messages.append(str(e.value))
    for msg in messages:
        assert str(path) in msg and f"{width * height:,}" in msg and "decompression bomb" in msg and "\n" not in msg
        assert f"{MAX_IMAGE_PIXELS:,}" in msg
    assert width * height > MAX_IMAGE_PIXELS


def test_image_just_under_the_limit_header_is_accepted(tmp_path):
    """The header check is a limit, not a guess: a real 9000x9000 claim (81 MP < 89.5 MP) passes the header check
    (image_file_size), so only a real bomb is refused."""
    from enginesmith.runtime.images import image_file_size

    path = tmp_path / "big.png"
    path.write_bytes(png_claiming(9000, 9000))
    assert image_file_size(path) == (9000, 9000)


@pytest.mark.parametrize("content, words", [(b"", "empty (0 bytes)"), (b"just some text\n", "not an image format"),
                                            (b"\x89PNG\r\n\x1a\n" + b"\0" * 20, "cannot decode image")])
def test_decode_image_bytes_refusals_match_read_image_file(tmp_path, content, words):
    from enginesmith.runtime.images import decode_image_bytes

    path = tmp_path / "bad.png"
    path.write_bytes(content)
    with pytest.raises(EnginesmithError) as by_path:
        read_image_file(path)
    with pytest.raises(EnginesmithError) as by_bytes:
        decode_image_bytes(content, str(path))
    assert str(by_path.value) == str(by_bytes.value)
    assert words in str(by_path.value) and str(path) in str(by_path.value) and "\n" not in str(by_path.value)
