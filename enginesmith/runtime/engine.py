"""`load(engine_dir)` -> a Detector, Classifier or Segmenter for a built engine folder (torch-free).

The manifest says everything: task, backend, input size and batch, preprocessing, class names and
whether NMS is in the engine. Images go in as paths, PIL images or arrays (runtime/images.py states
the conversion rule); results come back in the original image's pixels.

    from enginesmith.runtime import load
    detector = load("build/yolov3-tiny/openvino-int8")
    for d in detector("street.jpg"):
        print(d.class_name, d.score, d.box)          # box: x1, y1, x2, y2 in the image's pixels
"""

from __future__ import annotations

import itertools
from dataclasses import replace
from pathlib import Path
from typing import Any, Generic, Iterable, Iterator, Sequence, TypeVar

import numpy as np

from enginesmith.errors import EnginesmithError
from enginesmith.runtime.images import Channels, ImageLike, to_rgb
from enginesmith.backends.targets import TARGETS
from enginesmith.runtime.manifest import EngineInfo, check_runnable, engine_info
from enginesmith.runtime.nms import (DEFAULT_IOU_THRESHOLD, DEFAULT_MAX_DETECTIONS, DEFAULT_SCORE_THRESHOLD,
                                     nms_detections)
from enginesmith.runtime.openvino_async import AsyncEngine
from enginesmith.runtime.overlap import overlapped
from enginesmith.runtime.preprocess import Transform, preprocess
from enginesmith.runtime.trained import warn_if_untrained
from enginesmith.runtime.two_stage import TwoStageDetector
from enginesmith.runtime.types import Classification, Detection, DetectorConfig, Segmentation

DYNAMIC_BATCH = 8  # images per inference call for an engine with a dynamic batch axis

R = TypeVar("R")


