"""The seed's detection arc measured on this CPU: R-CNN (selective search, one CNN pass per warped region,
SVMs), Fast R-CNN (selective search, one pass with RoI pooling) and Faster R-CNN (proposals learned in the
same graph), with VOC07 mAP and the seconds each stage takes per image.

A row is a (model, target, precision) of a bench suite (benchmarks/suite.py format; batch is ignored: these
detectors take one image at a time). Engines are built by the pipeline (build_engine, INT8 calibrated on the
dataset's train split; an INT8 engine under the cosine check is measured and its cosine reported, as in the
bench); target "torch" runs the PyTorch model eagerly through the same host code.

Two passes per row:
- accuracy: every image of the split with its selective-search proposals from the split cache
  (data/proposals.py; the same boxes for every row), host NMS at the evaluation settings of
  evaluation/predict.py, VOC07 mAP (evaluation/detection_metrics.py). Models without proposals (Faster R-CNN)
  run as they are.
- timing: the first `timing_images` images (after one warm-up image), each end to end as an app runs it,
  selective search included, seconds per stage ("proposals", "warp"/"preprocess", "cnn", "decode", "nms").
FPS = images / total seconds of the timing pass.

    python -P -m enginesmith.benchmarks.proposal_arc --suite benchmarks/suites/rcnn-arc.toml \
        --weights rcnn-vgg16-slim=PATH --weights fast-rcnn-vgg16-slim=PATH --out benchmarks/results/rcnn-arc
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from enginesmith.backends.torch import TorchRunner
from enginesmith.benchmarks.machine import run_header
from enginesmith.benchmarks.suite import BASELINES, load_suite, parse_weights, plan
from enginesmith.calibration.feeds import extra_inputs
from enginesmith.data.datasets import open_dataset
from enginesmith.data.offline_photos import base_photos
from enginesmith.data.proposals import split_proposals
from enginesmith.errors import EnginesmithError
from enginesmith.evaluation.detection_metrics import Predictions, voc_metrics
from enginesmith.evaluation.predict import EVAL_IOU_THRESHOLD, EVAL_MAX_DETECTIONS, EVAL_SCORE_THRESHOLD
from enginesmith.models import registry
from enginesmith.models.weights.checkpoint_info import read_checkpoint_info
from enginesmith.pipeline.run import BuildConfig, build_engine
from enginesmith.progress import progress_bar
from enginesmith.runtime import load, two_stage
from enginesmith.runtime.manifest import engine_info
from enginesmith.runtime.preprocess import preprocess as prep
from enginesmith.runtime.preprocess_override import PreprocessOverride, resolve_preprocess
from enginesmith.runtime.proposals import selective_search
from enginesmith.runtime.two_stage import TwoStageDetector, detect_from_raw

STAGES = ("proposals", "warp", "preprocess", "cnn", "decode", "nms")
KIND_LABEL = {"rcnn": "R-CNN", "fast-rcnn": "Fast R-CNN", None: "single pass"}


@dataclass
class HostModel:
    """One row's model with its host stages: raw(image, proposals, times) -> (boxes, scores) in original pixels."""

    kind: str | None  # "rcnn", "fast-rcnn", or None (one graph, e.g. Faster R-CNN)
    raw: Callable[[np.ndarray, np.ndarray | None, dict[str, float]], tuple[np.ndarray, np.ndarray]]
    close: Callable[[], None]
    description: str


def _timed(times: dict[str, float], key: str, fn: Callable[[], Any]) -> Any:
    t0 = time.perf_counter()
    try:
        return fn()
    finally:
        times[key] = times.get(key, 0.0) + time.perf_counter() - t0


def host_model_from_infer(kind: str | None, infer: Callable[[dict], dict], preprocess: Any, num_classes: int,
                          input_names: list[str], description: str, close: Callable[[], None] = lambda: None,
                          chunk: int = 128) -> HostModel:
    """A HostModel around any `infer(feed) -> outputs` (PyTorch, or an engine Runner)."""
    def proposals(image: np.ndarray, given: np.ndarray | None, times: dict[str, float]) -> np.ndarray:
        return given if given is not None else _timed(times, "proposals", lambda: selective_search(image))

    def raw(image: np.ndarray, given: np.ndarray | None, times: dict[str, float]) -> tuple[np.ndarray, np.ndarray]:
        if kind == "rcnn":
            return two_stage.rcnn_raw(infer, image, proposals(image, given, times), preprocess, num_classes, chunk,
                                      False, times, input_name=input_names[0])
        if kind == "fast-rcnn":
            return two_stage.fast_rcnn_raw(infer, image, proposals(image, given, times), preprocess, None, times,
                                           num_classes=num_classes, input_name=input_names[0], rois_name=input_names[1])
        x, t = _timed(times, "preprocess", lambda: prep(image, preprocess))
        out = _timed(times, "cnn", lambda: infer({input_names[0]: x[None]}))
        return t.to_original(np.asarray(out["boxes"])[0]), np.asarray(out["scores"])[0]

    return HostModel(kind, raw, close, description)


