"""R-CNN / Fast R-CNN host stages (runtime/two_stage.py) on real engines: small ONNX files exported from the
zoo's rcnn-vgg16-slim (64x64) and fast-rcnn-vgg16-slim (128x128, dynamic rois), run by ONNX Runtime and
OpenVINO, compared with PyTorch on hand-warped regions and a hand-written decode, and NMS with a naive loop."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from enginesmith.errors import EnginesmithError
from enginesmith.runtime.manifest import ENGINE_SCHEMA, SCHEMA_VERSION
from enginesmith.runtime.preprocess import PreprocessSpec, preprocess
from enginesmith.runtime.region_warp import context_pad, mean_pixel, warp_regions
from enginesmith.runtime.two_stage import (FixedProposals, TwoStageDetector, detect_from_raw, fast_rcnn_raw, rcnn_raw,
                                           with_proposals)

torch = pytest.importorskip("torch")
os.environ.setdefault("OMP_NUM_THREADS", "1")

RCNN_C, FAST_C = 4, 5
RCNN_SIZE, FAST_SIZE = 64, 128
STATIC = 4
NAMES = ("circle", "square", "digit", "face", "cup")


def _photo(h: int, w: int) -> np.ndarray:
    from PIL import Image
    from skimage import data

    return np.asarray(Image.fromarray(data.astronaut()).resize((w, h), Image.BILINEAR))


def _random_boxes(rng: np.random.Generator, n: int, w: float, h: float, outside: bool = True) -> np.ndarray:
    lo = -0.1 if outside else 0.0
    x1 = rng.uniform(lo * w, 0.8 * w, n)
    y1 = rng.uniform(lo * h, 0.8 * h, n)
    bw, bh = rng.uniform(4, 0.6 * w, n), rng.uniform(4, 0.6 * h, n)
    x2, y2 = x1 + bw, y1 + bh
    if not outside:
        x2, y2 = np.minimum(x2, w), np.minimum(y2, h)
    return np.stack([x1, y1, x2, y2], 1).astype(np.float32)


# -- engines ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def models() -> dict[str, Any]:
    from enginesmith.models import registry

    torch.set_num_threads(1)
    rcnn = registry.get("rcnn-vgg16-slim").create(num_classes=RCNN_C, input_size=(RCNN_SIZE, RCNN_SIZE))
    with torch.no_grad():  # regressors big enough that decoding matters, SVMs spread around margin 0
        rcnn.bbox_reg.weight.mul_(30.0)
        rcnn.svm.weight.mul_(8.0)
    fast = registry.get("fast-rcnn-vgg16-slim").create(num_classes=FAST_C, input_size=(FAST_SIZE, FAST_SIZE))
    with torch.no_grad():
        fast.roi_heads.box_predictor.bbox_pred.weight.mul_(50.0)
        fast.roi_heads.box_predictor.cls_score.weight.mul_(20.0)
    return {"rcnn": rcnn, "fast": fast, "rcnn_spec": registry.get("rcnn-vgg16-slim").preprocess,
            "fast_spec": registry.get("fast-rcnn-vgg16-slim").preprocess.with_size(FAST_SIZE, FAST_SIZE)}


@pytest.fixture(scope="module")
def onnx_files(models, tmp_path_factory) -> dict[str, Path]:
    from enginesmith.pipeline.export import export_onnx

    root = tmp_path_factory.mktemp("two-stage-onnx")
    out = {"rcnn": root / "rcnn.onnx", "rcnn_static": root / "rcnn_b4.onnx", "fast": root / "fast.onnx"}
    export_onnx(models["rcnn"], out["rcnn"], (1, 3, RCNN_SIZE, RCNN_SIZE), ("scores", "deltas"), True)
    export_onnx(models["rcnn"], out["rcnn_static"], (STATIC, 3, RCNN_SIZE, RCNN_SIZE), ("scores", "deltas"), False)
    rois = np.array([[10, 10, 100, 120], [0, 0, 128, 128], [30, 40, 60, 90]], np.float32)
    export_onnx(models["fast"], out["fast"], (1, 3, FAST_SIZE, FAST_SIZE), ("boxes", "scores"), False,
                extra_inputs={"rois": rois}, extra_axes={"rois": {0: "rois"}, "boxes": {1: "rois"}, "scores": {1: "rois"}})
    yield out
    shutil.rmtree(root, ignore_errors=True)


def _ort(path: Path):
    from enginesmith.backends.onnxruntime import Runner

    return Runner(path, intra_op_num_threads=1)


def _openvino(path: Path, out_dir: Path):
    import openvino as ov

    from enginesmith.backends.openvino import Runner

    xml = out_dir / (path.stem + ".xml")
    ov.save_model(ov.convert_model(str(path)), str(xml))
    return Runner(xml, num_threads=1)


class Recorder:
    """An infer that records the shapes of every feed."""

    def __init__(self, infer) -> None:
        self.infer, self.calls = infer, []

    def __call__(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.calls.append({k: tuple(v.shape) for k, v in feed.items()})
        return self.infer(feed)


def _never(feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    raise AssertionError("the engine must not run without proposals")


# -- references -------------------------------------------------------------------------------------------
def rcnn_reference(model, image: np.ndarray, props: np.ndarray, spec: PreprocessSpec) -> tuple[np.ndarray, np.ndarray]:
    """Warp every region, run the PyTorch R-CNN on it alone, decode each class's box by the paper's formulas."""
    h, w = image.shape[:2]
    crops = warp_regions(image, props, RCNN_SIZE, context_pad(RCNN_SIZE), mean_pixel(spec)).astype(np.float64)
    x = ((crops / 255.0 - np.array(spec.mean)) / np.array(spec.std)).transpose(0, 3, 1, 2).astype(np.float32)
    scores = np.zeros((len(props), RCNN_C))
    boxes = np.zeros((len(props), RCNN_C, 4))
    with torch.no_grad():
        for i, (p, xi) in enumerate(zip(props.astype(np.float64), x)):
            s, d = (t.numpy()[0].astype(np.float64) for t in model(torch.from_numpy(xi[None])))
            scores[i] = s
            pw, ph = p[2] - p[0], p[3] - p[1]
            pcx, pcy = p[0] + pw / 2, p[1] + ph / 2
            for c in range(RCNN_C):
                tx, ty, tw, th = d[c]
                cx, cy, bw, bh = pcx + pw * tx, pcy + ph * ty, pw * math.exp(tw), ph * math.exp(th)
                boxes[i, c] = [min(max(cx - bw / 2, 0), w), min(max(cy - bh / 2, 0), h),
                               min(max(cx + bw / 2, 0), w), min(max(cy + bh / 2, 0), h)]
    return boxes, scores


def naive_iou(a: np.ndarray, b: np.ndarray) -> float:
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def naive_detect(boxes: np.ndarray, scores: np.ndarray, iou: float, thr: float, k: int) -> list[tuple]:
    rows = []
    for c in range(scores.shape[1]):
        box = (lambda i: boxes[i, c]) if boxes.ndim == 3 else (lambda i: boxes[i])
        cand = sorted((i for i in range(len(scores)) if scores[i, c] > thr), key=lambda i: -float(scores[i, c]))
        kept: list[int] = []
        for i in cand:
            if all(naive_iou(box(i).astype(np.float64), box(j).astype(np.float64)) <= iou for j in kept):
                kept.append(i)
        rows += [(float(scores[i, c]), c, i, tuple(float(v) for v in box(i))) for i in kept[:k]]
    rows.sort(key=lambda r: (-r[0], r[1], r[2]))
    return rows[:k]


# -- R-CNN ------------------------------------------------------------------------------------------------
def test_rcnn_raw_matches_pytorch_per_region(models, onnx_files) -> None:
    rng = np.random.default_rng(0)
    img = _photo(120, 170)
    props = _random_boxes(rng, 37, 170, 120)
    spec = models["rcnn_spec"]
    times: dict[str, float] = {}
    with _ort(onnx_files["rcnn"]) as runner:
        rec = Recorder(runner.infer)
        boxes, scores = rcnn_raw(rec, img, props, spec, RCNN_C, chunk=16, times=times)
    assert [c["images"] for c in rec.calls] == [(16, 3, 64, 64), (16, 3, 64, 64), (5, 3, 64, 64)]
    assert boxes.shape == (37, RCNN_C, 4) and scores.shape == (37, RCNN_C)
    assert boxes.dtype == np.float32 and scores.dtype == np.float32
    assert set(times) == {"warp", "cnn", "decode"} and all(v > 0 for v in times.values())
    ref_boxes, ref_scores = rcnn_reference(models["rcnn"], img, props, spec)
    assert 0.05 < scores.mean() < 0.95 and scores.std() > 0.02  # not saturated: the comparison means something
    assert np.abs(ref_boxes - props[:, None].astype(np.float64)).max() > 5  # the regression moved the boxes
    np.testing.assert_allclose(scores, ref_scores, atol=2e-5)
    np.testing.assert_allclose(boxes, ref_boxes, atol=2e-3)


def test_rcnn_chunks_and_static_batch_padding_equal_one_call(models, onnx_files, tmp_path) -> None:
    rng = np.random.default_rng(1)
    img = _photo(90, 110)
    props = _random_boxes(rng, 10, 110, 90)
    spec = models["rcnn_spec"]
    with _ort(onnx_files["rcnn"]) as runner:
        one = rcnn_raw(runner.infer, img, props, spec, RCNN_C, chunk=100)
        for chunk in (1, 3, 7):
            part = rcnn_raw(runner.infer, img, props, spec, RCNN_C, chunk=chunk)
            for a, b in zip(part, one):
                np.testing.assert_allclose(a, b, atol=1e-5)
    with _ort(onnx_files["rcnn_static"]) as runner:
        rec = Recorder(runner.infer)
        static = rcnn_raw(rec, img, props, spec, RCNN_C, chunk=STATIC, static_batch=True)
        assert [c["images"][0] for c in rec.calls] == [STATIC] * 3  # 4 + 4 + 2 regions padded to 4
        with pytest.raises(EnginesmithError):  # what the padding is for: the static engine refuses 2 regions
            rcnn_raw(runner.infer, img, props, spec, RCNN_C, chunk=STATIC, static_batch=False)
    for a, b in zip(static, one):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, atol=1e-5)
    # OpenVINO runs the same engine to the same numbers
    with _openvino(onnx_files["rcnn"], tmp_path) as runner:
        ov = rcnn_raw(runner.infer, img, props, spec, RCNN_C, chunk=4)
    np.testing.assert_allclose(ov[1], one[1], atol=1e-3)
    np.testing.assert_allclose(ov[0], one[0], atol=0.1)  # px: OpenVINO's kernels differ by ~1e-4 in the deltas


def test_rcnn_empty_and_bad_input(models) -> None:
    spec = models["rcnn_spec"]
    img = _photo(50, 60)
    boxes, scores = rcnn_raw(_never, img, np.zeros((0, 4), np.float32), spec, RCNN_C, chunk=8)
    assert boxes.shape == (0, RCNN_C, 4) and scores.shape == (0, RCNN_C)
    with pytest.raises(EnginesmithError, match="uint8"):
        rcnn_raw(_never, img.astype(np.float32), np.zeros((1, 4)), spec, RCNN_C, chunk=8)
    with pytest.raises(EnginesmithError, match="square"):
        rcnn_raw(_never, img, np.zeros((1, 4)), spec.with_size(64, 48), RCNN_C, chunk=8)

    def wrong(feed):  # an engine whose class count is not the manifest's
        n = len(feed["images"])
        return {"scores": np.zeros((n, 3), np.float32), "deltas": np.zeros((n, 3, 4), np.float32)}

    with pytest.raises(EnginesmithError, match="class") as e:
        rcnn_raw(wrong, img, np.array([[0, 0, 10, 10]], np.float32), spec, RCNN_C, chunk=8)
    assert "\n" not in str(e.value)


# -- Fast R-CNN -------------------------------------------------------------------------------------------
def fast_reference(model, image: np.ndarray, props: np.ndarray, spec: PreprocessSpec) -> tuple[np.ndarray, np.ndarray]:
    h, w = image.shape[:2]
    x, _ = preprocess(image, spec)
    sx, sy = FAST_SIZE / w, FAST_SIZE / h
    rois = (props.astype(np.float64) * [sx, sy, sx, sy]).astype(np.float32)
    with torch.no_grad():
        b, s = (t.numpy()[0].astype(np.float64) for t in model(torch.from_numpy(x[None]), torch.from_numpy(rois)))
    b = b / [sx, sy, sx, sy]
    b[:, 0::2] = b[:, 0::2].clip(0, w)
    b[:, 1::2] = b[:, 1::2].clip(0, h)
    return b, s


def test_fast_rcnn_raw_matches_pytorch_and_max_rois_splits(models, onnx_files, tmp_path) -> None:
    rng = np.random.default_rng(2)
    img = _photo(100, 150)  # not square: the stretch maps x and y differently
    props = _random_boxes(rng, 23, 150, 100, outside=False)
    spec = models["fast_spec"]
    times: dict[str, float] = {}
    with _ort(onnx_files["fast"]) as runner:
        boxes, scores = fast_rcnn_raw(runner.infer, img, props, spec, times=times)
        rec = Recorder(runner.infer)
        split = fast_rcnn_raw(rec, img, props, spec, max_rois=5)
    assert boxes.shape == (23, 4) and scores.shape == (23, FAST_C)
    assert set(times) == {"preprocess", "cnn", "decode"}
    assert [c["rois"] for c in rec.calls] == [(5, 4)] * 4 + [(3, 4)]
    assert all(c["images"] == (1, 3, FAST_SIZE, FAST_SIZE) for c in rec.calls)
    ref_boxes, ref_scores = fast_reference(models["fast"], img, props, spec)
    assert scores.std() > 0.02 and np.abs(ref_boxes - props).max() > 3
    np.testing.assert_allclose(scores, ref_scores, atol=2e-5)
    np.testing.assert_allclose(boxes, ref_boxes, atol=2e-3)
    np.testing.assert_allclose(split[0], boxes, atol=1e-4)
    np.testing.assert_allclose(split[1], scores, atol=1e-5)
    with _openvino(onnx_files["fast"], tmp_path) as runner:
        ov = fast_rcnn_raw(runner.infer, img, props, spec, max_rois=16)
    np.testing.assert_allclose(ov[0], boxes, atol=2e-2)
    np.testing.assert_allclose(ov[1], scores, atol=1e-3)
    b, s = fast_rcnn_raw(_never, img, np.zeros((0, 4)), spec, num_classes=FAST_C)
    assert b.shape == (0, 4) and s.shape == (0, FAST_C)


# -- NMS --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(6))
def test_detect_from_raw_equals_a_naive_per_class_loop(seed: int) -> None:
    rng = np.random.default_rng(seed)
    p, c = 60, 3
    centres = rng.uniform(20, 180, (6, 2))[rng.integers(0, 6, p)] + rng.normal(0, 6, (p, 2))
    sizes = rng.uniform(15, 60, (p, 1, 2)) + rng.normal(0, 4, (p, c, 2))
    per_class = np.concatenate([centres[:, None] - sizes / 2, centres[:, None] + sizes / 2], -1).astype(np.float32)
    scores = rng.uniform(0, 1, (p, c)).astype(np.float32)
    for boxes in (per_class, per_class[:, 0]):
        for iou, thr, k in ((0.45, 0.25, 100), (0.3, 0.5, 7), (0.7, 0.0, 1000)):
            got = detect_from_raw(boxes, scores, iou, thr, k)
            ref = naive_detect(boxes, scores, iou, thr, k)
            assert got.shape == (len(ref), 6) and got.dtype == np.float32
            assert [(float(r[4]), int(r[5])) for r in got] == [(r[0], r[1]) for r in ref]
            np.testing.assert_array_equal(got[:, :4], np.array([r[3] for r in ref], np.float32).reshape(-1, 4))
    # only some classes; class-agnostic = one class holding each proposal's best score and box
    only = detect_from_raw(per_class, scores, 0.45, 0.25, 100, classes=[1])
    assert set(only[:, 5].tolist()) <= {1.0}
    np.testing.assert_array_equal(only, detect_from_raw(per_class[:, 1:2], scores[:, 1:2], 0.45, 0.25, 100)
                                  + np.array([0, 0, 0, 0, 0, 1], np.float32))
    agn = detect_from_raw(per_class, scores, 0.45, 0.25, 100, class_agnostic=True)
    best = scores.argmax(1)
    ref = naive_detect(per_class[np.arange(p), best][:, None], scores[np.arange(p), best][:, None], 0.45, 0.25, 100)
    assert [(float(r[4]), int(r[5])) for r in agn] == [(r[0], int(best[r[2]])) for r in ref]


def test_detect_from_raw_edge_cases() -> None:
    assert detect_from_raw(np.zeros((0, 3, 4)), np.zeros((0, 3)), 0.5, 0.1, 10).shape == (0, 6)
    assert detect_from_raw(np.zeros((0, 4)), np.zeros((0, 3)), 0.5, 0.1, 10).shape == (0, 6)
    one = detect_from_raw(np.array([[1, 2, 3, 4]], np.float32), np.array([[0.2, 0.9]], np.float32), 0.5, 0.1, 10)
    assert one.tolist() == [[1, 2, 3, 4, pytest.approx(0.9), 1], [1, 2, 3, 4, pytest.approx(0.2), 0]]
    with pytest.raises(EnginesmithError, match=r"\[P, 4\] or \[P, C, 4\]"):
        detect_from_raw(np.zeros((3, 2, 4)), np.zeros((3, 5)), 0.5, 0.1, 10)


# -- TwoStageDetector through runtime.load() on hand-made engine folders ----------------------------------
def _folder(root: Path, onnx: Path, model: str, kind: str, spec: PreprocessSpec, shape: list, outputs: list[str],
            names: tuple[str, ...], **extra: Any) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    shutil.copy(onnx, root / "model.onnx")
    manifest = {"schema": ENGINE_SCHEMA, "schema_version": SCHEMA_VERSION,
                "model": model, "task": "detection", "target": "onnxruntime", "precision": "fp32",
                "engine": "model.onnx", "input": {"name": "images", "shape": shape}, "outputs": outputs, "nms": "host",
                "preprocess": spec.to_dict(), "class_names": list(names), "trained": False,
                "two_stage": {"kind": kind, "proposals": {"method": "selective-search", "mode": "fast",
                                                          "max_proposals": 300}}, **extra}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


@pytest.fixture(scope="module")
def folders(models, onnx_files, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("two-stage-engines")
    fast_spec = models["fast_spec"]
    return {
        "rcnn": _folder(root / "rcnn", onnx_files["rcnn"], "rcnn-vgg16-slim", "rcnn", models["rcnn_spec"],
                        ["batch", 3, RCNN_SIZE, RCNN_SIZE], ["scores", "deltas"], NAMES[:RCNN_C]),
        "rcnn_static": _folder(root / "rcnn4", onnx_files["rcnn_static"], "rcnn-vgg16-slim", "rcnn",
                               models["rcnn_spec"], [STATIC, 3, RCNN_SIZE, RCNN_SIZE], ["scores", "deltas"],
                               NAMES[:RCNN_C]),
        "fast": _folder(root / "fast", onnx_files["fast"], "fast-rcnn-vgg16-slim", "fast-rcnn", fast_spec,
                        [1, 3, FAST_SIZE, FAST_SIZE], ["boxes", "scores"], NAMES[:FAST_C], max_rois=6,
                        inputs=[{"name": "images", "shape": [1, 3, FAST_SIZE, FAST_SIZE]},
                                {"name": "rois", "shape": ["rois", 4]}]),
    }


def test_load_gives_a_two_stage_detector(folders, models, onnx_files) -> None:
    from enginesmith.runtime import load
    from enginesmith.runtime.types import Detection, DetectorConfig

    rng = np.random.default_rng(3)
    img = _photo(96, 128)
    props = _random_boxes(rng, 30, 128, 96)
    with load(folders["rcnn"], config=DetectorConfig(score_threshold=0.3, iou_threshold=0.4)) as det, \
            load(folders["rcnn_static"]) as det4, _ort(onnx_files["rcnn"]) as runner:
        assert isinstance(det, TwoStageDetector) and det.kind == "rcnn" and det.chunk == 128 and not det.static_batch
        assert det4.chunk == STATIC and det4.static_batch
        dets = det(img, props)
        assert set(det.last_times) == {"proposals", "warp", "cnn", "decode", "nms"} and det.last_times["cnn"] > 0
        raw = rcnn_raw(runner.infer, img, props, models["rcnn_spec"], RCNN_C, 128)
        want = detect_from_raw(*raw, 0.4, 0.3, 100)
        assert len(dets) == len(want) > 0 and all(isinstance(d, Detection) for d in dets)
        for d, r in zip(dets, want):
            assert d.class_name == NAMES[int(r[5])] and d.class_id == int(r[5])
            np.testing.assert_allclose([*d.box, d.score], r[:5], atol=1e-5)
        det4.configure(score_threshold=0.3, iou_threshold=0.4)
        dets4 = det4(img, props)
        assert [(d.class_id, round(d.score, 4)) for d in dets4] == [(d.class_id, round(d.score, 4)) for d in dets]
        # batch(): one proposal array per image; no proposals -> no detections, and no engine call
        both = det.batch([img, img[:, ::-1]], [props, np.zeros((0, 4), np.float32)])
        assert both[1] == [] and [x.box for x in both[0]] == [x.box for x in dets]
        assert det(img, np.zeros((0, 4))) == [] and det.last_times["cnn"] == 0.0
        for bad in (np.zeros((5, 5)), np.zeros(4), [[1, 2, 0, 3]]):
            with pytest.raises(EnginesmithError) as e:
                det(img, bad)
            assert "\n" not in str(e.value)
        with pytest.raises(EnginesmithError, match="proposal arrays"):
            det.batch([img, img], [props])


def test_fast_rcnn_detector_splits_rois_and_maps_back(folders, models, onnx_files) -> None:
    from enginesmith.runtime import load

    rng = np.random.default_rng(4)
    img = _photo(100, 150)
    props = _random_boxes(rng, 20, 150, 100, outside=False)
    with load(folders["fast"]) as det, _ort(onnx_files["fast"]) as runner:
        assert det.kind == "fast-rcnn" and det.max_rois == 6 and det.rois_name == "rois"
        calls: list = []
        inner = det._runner.infer
        det._runner.infer = lambda feed: (calls.append(feed["rois"].shape), inner(feed))[1]  # type: ignore[method-assign]
        det.configure(score_threshold=0.05)
        dets = det(img, props)
        assert calls == [(6, 4)] * 3 + [(2, 4)]
        assert set(det.last_times) == {"proposals", "preprocess", "cnn", "decode", "nms"}
        want = detect_from_raw(*fast_rcnn_raw(runner.infer, img, props, models["fast_spec"]), 0.45, 0.05, 100)
        assert len(dets) == len(want) > 0
        for d, r in zip(dets, want):
            np.testing.assert_allclose([*d.box, d.score, d.class_id], r, atol=1e-4)
            assert 0 <= d.box[0] <= d.box[2] <= 150 and 0 <= d.box[1] <= d.box[3] <= 100


def test_detector_runs_selective_search_without_proposals(folders, monkeypatch) -> None:
    pytest.importorskip("cv2")
    from enginesmith.runtime import load

    img = _photo(96, 96)
    with load(folders["fast"]) as det:
        det.configure(score_threshold=0.0)
        dets = det(img)
        assert det.last_times["proposals"] > 0 and det.last_times["cnn"] > 0
        assert 0 < len(dets) <= 100
        monkeypatch.setattr(det, "proposals", lambda image: np.zeros((0, 4), np.float32))  # a flat image
        assert det(np.zeros((40, 40, 3), np.uint8)) == []


def test_detect_files_and_proposals_file(folders, tmp_path) -> None:
    """What `enginesmith detect ENGINE IMAGE [--proposals FILE]` runs (runtime/files.py detect_files)."""
    from PIL import Image

    from enginesmith.runtime import load
    from enginesmith.runtime.files import detect_files

    img = _photo(80, 100)
    Image.fromarray(img).save(tmp_path / "a.png")
    props = np.array([[5, 5, 60, 70], [20, 10, 90, 75], [0, 0, 100, 80]], np.float32)
    np.save(tmp_path / "p.npy", props)
    np.save(tmp_path / "bad.npy", np.zeros((3, 5), np.float32))
    with load(folders["rcnn"]) as det:
        det.configure(score_threshold=0.2)
        view = with_proposals(det, tmp_path / "p.npy", [tmp_path / "a.png"])
        assert isinstance(view, FixedProposals)
        summary = detect_files(view, [tmp_path / "a.png"], tmp_path / "out")
        doc = json.loads((tmp_path / "out" / "detections.json").read_text())
        assert doc["model"] == "rcnn-vgg16-slim" and doc["nms"] == "host" and summary.timed_images == 1
        assert doc["images"][0]["detections"] == [d.to_dict() for d in det(img, props)]
        with pytest.raises(EnginesmithError, match=r"\[P, 4\]") as e:
            with_proposals(det, tmp_path / "bad.npy", [tmp_path / "a.png"])
        assert "\n" not in str(e.value)
        with pytest.raises(EnginesmithError, match="one image"):
            with_proposals(det, tmp_path / "p.npy", [tmp_path / "a.png", tmp_path / "a.png"])


# -- an engine folder made by build-engine -----------------------------------------------------------------
def test_built_fast_rcnn_engine_end_to_end(cache_dir, tmp_path) -> None:
    """build_engine -> runtime.load() -> TwoStageDetector; its raw outputs equal the PyTorch model's (same seed)."""
    from enginesmith.models import registry
    from enginesmith.pipeline.run import BuildConfig, build_engine
    from enginesmith.runtime import load

    out = tmp_path / "fast"
    build_engine(BuildConfig("fast-rcnn-vgg16-slim", target="onnxruntime", precision="fp32", input_size=(128, 128),
                             calib_size=2, out=out, cache_dir=cache_dir, latency_budget_s=0.2))
    spec = registry.get("fast-rcnn-vgg16-slim")
    model = spec.create(input_size=(128, 128))  # build-engine's untrained weights are "seeded:0"
    img = _photo(90, 140)
    props = _random_boxes(np.random.default_rng(5), 12, 140, 90, outside=False)
    with load(out) as det:
        assert isinstance(det, TwoStageDetector) and det.kind == "fast-rcnn" and det.rois_name == "rois"
        assert det.class_names == spec.class_names and det.max_proposals == 2000 and det.proposal_mode == "fast"
        boxes, scores = det.raw(img, props)
        ref_boxes, ref_scores = fast_reference(model, img, props, spec.preprocess.with_size(128, 128))
        np.testing.assert_allclose(scores, ref_scores, atol=2e-5)
        np.testing.assert_allclose(boxes, ref_boxes, atol=2e-3)
        det.configure(score_threshold=0.0, max_detections=20)
        dets = det(img, props)
        want = detect_from_raw(boxes, scores, det.config.iou_threshold, 0.0, 20)
        assert [(d.class_id, d.score) for d in dets] == [(int(r[5]), float(r[4])) for r in want]
        assert det(img, np.zeros((0, 4))) == []
        if _has_ximgproc():
            assert len(det(img)) == 20 and det.last_times["proposals"] > 0


def _has_ximgproc() -> bool:
    try:
        import cv2
    except ImportError:
        return False
    return hasattr(getattr(cv2, "ximgproc", None), "segmentation")