# -- the engine wrapper -----------------------------------------------------------------------------------
class _Engine(Generic[R]):
    """Owns the backend runner; subclasses turn raw outputs into results. Use as a context manager or
    call close() to free the engine."""

    def __init__(self, info: EngineInfo, runner_options: dict[str, Any] | None = None) -> None:
        target = TARGETS[info.target]
        self.info = info
        # the manifest's runtime settings (what --target auto measured fastest), then the caller's
        self._options = target.options(info.precision, **{**info.runtime, **(runner_options or {})})
        self._runner = target.backend.Runner(info.engine_file, **self._options)
        self._runner.activate()
        self._async: Any = None
        missing = [o for o in self._needed_outputs() if o not in self._runner.output_names]
        if missing:
            self._runner.deactivate()
            raise EnginesmithError(f"{info.folder}: the engine has outputs {self._runner.output_names}, a {info.task} "
                                   f"engine needs {missing}; rebuild it with `enginesmith build`")

    # subclasses
    def _needed_outputs(self) -> list[str]:
        raise NotImplementedError

    def _postprocess(self, outputs: dict[str, np.ndarray], transforms: list[Transform]) -> list[R]:
        raise NotImplementedError

    # lifecycle
    def close(self) -> None:
        """Release the engine (and the OpenVINO throughput model, if stream() or batch() made one)."""
        self._runner.deactivate()
        self._async = None

    def __enter__(self) -> "_Engine[R]":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        i = self.info
        return (f"<{type(self).__name__} {i.model} {i.target} {i.precision} input {i.input_size[0]}x{i.input_size[1]} "
                f"batch {i.batch or 'dynamic'}>")

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.info.class_names

    @property
    def trained(self) -> bool | None:
        """True when the engine was built from given weights (`--weights`), False for a seeded, untrained network
        (its outputs are noise; `load` warns with UntrainedEngineWarning), None when the manifest predates the record."""
        return self.info.trained

    # inference
    def _prepare(self, images: Sequence[ImageLike], channels: Channels) -> tuple[np.ndarray, list[Transform]]:
        pairs = [preprocess(to_rgb(im, channels), self.info.preprocess) for im in images]
        return np.stack([p[0] for p in pairs]).astype(np.float32, copy=False), [p[1] for p in pairs]

    @property
    def batch_size(self) -> int:
        """Images per inference call: the engine's static batch, or DYNAMIC_BATCH for a dynamic axis."""
        return self.info.batch or DYNAMIC_BATCH

    def _pad(self, x: np.ndarray) -> np.ndarray:
        """A static-batch engine takes exactly `batch` images: repeat the last one (its results are dropped)."""
        b = self.info.batch
        if b is not None and len(x) < b:
            x = np.concatenate([x, np.repeat(x[-1:], b - len(x), axis=0)])
        return x

    def raw(self, images: Sequence[ImageLike], channels: Channels = "RGB") -> tuple[dict[str, np.ndarray], list[Transform]]:
        """The engine's own outputs for up to batch_size images (padded rows included) and their Transforms."""
        if len(images) > self.batch_size:
            raise EnginesmithError(f"raw() takes at most {self.batch_size} images (the engine's batch); use batch()")
        x, transforms = self._prepare(images, channels)
        return self._runner.infer({self.info.input_name: self._pad(x)}), transforms

    def batch(self, images: Iterable[ImageLike], channels: Channels = "RGB") -> list[R]:
        """Results for each image, in order; images run batch_size at a time. Up to one group: the synchronous
        path of __call__; more: the path of stream(), host work overlapped with inference."""
        groups = _chunks(images, self.batch_size)
        first = next(groups, None)
        if first is None:
            return []
        second = next(groups, None)
        if second is None:
            return self._run_group(first, channels)
        return list(self._pipeline(itertools.chain((first, second), groups), channels, None))

    def _run_group(self, group: list[ImageLike], channels: Channels) -> list[R]:
        outputs, transforms = self.raw(group, channels)
        return self._postprocess(outputs, transforms)

    def __call__(self, image: ImageLike, channels: Channels = "RGB") -> R:
        """The result for one image (a path, a PIL image or an array in `channels` order)."""
        return self.batch([image], channels)[0]

    def stream(self, images: Iterable[ImageLike], channels: Channels = "RGB", requests: int = 0) -> Iterator[R]:
        """Results for a stream of images, in order, host work overlapped with inference. OpenVINO engines run
        an async queue of `requests` infer requests on a THROUGHPUT-compiled model (0: OpenVINO's optimal number;
        compiled on first use, kept until close(); NUM_STREAMS from the manifest's
        runtime settings when it fixes them): the next images are preprocessed and the finished ones
        post-processed while requests run. Other backends: runtime/overlap.py, a worker thread preprocessing the
        next group and post-processing the last one while this thread runs the engine. Either way a result comes
        out about one group after its image went in."""
        yield from self._pipeline(_chunks(images, self.batch_size), channels, requests)

    def _pipeline(self, groups: Iterable[list[ImageLike]], channels: Channels, requests: int | None) -> Iterator[R]:
        """stream()'s loop; requests None (batch()): OpenVINO's throughput model as it is, else with the optimal number."""
        def prepare(group: list[ImageLike]) -> tuple[np.ndarray, list[Transform]]:
            x, transforms = self._prepare(group, channels)
            return self._pad(x), transforms

        def finish(outputs: dict[str, np.ndarray], prepared: tuple[np.ndarray, list[Transform]]) -> list[R]:
            return self._postprocess(outputs, prepared[1])

        if not TARGETS[self.info.target].streams_async:
            infer = self._runner.infer
            yield from overlapped(groups, prepare, lambda prepared: infer({self.info.input_name: prepared[0]}), finish)
            return
        if self._async is None or (requests is not None and self._async.requests_asked != requests):
            self._async = AsyncEngine(self.info.engine_file, self._options.get("inference_precision", "f32"), requests or 0,
                                      self._options.get("num_streams"))
        yield from self._async.pipeline(self.info.input_name, groups, prepare, finish)


def _chunks(items: Iterable[ImageLike], size: int) -> Iterator[list[ImageLike]]:
    """Consecutive groups of `size` items (the last may be shorter)."""
    group: list[ImageLike] = []
    for item in items:
        group.append(item)
        if len(group) == size:
            yield group
            group = []
    if group:
        yield group