def two_stage_target(target: str | Path, weights: Path | None = None,
                     preprocess: PreprocessOverride | None = None) -> HostModel | None:
    """A HostModel when `target` (engine folder, checkpoint or registered name, as `enginesmith eval` takes) is
    an R-CNN / Fast R-CNN; None otherwise. `preprocess` (--channels, --mean, --std) applies to PyTorch models."""
    path = Path(target)
    if (path / "manifest.json").is_file():
        return engine_host_model(path) if engine_info(path).raw.get("two_stage") else None  # validated manifest
    if path.is_file():
        name = str(read_checkpoint_info(path).get("model") or "")
        weights = path
    else:
        name = str(target)
    if name not in registry.names() or not registry.get(name).two_stage:
        return None
    return torch_host_model(name, weights, None, preprocess)


def torch_host_model(model_name: str, weights: Path | None, input_size: tuple[int, int] | None,
                     preprocess: PreprocessOverride | None = None) -> HostModel:
    """PyTorch eager FP32 through the same host code, fed as the options, the checkpoint or the model say."""
    spec = registry.get(model_name)
    info = read_checkpoint_info(weights) if weights else {}
    size = tuple(input_size or info.get("input_size") or spec.input_size)
    model = spec.create(num_classes=info.get("num_classes"), input_size=size)
    if weights:
        spec.load_weights(model, weights)
    names = ["images", *extra_inputs(spec)[0]]
    runner = TorchRunner(model.eval(), names, list(spec.output_names))
    runner.activate()
    num_classes = int(info.get("num_classes") or spec.num_classes)
    pre, _ = resolve_preprocess(spec.preprocess.with_size(*size), preprocess, info.get("preprocess"), spec.name,
                                str(weights))
    return host_model_from_infer(spec.two_stage, runner.infer, pre, num_classes, names, "PyTorch eager FP32",
                                 runner.deactivate)


def engine_host_model(engine_dir: Path) -> HostModel:
    """A built engine folder: R-CNN / Fast R-CNN through runtime.two_stage, others through their Runner."""
    det = load(engine_dir)
    if isinstance(det, TwoStageDetector):
        def raw(image: np.ndarray, given: np.ndarray | None, times: dict[str, float]):
            return det.raw(image, given, "RGB", times)

        return HostModel(det.kind, raw, det.close, repr(det))
    runner = det._runner  # a single-pass detector: its Runner, timed the same way as the others
    info = det.info
    return host_model_from_infer(None, runner.infer, info.preprocess, len(info.class_names), [info.input_name],
                                 f"{info.target} {info.precision}", det.close)


def predict_split(host: HostModel, dataset: Any, proposals: dict[str, np.ndarray] | None,
                  progress: bool = True) -> list[Any]:
    """Predictions (evaluation/detection_metrics.py) for every image of `dataset`, with the given proposals per
    image id (None: selective search live), host NMS at evaluation/predict.py's evaluation settings."""
    from contextlib import nullcontext

    preds = []
    bar = progress_bar(f"predict: {host.description}", len(dataset)) if progress else nullcontext(lambda n: None)
    with bar as update:
        for i, sample in enumerate(dataset.samples):
            given = proposals.get(sample.image_id) if proposals is not None and host.kind else None
            boxes, scores = host.raw(dataset.load_image(i), given, {})
            rows = detect_from_raw(boxes, scores, EVAL_IOU_THRESHOLD, EVAL_SCORE_THRESHOLD, EVAL_MAX_DETECTIONS)
            preds.append(Predictions(rows[:, :4].astype(np.float32), rows[:, 4].astype(np.float32),
                                     rows[:, 5].astype(np.int64)))
            update(i + 1)
    return preds


