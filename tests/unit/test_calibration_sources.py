"""Calibration image sources: built-in photos, folders, batches (real files, no network)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from enginesmith.calibration.sources import calibration_batches, calibration_source
from enginesmith.data.image_folder import list_images
from enginesmith.data.offline_photos import PHOTO_FILES, offline_photos, photo_fingerprint
from enginesmith.errors import EnginesmithError
from enginesmith.runtime.preprocess import PreprocessSpec


def test_offline_photos_are_real_deterministic_rgb():
    a = list(offline_photos(20, seed=0))
    b = list(offline_photos(20, seed=0))
    c = list(offline_photos(20, seed=1))
    assert len(a) == 20
    for im in a:
        assert im.dtype == np.uint8 and im.ndim == 3 and im.shape[2] == 3 and min(im.shape[:2]) >= 8
        assert im.std() > 5  # a photograph, not a flat fill
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(x.shape == y.shape and np.array_equal(x, y) for x, y in zip(a, c))
    assert len({im.tobytes()[:4096] for im in a}) == 20  # augmented copies differ from their base
    assert len(PHOTO_FILES) >= 10


def test_photo_fingerprint_keys_on_n_and_seed():
    assert photo_fingerprint(10, 0) == photo_fingerprint(10, 0)
    assert len({photo_fingerprint(10, 0), photo_fingerprint(11, 0), photo_fingerprint(10, 1)}) == 3


def _write(path, seed, size=(40, 30)):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path)


def test_list_images_sorted_recursive_and_errors(tmp_path):
    with pytest.raises(EnginesmithError, match="calibration folder not found"):
        list_images(tmp_path / "nope")
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(EnginesmithError, match="not a folder"):
        list_images(tmp_path / "f.txt")
    with pytest.raises(EnginesmithError, match="no images .* omit --calib"):
        list_images(tmp_path)
    _write(tmp_path / "b.png", 1)
    _write(tmp_path / "a" / "z.JPG", 2)
    _write(tmp_path / "c.bmp", 3)
    names = [p.relative_to(tmp_path).as_posix() for p in list_images(tmp_path)]
    assert names == ["a/z.JPG", "b.png", "c.bmp"]


def test_folder_source_fewer_images_warns_and_fingerprint_tracks_bytes(tmp_path):
    for i in range(3):
        _write(tmp_path / f"{i}.png", i)
    src = calibration_source(tmp_path, "photos", size=5)
    assert len(src) == 3 and src.warning and "fewer" in src.warning
    fp = src.fingerprint()
    assert [im.shape for im in src.images()] == [(30, 40, 3)] * 3
    assert len(list(src.images())) == 3  # re-iterable
    two = calibration_source(tmp_path, "photos", size=2)
    assert len(two) == 2 and two.warning is None and two.fingerprint() != fp
    _write(tmp_path / "1.png", 99)
    assert calibration_source(tmp_path, "photos", size=5).fingerprint() != fp


def test_unreadable_image_names_the_file(tmp_path):
    _write(tmp_path / "good.png", 0)
    (tmp_path / "zbad.jpg").write_bytes(b"not a jpeg")
    src = calibration_source(tmp_path, "photos", size=10)
    with pytest.raises(EnginesmithError, match="zbad.jpg"):
        list(src.images())


def test_photos_source_and_batches():
    src = calibration_source(None, "photos", size=10, seed=0)
    assert len(src) == 10 and src.fingerprint() == photo_fingerprint(10, 0)
    spec = PreprocessSpec((24, 32), resize="letterbox")
    batches = list(calibration_batches(src, spec, batch_size=4))
    assert [b.shape for b in batches] == [(4, 3, 24, 32), (4, 3, 24, 32), (2, 3, 24, 32)]
    assert all(b.dtype == np.float32 for b in batches)
    gray = next(calibration_batches(src, PreprocessSpec((16, 16), color="GRAY"), 3))
    assert gray.shape == (3, 1, 16, 16)


def test_unknown_kind_is_a_clear_error():
    with pytest.raises(EnginesmithError, match="unknown calibration source"):
        calibration_source(None, "imagenet", size=4)


def test_digits_source():
    pytest.importorskip("enginesmith.data.digits")
    src = calibration_source(None, "digits", size=20, seed=0)
    ims = list(src.images())
    assert len(ims) == len(src) == 20
    assert ims[0].shape == (32, 32, 3) and ims[0].dtype == np.uint8
    assert src.fingerprint() == calibration_source(None, "digits", size=20, seed=0).fingerprint()
