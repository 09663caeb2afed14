"""The offline detection set: determinism, splits, digit pools, classes, scales, occlusion, VOC = COCO."""

from __future__ import annotations

import json
import shutil
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from enginesmith.data.coco import read_coco
from enginesmith.data.offline_detection import generate_offline_dataset, split_sizes
from enginesmith.data.voc import read_voc
from enginesmith.errors import EnginesmithError
from enginesmith.models.classes import OFFLINE_NAMES

N = 48  # -> 34 / 7 / 7
SPLITS = ("train", "val", "test")


@pytest.fixture(scope="module")
def sets(tmp_path_factory: pytest.TempPathFactory):
    base = tmp_path_factory.mktemp("offline")
    a = generate_offline_dataset(base / "a", images=N, seed=0)
    b = generate_offline_dataset(base / "b", images=N, seed=0)
    c = generate_offline_dataset(base / "c", images=N, seed=1)
    yield a, b, c
    shutil.rmtree(base, ignore_errors=True)


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_other_seed_differs(sets) -> None:
    a, b, c = sets
    fa, fb, fc = _files(a), _files(b), _files(c)
    assert fa.keys() == fb.keys() and len([k for k in fa if k.startswith("JPEGImages/")]) == N
    for k in fa:
        assert fa[k] == fb[k], k  # every file, images included, byte for byte
    assert fa.keys() == fc.keys()
    assert sum(fa[k] != fc[k] for k in fa if k.startswith("JPEGImages/")) == N
    assert sum(fa[k] != fc[k] for k in fa if k.startswith("Annotations/")) >= N - 1


def test_split_sizes_and_lists(sets) -> None:
    a = sets[0]
    assert split_sizes(2000) == {"train": 1400, "val": 300, "test": 300}
    assert split_sizes(3) == {"train": 1, "val": 1, "test": 1}
    assert split_sizes(100) == {"train": 70, "val": 15, "test": 15}
    with pytest.raises(EnginesmithError, match="at least 3"):
        split_sizes(2)
    ids = {s: (a / "ImageSets" / "Main" / f"{s}.txt").read_text().split() for s in (*SPLITS, "trainval")}
    assert [len(ids[s]) for s in SPLITS] == [34, 7, 7]
    assert ids["trainval"] == ids["train"] + ids["val"]
    assert sorted(ids["train"] + ids["val"] + ids["test"]) == sorted(p.stem for p in (a / "JPEGImages").glob("*.jpg"))
    for s in SPLITS:
        coco = json.loads((a / "annotations" / f"instances_{s}.json").read_text())
        assert len(coco["images"]) == len(ids[s])
        assert [c["id"] for c in coco["categories"]] == list(range(1, 17))
        assert [c["name"] for c in coco["categories"]] == list(OFFLINE_NAMES)
    assert (a / "classes.txt").read_text().split() == list(OFFLINE_NAMES)


def test_digit_pools_disjoint_and_objects_are_the_recorded_digits(sets) -> None:
    from sklearn.datasets import load_digits

    a = sets[0]
    target = load_digits().target
    meta = json.loads((a / "metadata.json").read_text())
    pools = {s: set(meta["digit_pools"][s]) for s in SPLITS}
    assert not (pools["train"] & pools["val"]) and not (pools["train"] & pools["test"]) and not (pools["val"] & pools["test"])
    assert sorted(pools["train"] | pools["val"] | pools["test"]) == list(range(len(target)))
    assert 0.6 < len(pools["train"]) / len(target) < 0.8
    sources = json.loads((a / "sources.json").read_text())
    used: dict[str, set[int]] = {s: set() for s in SPLITS}
    for s in SPLITS:
        for sample in read_voc(a, s).samples:
            for label, idx in zip(sample.labels.tolist(), sources[sample.image_id], strict=True):
                if label < 10:  # a digit: the recorded scikit-learn digit has this class and is from this split's pool
                    assert target[idx] == label and idx in pools[s]
                    used[s].add(idx)
                else:
                    assert idx == -1
    assert all(used[s] for s in SPLITS)
    assert not (used["train"] & (used["val"] | used["test"]))


def test_classes_present_and_counts_match_metadata(sets) -> None:
    a = sets[0]
    meta = json.loads((a / "metadata.json").read_text())
    for s in SPLITS:
        ds = read_voc(a, s)
        labels = np.concatenate([x.labels for x in ds.samples])
        present = set(labels.tolist())
        assert len(present) >= 10, (s, present)
        if s == "train":
            assert present == set(range(16))
        counts = np.bincount(labels, minlength=16)
        assert meta["splits"][s]["class_counts"] == dict(zip(OFFLINE_NAMES, counts.tolist()))
        per_image = [len(x.labels) for x in ds.samples]
        assert min(per_image) >= 1 and max(per_image) <= 8 and np.mean(per_image) >= 3
    assert (meta["seed"], meta["images"]) == (0, N) and set(meta["libraries"]) >= {"scikit-image", "scikit-learn"}


def test_scales_wide_overlaps_present_difficult_rule(sets) -> None:
    a = sets[0]
    sides, pairs_overlapping = [], 0
    for s in SPLITS:
        for x in read_voc(a, s).samples:
            w, h = x.boxes[:, 2] - x.boxes[:, 0], x.boxes[:, 3] - x.boxes[:, 1]
            longer = np.maximum(w, h)
            sides.extend(longer.tolist())
            assert x.difficult[longer < 14].all()  # the stated rule: tiny boxes are difficult
            b = x.boxes
            ix = np.minimum(b[:, None, 2], b[None, :, 2]) - np.maximum(b[:, None, 0], b[None, :, 0])
            iy = np.minimum(b[:, None, 3], b[None, :, 3]) - np.maximum(b[:, None, 1], b[None, :, 1])
            inter = (np.clip(ix, 0, None) * np.clip(iy, 0, None))[np.triu_indices(len(b), 1)]
            pairs_overlapping += int((inter > 0).sum())
    truncated = sum(t.text == "1" for p in (a / "Annotations").glob("*.xml") for t in ET.parse(p).iter("truncated"))
    sides = np.asarray(sides)
    assert sides.min() <= 18 and sides.max() >= 110 and sides.max() / sides.min() >= 8
    assert np.mean(sides < 32) > 0.15 and np.mean(sides > 64) > 0.15  # small and large both common
    assert pairs_overlapping >= 5 and truncated >= 1


