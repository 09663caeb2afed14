"""VOC reader: hand-written annotations with hand-converted boxes, a writer round trip, every bad input."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from enginesmith.data.detection import DetectionSample
from enginesmith.data.voc import read_voc, write_class_names, write_image_set, write_voc_annotation
from enginesmith.errors import EnginesmithError
from enginesmith.models.classes import VOC_NAMES


def _xml(filename: str, w: int | str, h: int | str, objects: str) -> str:
    return (f"<annotation><folder>VOC2007</folder><filename>{filename}</filename>"
            f"<size><width>{w}</width><height>{h}</height><depth>3</depth></size>{objects}</annotation>")


def _obj(name: str, xmin, ymin, xmax, ymax, difficult: str | None = "0") -> str:
    diff = f"<difficult>{difficult}</difficult>" if difficult is not None else ""
    return (f"<object><name>{name}</name><pose>Left</pose><truncated>0</truncated>{diff}"
            f"<bndbox><xmin>{xmin}</xmin><ymin>{ymin}</ymin><xmax>{xmax}</xmax><ymax>{ymax}</ymax></bndbox></object>")


def _image(path: Path, w: int, h: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((h, w, 3), 90, np.uint8)).save(path)


def _voc(root: Path, files: dict[str, str], split: str = "test", ids: list[str] | None = None,
         sizes: dict[str, tuple[int, int]] | None = None) -> Path:
    """A VOC folder with the given xml texts (id -> xml) and 'test' split; images sized as `sizes`."""
    (root / "Annotations").mkdir(parents=True)
    for i, text in files.items():
        (root / "Annotations" / f"{i}.xml").write_text(text)
        w, h = (sizes or {}).get(i, (100, 80))
        _image(root / "JPEGImages" / f"{i}.jpg", w, h)
    (root / "ImageSets" / "Main").mkdir(parents=True)
    (root / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{i}\n" for i in (ids or list(files))))
    return root


def test_hand_written_voc(tmp_path: Path) -> None:
    root = _voc(tmp_path / "voc", {
        "000005": _xml("000005.jpg", 500, 375, _obj("chair", 263, 211, 324, 339)
                        + _obj("chair", 165, 264, 253, 372, "1") + _obj("person", 5, 244, 67, 374, None)),
        "000007": _xml("000007.jpg", 500, 333, _obj("car", 141, 50, 500, 330)),
        "000009": _xml("000009.jpg", 500, 375, ""),
    }, sizes={"000005": (500, 375), "000007": (500, 333), "000009": (500, 375)})
    (root / "ImageSets" / "Main" / "test.txt").write_text("000005  1\n000007 -1\n\n000009\n")
    ds = read_voc(root, "test")
    assert ds.class_names == VOC_NAMES and ds.split == "test" and len(ds) == 3
    s = ds[0]
    assert (s.image_id, s.width, s.height) == ("000005", 500, 375)
    assert s.image_path == root / "JPEGImages" / "000005.jpg"
    # by hand: (xmin - 1, ymin - 1, xmax, ymax)
    np.testing.assert_array_equal(s.boxes, [[262, 210, 324, 339], [164, 263, 253, 372], [4, 243, 67, 374]])
    assert s.boxes.dtype == np.float32
    assert s.labels.tolist() == [8, 8, 14]  # chair, chair, person in VOC order
    assert s.difficult.tolist() == [False, True, False]  # missing <difficult> = 0
    np.testing.assert_array_equal(ds[1].boxes, [[140, 49, 500, 330]])
    assert ds[1].labels.tolist() == [6]
    assert ds[2].boxes.shape == (0, 4) and ds[2].labels.shape == (0,)


def test_classes_txt_size_from_image_and_float_coordinates(tmp_path: Path) -> None:
    root = _voc(tmp_path / "voc", {"a": _xml("a.jpg", 0, 0, _obj("ring", "10.5", 3, "20.25", 7) + _obj("dot", 1, 1, 64, 48))},
                sizes={"a": (64, 48)})
    (root / "classes.txt").write_text("dot\nring\n\n")
    ds = read_voc(root, "test")
    assert ds.class_names == ("dot", "ring")
    s = ds[0]
    assert (s.width, s.height) == (64, 48)  # size 0x0 in the xml: read from the image
    np.testing.assert_allclose(s.boxes, [[9.5, 2, 20.25, 7], [0, 0, 64, 48]])
    assert s.labels.tolist() == [1, 0]


def test_writer_round_trip(tmp_path: Path) -> None:
    root = tmp_path / "rt"
    names = ("alpha", "beta", "gamma")
    rng = np.random.default_rng(3)
    samples = []
    for i in range(5):
        w, h = int(rng.integers(40, 90)), int(rng.integers(30, 70))
        k = int(rng.integers(0, 4))
        x1 = rng.integers(0, w // 2, k)
        y1 = rng.integers(0, h // 2, k)
        boxes = np.stack([x1, y1, x1 + rng.integers(1, w // 2, k), y1 + rng.integers(1, h // 2, k)], 1).astype(np.float32)
        path = root / "JPEGImages" / f"im{i}.jpg"
        _image(path, w, h)
        samples.append(DetectionSample(f"im{i}", path, w, h, boxes.reshape(-1, 4), rng.integers(0, 3, k).astype(np.int64),
                                       rng.random(k) < 0.3))
    (root / "Annotations").mkdir()
    for s in samples:
        write_voc_annotation(root / "Annotations" / f"{s.image_id}.xml", s, names)
    write_image_set(root, "val", [s.image_id for s in samples])
    write_class_names(root, names)
    ds = read_voc(root, "val")
    assert ds.class_names == names
    for a, b in zip(samples, ds.samples):
        assert (a.image_id, a.image_path, a.width, a.height) == (b.image_id, b.image_path, b.width, b.height)
        np.testing.assert_array_equal(a.boxes, b.boxes)
        np.testing.assert_array_equal(a.labels, b.labels)
        np.testing.assert_array_equal(a.difficult, b.difficult)
    assert not list(root.rglob(".*.tmp"))


GOOD = _obj("dog", 2, 3, 50, 40)
BAD_CASES = {
    # name: (xml text, the file the message must name, what it must say)
    "malformed_xml": ("<annotation><object>", "000001.xml", "no element found"),
    "missing_field": (_xml("000001.jpg", 100, 80, "<object><name>dog</name><bndbox><xmin>1</xmin><ymin>1</ymin>"
                                                  "<xmax>9</xmax></bndbox></object>"), "000001.xml", "ymax is missing"),
    "non_numeric": (_xml("000001.jpg", 100, 80, _obj("dog", "a1", 1, 9, 9)), "000001.xml", "xmin is not a number"),
    "no_bndbox": (_xml("000001.jpg", 100, 80, "<object><name>dog</name></object>"), "000001.xml", "no <bndbox>"),
    "unknown_class": (_xml("000001.jpg", 100, 80, _obj("unicorn", 1, 1, 9, 9)), "000001.xml", "unknown class .unicorn"),
    "outside_right": (_xml("000001.jpg", 100, 80, _obj("dog", 1, 1, 102, 9)), "000001.xml", "outside the 100x80 image"),
    "outside_left": (_xml("000001.jpg", 100, 80, _obj("dog", -1, 1, 9, 9)), "000001.xml", "outside the 100x80 image"),
    "x2_le_x1": (_xml("000001.jpg", 100, 80, _obj("dog", 10, 1, 9, 9)), "000001.xml", "empty box"),
    "bad_difficult": (_xml("000001.jpg", 100, 80, _obj("dog", 1, 1, 9, 9, "yes")), "000001.xml", "difficult is not a number"),
    "bad_size": (_xml("000001.jpg", "wide", 80, GOOD), "000001.xml", "width is not a number"),
    "missing_image": (_xml("nothere.jpg", 100, 80, GOOD), "nothere.jpg", "not found"),
    "entity_bomb": ('<?xml version="1.0"?><!DOCTYPE a [<!ENTITY b "bbbbbbbb"><!ENTITY c "&b;&b;&b;&b;">]>'
                    "<annotation><filename>&c;</filename></annotation>", "000001.xml", "unsafe XML"),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_annotation(tmp_path: Path, case: str) -> None:
    text, named, says = BAD_CASES[case]
    root = _voc(tmp_path / "voc", {"000000": _xml("000000.jpg", 100, 80, GOOD), "000001": text})
    if case == "missing_image":
        (root / "JPEGImages" / "000001.jpg").unlink()
    with pytest.raises(EnginesmithError, match=named.replace(".", r"\.")) as e:
        read_voc(root, "test")
    assert re.search(says, str(e.value)) and "\n" not in str(e.value)


def test_tolerance_one_pixel(tmp_path: Path) -> None:
    # xmin = 0 -> x1 = -1 and xmax = W + 1: inside the 1 px tolerance
    root = _voc(tmp_path / "voc", {"a": _xml("a.jpg", 100, 80, _obj("dog", 0, 0, 101, 81))})
    np.testing.assert_array_equal(read_voc(root, "test")[0].boxes, [[-1, -1, 101, 81]])


@pytest.mark.parametrize("broken", ["root", "Annotations", "JPEGImages", "split", "empty_split", "xml_listed"])
def test_bad_layout(tmp_path: Path, broken: str) -> None:
    import shutil

    root = _voc(tmp_path / "voc", {"a": _xml("a.jpg", 100, 80, GOOD)})
    named = {"root": "nowhere", "Annotations": "Annotations", "JPEGImages": "JPEGImages", "split": "test.txt",
             "empty_split": "test.txt", "xml_listed": "zzz.xml"}[broken]
    target = root
    if broken == "root":
        target = tmp_path / "nowhere"
    elif broken in ("Annotations", "JPEGImages"):
        shutil.rmtree(root / broken)
    elif broken == "split":
        (root / "ImageSets" / "Main" / "test.txt").unlink()
    elif broken == "empty_split":
        (root / "ImageSets" / "Main" / "test.txt").write_text("\n\n")
    else:
        (root / "ImageSets" / "Main" / "test.txt").write_text("a\nzzz\n")
    with pytest.raises(EnginesmithError, match=named):
        read_voc(target, "test")


# ----------------------------------------------------------------------------- <size> vs the real image
def test_size_that_lies_about_the_image_is_refused(tmp_path: Path) -> None:
    """<size> says 400x300 but the JPEG is 100x80: a box at x 200..380 would pass a check against the claimed size
    and lie outside the real image. The reader compares with the image header and names both sizes."""
    root = _voc(tmp_path / "voc", {"000000": _xml("000000.jpg", 400, 300, _obj("dog", 200, 150, 380, 290))})
    with pytest.raises(EnginesmithError) as e:
        read_voc(root, "test")
    msg = str(e.value)
    assert "000000.xml" in msg and "400x300" in msg and "100x80" in msg and "\n" not in msg


def test_size_zero_takes_the_header_and_boxes_are_checked_against_it(tmp_path: Path) -> None:
    root = _voc(tmp_path / "voc", {"a": _xml("a.jpg", 0, 0, _obj("dog", 10, 10, 50, 40))}, sizes={"a": (64, 48)})
    s = read_voc(root, "test")[0]
    assert (s.width, s.height) == (64, 48) and s.annotation == root / "Annotations" / "a.xml"
    bad = _voc(tmp_path / "voc2", {"a": _xml("a.jpg", 0, 0, _obj("dog", 10, 10, 90, 50))}, sizes={"a": (64, 48)})
    with pytest.raises(EnginesmithError, match="outside the 64x48 image"):
        read_voc(bad, "test")


def test_decompression_bomb_in_jpegimages_refused_at_load(tmp_path: Path) -> None:
    from test_runtime_images import png_claiming

    root = _voc(tmp_path / "voc", {"a": _xml("a.png", 50000, 50000, GOOD)})
    (root / "JPEGImages" / "a.png").write_bytes(png_claiming(50000, 50000))
    with pytest.raises(EnginesmithError) as e:
        read_voc(root, "test")
    assert "a.png" in str(e.value) and "decompression bomb" in str(e.value) and "\n" not in str(e.value)


def test_image_replaced_after_loading_is_caught_when_decoded(tmp_path: Path) -> None:
    """The decode-time check (DetectionDataset.load_image) for any reader: here the file changes after read_voc."""
    root = _voc(tmp_path / "voc", {"a": _xml("a.jpg", 100, 80, GOOD)})
    ds = read_voc(root, "test")
    assert ds.load_image(0).shape == (80, 100, 3)
    _image(root / "JPEGImages" / "a.jpg", 120, 90)
    with pytest.raises(EnginesmithError) as e:
        ds.load_image(0)
    msg = str(e.value)
    assert "a.xml" in msg and "100x80" in msg and "120x90" in msg and "\n" not in msg


def test_coco_size_that_lies_is_caught_when_decoded(tmp_path: Path) -> None:
    import json

    from enginesmith.data.coco import read_coco

    _image(tmp_path / "images" / "a.jpg", 100, 80)
    ann = tmp_path / "instances_val.json"
    ann.write_text(json.dumps({"images": [{"id": 1, "file_name": "a.jpg", "width": 400, "height": 300}],
                               "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [200, 150, 150, 100]}],
                               "categories": [{"id": 1, "name": "dog"}]}))
    ds = read_coco(ann)
    with pytest.raises(EnginesmithError) as e:
        ds.load_image(0)
    msg = str(e.value)
    assert str(ann) in msg and "400x300" in msg and "100x80" in msg
