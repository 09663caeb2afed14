"""classification_samples: class folders, detection-set object crops (hand-computed), the built-in digits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from enginesmith.data.classification import ClassificationSet, classification_samples
from enginesmith.errors import EnginesmithError


def _png(path: Path, value: int, size: tuple[int, int] = (12, 10)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[1], size[0], 3), value, np.uint8)).save(path)


def test_class_folders(tmp_path: Path) -> None:
    root = tmp_path / "flat"
    for cls, files in {"zebra": ["b.png", "a.jpg"], "apple": ["x.png"], "mango": ["sub/c.png", "d.png"]}.items():
        for f in files:
            _png(root / cls / f, 10)
    (root / "apple" / "notes.txt").write_text("not an image")
    cs = classification_samples(root, "test")  # no split folders: split ignored
    assert cs.class_names == ("apple", "mango", "zebra")
    assert [p.relative_to(root).as_posix() for p in cs.images] == [
        "apple/x.png", "mango/d.png", "mango/sub/c.png", "zebra/a.jpg", "zebra/b.png"]
    assert cs.labels.tolist() == [0, 1, 1, 2, 2] and cs.labels.dtype == np.int64
    assert cs.load_image(0).shape == (10, 12, 3)


def test_class_folders_with_split_folders(tmp_path: Path) -> None:
    root = tmp_path / "imagenet"
    _png(root / "train" / "n01" / "t.png", 1)
    _png(root / "val" / "n01" / "v1.png", 2)
    _png(root / "val" / "n02" / "v2.png", 3)
    cs = classification_samples(root, "val")
    assert cs.class_names == ("n01", "n02") and len(cs) == 2 and cs.load_image(1)[0, 0, 0] == 3
    with pytest.raises(EnginesmithError, match="no test/"):
        classification_samples(root, "test")


def test_class_folder_errors(tmp_path: Path) -> None:
    (tmp_path / "nothing").mkdir()
    with pytest.raises(EnginesmithError, match="no class folders"):
        classification_samples(tmp_path / "nothing", "val")
    _png(tmp_path / "one" / "a" / "x.png", 5)
    (tmp_path / "one" / "empty").mkdir()
    with pytest.raises(EnginesmithError, match="empty holds no images"):
        classification_samples(tmp_path / "one", "val")
    with pytest.raises(EnginesmithError, match="not found"):
        classification_samples(tmp_path / "absent", "val")


def test_detection_crops_known_answer(tmp_path: Path) -> None:
    root = tmp_path / "voc"
    img = np.zeros((80, 100, 3), np.uint8)
    img[20:60, 10:30] = 200  # object 1: box x1,y1,x2,y2 = 10,20,30,60
    (root / "JPEGImages").mkdir(parents=True)
    Image.fromarray(img).save(root / "JPEGImages" / "a.png")
    (root / "Annotations").mkdir()
    (root / "Annotations" / "a.xml").write_text(
        "<annotation><filename>a.png</filename><size><width>100</width><height>80</height></size>"
        "<object><name>star</name><bndbox><xmin>11</xmin><ymin>21</ymin><xmax>30</xmax><ymax>60</ymax></bndbox></object>"
        "<object><name>ring</name><difficult>1</difficult><bndbox><xmin>50</xmin><ymin>5</ymin><xmax>60</xmax>"
        "<ymax>15</ymax></bndbox></object>"
        "<object><name>ring</name><bndbox><xmin>91</xmin><ymin>1</ymin><xmax>100</xmax><ymax>4</ymax></bndbox></object>"
        "</annotation>")
    (root / "ImageSets" / "Main").mkdir(parents=True)
    (root / "ImageSets" / "Main" / "test.txt").write_text("a\n")
    (root / "classes.txt").write_text("star\nring\n")
    cs = classification_samples(root, "test")
    assert cs.class_names == ("star", "ring") and cs.labels.tolist() == [0, 1]  # the difficult ring is left out
    # box 10,20,30,60 (20 x 40) + 10% a side = 2 px and 4 px -> x 8..32, y 16..64
    np.testing.assert_array_equal(cs.images[0], img[16:64, 8:32])
    # box 90,0,100,4 (10 x 4): margins max(1, 1.0) and max(1, 0.4) = 1 px, clipped -> x 89..100, y 0..5
    np.testing.assert_array_equal(cs.images[1], img[0:5, 89:100])


def test_offline_set_crops(tmp_path: Path) -> None:
    from enginesmith.data.offline_detection import generate_offline_dataset
    from enginesmith.data.voc import read_voc

    out = generate_offline_dataset(tmp_path / "off", images=6, seed=1)
    cs = classification_samples(out, "train")
    ds = read_voc(out, "train")
    expected = np.concatenate([s.labels[~s.difficult] for s in ds.samples])
    assert cs.labels.tolist() == expected.tolist() and len(cs.class_names) == 16
    assert all(isinstance(im, np.ndarray) and im.ndim == 3 and im.shape[2] == 3 and im.dtype == np.uint8 for im in cs.images)


def test_builtin_digits() -> None:
    from sklearn.datasets import load_digits

    train, test = classification_samples("digits", "train"), classification_samples("digits", "test")
    assert isinstance(train, ClassificationSet) and (len(train), len(test)) == (1437, 360)
    assert train.class_names == tuple(str(i) for i in range(10))
    assert train.images[0].shape == (32, 32, 3) and train.images[0].dtype == np.uint8
    # stratified: each digit's share of the test split matches its share of scikit-learn's 1,797
    counts = np.bincount(load_digits().target, minlength=10)
    assert np.abs(np.bincount(test.labels, minlength=10) - counts * 0.2).max() <= 1
    assert np.array_equal(np.bincount(train.labels, minlength=10) + np.bincount(test.labels, minlength=10), counts)
    assert len(classification_samples("digits", "val")) == 360 and len(classification_samples(Path("digits"))) == 360
    with pytest.raises(EnginesmithError, match="splits train and test"):
        classification_samples("digits", "holdout")
