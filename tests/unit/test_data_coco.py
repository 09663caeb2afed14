"""COCO reader (hand-written json, hand-converted boxes), writer round trip, bad inputs, open_dataset."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from enginesmith.data.coco import read_coco, write_coco
from enginesmith.data.datasets import open_dataset
from enginesmith.data.detection import DetectionSample
from enginesmith.errors import EnginesmithError


def _image(path: Path, w: int, h: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((h, w, 3), 60, np.uint8)).save(path)


def _coco() -> dict:
    """Category ids with gaps, out of order: 18 dog, 1 person, 3 car -> classes (person, car, dog)."""
    return {
        "info": {"description": "hand made"},
        "images": [
            {"id": 397133, "file_name": "000000397133.jpg", "width": 640, "height": 427},
            {"id": 37777, "file_name": "000000037777.jpg", "width": 352, "height": 230},
            {"id": 5, "file_name": "000000000005.jpg", "width": 64, "height": 48},
        ],
        "annotations": [
            {"id": 1, "image_id": 397133, "category_id": 1, "bbox": [388.66, 69.92, 109.41, 277.62], "iscrowd": 0},
            {"id": 2, "image_id": 37777, "category_id": 18, "bbox": [0, 12.5, 100, 50], "iscrowd": 1},
            {"id": 3, "image_id": 397133, "category_id": 3, "bbox": [0.0, 262.81, 62.16, 36.77]},
            {"id": 4, "image_id": 397133, "category_id": 18, "bbox": [600, 400, 40, 27], "iscrowd": 0},
        ],
        "categories": [{"id": 18, "name": "dog"}, {"id": 1, "name": "person"}, {"id": 3, "name": "car"}],
    }


def _coco_tree(root: Path, layout: str = "coco", data: dict | None = None) -> Path:
    """annotations/instances_val2017.json with images in val2017/ ('coco') or images/ ('images')."""
    data = data or _coco()
    json_path = root / "annotations" / "instances_val2017.json"
    json_path.parent.mkdir(parents=True)
    json_path.write_text(json.dumps(data))
    folder = root / ("val2017" if layout == "coco" else "images")
    for im in data["images"]:
        _image(folder / im["file_name"], im.get("width", 8), im.get("height", 8))
    return json_path


@pytest.mark.parametrize("layout", ["coco", "images"])
def test_hand_written_coco(tmp_path: Path, layout: str) -> None:
    json_path = _coco_tree(tmp_path / "ds", layout)
    ds = read_coco(json_path)
    assert ds.class_names == ("person", "car", "dog")  # sorted category ids 1, 3, 18 -> 0, 1, 2
    assert ds.split == "val2017" and ds.root == tmp_path / "ds"
    assert [s.image_id for s in ds.samples] == ["397133", "37777", "5"]
    folder = tmp_path / "ds" / ("val2017" if layout == "coco" else "images")
    a, b, c = ds.samples
    assert a.image_path == folder / "000000397133.jpg" and (a.width, a.height) == (640, 427)
    # by hand: (x, y, x + w, y + h)
    np.testing.assert_allclose(a.boxes, [[388.66, 69.92, 498.07, 347.54], [0, 262.81, 62.16, 299.58], [600, 400, 640, 427]],
                               rtol=0, atol=1e-4)
    assert a.labels.tolist() == [0, 1, 2] and a.difficult.tolist() == [False, False, False]
    np.testing.assert_allclose(b.boxes, [[0, 12.5, 100, 62.5]])
    assert b.labels.tolist() == [2] and b.difficult.tolist() == [True]  # iscrowd -> difficult
    assert c.boxes.shape == (0, 4)


def test_explicit_image_dir_and_json_beside_images(tmp_path: Path) -> None:
    data = _coco()
    for im in data["images"]:
        _image(tmp_path / "pics" / im["file_name"], im["width"], im["height"])
    (tmp_path / "pics" / "labels.json").write_text(json.dumps(data))
    assert read_coco(tmp_path / "pics" / "labels.json").samples[0].image_path.parent == tmp_path / "pics"
    (tmp_path / "elsewhere.json").write_text(json.dumps(data))
    ds = read_coco(tmp_path / "elsewhere.json", image_dir=tmp_path / "pics")
    assert ds.split == "elsewhere" and len(ds) == 3


def test_writer_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    names = ("a", "b", "c", "d")
    samples = []
    for i in range(6):
        w, h = int(rng.integers(30, 80)), int(rng.integers(30, 80))
        k = int(rng.integers(0, 5))
        xy = rng.uniform(0, 20, (k, 2))
        wh = rng.uniform(1, 10, (k, 2))
        boxes = np.round(np.concatenate([xy, xy + wh], 1), 2).astype(np.float32)
        path = tmp_path / "img" / f"{i:04d}.png"
        _image(path, w, h)
        samples.append(DetectionSample(f"{i:04d}", path, w, h, boxes.reshape(-1, 4),
                                       rng.integers(0, 4, k).astype(np.int64), rng.random(k) < 0.4))
    json_path = write_coco(tmp_path / "annotations" / "instances_rt.json", samples, names)
    raw = json.loads(json_path.read_text())
    assert [c["id"] for c in raw["categories"]] == [1, 2, 3, 4]
    ds = read_coco(json_path, image_dir=tmp_path / "img")
    assert ds.class_names == names and len(ds) == len(samples)
    for s, r in zip(samples, ds.samples):
        assert r.image_id == str(int(s.image_id)) and r.image_path == s.image_path
        np.testing.assert_allclose(r.boxes, s.boxes, atol=2e-3)
        np.testing.assert_array_equal(r.labels, s.labels)
        np.testing.assert_array_equal(r.difficult, s.difficult)


def _mutate(case: str, data: dict) -> None:
    if case == "no_images_key":
        del data["images"]
    elif case == "ann_missing_bbox":
        del data["annotations"][0]["bbox"]
    elif case == "bbox_not_numbers":
        data["annotations"][0]["bbox"] = [1, "2", 3, 4]
    elif case == "bbox_outside":
        data["annotations"][1]["bbox"] = [300, 10, 60, 20]  # x2 = 360 > width 352
    elif case == "bbox_empty":
        data["annotations"][1]["bbox"] = [3, 10, 0, 20]
    elif case == "unknown_image":
        data["annotations"][2]["image_id"] = 999
    elif case == "unknown_category":
        data["annotations"][2]["category_id"] = 2
    elif case == "image_without_size":
        del data["images"][1]["height"]
    elif case == "duplicate_category":
        data["categories"].append({"id": 3, "name": "car2"})


BAD = {
    "no_images_key": "missing list 'images'",
    "ann_missing_bbox": "annotations\\[0\\] bbox",
    "bbox_not_numbers": "not \\[x, y, w, h\\] numbers",
    "bbox_outside": "outside the 352x230 image",
    "bbox_empty": "empty box",
    "unknown_image": "unknown image id 999",
    "unknown_category": "unknown category id 2",
    "image_without_size": "images\\[1\\] has no 'height'",
    "duplicate_category": "category id 3 appears twice",
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_json_content(tmp_path: Path, case: str) -> None:
    data = _coco()
    _mutate(case, data)
    json_path = _coco_tree(tmp_path / "ds", data=data) if case != "no_images_key" else tmp_path / "x.json"
    if case == "no_images_key":
        json_path.write_text(json.dumps(data))
    with pytest.raises(EnginesmithError) as e:
        read_coco(json_path)
    msg = str(e.value)
    assert json_path.name in msg and re.search(BAD[case], msg) and "\n" not in msg, msg


def test_bad_json_file_and_missing_images(tmp_path: Path) -> None:
    bad = tmp_path / "broken.json"
    bad.write_text('{"images": [')
    with pytest.raises(EnginesmithError, match="malformed COCO json .*broken.json"):
        read_coco(bad)
    with pytest.raises(EnginesmithError, match="not found: .*absent.json"):
        read_coco(tmp_path / "absent.json")
    json_path = _coco_tree(tmp_path / "ds")
    (tmp_path / "ds" / "val2017" / "000000037777.jpg").unlink()
    with pytest.raises(EnginesmithError, match=r"000000037777\.jpg .*instances_val2017\.json.* not found"):
        read_coco(json_path)
    (tmp_path / "ds" / "val2017" / "000000397133.jpg").unlink()  # the first image: no folder has it
    with pytest.raises(EnginesmithError, match="cannot find the images of .*instances_val2017.json"):
        read_coco(json_path)


def _voc_folder(root: Path) -> None:
    (root / "Annotations").mkdir(parents=True)
    (root / "ImageSets" / "Main").mkdir(parents=True)
    _image(root / "JPEGImages" / "x.jpg", 40, 30)
    (root / "Annotations" / "x.xml").write_text(
        "<annotation><filename>x.jpg</filename><size><width>40</width><height>30</height></size><object><name>cat"
        "</name><bndbox><xmin>3</xmin><ymin>4</ymin><xmax>20</xmax><ymax>30</ymax></bndbox></object></annotation>")
    (root / "ImageSets" / "Main" / "val.txt").write_text("x\n")


def test_open_dataset_picks_the_layout(tmp_path: Path) -> None:
    _voc_folder(tmp_path / "voc")
    ds = open_dataset(tmp_path / "voc", "val")
    assert ds.split == "val" and ds.class_names[ds[0].labels[0]] == "cat"
    np.testing.assert_array_equal(ds[0].boxes, [[2, 3, 20, 30]])

    json_path = _coco_tree(tmp_path / "coco")
    assert open_dataset(json_path).class_names == ("person", "car", "dog")
    ds = open_dataset(tmp_path / "coco", "val2017")  # a folder with annotations/instances_val2017.json
    assert ds.split == "val2017" and len(ds) == 3

    (tmp_path / "neither").mkdir()
    for target, says in [(tmp_path / "neither", "VOC-style folder with Annotations/.*COCO folder with annotations/"),
                         (tmp_path / "missing", "dataset not found"),
                         (tmp_path / "coco" / "val2017" / "000000000005.jpg", "not a dataset")]:
        with pytest.raises(EnginesmithError, match=says):
            open_dataset(target, "val2017")
    with pytest.raises(EnginesmithError, match="test.txt"):  # a VOC folder without that split
        open_dataset(tmp_path / "voc")