def test_boxes_are_the_visible_pixels_painted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Record every object as it is painted, repaint the ownership naively, and compare the annotations."""
    import enginesmith.data.offline_detection as od

    painted: dict[str, list[tuple[int, int, np.ndarray]]] = {}
    shapes: dict[str, tuple[int, int]] = {}
    real_render, real_blend = od._render, od._blend

    def render(plan, seed):
        painted[plan.image_id] = []
        image, objs = real_render(plan, seed)
        shapes[plan.image_id] = image.shape[:2]
        return image, objs

    def blend(canvas, y0, x0, alpha, colour, opacity):
        painted[next(reversed(painted))].append((y0, x0, alpha.copy()))  # the image being rendered
        real_blend(canvas, y0, x0, alpha, colour, opacity)
    monkeypatch.setattr(od, "_render", render)
    monkeypatch.setattr(od, "_blend", blend)
    out = generate_offline_dataset(tmp_path / "spy", images=12, seed=4)
    checked = 0
    for s in SPLITS:
        for x in read_voc(out, s).samples:
            owner = np.full(shapes[x.image_id], -1)
            for k, (y0, x0, alpha) in enumerate(painted[x.image_id]):  # painter's algorithm, pixel by pixel
                for yy, xx in zip(*np.nonzero(alpha >= 0.5)):
                    owner[y0 + yy, x0 + xx] = k
            assert len(painted[x.image_id]) == len(x.labels)
            for k, box in enumerate(x.boxes):
                ys, xs = np.nonzero(owner == k)
                assert box.tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
                in_frame = int((painted[x.image_id][k][2] >= 0.5).sum())
                assert len(ys) >= 0.4 * in_frame  # never less than 40% visible
                checked += 1
    assert checked >= 30


def test_voc_and_coco_agree_box_for_box(sets) -> None:
    a = sets[0]
    for s in SPLITS:
        voc = read_voc(a, s)
        coco = read_coco(a / "annotations" / f"instances_{s}.json")
        assert coco.class_names == voc.class_names == OFFLINE_NAMES
        assert [x.image_path for x in coco.samples] == [x.image_path for x in voc.samples]
        for v, c in zip(voc.samples, coco.samples):
            assert (v.width, v.height) == (c.width, c.height) and int(v.image_id) == int(c.image_id)
            np.testing.assert_array_equal(v.boxes, c.boxes)
            np.testing.assert_array_equal(v.labels, c.labels)
            np.testing.assert_array_equal(v.difficult, c.difficult)


def test_images_are_photographs_with_objects(sets) -> None:
    from PIL import Image

    a = sets[0]
    ds = read_voc(a, "test")
    means = []
    for i, x in enumerate(ds.samples):
        img = ds.load_image(i)
        assert img.shape == (x.height, x.width, 3) and 320 <= x.width <= 480 and 240 <= x.height <= 400
        with Image.open(x.image_path) as im:
            assert im.format == "JPEG"
        background = np.ones(img.shape[:2], bool)
        for x1, y1, x2, y2 in x.boxes.astype(int):
            background[y1:y2, x1:x2] = False
        bg = img[background].astype(np.float32)
        # a photo, not a flat fill: texture (local differences), spread, many distinct colours
        assert bg.std() > 8 and np.abs(np.diff(img.astype(np.float32), axis=1)).mean() > 2
        assert len(np.unique(img.reshape(-1, 3) // 8, axis=0)) > 150
        means.append(bg.mean(0))
    assert np.std(np.asarray(means), axis=0).max() > 10  # backgrounds differ from image to image


def test_existing_output_folder_rules(tmp_path: Path, sets) -> None:
    a = sets[0]
    before = {p: p.stat().st_mtime_ns for p in a.rglob("*")}
    t = time.perf_counter()
    assert generate_offline_dataset(a, images=N, seed=0) == a  # a complete set with the same parameters
    assert time.perf_counter() - t < 1.0 and {p: p.stat().st_mtime_ns for p in a.rglob("*")} == before
    with pytest.raises(EnginesmithError, match="seed"):
        generate_offline_dataset(a, images=N, seed=5)
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(EnginesmithError, match="not empty"):
        generate_offline_dataset(other, images=3)
    assert (other / "notes.txt").read_text() == "mine"
    empty = tmp_path / "empty"
    empty.mkdir()
    out = generate_offline_dataset(empty, images=3, seed=2)
    assert len(list((out / "JPEGImages").glob("*.jpg"))) == 3
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folder left behind


def test_progress_called_per_image(tmp_path: Path) -> None:
    seen: list[int] = []
    generate_offline_dataset(tmp_path / "p", images=5, seed=3, progress=seen.append)
    assert seen == [1, 2, 3, 4, 5]


@pytest.mark.slow
def test_default_set_size_and_speed(tmp_path: Path) -> None:
    t = time.perf_counter()
    out = generate_offline_dataset(tmp_path / "full")
    elapsed = time.perf_counter() - t
    assert [len(read_voc(out, s)) for s in SPLITS] == [1400, 300, 300]
    assert elapsed < 60, elapsed
