"""COCO-style detection json (instances_<split>.json) + an image folder -> DetectionDataset; and a writer.

Reads the keys `images` (id, file_name, width, height), `annotations` (image_id, category_id,
bbox [x, y, w, h], optional iscrowd) and `categories` (id, name). Category ids map to contiguous
class ids 0..C-1 in increasing id order (COCO's 1..90 with gaps -> 0..79). `iscrowd` = 1 becomes
`difficult` (ignored by the metrics). Boxes: [x, y, w, h] -> (x, y, x + w, y + h) continuous pixels.

Where the images are (when `image_dir` is not given), with `parent` the json's folder and `top` the
folder above it when `parent` is named `annotations` (else `parent` itself), and `name` the json's
stem without a leading `instances_` (instances_val2017.json -> val2017):
  top/name/  (COCO: annotations/instances_val2017.json + val2017/),  top/images/name/,  top/images/,
  top/JPEGImages/  (the offline set: VOC layout with the json beside it),  top/,  parent/.
The first of these that holds the first listed image's `file_name` is used.
The json's width/height are checked against each image when it is decoded (DetectionDataset.load_image), not
at load time: reading every header costs ~0.4 ms an image here, most of a minute for COCO train2017.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from enginesmith.data.detection import DetectionDataset, DetectionSample
from enginesmith.data.voc import check_box
from enginesmith.errors import EnginesmithError


def split_name(json_path: Path) -> str:
    """instances_val2017.json -> 'val2017'; other.json -> 'other'."""
    stem = Path(json_path).stem
    return stem[len("instances_"):] if stem.startswith("instances_") and len(stem) > 10 else stem


def dataset_top(json_path: Path) -> Path:
    """The dataset root: the folder above `annotations/`, else the json's own folder."""
    parent = Path(json_path).parent
    return parent.parent if parent.name == "annotations" else parent


def image_dir_candidates(json_path: Path) -> list[Path]:
    """The folders searched for images, in order (see the module docstring)."""
    json_path = Path(json_path)
    top, name = dataset_top(json_path), split_name(json_path)
    out = [top / name, top / "images" / name, top / "images", top / "JPEGImages", top, json_path.parent]
    return list(dict.fromkeys(out))


def _load_json(json_path: Path) -> dict[str, Any]:
    if not json_path.is_file():
        raise EnginesmithError(f"COCO annotation file not found: {json_path}")
    try:
        data = json.loads(json_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise EnginesmithError(f"malformed COCO json {json_path}: {e}") from None
    if not isinstance(data, dict):
        raise EnginesmithError(f"malformed COCO json {json_path}: top level is not an object")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise EnginesmithError(f"malformed COCO json {json_path}: missing list '{key}'")
    return data


def _field(entry: Any, key: str, kind: str, where: str, json_path: Path) -> Any:
    if not isinstance(entry, dict) or key not in entry:
        raise EnginesmithError(f"malformed COCO json {json_path}: {where} has no '{key}'")
    value = entry[key]
    ok = {
        "int": isinstance(value, int) and not isinstance(value, bool),
        "str": isinstance(value, str),
        "num": isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value),
    }[kind]
    if not ok:
        raise EnginesmithError(f"malformed COCO json {json_path}: {where} '{key}' = {value!r} is not a valid {kind}")
    return value


def read_coco(json_path: Path, image_dir: Path | None = None) -> DetectionDataset:
    """Read a COCO instances json; images from `image_dir` or the first candidate folder that has them.

    DetectionDataset.root is the dataset root (see dataset_top), split is the json's name (split_name),
    class_names are the categories' names in id order, image_id is the COCO image id as a string, and
    samples follow the order of the json's `images` list. Problems are EnginesmithErrors naming the json.
    """
    json_path = Path(json_path).expanduser()
    data = _load_json(json_path)
    cats = _categories(data, json_path)
    cat_ids = sorted(cats)
    cat_index = {cid: i for i, cid in enumerate(cat_ids)}
    images = _images(data, json_path)
    folder = _resolve_image_dir(json_path, image_dir, next(iter(images.values()))["file_name"])
    per_image = _annotations(data, json_path, images, cat_index)
    samples = []
    for iid, im in images.items():
        path = folder / im["file_name"]
        if not path.is_file():
            raise EnginesmithError(f"image {path} (listed in {json_path}) not found")
        objs = per_image[iid]
        samples.append(
            DetectionSample(
                image_id=str(iid),
                image_path=path,
                width=int(im["width"]),
                height=int(im["height"]),
                boxes=np.asarray([o[0] for o in objs], dtype=np.float32).reshape(-1, 4),
                labels=np.asarray([o[1] for o in objs], dtype=np.int64),
                difficult=np.asarray([o[2] for o in objs], dtype=bool),
                annotation=json_path,
            )
        )
    return DetectionDataset(root=dataset_top(json_path), split=split_name(json_path),
                            class_names=tuple(cats[c] for c in cat_ids), samples=samples)


def _categories(data: dict[str, Any], json_path: Path) -> dict[int, str]:
    """category id -> name; ids unique, at least one."""
    cats: dict[int, str] = {}
    for k, c in enumerate(data["categories"]):
        cid = _field(c, "id", "int", f"categories[{k}]", json_path)
        name = _field(c, "name", "str", f"categories[{k}]", json_path)
        if cid in cats:
            raise EnginesmithError(f"malformed COCO json {json_path}: category id {cid} appears twice")
        cats[cid] = name
    if not cats:
        raise EnginesmithError(f"malformed COCO json {json_path}: 'categories' is empty")
    return cats