class Detector(_Engine[list[Detection]]):
    """An object detector: `detector(image) -> list[Detection]` (best first), boxes in original pixels.

    With `nms == "engine"` the engine's own detections are used while the config asks for nothing the
    engine cannot give (same IoU threshold, a score threshold at or above the engine's, at most its K);
    otherwise host NMS (runtime/nms.py) runs on the engine's raw boxes and scores, which such engines
    also return.
    """

    def __init__(self, info: EngineInfo, config: DetectorConfig | None = None,
                 runner_options: dict[str, Any] | None = None) -> None:
        if config is None:
            p = info.nms_params if info.nms == "engine" else {}
            config = DetectorConfig(score_threshold=float(p.get("score", DEFAULT_SCORE_THRESHOLD)),
                                    iou_threshold=float(p.get("iou", DEFAULT_IOU_THRESHOLD)),
                                    max_detections=int(p.get("max_detections", DEFAULT_MAX_DETECTIONS)))
        self.config = config
        super().__init__(info, runner_options)

    def _needed_outputs(self) -> list[str]:
        if self.info.nms == "engine" and "boxes" not in self.info.outputs:
            return ["detections", "num_detections"]
        return ["boxes", "scores"]

    def configure(self, **changes: Any) -> "Detector":
        """Change thresholds/top-k (DetectorConfig fields) and return self: `detector.configure(score_threshold=0.5)`."""
        self.config = replace(self.config, **changes)
        return self

    def uses_engine_nms(self) -> bool:
        """True when the engine's in-graph NMS gives exactly what the current config asks for."""
        if not self.config.engine_nms or self.info.nms != "engine" or "detections" not in self._runner.output_names:
            return False
        p, c = self.info.nms_params, self.config
        if not p:
            return False
        return (not c.class_agnostic and not p.get("class_agnostic", False) and c.classes is None
                and abs(float(p["iou"]) - c.iou_threshold) < 1e-9 and c.score_threshold >= float(p["score"])
                and c.max_detections <= int(p["max_detections"]))

    def _postprocess(self, outputs: dict[str, np.ndarray], transforms: list[Transform]) -> list[list[Detection]]:
        n, c = len(transforms), self.config
        if self.uses_engine_nms():
            dets = np.asarray(outputs["detections"], dtype=np.float32)[:n]
            num = np.asarray(outputs["num_detections"]).reshape(-1)[:n].astype(np.int64)
        elif "boxes" in outputs:
            scores = np.asarray(outputs["scores"], dtype=np.float32)[:n]
            if c.classes is not None:  # other classes never become candidates (nor use up max_detections)
                keep = np.zeros(scores.shape[-1], dtype=bool)
                keep[[k for k in c.classes if 0 <= k < len(keep)]] = True
                scores = np.where(keep, scores, np.float32(0))
            dets, num = nms_detections(np.asarray(outputs["boxes"])[:n], scores, c.iou_threshold, c.score_threshold,
                                       c.max_detections, c.class_agnostic)
        else:
            p = self.info.nms_params
            raise EnginesmithError(f"{self.info.folder} has NMS built in (iou {p.get('iou')}, score > {p.get('score')}, "
                                   f"K {p.get('max_detections')}) and no raw outputs to redo it; use those thresholds "
                                   "or rebuild with --nms host")
        out: list[list[Detection]] = []
        for i, t in enumerate(transforms):
            rows = dets[i, : int(num[i])]
            rows = rows[rows[:, 4] > c.score_threshold]
            if c.classes is not None:
                rows = rows[np.isin(rows[:, 5].astype(np.int64), np.asarray(c.classes, dtype=np.int64))]
            rows = rows[: c.max_detections]
            boxes = t.to_original(rows[:, :4])
            out.append([Detection(tuple(float(v) for v in b), float(r[4]), int(r[5]), self.info.class_name(int(r[5])))
                        for b, r in zip(boxes, rows)])
        return out


class Classifier(_Engine[list[Classification]]):
    """An image classifier: `classifier(image) -> list[Classification]`, the top_k classes by probability."""

    def __init__(self, info: EngineInfo, top_k: int = 5, runner_options: dict[str, Any] | None = None) -> None:
        if top_k < 1:
            raise EnginesmithError(f"top_k must be at least 1, got {top_k}")
        self.top_k = int(top_k)
        super().__init__(info, runner_options)

    def _needed_outputs(self) -> list[str]:
        return ["logits"]

    def _postprocess(self, outputs: dict[str, np.ndarray], transforms: list[Transform]) -> list[list[Classification]]:
        logits = np.asarray(outputs["logits"], dtype=np.float32)[: len(transforms)]
        logits = logits.reshape(len(logits), -1)
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs = e / e.sum(axis=1, keepdims=True)
        k = min(self.top_k, probs.shape[1])
        out = []
        for p in probs:
            order = np.argsort(-p, kind="stable")[:k]
            out.append([Classification(int(j), self.info.class_name(int(j)), float(p[j])) for j in order])
        return out


