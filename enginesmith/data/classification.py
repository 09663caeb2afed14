"""Labelled images for evaluating (or training) classifiers, from three kinds of source.

- The built-in name "digits" (a str or Path, unless a file or folder of that name exists): scikit-learn's handwritten digits as 32x32 RGB (data/digits.py), with its
  fixed stratified split: "train" (1,437) or "test"/"val" (the same 360 held-out digits).
- A detection dataset (a VOC-style folder such as the offline set, or COCO; see datasets.py): one
  sample per non-difficult object of the split, the object's box widened by 10% of its width/height
  on each side (at least 1 px) and clipped to the image; label = the object's class.
- A folder of class subfolders (ImageNet style: <root>/<class>/*.jpg; class id = index in the sorted
  folder names). If <root>/<split>/ exists it is used (<root>/train/<class>/..., <root>/val/<class>/...);
  otherwise <root> itself holds the class folders and `split` is ignored, unless <root> has train/,
  val/ or test/ folders but not <split>/ (an error). Images are returned as paths (loaded lazily).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from enginesmith.data.datasets import open_dataset
from enginesmith.data.digits import load_digits_32
from enginesmith.errors import EnginesmithError
from enginesmith.runtime.preprocess import IMAGE_SUFFIXES, load_image

CROP_MARGIN = 0.1
SPLIT_FOLDERS = ("train", "val", "test")


@dataclass(frozen=True)
class ClassificationSet:
    """images: HxWx3 uint8 RGB arrays or image paths; labels int64 [N] (index into class_names)."""

    images: list[np.ndarray | Path]
    labels: np.ndarray
    class_names: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.images)

    def load_image(self, i: int) -> np.ndarray:
        """Image i as HxWx3 uint8 RGB (read from disk when it is a path)."""
        item = self.images[i]
        if isinstance(item, np.ndarray):
            return item

        return load_image(item)


def classification_samples(source: str | Path, split: str = "test") -> ClassificationSet:
    """The `split` of `source`: "digits", a detection dataset path, or a folder of class folders."""
    path = Path(source).expanduser()
    if str(source) == "digits" and not path.exists():
        return digits_set(split)
    if not path.exists():
        raise EnginesmithError(
            f"classification data not found: {path}; give a folder of class folders, a detection dataset or 'digits'"
        )
    if path.is_file() or (path / "Annotations").is_dir() or (path / "annotations" / f"instances_{split}.json").is_file():
        return detection_crops(path, split)
    return class_folders(path, split)


def digits_set(split: str) -> ClassificationSet:
    """scikit-learn's digits (32x32x3 uint8) from data/digits.py's fixed split."""
    d = load_digits_32()
    if split == "train":
        images, labels = d.train_images, d.train_labels
    elif split in ("test", "val"):
        images, labels = d.test_images, d.test_labels
    else:
        raise EnginesmithError(f"the built-in digits have splits train and test (or val), not {split!r}")
    return ClassificationSet(list(images), np.asarray(labels, dtype=np.int64), d.class_names)


def crop_box(box: np.ndarray, width: int, height: int, margin: float = CROP_MARGIN) -> tuple[int, int, int, int]:
    """Integer crop (x1, y1, x2, y2) of a box x1y1x2y2 widened by `margin` of its size per side, clipped."""
    x1, y1, x2, y2 = (float(v) for v in box)
    mx, my = max(1.0, margin * (x2 - x1)), max(1.0, margin * (y2 - y1))
    cx1, cy1 = max(0, int(np.floor(x1 - mx))), max(0, int(np.floor(y1 - my)))
    cx2, cy2 = min(width, int(np.ceil(x2 + mx))), min(height, int(np.ceil(y2 + my)))
    return cx1, cy1, max(cx2, cx1 + 1), max(cy2, cy1 + 1)


def detection_crops(path: Path, split: str) -> ClassificationSet:
    """One crop per non-difficult object of the detection dataset's split (see module docstring)."""
    ds = open_dataset(path, split)
    images: list[np.ndarray | Path] = []
    labels: list[int] = []
    for i, s in enumerate(ds.samples):
        keep = np.flatnonzero(~s.difficult)
        if not len(keep):
            continue
        image = ds.load_image(i)
        h, w = image.shape[:2]
        for k in keep:
            x1, y1, x2, y2 = crop_box(s.boxes[k], w, h)
            images.append(np.ascontiguousarray(image[y1:y2, x1:x2]))
            labels.append(int(s.labels[k]))
    if not images:
        raise EnginesmithError(f"the '{split}' split of {path} has no non-difficult objects to crop")
    return ClassificationSet(images, np.asarray(labels, dtype=np.int64), ds.class_names)


def _subfolders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def class_folders(path: Path, split: str) -> ClassificationSet:
    """A folder of class folders (ImageNet style; see module docstring) -> paths + labels."""
    if not path.is_dir():
        raise EnginesmithError(f"{path} is not a folder of class folders")
    root = path
    if (path / split).is_dir():
        root = path / split
    else:
        present = [d.name for d in _subfolders(path) if d.name in SPLIT_FOLDERS]
        if present:
            raise EnginesmithError(f"{path} has split folders {', '.join(present)} but no {split}/; pick one of them")
    classes = _subfolders(root)
    if not classes:
        raise EnginesmithError(f"{root} holds no class folders; expected {root}/<class name>/<images>")
    images: list[np.ndarray | Path] = []
    labels: list[int] = []
    for label, folder in enumerate(classes):
        files = sorted(
            (f for f in folder.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES and not f.name.startswith(".")),
            key=lambda f: f.relative_to(folder).as_posix(),
        )
        if not files:
            raise EnginesmithError(f"class folder {folder} holds no images; remove it or add images")
        images.extend(files)
        labels.extend([label] * len(files))
    return ClassificationSet(images, np.asarray(labels, dtype=np.int64), tuple(c.name for c in classes))
