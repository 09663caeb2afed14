"""Open a detection dataset given by path, whichever of the two supported layouts it uses.

- VOC-style folder: `<dir>/Annotations/` (+ JPEGImages/, ImageSets/Main/<split>.txt) -> read_voc.
  The offline set (offline_detection.py) is one, with a COCO json beside it; the VOC side is read.
- COCO: a `.json` file (its images found as coco.py describes), or a folder holding
  `annotations/instances_<split>.json` -> read_coco.
"""

from __future__ import annotations

from pathlib import Path

from enginesmith.data.coco import read_coco
from enginesmith.data.detection import DetectionDataset
from enginesmith.data.voc import read_voc
from enginesmith.errors import EnginesmithError


def open_dataset(path: Path, split: str = "test") -> DetectionDataset:
    """The `split` of the detection dataset at `path` (VOC folder or COCO json/folder; see module docstring).

    For a `.json` file `split` is not used: the file is the split.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise EnginesmithError(f"dataset not found: {path}")
    if path.is_file():
        if path.suffix.lower() == ".json":
            return read_coco(path)
        raise EnginesmithError(
            f"{path} is not a dataset: give a VOC-style folder (Annotations/, JPEGImages/, ImageSets/Main/<split>.txt) "
            "or a COCO instances .json"
        )
    if (path / "Annotations").is_dir():
        return read_voc(path, split)
    coco_json = path / "annotations" / f"instances_{split}.json"
    if coco_json.is_file():
        return read_coco(coco_json)
    raise EnginesmithError(
        f"{path} is not a detection dataset for split '{split}': expected a VOC-style folder with Annotations/, "
        f"JPEGImages/ and ImageSets/Main/{split}.txt, or a COCO folder with annotations/instances_{split}.json "
        "(or give the .json file itself)"
    )