class Segmenter(_Engine[Segmentation]):
    """Semantic segmentation (FCN, U-Net): `segmenter(image) -> Segmentation`, labels in original pixels.

    The engine's `logits [N, C, h, w]` label the input's centre h x w pixels at stride 1 when smaller than
    the input (U-Net's valid convolutions) and the whole input when the same size (FCN); pixels of the
    original image that fall outside the labelled region get -1."""

    def _needed_outputs(self) -> list[str]:
        return ["logits"]

    def _postprocess(self, outputs: dict[str, np.ndarray], transforms: list[Transform]) -> list[Segmentation]:
        logits = np.asarray(outputs["logits"], dtype=np.float32)[: len(transforms)]
        if logits.ndim != 4:
            raise EnginesmithError(f"{self.info.folder}: segmentation logits must be [N, C, H, W], got {logits.shape}")
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs = e / e.sum(axis=1, keepdims=True)
        labels_in, scores_in = probs.argmax(axis=1).astype(np.int32), probs.max(axis=1)
        ih, iw = self.info.input_size
        oh, ow = labels_in.shape[1:]
        if oh > ih or ow > iw:
            raise EnginesmithError(f"{self.info.folder}: logits {oh}x{ow} are larger than the input {ih}x{iw}; "
                                   "this runtime maps same-size or centre-cropped label maps only")
        top, left = (ih - oh) // 2, (iw - ow) // 2
        out = []
        for i, t in enumerate(transforms):
            h0, w0 = t.original_size
            # centre of each original pixel -> input pixel (input = original * ratio + pad) -> output cell
            ys = np.floor((np.arange(h0) + 0.5) * t.ratio_y + t.pad_y).astype(np.int64) - top
            xs = np.floor((np.arange(w0) + 0.5) * t.ratio_x + t.pad_x).astype(np.int64) - left
            vy, vx = (ys >= 0) & (ys < oh), (xs >= 0) & (xs < ow)
            yy, xx = np.clip(ys, 0, oh - 1), np.clip(xs, 0, ow - 1)
            labels = labels_in[i][yy[:, None], xx[None, :]]
            scores = scores_in[i][yy[:, None], xx[None, :]].astype(np.float32)
            valid = vy[:, None] & vx[None, :]
            out.append(Segmentation(np.where(valid, labels, -1).astype(np.int32), np.where(valid, scores, 0.0)
                                    .astype(np.float32), self.info.class_names))
        return out


def load(engine_dir: str | Path, *, config: DetectorConfig | None = None, top_k: int = 5,
         runner_options: dict[str, Any] | None = None) -> Detector | Classifier | Segmenter | TwoStageDetector:
    """Open a built engine folder (manifest.json + engine) as a Detector, Classifier or Segmenter (a
    TwoStageDetector for R-CNN / Fast R-CNN engines: their manifest has "two_stage").

    config: a Detector's thresholds/top-k (default: runtime/nms.py's, or the engine's own in-graph NMS
    settings); top_k: a Classifier's number of classes returned; runner_options: passed to the backend's
    Runner (e.g. {"num_threads": 2} for OpenVINO, {"intra_op_num_threads": 2} for ONNX Runtime).
    Raises a one-line EnginesmithError for a folder that is not an engine, a backend that is not
    installed, or a TensorRT engine built for another TensorRT version or GPU. An engine built without
    `--weights` (seeded, untrained) loads, with a `warnings.warn(..., UntrainedEngineWarning)`; the result's
    `.trained` is False then.
    """
    info = engine_info(engine_dir)
    check_runnable(info)
    warn_if_untrained(info)  # runtime/trained.py: an engine built without --weights says so, once
    if "two_stage" in info.raw:  # R-CNN / Fast R-CNN (issue 8): proposals + host stages, runtime/two_stage.py
        return TwoStageDetector(info, config, runner_options)
    if info.task == "detection":
        return Detector(info, config, runner_options)
    if info.task == "classification":
        return Classifier(info, top_k, runner_options)
    if info.task == "dense" and list(info.outputs) == ["logits"]:
        return Segmenter(info, runner_options)
    raise EnginesmithError(f"{info.folder} is a {info.task} engine with outputs {list(info.outputs)} ({info.model}); "
                           "the runtime supports detection, classification and segmentation engines, not this one yet")


def detections_to_json(dets: list[Detection]) -> list[dict[str, Any]]:
    return [d.to_dict() for d in dets]


__all__ = ["load", "Detector", "Classifier", "Segmenter", "detections_to_json"]
