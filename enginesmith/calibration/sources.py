"""Where calibration images come from: a user folder, the built-in photos or the digits set.

A `CalibrationSource` is re-iterable (``images()`` starts over each call, needed for the
two-pass statistics) and never holds more than one image in memory, except the digits set,
which is a small in-memory array (N x 32 x 32 x 3 uint8). Its ``fingerprint()`` is what the
statistics cache is keyed by:
  - folder: sha256 over (relative path, sha256 of the file bytes) of the images used, in order; each
    later read is checked against that hash and decoded from the checked bytes (_HashedFiles);
  - generated sets: sha256 of generator name + n + seed + the version of the package the
    pixels come from (scikit-image for photos, scikit-learn for digits).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from enginesmith.data.datasets import open_dataset
from enginesmith.data.digits import load_digits_32
from enginesmith.data.image_folder import list_images
from enginesmith.data.offline_photos import offline_photos, photo_fingerprint
from enginesmith.errors import EnginesmithError
from enginesmith.runtime.images import decode_image_bytes
from enginesmith.runtime.preprocess import PreprocessSpec, preprocess

DEFAULT_KINDS = ("photos", "digits")


@dataclass
class CalibrationSource:
    """A named, fingerprinted, re-iterable stream of (H, W, 3) uint8 RGB images.

    - name: human description ("folder /data/calib", "photos (skimage)", "digits (sklearn)").
    - kind: "folder", "photos" or "digits".
    - warning: set when fewer images than requested were available (the caller prints it).
    """

    name: str
    kind: str
    count: int
    _images: Callable[[], Iterator[np.ndarray]] = field(repr=False)
    _fingerprint: Callable[[], str] = field(repr=False)
    paths: tuple[Path, ...] = ()
    warning: str | None = None
    _fp_cache: str | None = field(default=None, repr=False)

    def images(self) -> Iterator[np.ndarray]:
        """A fresh iterator over the images, each (H, W, 3) uint8 RGB."""
        return self._images()

    def fingerprint(self) -> str:
        """sha256 hex digest identifying the exact calibration images (computed once)."""
        if self._fp_cache is None:
            self._fp_cache = self._fingerprint()
        return self._fp_cache

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[np.ndarray]:
        return self.images()


class _HashedFiles:
    """A calibration set's image files, hashed once; every later read is checked against that hash and decoded
    from the bytes it checked. So the fingerprint in the cache key always names the pixels that were used:
    a file replaced during a build stops it with one line instead of calibrating on other images."""

    def __init__(self, root: Path, paths: tuple[Path, ...]) -> None:
        self.root, self.paths = root, paths
        self._digests: dict[Path, str] | None = None

    def digests(self) -> dict[Path, str]:
        if self._digests is None:
            self._digests = {p: hashlib.sha256(_read(p)).hexdigest() for p in self.paths}
        return self._digests

    def fingerprint(self) -> str:
        h = hashlib.sha256(b"enginesmith-calib-folder-v2")
        for p in self.paths:
            h.update(p.relative_to(self.root).as_posix().encode() + b"\0" + self.digests()[p].encode() + b"\0")
        return h.hexdigest()

    def images(self) -> Iterator[np.ndarray]:
        digests = self.digests()
        for p in self.paths:
            data = _read(p)
            if hashlib.sha256(data).hexdigest() != digests[p]:
                raise EnginesmithError(f"calibration image {p} changed while the build was using it (its bytes differ "
                                       "from those hashed into the cache key); run the build again when the folder is stable")
            yield decode_image_bytes(data, str(p))


def _read(path: Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise EnginesmithError(f"cannot read calibration image {path}: {e.strerror}; check the folder") from None


def _folder_source(folder: Path, size: int) -> CalibrationSource:
    folder = Path(folder).expanduser()
    found = list_images(folder)
    paths = tuple(found[:size])
    warning = None
    if len(found) < size:
        warning = f"calibration folder {folder} has {len(found)} images, fewer than the {size} requested; using all {len(found)}"
    files = _HashedFiles(folder, paths)
    return CalibrationSource(
        name=f"folder {folder}",
        kind="folder",
        count=len(paths),
        _images=files.images,
        _fingerprint=files.fingerprint,
        paths=paths,
        warning=warning,
    )


def is_detection_dataset(path: Path) -> bool:
    """A VOC-style folder (Annotations/) or a COCO json: calibrate on its train split, not every image."""
    path = Path(path)
    return (path.is_dir() and (path / "Annotations").is_dir()) or (path.is_file() and path.suffix.lower() == ".json")


def _dataset_source(path: Path, size: int) -> CalibrationSource:
    data = open_dataset(path, "train")
    paths = tuple(Path(s.image_path) for s in data.samples[:size])
    if not paths:
        raise EnginesmithError(f"the train split of {path} has no images to calibrate on")
    warning = None
    if len(paths) < size:
        warning = f"the train split of {path} has {len(paths)} images, fewer than the {size} requested; using all"

    root = Path(os.path.commonpath([str(p) for p in paths])) if len(paths) > 1 else paths[0].parent
    files = _HashedFiles(root, paths)
    return CalibrationSource(name=f"train split of {path}", kind="dataset", count=len(paths), _images=files.images,
                             _fingerprint=files.fingerprint, paths=paths, warning=warning)


def _photos_source(size: int, seed: int) -> CalibrationSource:
    return CalibrationSource(
        name="photos (scikit-image sample images, augmented)",
        kind="photos",
        count=size,
        _images=lambda: offline_photos(size, seed),
        _fingerprint=lambda: photo_fingerprint(size, seed),
    )


def _digits_source(size: int, seed: int) -> CalibrationSource:
    split = load_digits_32(seed)
    train = split.train_images
    n = min(size, len(train))
    warning = None
    if n < size:
        warning = f"the digits training split has {len(train)} images, fewer than the {size} requested; using all {n}"
    chosen = np.asarray(train[:n])

    def images() -> Iterator[np.ndarray]:
        for im in chosen:
            yield im

    def fingerprint() -> str:
        try:
            import sklearn

            version = sklearn.__version__
        except ImportError:  # pragma: no cover
            version = "none"
        h = hashlib.sha256(f"digits32-train|n={n}|seed={seed}|sklearn={version}|".encode())
        h.update(np.ascontiguousarray(chosen).tobytes())  # small (n x 3 KiB), so hash the pixels too
        return h.hexdigest()

    return CalibrationSource(
        name="digits (scikit-learn 8x8 digits at 32x32)",
        kind="digits",
        count=n,
        _images=images,
        _fingerprint=fingerprint,
        warning=warning,
    )


def calibration_source(
    folder: Path | str | None, default_kind: str, size: int, seed: int = 0
) -> CalibrationSource:
    """The calibration images for one build.

    folder given -> its first `size` images (sorted, recursive; fewer -> all, with `.warning`); a
    detection dataset (VOC folder or COCO json) -> the first `size` images of its train split;
    folder None -> the model's default offline set: "photos" or "digits".
    """
    if size <= 0:
        raise EnginesmithError(f"calibration size must be a positive number of images, got {size}")
    if folder is not None:
        if is_detection_dataset(Path(folder)):
            return _dataset_source(Path(folder), size)
        return _folder_source(Path(folder), size)
    if default_kind == "photos":
        return _photos_source(size, seed)
    if default_kind == "digits":
        return _digits_source(size, seed)
    raise EnginesmithError(
        f"unknown calibration source {default_kind!r}; use one of {', '.join(DEFAULT_KINDS)} or pass --calib FOLDER"
    )


def calibration_batches(source: CalibrationSource, spec: PreprocessSpec, batch_size: int) -> Iterator[np.ndarray]:
    """Stream the source through the model's preprocessing: batches (N, C, H, W) float32, N <= batch_size."""
    if batch_size <= 0:
        raise EnginesmithError(f"calibration batch size must be positive, got {batch_size}")
    pending: list[np.ndarray] = []
    for image in source.images():
        pending.append(preprocess(image, spec)[0])
        if len(pending) == batch_size:
            yield np.stack(pending)
            pending = []
    if pending:
        yield np.stack(pending)