def measure(host: HostModel, dataset: Any, proposals: dict[str, np.ndarray] | None, timing_images: int,
            accuracy: bool = True, timing: bool = True) -> dict[str, Any]:
    """The accuracy pass (all images, cached proposals) and the timing pass (selective search live)."""
    result: dict[str, Any] = {}
    if accuracy:
        preds = predict_split(host, dataset, proposals)
        counts = [len(proposals[s.image_id]) for s in dataset.samples] if proposals is not None and host.kind else [0]
        metrics = voc_metrics(preds, dataset)
        result.update(map=100.0 * metrics["voc07_map"], images=len(dataset),
                      proposals_mean=float(np.mean(counts)) if host.kind else None)
    if not timing:
        return result
    n = min(timing_images + 1, len(dataset))
    per_image: list[dict[str, float]] = []
    with progress_bar(f"timing: {host.description}", n) as update:
        for i in range(n):
            image = dataset.load_image(i) if hasattr(dataset, "load_image") else dataset[i]
            times: dict[str, float] = {}
            t0 = time.perf_counter()
            boxes, scores = host.raw(image, None, times)
            _timed(times, "nms", lambda: detect_from_raw(boxes, scores))
            times["total"] = time.perf_counter() - t0
            times["boxes"] = float(len(boxes))
            if i:  # the first image warms caches up
                per_image.append(times)
            update(i + 1)
    total = float(sum(t["total"] for t in per_image))
    stage = {k: float(sum(t.get(k, 0.0) for t in per_image)) / len(per_image) for k in STAGES}
    result.update(timing_images=len(per_image), seconds_per_image=total / len(per_image),
                  fps=len(per_image) / total, stage_seconds=stage,
                  stage_share={k: v / (total / len(per_image)) for k, v in stage.items()},
                  timing_proposals_mean=float(np.mean([t["boxes"] for t in per_image])))
    return result


def run_suite(suite_path: Path, out: Path, weights: dict[str, Path], dataset_dir: Path | None, timing_images: int,
              cache_dir: Path, only: set[str] | None = None, limit: int | None = None,
              passes: str = "both") -> list[dict[str, Any]]:
    """Measure every batch-1 run of the suite; write results.json/md into `out` (engines go to arc-engines/ beside the cache).

    passes: "both", "accuracy" (mAP only: may share the machine) or "timing" (times only, on a quiet machine;
    the mAP of an earlier accuracy pass in `out`/results.json is kept)."""
    suite = load_suite(suite_path)
    runs, skipped = plan(suite, weights, dataset_dir, allow_two_stage=True)
    rows: list[dict[str, Any]] = []
    out.mkdir(parents=True, exist_ok=True)
    header = run_header()
    earlier: dict[tuple[str, str, str], dict[str, Any]] = {}
    if passes == "timing" and (out / "results.json").is_file():
        for r in json.loads((out / "results.json").read_text()).get("rows", []):
            earlier[(r["model"], r["target"], r["precision"])] = r
    for run in runs:
        if run.batch != 1 or (only and run.model not in only):
            continue
        spec = registry.get(run.model)
        kind = spec.two_stage
        accuracy = run.dataset is not None
        if accuracy:
            dataset = open_dataset(Path(run.dataset), run.split)
            if limit:
                dataset = replace(dataset, samples=dataset.samples[:limit])
            proposals = split_proposals(dataset) if kind else None
        else:  # untrained paper-size networks: speed only, on the packaged photographs (scikit-image)
            dataset, proposals = photos(timing_images + 1), None
        row: dict[str, Any] = {"model": run.model, "method": run.method, "stage_kind": KIND_LABEL[kind],
                               "target": run.target, "precision": run.precision,
                               "input_size": f"{run.input_size[0]}x{run.input_size[1]}"}
        try:
            if run.target in BASELINES:
                host = torch_host_model(run.model, run.weights, run.input_size, run.preprocess)
            else:
                built = build_engine(BuildConfig(
                    run.model, target=run.target, precision=run.precision, weights=run.weights,
                    calib=Path(run.dataset) if run.dataset else None, calib_size=suite.calib_size, dynamic_batch=kind == "rcnn",
                    input_size=run.input_size, out=cache_dir.parent / "arc-engines" / f"{run.model}-{run.target}-{run.precision}",
                    cache_dir=cache_dir, record_int8_tolerance=True, latency_budget_s=1.0))
                eng = next(a for a in built.stages if a.stage == "engine")
                row["verify_cosine"] = eng.metrics.get("verify", {}).get("cosine")
                host = engine_host_model(built.out)
            try:
                row.update(measure(host, dataset, proposals, timing_images, accuracy and passes != "timing",
                                   passes != "accuracy"))
                before = earlier.get((run.model, run.target, run.precision), {})
                row.update({k: before[k] for k in ("map", "images", "proposals_mean") if k in before})
            finally:
                host.close()
        except EnginesmithError as e:
            row["error"] = str(e)
        rows.append(row)
        print(json.dumps(row), flush=True)
        (out / "results.json").write_text(json.dumps({**header, "suite": str(suite_path), "rows": rows,
                                                      "skipped": [s.__dict__ for s in skipped]}, indent=2))
    (out / "results.md").write_text(render_markdown(rows, header, suite_path, timing_images))
    return rows


