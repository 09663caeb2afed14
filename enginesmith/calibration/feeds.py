"""Engine feeds for models whose inputs are not one preprocessed image: the proposal-driven detectors.

Most models take `images [N, C, H, W]`: a calibration or verification batch is then that array. R-CNN's
engine takes warped regions and Fast R-CNN's takes an image plus `rois [R, 4]`, so for them a batch is a
feed, `dict[str, ndarray]`, made from one calibration image by the model's feed maker
(`spec.details["feeds"]`):
- "rcnn_regions": selective search on the image (runtime/proposals.py, fast mode), `regions` proposals
  taken evenly through its list, warped as R-CNN warps them (runtime/region_warp.py): {"images": [K, 3, S, S]}.
- "fast_rcnn_rois": the preprocessed image [1, 3, H, W] and the first `rois` proposals scaled to input
  pixels: {"images", "rois": [R, 4]}.
Selective search runs once per image and is memoised by the maker (calibration makes several passes).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from enginesmith.errors import EnginesmithError
from enginesmith.runtime.preprocess import PreprocessSpec, preprocess
from enginesmith.runtime.proposals import REGIONS_PER_IMAGE, ROIS_PER_IMAGE, selective_search
from enginesmith.runtime.region_warp import region_inputs

Batch = Any  # np.ndarray [N, C, H, W] or dict[str, np.ndarray]
FEED_KINDS = ("rcnn_regions", "fast_rcnn_rois")
ROI_INPUT = "rois"


def as_feed(batch: Batch, input_names: list[str]) -> dict[str, np.ndarray]:
    """A batch -> the engine's feed: a bare array goes to the first input, a dict is passed as float32 arrays."""
    if isinstance(batch, dict):
        return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in batch.items()}
    return {input_names[0]: np.ascontiguousarray(batch, dtype=np.float32)}


def batch_len(batch: Batch) -> int:
    """Images in a batch (the first dimension of its first array)."""
    first = next(iter(batch.values())) if isinstance(batch, dict) else batch
    return int(first.shape[0])


def extra_inputs(spec: Any) -> tuple[dict[str, np.ndarray], dict[str, dict[int, str]]]:
    """Example values and dynamic axes of a model's inputs after `images` (and its outputs' dynamic axes)."""
    kind = spec.feeds
    if kind == "fast_rcnn_rois":
        rois = np.array([[0, 0, 32, 32], [8, 8, 40, 56], [16, 4, 60, 30]], dtype=np.float32)
        return {ROI_INPUT: rois}, {ROI_INPUT: {0: "rois"}, **{n: {1: "rois"} for n in spec.output_names}}
    return {}, {}


class FeedMaker:
    """One calibration image (HxWx3 uint8 RGB) -> its feeds, for a model with `spec.details["feeds"]`.

    static_batch: R-CNN's engine batch when static (the regions are then split into feeds of exactly that
    many; REGIONS_PER_IMAGE rounded up to a multiple of it), None when dynamic."""

    def __init__(self, kind: str, spec: PreprocessSpec, static_batch: int | None = None, mode: str = "fast") -> None:
        if kind not in FEED_KINDS:
            raise EnginesmithError(f"unknown feed kind {kind!r}; known: {', '.join(FEED_KINDS)}")
        self.kind, self.spec, self.mode = kind, spec, mode
        self.static_batch = static_batch if kind == "rcnn_regions" else None
        b = self.static_batch or REGIONS_PER_IMAGE
        self.regions = -(-REGIONS_PER_IMAGE // b) * b
        self._proposals: dict[bytes, np.ndarray] = {}

    @property
    def feeds_per_image(self) -> int:
        return self.regions // self.static_batch if self.static_batch else 1

    def fingerprint(self) -> dict[str, object]:
        return {"feeds": self.kind, "proposals": f"selective-search-{self.mode}", "regions": self.regions,
                "rois": ROIS_PER_IMAGE}

    def proposals(self, image: np.ndarray) -> np.ndarray:
        import hashlib

        key = hashlib.sha256(np.ascontiguousarray(image).tobytes()).digest() + bytes(str(image.shape), "ascii")
        if key not in self._proposals:
            self._proposals[key] = selective_search(image, self.mode)
        return self._proposals[key]

    def __call__(self, image: np.ndarray) -> list[dict[str, np.ndarray]]:
        props = self.proposals(image)
        h0, w0 = image.shape[:2]
        if len(props) == 0:  # a flat image: its whole frame is the one region
            props = np.array([[0, 0, w0, h0]], dtype=np.float32)
        if self.kind == "rcnn_regions":
            # evenly through the list (repeating when the image has fewer proposals than regions)
            pick = np.linspace(0, len(props) - 1, self.regions).round().astype(np.int64)
            crops = region_inputs(image, props[pick], self.spec)
            step = self.static_batch or self.regions
            return [{"images": crops[i : i + step]} for i in range(0, self.regions, step)]
        x, t = preprocess(image, self.spec)
        return [{"images": x[None], ROI_INPUT: np.ascontiguousarray(t.to_input(props[:ROIS_PER_IMAGE]))}]


def feed_maker(model_spec: Any, spec: PreprocessSpec, static_batch: int | None = None) -> FeedMaker | None:
    """The model's FeedMaker, or None for image-only models."""
    kind = model_spec.feeds
    return FeedMaker(kind, spec, static_batch) if kind else None


__all__ = ["as_feed", "batch_len", "extra_inputs", "FeedMaker", "feed_maker", "ROI_INPUT"]
