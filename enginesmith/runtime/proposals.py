"""Region proposals for R-CNN and Fast R-CNN: selective search (Uijlings et al. 2013) through OpenCV's
contrib implementation (cv2.ximgproc.segmentation), and proposal files given by the user.

Boxes are float32 [P, 4] (x1, y1, x2, y2) in continuous original-image pixels, the same convention as
data/detection.py. Torch-free; OpenCV (the `opencv-contrib-python-headless` package, extra `proposals`) is
imported only when selective search runs.

Selective search's output order is OpenCV's: hierarchical groupings ranked as in the paper (a
pseudo-random mix of levels, drawn from the C library's rand(), which is seeded with 0 before every call
so the same image always gives the same boxes in the same order), so the first P boxes are the paper's "top P" - R-CNN kept about 2,000 per
image in fast mode. Exact duplicates are dropped keeping the first; boxes under `min_side` pixels are
dropped; nothing else is reordered or cut except at `max_proposals`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from enginesmith.errors import EnginesmithError

MODES = ("fast", "quality")
DEFAULT_MAX_PROPOSALS = 2000
DEFAULT_MIN_SIDE = 2.0
# What a build feeds a two-stage engine per calibration/verification image (calibration/feeds.py; the memory
# estimate, models/memory.py, sizes the batch axis with them):
REGIONS_PER_IMAGE = 32  # R-CNN calibration/verification regions per image
ROIS_PER_IMAGE = 300  # Fast R-CNN calibration/verification rois per image (the paper's test-time count is 2,000)
INSTALL_HINT = "pip install opencv-contrib-python-headless (or enginesmith[proposals]); the plain opencv packages lack ximgproc"


def _ximgproc():
    try:
        import cv2
    except ImportError as e:
        raise EnginesmithError(f"selective search needs OpenCV's contrib modules: {INSTALL_HINT}") from e
    seg = getattr(getattr(cv2, "ximgproc", None), "segmentation", None)
    if seg is None or not hasattr(seg, "createSelectiveSearchSegmentation"):
        raise EnginesmithError(f"this OpenCV ({cv2.__version__}) has no cv2.ximgproc.segmentation: {INSTALL_HINT}")
    return cv2, seg


def _seed_c_rand(seed: int = 0) -> None:
    """OpenCV ranks selective search's boxes with the C library's rand() (cv2.setRNGSeed does not reach it), so
    the order, and the boxes kept under max_proposals, change between runs unless srand is seeded first."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.srand(ctypes.c_uint(seed))
    except (OSError, AttributeError):  # no C library to seed (then the order is not reproducible)
        pass


def selective_search(image: np.ndarray, mode: str = "fast", max_proposals: int = DEFAULT_MAX_PROPOSALS,
                     min_side: float = DEFAULT_MIN_SIDE) -> np.ndarray:
    """HxWx3 uint8 RGB image -> proposals float32 [P, 4] (x1, y1, x2, y2, image pixels), P <= max_proposals.

    mode "fast" (one colour space, two similarity sets: the R-CNN paper's setting) or "quality" (more
    strategies, ~2x the boxes and ~3x the time). An image too small or too flat may give P = 0."""
    if mode not in MODES:
        raise EnginesmithError(f"unknown selective search mode {mode!r}; choose one of {', '.join(MODES)}")
    if max_proposals < 1:
        raise EnginesmithError(f"max proposals must be at least 1, got {max_proposals}")
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise EnginesmithError(f"selective search takes an HxWx3 uint8 RGB image, got {image.dtype} {image.shape}")
    cv2, seg = _ximgproc()
    ss = seg.createSelectiveSearchSegmentation()
    ss.setBaseImage(np.ascontiguousarray(image[:, :, ::-1]))  # OpenCV wants BGR
    (ss.switchToSelectiveSearchFast if mode == "fast" else ss.switchToSelectiveSearchQuality)()
    _seed_c_rand()
    rects = np.asarray(ss.process(), dtype=np.float32).reshape(-1, 4)  # x, y, w, h
    return clean_proposals(np.concatenate([rects[:, :2], rects[:, :2] + rects[:, 2:]], axis=1),
                           image.shape[1], image.shape[0], max_proposals, min_side)


def clean_proposals(boxes: np.ndarray, width: int, height: int, max_proposals: int | None = None,
                    min_side: float = DEFAULT_MIN_SIDE) -> np.ndarray:
    """Clip x1y1x2y2 boxes to the image, drop those with a side under `min_side` and exact duplicates
    (keeping the first), keep the first `max_proposals`. Order is otherwise preserved."""
    b = np.asarray(boxes, dtype=np.float32).reshape(-1, 4).copy()
    b[:, 0::2] = b[:, 0::2].clip(0, width)
    b[:, 1::2] = b[:, 1::2].clip(0, height)
    big = ((b[:, 2] - b[:, 0]) >= min_side) & ((b[:, 3] - b[:, 1]) >= min_side)
    b = b[big]
    if len(b):
        _, first = np.unique(b, axis=0, return_index=True)
        b = b[np.sort(first)]
    return np.ascontiguousarray(b[:max_proposals] if max_proposals else b)


def check_proposals(boxes: object, what: str = "proposals") -> np.ndarray:
    """Validate user proposals: an array [P, 4] of finite x1, y1, x2, y2 with x2 >= x1 and y2 >= y1 -> float32."""
    arr = np.asarray(boxes)
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise EnginesmithError(f"{what} must be an array [P, 4] of x1, y1, x2, y2 boxes in image pixels, got shape "
                               f"{list(arr.shape)}")
    if not np.issubdtype(arr.dtype, np.number):
        raise EnginesmithError(f"{what} must be numbers, got {arr.dtype}")
    arr = arr.astype(np.float32)
    if not np.isfinite(arr).all():
        raise EnginesmithError(f"{what} contain NaN or infinite coordinates")
    if len(arr) and ((arr[:, 2] < arr[:, 0]) | (arr[:, 3] < arr[:, 1])).any():
        raise EnginesmithError(f"{what} must be x1, y1, x2, y2 with x2 >= x1 and y2 >= y1 (not x, y, w, h?)")
    return arr


def load_proposals(path: str | Path) -> np.ndarray:
    """A proposal file for one image: .npy or .txt/.csv of rows x1, y1, x2, y2 -> float32 [P, 4]."""
    path = Path(path)
    if not path.is_file():
        raise EnginesmithError(f"proposal file not found: {path}")
    try:
        if path.suffix == ".npy":
            arr = np.load(path, allow_pickle=False)
        else:
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # an empty file: numpy warns, we return [0, 4]
                arr = np.loadtxt(path, delimiter="," if path.suffix == ".csv" else None, ndmin=2)
    except (ValueError, OSError) as e:
        raise EnginesmithError(f"cannot read proposal file {path}: {str(e).splitlines()[0]}; write an .npy array or "
                               "text rows of x1 y1 x2 y2") from None
    if arr.size == 0:
        return np.zeros((0, 4), np.float32)
    return check_proposals(arr, f"proposal file {path}")


__all__ = ["selective_search", "clean_proposals", "check_proposals", "load_proposals", "MODES",
           "DEFAULT_MAX_PROPOSALS"]
