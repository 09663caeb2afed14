"""R-CNN and Fast R-CNN on the host side of the engine (torch-free: numpy + Pillow; OpenCV only through
runtime/proposals.py when selective search runs).

The engines are only the CNN part:
- R-CNN (models/rcnn.py): warped regions [N, 3, S, S] -> scores [N, C] (sigmoid of the SVM margins) and
  deltas [N, C, 4] (the paper's tx, ty, tw, th, unweighted). Here: warp every proposal with 16 px context
  at 227 (runtime/region_warp.py), run them `chunk` at a time, decode the class-specific boxes.
- Fast R-CNN (models/fast_rcnn.py): images [1, 3, H, W] + rois [R, 4] (input pixels, R dynamic) -> boxes
  [1, R, 4] (the best class's regressed box, input pixels, clipped) and scores [1, R, C] (softmax without
  background). Here: preprocess the image, scale the proposals to input pixels, map boxes back.

Host-stage API (also what training/evaluation feed with a PyTorch `infer`):
    rcnn_raw(infer, image, proposals, spec, num_classes, chunk) -> boxes [P, C, 4], scores [P, C]
    fast_rcnn_raw(infer, image, proposals, spec, max_rois) -> boxes [P, 4], scores [P, C]
    detect_from_raw(boxes, scores, iou, score_threshold, max_detections) -> detections [K, 6]
All boxes are x1, y1, x2, y2 in continuous original-image pixels unless said otherwise.

`TwoStageDetector` is what `runtime.load()` returns for an engine folder whose manifest has "two_stage":
`detector(image, proposals=None) -> list[Detection]`, with per-stage seconds in `last_times`.

Longer than 400 lines: R-CNN's and Fast R-CNN's host stages share the chunking, the NMS and the detector
class that runtime.load() returns for both.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import replace
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from enginesmith.backends.targets import TARGETS
from enginesmith.errors import EnginesmithError
from enginesmith.runtime.images import to_rgb
from enginesmith.runtime.nms import (DEFAULT_IOU_THRESHOLD, DEFAULT_MAX_DETECTIONS, DEFAULT_SCORE_THRESHOLD,
                                     greedy_nms)
from enginesmith.runtime.preprocess import PreprocessSpec, preprocess
from enginesmith.runtime.proposals import (DEFAULT_MAX_PROPOSALS, MODES, check_proposals, load_proposals,
                                           selective_search)
from enginesmith.runtime.region_warp import decode_deltas, region_inputs
from enginesmith.runtime.types import Detection, DetectorConfig

Infer = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]

IMAGE_INPUT = "images"  # pipeline/export.py INPUT_NAME (not imported: that module belongs to the build side)
ROIS_INPUT = "rois"  # models/fast_rcnn.py ROI_INPUT
KINDS = ("rcnn", "fast-rcnn")
DEFAULT_RCNN_CHUNK = 128  # regions per engine call for an R-CNN engine with a dynamic batch axis
STAGES = ("proposals", "warp", "preprocess", "cnn", "decode", "nms")


@contextmanager
def _timed(times: dict[str, float] | None, key: str) -> Iterator[None]:
    """Add the wall time of the block to times[key] (nothing when times is None)."""
    t0 = time.perf_counter()
    try:
        yield
    finally:
        if times is not None:
            times[key] = times.get(key, 0.0) + time.perf_counter() - t0


def _check_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise EnginesmithError(f"two-stage detectors take an HxWx3 uint8 RGB image, got {image.dtype} {list(image.shape)}")
    return image


def _output(outputs: dict[str, np.ndarray], name: str, what: str) -> np.ndarray:
    if name not in outputs:
        raise EnginesmithError(f"the {what} engine returned {sorted(outputs)}, not {name!r}; rebuild it with "
                               "`enginesmith build`")
    return np.asarray(outputs[name], dtype=np.float32)


# -- R-CNN ------------------------------------------------------------------------------------------------
def rcnn_raw(infer: Infer, image: np.ndarray, proposals: np.ndarray, spec: PreprocessSpec, num_classes: int,
             chunk: int, static_batch: bool = False, times: dict[str, float] | None = None, *,
             input_name: str = IMAGE_INPUT) -> tuple[np.ndarray, np.ndarray]:
    """R-CNN's per-region stage. image HxWx3 uint8 RGB, proposals [P, 4] x1y1x2y2 original px ->
    (boxes [P, C, 4] class-specific, decoded from the engine's (tx, ty, tw, th), original px, clipped;
    scores [P, C]).

    Each proposal is warped to S x S (S = spec.input_size) with context_pad(S) px of context, the
    out-of-image part filled with the mean pixel, then normalised by `spec`. Regions go through `infer`
    `chunk` at a time (warped chunk by chunk, so memory stays at one chunk); with static_batch every call
    gets exactly `chunk` regions (the last chunk is padded by repeating its last region and the padding's
    outputs are dropped). P = 0 -> empty arrays ([0, C, 4], [0, C]) and no engine call.
    times accumulates seconds under "warp" (warp + normalise), "cnn" (infer) and "decode"."""
    image = _check_image(image)
    props = np.asarray(proposals, dtype=np.float32).reshape(-1, 4)
    h, w = image.shape[:2]
    size_h, size_w = (int(s) for s in spec.input_size)
    if size_h != size_w:
        raise EnginesmithError(f"R-CNN warps regions to a square input, the engine's is {size_h}x{size_w}; rebuild it "
                               "with a square --input-size")
    if chunk < 1:
        raise EnginesmithError(f"the R-CNN chunk (regions per engine call) must be at least 1, got {chunk}")
    p = len(props)
    if p == 0:
        return np.zeros((0, num_classes, 4), np.float32), np.zeros((0, num_classes), np.float32)
    scores = np.empty((p, num_classes), np.float32)
    deltas = np.empty((p, num_classes, 4), np.float32)
    for start in range(0, p, chunk):
        part = props[start : start + chunk]
        n = len(part)
        with _timed(times, "warp"):
            x = region_inputs(image, part, spec)
            if static_batch and n < chunk:
                x = np.concatenate([x, np.repeat(x[-1:], chunk - n, axis=0)])
        with _timed(times, "cnn"):
            out = infer({input_name: x})
        s, d = _output(out, "scores", "R-CNN"), _output(out, "deltas", "R-CNN")
        if s.shape != (len(x), num_classes) or d.shape != (len(x), num_classes, 4):
            raise EnginesmithError(f"the R-CNN engine returned scores {list(s.shape)} and deltas {list(d.shape)} for "
                                   f"{len(x)} regions, expected [{len(x)}, {num_classes}] and [{len(x)}, {num_classes}, 4]"
                                   "; the engine and its manifest's class names disagree: rebuild it")
        scores[start : start + n] = s[:n]
        deltas[start : start + n] = d[:n]
    with _timed(times, "decode"):
        boxes = decode_deltas(props, deltas, float(w), float(h))
    return boxes, scores


# -- Fast R-CNN -------------------------------------------------------------------------------------------
def fast_rcnn_raw(infer: Infer, image: np.ndarray, proposals: np.ndarray, spec: PreprocessSpec,
                  max_rois: int | None = None, times: dict[str, float] | None = None, *,
                  num_classes: int = 0, input_name: str = IMAGE_INPUT,
                  rois_name: str = ROIS_INPUT) -> tuple[np.ndarray, np.ndarray]:
    """Fast R-CNN's stage. image HxWx3 uint8 RGB, proposals [P, 4] x1y1x2y2 original px -> (boxes [P, 4]:
    per proposal the regressed box of its best class, original px, clipped; scores [P, C]).

    The image is preprocessed by `spec` once; the proposals are scaled into input pixels through the same
    Transform (input = original * ratio + pad) and fed as `rois`. More than `max_rois` proposals -> several
    engine calls of at most max_rois each, in order; every call re-runs the backbone on the same image
    (the engine is one graph), so this costs time but never drops a proposal. P = 0 -> empty arrays
    ([0, 4], [0, num_classes]) and no engine call. times: "preprocess" (resize + normalise + roi scaling),
    "cnn" (infer) and "decode" (boxes back to original pixels)."""
    image = _check_image(image)
    props = np.asarray(proposals, dtype=np.float32).reshape(-1, 4)
    if max_rois is not None and max_rois < 1:
        raise EnginesmithError(f"max_rois must be at least 1 (or None: no limit), got {max_rois}")
    p = len(props)
    if p == 0:
        return np.zeros((0, 4), np.float32), np.zeros((0, num_classes), np.float32)
    with _timed(times, "preprocess"):
        x, t = preprocess(image, spec)
        x = x[None]
        rois = t.to_input(props)
    step = p if max_rois is None else int(max_rois)
    boxes_in: list[np.ndarray] = []
    scores: list[np.ndarray] = []
    for start in range(0, p, step):
        part = np.ascontiguousarray(rois[start : start + step])
        with _timed(times, "cnn"):
            out = infer({input_name: x, rois_name: part})
        b, s = _output(out, "boxes", "Fast R-CNN"), _output(out, "scores", "Fast R-CNN")
        if b.shape != (1, len(part), 4) or s.ndim != 3 or s.shape[:2] != (1, len(part)):
            raise EnginesmithError(f"the Fast R-CNN engine returned boxes {list(b.shape)} and scores {list(s.shape)} for "
                                   f"{len(part)} rois, expected [1, {len(part)}, 4] and [1, {len(part)}, C]; rebuild it")
        boxes_in.append(b[0])
        scores.append(s[0])
    with _timed(times, "decode"):
        boxes = t.to_original(np.concatenate(boxes_in))
    return boxes, np.concatenate(scores)


# -- NMS --------------------------------------------------------------------------------------------------
def detect_from_raw(boxes: np.ndarray, scores: np.ndarray, iou: float = DEFAULT_IOU_THRESHOLD,
                    score_threshold: float = DEFAULT_SCORE_THRESHOLD, max_detections: int = DEFAULT_MAX_DETECTIONS,
                    *, class_agnostic: bool = False, classes: Sequence[int] | None = None) -> np.ndarray:
    """boxes [P, 4] (one box per proposal) or [P, C, 4] (class-specific), scores [P, C] -> detections float32
    [K, 6] rows (x1, y1, x2, y2, score, class), K <= max_detections, best first.

    runtime/nms.py's rules: a (proposal, class) is a candidate when score > score_threshold; greedy NMS per
    class (greedy_nms) on that class's boxes suppresses IoU > iou; at most max_detections per class, then
    the best max_detections overall, ties by (class, proposal index). class_agnostic: each proposal with its
    best class only, NMS over all of them. classes: only these class ids are candidates."""
    scores = np.asarray(scores, dtype=np.float32)
    boxes = np.asarray(boxes, dtype=np.float32)
    if scores.ndim != 2:
        raise EnginesmithError(f"scores must be [P, C], got {list(scores.shape)}")
    p, c = scores.shape
    per_class = boxes.ndim == 3
    if not ((boxes.ndim == 2 and boxes.shape == (p, 4)) or (per_class and boxes.shape == (p, c, 4))):
        raise EnginesmithError(f"boxes must be [P, 4] or [P, C, 4] for scores {list(scores.shape)}, got {list(boxes.shape)}")
    k = int(max_detections)
    if classes is not None:
        keep = np.zeros(c, dtype=bool)
        keep[[j for j in classes if 0 <= j < c]] = True
        scores = np.where(keep, scores, np.float32(0))
    found_s: list[np.ndarray] = []
    found_c: list[np.ndarray] = []
    found_i: list[np.ndarray] = []
    if p and c and k > 0:
        if class_agnostic:
            cls = scores.argmax(axis=1)
            best = scores[np.arange(p), cls]
            idx = np.nonzero(best > score_threshold)[0]
            b = boxes[idx, cls[idx]] if per_class else boxes[idx]
            kept = idx[greedy_nms(b, best[idx], iou, k)]
            found_s, found_c, found_i = [best[kept]], [cls[kept]], [kept]
        else:
            for j in range(c):
                s = scores[:, j]
                idx = np.nonzero(s > score_threshold)[0]
                if not len(idx):
                    continue
                b = boxes[idx, j] if per_class else boxes[idx]
                kept = idx[greedy_nms(b, s[idx], iou, k)]
                found_s.append(s[kept])
                found_c.append(np.full(len(kept), j, np.int64))
                found_i.append(kept)
    if not found_s:
        return np.zeros((0, 6), np.float32)
    s_all, c_all, i_all = np.concatenate(found_s), np.concatenate(found_c), np.concatenate(found_i)
    order = np.lexsort((i_all, c_all, -s_all.astype(np.float64)))[:k]
    s_all, c_all, i_all = s_all[order], c_all[order], i_all[order]
    out = np.empty((len(order), 6), np.float32)
    out[:, :4] = boxes[i_all, c_all] if per_class else boxes[i_all]
    out[:, 4] = s_all
    out[:, 5] = c_all
    return out


# -- the detector -----------------------------------------------------------------------------------------
def two_stage_params(raw: dict[str, Any]) -> dict[str, Any]:
    """manifest["two_stage"] checked: {"kind", "proposals": {"method", "mode", "max_proposals"}}."""
    ts = raw.get("two_stage")
    if not isinstance(ts, dict) or ts.get("kind") not in KINDS:
        raise EnginesmithError(f"the manifest's two_stage entry must name a kind ({', '.join(KINDS)}), got {ts!r}; "
                               "rebuild the engine")
    prop = dict(ts.get("proposals") or {})
    method = prop.get("method", "selective-search")
    mode = prop.get("mode", "fast")
    if method != "selective-search" or mode not in MODES:
        raise EnginesmithError(f"unknown proposal method {method!r} / mode {mode!r} in the manifest; this runtime runs "
                               f"selective-search in modes {', '.join(MODES)}")
    return {"kind": ts["kind"], "method": method, "mode": mode,
            "max_proposals": int(prop.get("max_proposals", DEFAULT_MAX_PROPOSALS))}


def engine_profile_max(raw: dict[str, Any]) -> int | None:
    """The largest batch a dynamic engine accepts, where its engine stage recorded an optimization profile
    (TensorRT: params["profile"] = [min, opt, max]); None when unbounded (OpenVINO, ONNX Runtime)."""
    for stage in raw.get("stages") or []:
        profile = (stage.get("params") or {}).get("profile") if stage.get("stage") == "engine" else None
        if profile:
            return int(profile[-1])
    return None


def _rois_input_name(raw: dict[str, Any], image_input: str) -> str:
    """The second input's name from manifest["inputs"] (a list of {"name", ...}, a dict or a list of names)."""
    inputs = raw.get("inputs")
    names: list[str] = []
    if isinstance(inputs, dict):
        names = [str(n) for n in inputs]
    elif isinstance(inputs, list):
        names = [str(i.get("name")) if isinstance(i, dict) else str(i) for i in inputs]
    others = [n for n in names if n != image_input]
    return others[0] if others else ROIS_INPUT