def _images(data: dict[str, Any], json_path: Path) -> dict[int, dict[str, Any]]:
    """image id -> its entry (file_name, positive width and height), in the json's order; at least one."""
    images: dict[int, dict[str, Any]] = {}
    for k, im in enumerate(data["images"]):
        iid = _field(im, "id", "int", f"images[{k}]", json_path)
        if iid in images:
            raise EnginesmithError(f"malformed COCO json {json_path}: image id {iid} appears twice")
        _field(im, "file_name", "str", f"images[{k}]", json_path)
        for key in ("width", "height"):
            if _field(im, key, "int", f"images[{k}]", json_path) <= 0:
                raise EnginesmithError(f"malformed COCO json {json_path}: images[{k}] has {key} <= 0")
        images[iid] = im
    if not images:
        raise EnginesmithError(f"COCO json {json_path} lists no images; the split is empty")
    return images


def _annotations(data: dict[str, Any], json_path: Path, images: dict[int, dict[str, Any]],
                 cat_index: dict[int, int]) -> dict[int, list[tuple[tuple[float, float, float, float], int, bool]]]:
    """image id -> [(box x1y1x2y2 in pixels, class index, iscrowd)], each box checked against its image."""
    per_image: dict[int, list[tuple[tuple[float, float, float, float], int, bool]]] = {i: [] for i in images}
    for k, a in enumerate(data["annotations"]):
        where = f"annotations[{k}]"
        iid = _field(a, "image_id", "int", where, json_path)
        cid = _field(a, "category_id", "int", where, json_path)
        if iid not in images:
            raise EnginesmithError(f"COCO json {json_path}: {where} points to unknown image id {iid}")
        if cid not in cat_index:
            raise EnginesmithError(f"COCO json {json_path}: {where} points to unknown category id {cid}")
        bbox = a.get("bbox")
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) for v in bbox)):
            raise EnginesmithError(f"malformed COCO json {json_path}: {where} bbox {bbox!r} is not [x, y, w, h] numbers")
        x, y, w, h = (float(v) for v in bbox)
        box = (x, y, x + w, y + h)
        im = images[iid]
        check_box(box, im["width"], im["height"], f"COCO json {json_path}: {where} (image {im['file_name']})")
        per_image[iid].append((box, cat_index[cid], bool(a.get("iscrowd", 0))))
    return per_image


def _resolve_image_dir(json_path: Path, image_dir: Path | None, first_file: str) -> Path:
    if image_dir is not None:
        image_dir = Path(image_dir).expanduser()
        if not image_dir.is_dir():
            raise EnginesmithError(f"image folder {image_dir} (for {json_path}) not found")
        return image_dir
    candidates = image_dir_candidates(json_path)
    for c in candidates:
        if (c / first_file).is_file():
            return c
    tried = ", ".join(str(c) for c in candidates)
    raise EnginesmithError(
        f"cannot find the images of {json_path}: {first_file} is in none of {tried}; pass the image folder explicitly"
    )


# ---------------------------------------------------------------------------------------------- writer


def coco_dict(
    samples: Sequence[DetectionSample],
    class_names: Sequence[str],
    image_root: Path | None = None,
    image_ids: Sequence[int] | None = None,
) -> dict[str, Any]:
    """The COCO instances dict for `samples`: category ids 1..C (class i -> id i + 1), iscrowd = difficult.

    file_name is each image's path relative to `image_root` (default: its bare name). image ids are
    `image_ids`, else int(sample.image_id) when every id is numeric and unique, else 1..N.
    bbox = [x1, y1, x2 - x1, y2 - y1] (floats rounded to 3 decimals; integers stay integers).
    """
    if image_ids is None:
        try:
            ids = [int(s.image_id) for s in samples]
            image_ids = ids if len(set(ids)) == len(ids) else None
        except ValueError:
            image_ids = None
        if image_ids is None:
            image_ids = list(range(1, len(samples) + 1))

    def num(v: float) -> float | int:
        r = round(float(v), 3)
        return int(r) if r == int(r) else r

    images, annotations = [], []
    for s, iid in zip(samples, image_ids):
        p = Path(s.image_path)
        name = p.relative_to(image_root).as_posix() if image_root is not None else p.name
        images.append({"id": int(iid), "file_name": name, "width": int(s.width), "height": int(s.height)})
        for k in range(len(s.labels)):
            x1, y1, x2, y2 = (float(v) for v in s.boxes[k])
            w, h = num(x2 - x1), num(y2 - y1)
            annotations.append({
                "id": len(annotations) + 1,
                "image_id": int(iid),
                "category_id": int(s.labels[k]) + 1,
                "bbox": [num(x1), num(y1), w, h],
                "area": num(float(w) * float(h)),
                "iscrowd": int(bool(s.difficult[k])),
            })
    categories = [{"id": i + 1, "name": n, "supercategory": "object"} for i, n in enumerate(class_names)]
    return {"images": images, "annotations": annotations, "categories": categories}


def write_coco(
    json_path: Path,
    samples: Sequence[DetectionSample],
    class_names: Sequence[str],
    image_root: Path | None = None,
    info: dict[str, Any] | None = None,
) -> Path:
    """Write `coco_dict(samples, class_names, image_root)` (plus an optional `info`) to `json_path` atomically."""
    import os
    import uuid

    data = coco_dict(samples, class_names, image_root)
    if info is not None:
        data = {"info": info, **data}
    json_path = Path(json_path)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = json_path.with_name(f".{json_path.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(json.dumps(data, separators=(",", ":")) + "\n")
    os.replace(tmp, json_path)
    return json_path
