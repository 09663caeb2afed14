"""Region proposals (runtime/proposals.py) and R-CNN's region warp / box coding (runtime/region_warp.py).

Real parts: OpenCV's selective search on a real photo (skimage's astronaut), Pillow's warp checked against a
naive per-pixel bilinear sampler and against painted geometry."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest

from enginesmith.errors import EnginesmithError
from enginesmith.runtime import proposals as P
from enginesmith.runtime.preprocess import PreprocessSpec, normalize_channels
from enginesmith.runtime.region_warp import context_pad, decode_deltas, dilate_boxes, encode_targets, mean_pixel, warp_regions

IMAGENET = PreprocessSpec(input_size=(64, 64), mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))


def _photo(size: int | None = None) -> np.ndarray:
    from PIL import Image
    from skimage import data

    img = data.astronaut()
    return img if size is None else np.asarray(Image.fromarray(img).resize((size, size), Image.BILINEAR))


# -- region_warp ------------------------------------------------------------------------------------------
def naive_bilinear(image: np.ndarray, box: np.ndarray, size: int) -> np.ndarray:
    """Sample `box` (x1y1x2y2, continuous px) onto size x size by textbook bilinear interpolation at pixel
    centres, edge pixels repeated (what Pillow's BILINEAR does when enlarging)."""
    h, w = image.shape[:2]
    img = image.astype(np.float64)
    out = np.zeros((size, size, 3))
    x1, y1, x2, y2 = (float(v) for v in box)
    for v in range(size):
        sy = y1 + (v + 0.5) * (y2 - y1) / size - 0.5
        for u in range(size):
            sx = x1 + (u + 0.5) * (x2 - x1) / size - 0.5
            x0, y0 = int(np.floor(sx)), int(np.floor(sy))
            fx, fy = sx - x0, sy - y0
            xa, xb = min(max(x0, 0), w - 1), min(max(x0 + 1, 0), w - 1)
            ya, yb = min(max(y0, 0), h - 1), min(max(y0 + 1, 0), h - 1)
            out[v, u] = ((1 - fy) * ((1 - fx) * img[ya, xa] + fx * img[ya, xb])
                         + fy * ((1 - fx) * img[yb, xa] + fx * img[yb, xb]))
    return out


def test_warp_matches_naive_bilinear_when_enlarging() -> None:
    img = _photo(160)
    size = 64
    pad = context_pad(size)
    boxes = np.array([[40.0, 50.0, 70.0, 75.0], [60.3, 20.7, 90.1, 61.9], [100.0, 100.0, 112.0, 140.0]], np.float32)
    crops = warp_regions(img, boxes, size, pad, mean_pixel(IMAGENET))
    assert crops.shape == (3, size, size, 3) and crops.dtype == np.uint8
    for crop, dil in zip(crops, dilate_boxes(boxes, size, pad)):
        assert dil[0] >= 0 and dil[1] >= 0 and dil[2] <= 160 and dil[3] <= 160  # all inside: one resize of the box
        ref = naive_bilinear(img, dil, size)
        assert np.abs(crop.astype(np.float64) - ref).max() <= 1.0 + 1e-9


def test_warp_geometry_box_lands_on_the_central_square() -> None:
    """A box painted in one colour becomes the central (size - 2 pad) square of its crop, the context the rest."""
    size = 64
    pad = context_pad(size)  # 4.51 px at 64
    img = np.zeros((200, 300, 3), np.uint8)
    img[:] = (10, 200, 30)
    box = np.array([[100.0, 60.0, 180.0, 140.0]], np.float32)
    img[60:140, 100:180] = (250, 20, 120)
    crop = warp_regions(img, box, size, pad, (0, 0, 0))[0].astype(int)
    inner = int(np.ceil(pad)) + 1
    assert (crop[inner : size - inner, inner : size - inner] == (250, 20, 120)).all()
    ring = np.ones((size, size), bool)
    outer = int(np.floor(pad)) - 1
    ring[outer : size - outer, outer : size - outer] = False
    assert (crop[ring] == (10, 200, 30)).all()
    # the dilated box keeps the box's centre and grows it by size / (size - 2 pad)
    d = dilate_boxes(box, size, pad)[0]
    assert np.allclose((d[:2] + d[2:]) / 2, (140, 100)) and np.isclose(d[2] - d[0], 80 * size / (size - 2 * pad))


def test_warp_fills_outside_the_image_with_the_mean_pixel() -> None:
    size = 64
    img = np.full((100, 100, 3), 255, np.uint8)
    fill = mean_pixel(IMAGENET)
    assert fill == (124, 116, 104)
    crops = warp_regions(img, np.array([[0, 0, 20, 40], [80, 80, 100, 100]], np.float32), size, context_pad(size), fill)
    # box at the top-left corner: the left/top context lies outside the image
    a = crops[0]
    assert (a[:, :3] == fill).all() and (a[:3, :] == fill).all() and (a[8:-8, 8:-8] == 255).all()
    b = crops[1]
    assert (b[:, -3:] == fill).all() and (b[-3:, :] == fill).all() and (b[8:-8, 8:-8] == 255).all()
    # normalised, the fill is ~0 in every channel
    x = normalize_channels(crops, IMAGENET)
    assert x.shape == (2, 3, size, size) and x.dtype == np.float32
    assert np.abs(x[0, :, :, :3]).max() < 0.01
    # a box wholly outside the image: all fill, no error
    c = warp_regions(img, np.array([[300, 300, 320, 330]], np.float32), size, context_pad(size), fill)
    assert (c == fill).all()


def test_normalize_channels_on_crops_is_the_spec_formula() -> None:
    rng = np.random.default_rng(0)
    crops = rng.integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    x = normalize_channels(crops, IMAGENET)
    mean, std = np.array(IMAGENET.mean, np.float32), np.array(IMAGENET.std, np.float32)
    ref = ((crops.astype(np.float32) / 255 - mean) / std).transpose(0, 3, 1, 2)
    assert np.allclose(x, ref, atol=1e-5)
    bgr = normalize_channels(crops, PreprocessSpec(input_size=(16, 16), color="BGR"))
    assert np.allclose(bgr[:, 0], crops[..., 2] / 255.0, atol=1e-6)


def test_decode_inverts_encode() -> None:
    rng = np.random.default_rng(1)
    p = rng.uniform(0, 300, (200, 2)).astype(np.float32)
    p = np.concatenate([p, p + rng.uniform(3, 200, (200, 2)).astype(np.float32)], 1)
    g = rng.uniform(0, 300, (200, 2)).astype(np.float32)
    g = np.concatenate([g, g + rng.uniform(3, 200, (200, 2)).astype(np.float32)], 1)
    t = encode_targets(p, g)
    boxes = decode_deltas(p, np.repeat(t[:, None], 3, 1), 1000.0, 1000.0)  # nothing clipped
    assert boxes.shape == (200, 3, 4)
    for c in range(3):
        assert np.allclose(boxes[:, c], g, atol=2e-3)
    assert np.allclose(encode_targets(p, p), 0, atol=1e-6)
    # the decoded boxes are clipped to the image
    clipped = decode_deltas(p, np.repeat(t[:, None], 1, 1), 250.0, 120.0)
    assert clipped[..., 0::2].max() <= 250 and clipped[..., 1::2].max() <= 120 and clipped.min() >= 0


# -- proposals --------------------------------------------------------------------------------------------
def test_selective_search_on_a_photo() -> None:
    img = _photo(160)
    fast = P.selective_search(img, "fast", 10**6)
    assert fast.dtype == np.float32 and fast.ndim == 2 and fast.shape[1] == 4 and len(fast) > 100
    assert (fast[:, 0] >= 0).all() and (fast[:, 1] >= 0).all() and (fast[:, 2] <= 160).all() and (fast[:, 3] <= 160).all()
    assert ((fast[:, 2] - fast[:, 0]) >= 2).all() and ((fast[:, 3] - fast[:, 1]) >= 2).all()
    assert len(np.unique(fast, axis=0)) == len(fast)
    # OpenCV ranks with rand(): the order varies run to run, the set does not
    again = P.selective_search(img, "fast", 10**6)
    assert np.array_equal(np.unique(again, axis=0), np.unique(fast, axis=0))
    capped = P.selective_search(img, "fast", 50)
    assert capped.shape == (50, 4)
    assert {tuple(b) for b in capped.tolist()} <= {tuple(b) for b in fast.tolist()}
    quality = P.selective_search(img, "quality", 10**6)
    assert len(quality) > len(fast)


def test_selective_search_refuses_bad_input() -> None:
    img = _photo(64)
    with pytest.raises(EnginesmithError, match="mode"):
        P.selective_search(img, "best")
    with pytest.raises(EnginesmithError, match="at least 1"):
        P.selective_search(img, "fast", 0)
    with pytest.raises(EnginesmithError, match="uint8"):
        P.selective_search(img.astype(np.float32))
    with pytest.raises(EnginesmithError, match="HxWx3"):
        P.selective_search(img[:, :, 0])


def test_missing_ximgproc_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    img = _photo(64)
    monkeypatch.setitem(sys.modules, "cv2", types.SimpleNamespace(__version__="4.99.0"))  # plain opencv: no contrib
    with pytest.raises(EnginesmithError) as e:
        P.selective_search(img)
    msg = str(e.value)
    assert "\n" not in msg and "opencv-contrib-python-headless" in msg and "4.99.0" in msg
    monkeypatch.setitem(sys.modules, "cv2", None)  # no OpenCV at all: `import cv2` raises ImportError
    with pytest.raises(EnginesmithError) as e:
        P.selective_search(img)
    assert "\n" not in str(e.value) and "opencv-contrib-python-headless" in str(e.value)


def test_clean_proposals_clips_drops_and_keeps_order() -> None:
    b = np.array([[-5, -5, 30, 40], [10, 10, 11, 50], [0, 0, 30, 40], [20, 20, 500, 90], [5, 5, 25, 25]], np.float32)
    out = P.clean_proposals(b, 100, 80)
    # [-5,-5,30,40] clips to [0,0,30,40] and the later exact duplicate goes; the 1 px wide box goes
    assert out.tolist() == [[0, 0, 30, 40], [20, 20, 100, 80], [5, 5, 25, 25]]
    assert P.clean_proposals(b, 100, 80, max_proposals=2).tolist() == [[0, 0, 30, 40], [20, 20, 100, 80]]
    assert P.clean_proposals(np.zeros((0, 4)), 10, 10).shape == (0, 4)


@pytest.mark.parametrize("bad, match", [
    (np.zeros((3, 5)), r"\[P, 4\]"), (np.zeros(4), r"\[P, 4\]"), (np.zeros((2, 2, 4)), r"\[P, 4\]"),
    (np.array([[0, 0, np.nan, 4]]), "NaN"), (np.array([[10, 10, 5, 20]]), "x2 >= x1"),
    (np.array([["a", "b", "c", "d"]]), "numbers"),
])
def test_check_proposals_refuses(bad: np.ndarray, match: str) -> None:
    with pytest.raises(EnginesmithError, match=match) as e:
        P.check_proposals(bad)
    assert "\n" not in str(e.value)


@pytest.mark.filterwarnings("ignore:loadtxt")  # numpy warns on the empty file (reported to the lead)
def test_load_proposals_files(tmp_path) -> None:
    boxes = np.array([[1, 2, 30, 40], [5, 5, 9, 9.5]], np.float32)
    np.save(tmp_path / "p.npy", boxes)
    np.savetxt(tmp_path / "p.txt", boxes)
    np.savetxt(tmp_path / "p.csv", boxes, delimiter=",")
    for name in ("p.npy", "p.txt", "p.csv"):
        got = P.load_proposals(tmp_path / name)
        assert got.dtype == np.float32 and np.allclose(got, boxes)
    (tmp_path / "one.txt").write_text("1 2 3 4\n")
    assert P.load_proposals(tmp_path / "one.txt").shape == (1, 4)
    (tmp_path / "empty.txt").write_text("")
    assert P.load_proposals(tmp_path / "empty.txt").shape == (0, 4)
    np.save(tmp_path / "wrong.npy", np.zeros((7, 5), np.float32))
    (tmp_path / "junk.txt").write_text("1 2 three 4\n")
    for name, match in [("wrong.npy", r"\[P, 4\].*\[7, 5\]"), ("junk.txt", "cannot read"), ("absent.npy", "not found")]:
        with pytest.raises(EnginesmithError, match=match) as e:
            P.load_proposals(tmp_path / name)
        assert "\n" not in str(e.value)
