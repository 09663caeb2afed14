"""Run any inference function over images for evaluation (torch-free).

`infer(x [N, C, H, W] float32) -> {"boxes": [N, A, 4], "scores": [N, A, C], ...}` (detectors, raw
decoded head in input pixels) or `{"logits": [N, C]}` (classifiers): a PyTorch runner, an engine
runner, anything with that contract. Images are HxWx3 uint8 RGB arrays (or paths), preprocessed with
the model's own PreprocessSpec; detections come back in original-image pixels.
"""

from __future__ import annotations

from typing import Callable, Iterable, Iterator

import numpy as np

from enginesmith.evaluation.detection_metrics import Predictions
from enginesmith.runtime.nms import nms_detections
from enginesmith.runtime.preprocess import PreprocessSpec, load_image, preprocess

# mAP is computed over the whole precision/recall curve: keep low-score detections (VOC devkit practice).
EVAL_SCORE_THRESHOLD = 0.005
EVAL_IOU_THRESHOLD = 0.45
EVAL_MAX_DETECTIONS = 200
DYNAMIC_CHUNK = 8

Infer = Callable[[np.ndarray], dict[str, np.ndarray]]


def _groups(images: Iterable[np.ndarray | str], size: int) -> Iterator[list[np.ndarray]]:
    group: list[np.ndarray] = []
    for img in images:
        group.append(img if isinstance(img, np.ndarray) else load_image(img))
        if len(group) == size:
            yield group
            group = []
    if group:
        yield group


def _batch(group: list[np.ndarray], spec: PreprocessSpec, batch: int | None) -> tuple[np.ndarray, list]:
    """Preprocess a group; pad a static batch by repeating the last image."""
    pairs = [preprocess(img, spec) for img in group]
    x = np.stack([p[0] for p in pairs]).astype(np.float32)
    if batch is not None and len(x) < batch:
        x = np.concatenate([x, np.repeat(x[-1:], batch - len(x), axis=0)])
    return x, [p[1] for p in pairs]


def predict_detections(
    infer: Infer, images: Iterable[np.ndarray | str], spec: PreprocessSpec, batch: int | None,
    score_threshold: float = EVAL_SCORE_THRESHOLD, iou_threshold: float = EVAL_IOU_THRESHOLD,
    max_detections: int = EVAL_MAX_DETECTIONS, progress: Callable[[int], None] = lambda n: None,
) -> list[Predictions]:
    """Detections per image (boxes [K, 4] x1y1x2y2 original pixels, clipped; scores [K]; labels [K]).

    batch: the engine's static batch (the last group is padded), or None for a dynamic batch axis."""
    out: list[Predictions] = []
    for group in _groups(images, batch or DYNAMIC_CHUNK):
        x, transforms = _batch(group, spec, batch)
        raw = infer(x)
        n = len(group)
        dets, num = nms_detections(np.asarray(raw["boxes"])[:n], np.asarray(raw["scores"])[:n], iou_threshold,
                                   score_threshold, max_detections)
        for i, (img, t) in enumerate(zip(group, transforms)):
            d = dets[i, : int(num[i])]
            boxes = t.to_original(d[:, :4]).astype(np.float32)
            h, w = img.shape[:2]
            boxes[:, 0::2] = boxes[:, 0::2].clip(0, w)
            boxes[:, 1::2] = boxes[:, 1::2].clip(0, h)
            out.append(Predictions(boxes, d[:, 4].astype(np.float32), d[:, 5].astype(np.int64)))
        progress(n)
    return out


def predict_classes(
    infer: Infer, images: Iterable[np.ndarray | str], spec: PreprocessSpec, batch: int | None,
    progress: Callable[[int], None] = lambda n: None,
) -> np.ndarray:
    """Logits [N, C] for the images, in order."""
    chunks = []
    for group in _groups(images, batch or DYNAMIC_CHUNK):
        x, _ = _batch(group, spec, batch)
        chunks.append(np.asarray(infer(x)["logits"])[: len(group)])
        progress(len(group))
    return np.concatenate(chunks, axis=0)