def photos(n: int) -> list[np.ndarray]:
    """The first n of scikit-image's photographs as they ship (no augmentation; astronaut 512x512, chelsea
    300x451, coffee 400x600, rocket 427x640, ...), HxWx3 uint8 RGB."""
    return [np.ascontiguousarray(p) for p in base_photos()[:n]]


def render_markdown(rows: list[dict[str, Any]], header: dict[str, Any], suite_path: Path, timing_images: int) -> str:
    """The arc table: Method, mAP, FPS, # proposals, input resolution, and each stage's share of the time."""
    lines = [f"# The detection arc on this CPU ({suite_path.name})", "",
             f"{header['date']} · {header['machine']} · commit {header.get('commit')}", "",
             "| Method | target | precision | mAP (VOC07) | FPS | s/image | # boxes | input | proposals | warp/prep | "
             "CNN | decode | NMS | cosine |", "|" + "---|" * 14]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['method']} | {r['target']} | {r['precision']} | error: {r['error'][:80]} |" + " |" * 10)
            continue
        cos = r.get("verify_cosine")
        m = "-" if r.get("map") is None else f"{r['map']:.1f}"
        if "stage_share" not in r:  # an accuracy pass only
            lines.append(f"| {r['method']} | {r['target']} | {r['precision']} | {m} |" + " - |" * 9
                         + f" {'' if cos is None else f'{cos:.4f}'} |")
            continue
        share = r["stage_share"]
        prep = share.get("warp", 0.0) + share.get("preprocess", 0.0)
        lines.append(
            f"| {r['method']} | {r['target']} | {r['precision']} | {m} | {r['fps']:.2f} | "
            f"{r['seconds_per_image']:.3f} | {r['timing_proposals_mean']:.0f} | {r['input_size']} | "
            f"{100 * share['proposals']:.0f}% | {100 * prep:.0f}% | {100 * share['cnn']:.0f}% | "
            f"{100 * share['decode']:.0f}% | {100 * share['nms']:.0f}% | {'' if cos is None else f'{cos:.4f}'} |")
    counted = sorted({int(r["images"]) for r in rows if r.get("images")})
    lines += ["", f"mAP (VOC07 11-point, in points): {'/'.join(map(str, counted)) or 'no'} images of the split, with the "
              "cached selective-search proposals; FPS and stage shares: "
              f"{timing_images} images end to end (selective search live) after one warm-up image. # boxes (the SSD "
              "paper's column): per timed image, the mean number of selective-search proposals for R-CNN and Fast "
              "R-CNN (R-CNN runs its CNN once per proposal), the head's candidate boxes for single-pass detectors "
              "(Faster R-CNN: its kept RPN proposals). Stage shares are of the whole time per image; the rest is "
              "Python glue."]
    versions = ", ".join(f"{k} {v}" for k, v in header["versions"].items() if v)
    lines += ["", f"Versions: {versions}", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--suite", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--weights", action="append", default=[], help="MODEL=PATH")
    p.add_argument("--dataset", type=Path, default=None)
    p.add_argument("--timing-images", type=int, default=20)
    p.add_argument("--models", default=None, help="comma-separated subset of the suite's models")
    p.add_argument("--cache-dir", type=Path, default=Path("build/.cache"))
    p.add_argument("--limit", type=int, default=None, help="only the first N images of the split for mAP")
    p.add_argument("--passes", choices=("both", "accuracy", "timing"), default="both",
                   help="accuracy: mAP only; timing: times only, keeping the mAP already in OUT/results.json")
    a = p.parse_args(argv)
    only = set(a.models.split(",")) if a.models else None
    try:
        run_suite(a.suite, a.out, parse_weights(a.weights, []), a.dataset, a.timing_images, a.cache_dir, only, a.limit,
                  a.passes)
    except EnginesmithError as e:
        raise SystemExit(f"error: {e}")


if __name__ == "__main__":
    main()