class TwoStageDetector:
    """An R-CNN or Fast R-CNN engine with its host stages: `detector(image, proposals=None) -> list[Detection]`
    (best first, boxes x1, y1, x2, y2 in the image's pixels).

    Proposals: the caller's [P, 4] array (original pixels; checked by proposals.check_proposals) or selective
    search with the manifest's mode and max_proposals (OpenCV contrib needed only then). An image with no
    proposals has no detections. `last_times` holds the seconds per stage of the last call ("proposals",
    "warp" for R-CNN / "preprocess" for Fast R-CNN, "cnn", "decode", "nms"; summed over the images of a
    batch() call). R-CNN runs regions `chunk` at a time (a static-batch engine: its batch, padded; dynamic:
    `chunk`, default DEFAULT_RCNN_CHUNK); Fast R-CNN runs at most manifest["max_rois"] rois per call (None:
    all at once)."""

    def __init__(self, info: Any, config: Any = None, runner_options: dict[str, Any] | None = None, *,
                 chunk: int | None = None, max_rois: int | None = None, proposal_mode: str | None = None,
                 max_proposals: int | None = None) -> None:
        self.info = info
        params = two_stage_params(info.raw)
        self.kind: str = params["kind"]
        self.proposal_mode: str = proposal_mode or params["mode"]
        self.max_proposals: int = int(max_proposals or params["max_proposals"])
        self.config = config if config is not None else DetectorConfig()
        self.num_classes = len(info.class_names)
        self.rois_name = _rois_input_name(info.raw, info.input_name)
        raw_max = info.raw.get("max_rois")
        self.max_rois: int | None = int(max_rois) if max_rois is not None else (int(raw_max) if raw_max else None)
        self.static_batch = info.batch is not None
        self.chunk = int(info.batch) if info.batch is not None else int(chunk or DEFAULT_RCNN_CHUNK)
        profile_max = engine_profile_max(info.raw)
        if info.batch is None and profile_max is not None:  # a TensorRT plan takes at most its profile's max batch
            self.chunk = min(self.chunk, profile_max)
        if self.kind == "fast-rcnn" and info.batch not in (None, 1):
            raise EnginesmithError(f"{info.folder}: a Fast R-CNN engine takes one image per call, this one has batch "
                                   f"{info.batch}; rebuild it with --batch 1")
        self.last_times: dict[str, float] = {}
        target = TARGETS[info.target]
        self._options = target.options(info.precision, **(runner_options or {}))
        self._runner = target.backend.Runner(info.engine_file, **self._options)
        self._runner.activate()
        need = ["scores", "deltas"] if self.kind == "rcnn" else ["boxes", "scores"]
        missing = [o for o in need if o not in self._runner.output_names]
        if missing:
            self._runner.deactivate()
            raise EnginesmithError(f"{info.folder}: the engine has outputs {self._runner.output_names}, a {self.kind} "
                                   f"engine needs {missing}; rebuild it with `enginesmith build`")

    # lifecycle, as runtime/engine.py's engines
    def close(self) -> None:
        self._runner.deactivate()

    def __enter__(self) -> "TwoStageDetector":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        i = self.info
        return (f"<TwoStageDetector {self.kind} {i.model} {i.target} {i.precision} input {i.input_size[0]}x"
                f"{i.input_size[1]} proposals selective-search {self.proposal_mode} <= {self.max_proposals}>")

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.info.class_names

    @property
    def trained(self) -> bool | None:
        """As runtime/engine.py's: True (built with --weights), False (seeded, untrained), None (not recorded)."""
        return self.info.trained

    @property
    def batch_size(self) -> int:
        """Images per batch() group (runtime/files.py): one, the proposals belong to one image."""
        return 1

    def configure(self, **changes: Any) -> "TwoStageDetector":
        """Change thresholds/top-k (DetectorConfig fields) and return self."""
        self.config = replace(self.config, **changes)
        return self

    def uses_engine_nms(self) -> bool:
        """Always False: NMS runs on the host (detect_from_raw)."""
        return False

    # inference
    def proposals(self, image: np.ndarray) -> np.ndarray:
        """Selective search on an HxWx3 uint8 RGB image with this detector's mode and limit -> [P, 4]."""
        return selective_search(image, self.proposal_mode, self.max_proposals)

    def raw(self, image: Any, proposals: Any = None, channels: str = "RGB",
            times: dict[str, float] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(boxes, scores) before NMS, original pixels: R-CNN boxes [P, C, 4], Fast R-CNN boxes [P, 4]; scores [P, C]."""
        rgb = to_rgb(image, channels)  # type: ignore[arg-type]
        with _timed(times, "proposals"):
            props = self.proposals(rgb) if proposals is None else check_proposals(proposals)
        infer = self._runner.infer
        if self.kind == "rcnn":
            return rcnn_raw(infer, rgb, props, self.info.preprocess, self.num_classes, self.chunk, self.static_batch,
                            times, input_name=self.info.input_name)
        return fast_rcnn_raw(infer, rgb, props, self.info.preprocess, self.max_rois, times,
                             num_classes=self.num_classes, input_name=self.info.input_name, rois_name=self.rois_name)

    def _detect(self, image: Any, proposals: Any, channels: str, times: dict[str, float]) -> list[Any]:
        boxes, scores = self.raw(image, proposals, channels, times)
        c = self.config
        with _timed(times, "nms"):
            rows = detect_from_raw(boxes, scores, c.iou_threshold, c.score_threshold, c.max_detections,
                                   class_agnostic=c.class_agnostic, classes=c.classes)
        return [Detection(tuple(float(v) for v in r[:4]), float(r[4]), int(r[5]),  # type: ignore[arg-type]
                          self.info.class_name(int(r[5]))) for r in rows]

    def _new_times(self) -> dict[str, float]:
        keys = ("proposals", "warp" if self.kind == "rcnn" else "preprocess", "cnn", "decode", "nms")
        return {k: 0.0 for k in keys}

    def __call__(self, image: Any, proposals: Any = None, channels: str = "RGB") -> list[Any]:
        """Detections for one image (a path, PIL image or array in `channels` order); proposals [P, 4] in its pixels
        (None: selective search)."""
        times = self._new_times()
        try:
            return self._detect(image, proposals, channels, times)
        finally:
            self.last_times = times

    def batch(self, images: Iterable[Any], proposals: Sequence[Any] | None = None,
              channels: str = "RGB") -> list[list[Any]]:
        """Detections for each image, in order; proposals: one [P, 4] array (or None) per image, or None for all."""
        images = list(images)
        if proposals is not None and len(proposals) != len(images):
            raise EnginesmithError(f"got {len(proposals)} proposal arrays for {len(images)} images; give one per image")
        times = self._new_times()
        try:
            return [self._detect(im, None if proposals is None else proposals[i], channels, times)
                    for i, im in enumerate(images)]
        finally:
            self.last_times = times

    def stream(self, images: Iterable[Any], channels: str = "RGB", requests: int = 0) -> Iterator[list[Any]]:
        """Detections for a stream of images, one at a time (selective search proposals); `requests` is ignored."""
        for im in images:
            yield self(im, None, channels)


class FixedProposals:
    """A TwoStageDetector that uses the same given proposals for every image (`enginesmith detect --proposals
    FILE`, one image); everything else is the detector's."""

    def __init__(self, detector: TwoStageDetector, proposals: np.ndarray) -> None:
        self._detector = detector
        self.proposals = check_proposals(proposals)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._detector, name)

    def __call__(self, image: Any, channels: str = "RGB") -> list[Any]:
        return self._detector(image, self.proposals, channels)

    def batch(self, images: Iterable[Any], channels: str = "RGB") -> list[list[Any]]:
        images = list(images)
        return self._detector.batch(images, [self.proposals] * len(images), channels)


def with_proposals(detector: Any, path: Any, images: Sequence[Any]) -> FixedProposals:
    """`enginesmith detect ENGINE IMAGE --proposals FILE`: the proposal file (proposals.load_proposals) of the one
    image given, for an R-CNN / Fast R-CNN engine; anything else is a one-line EnginesmithError."""
    if not isinstance(detector, TwoStageDetector):
        raise EnginesmithError(f"--proposals is for R-CNN / Fast R-CNN engines; {detector.info.model} finds its own "
                               "boxes: drop --proposals")
    if len(images) != 1:
        raise EnginesmithError(f"--proposals FILE holds the proposals of one image, got {len(images)} images; run one "
                               "image per proposal file")
    return FixedProposals(detector, load_proposals(path))


__all__ = ["rcnn_raw", "fast_rcnn_raw", "detect_from_raw", "TwoStageDetector", "two_stage_params", "Infer",
           "DEFAULT_RCNN_CHUNK", "FixedProposals", "with_proposals"]
