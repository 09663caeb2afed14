"""R-CNN and Fast R-CNN through build-engine (issue 8): feeds made from real photos by selective search, INT8
calibration on those feeds (NNCF on OpenVINO, Q/DQ on ONNX Runtime), the manifest's host-stage section, and
`enginesmith eval` of a built engine against the PyTorch model through the same host code. Real ONNX files,
real engines, real images (the offline set's photos and objects)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from enginesmith.errors import EnginesmithError

pytest.importorskip("cv2.ximgproc")


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from enginesmith.data.offline_detection import generate_offline_dataset

    return generate_offline_dataset(tmp_path_factory.mktemp("tiny") / "offline", images=14, seed=3)


def _build(model: str, target: str, precision: str, out: Path, cache: Path, calib: Path | None = None, **kw):
    from enginesmith.pipeline.run import BuildConfig, build_engine

    seen: list = []
    result = build_engine(BuildConfig(model, target=target, precision=precision, calib=calib, calib_size=3, out=out,
                                      cache_dir=cache, latency_budget_s=0.05, **kw), on_stage=seen.append)
    result.all_stages = {a.stage: a for a in seen}  # statistics/quantize stages too
    return result


# onnxruntime: -m slow only; CI calibrates ONNX Runtime on proposal feeds through R-CNN's build in this file
@pytest.mark.parametrize("target", ["openvino", pytest.param("onnxruntime", marks=pytest.mark.slow)])
def test_fast_rcnn_int8_engine_calibrated_on_proposal_feeds(target, tiny_set, cache_dir, tmp_path) -> None:
    result = _build("fast-rcnn-vgg16-slim", target, "int8", tmp_path / "e", cache_dir, calib=tiny_set,
                    input_size=(128, 128))
    manifest = json.loads((result.out / "manifest.json").read_text())
    assert manifest["two_stage"]["kind"] == "fast-rcnn"
    assert manifest["inputs"][1] == {"name": "rois", "shape": ["rois", 4]}
    stages = result.all_stages
    quant = stages["quantize-nncf" if target == "openvino" else "statistics"]
    assert quant.manifest["params"]["calibration"]["feeds"] == "fast_rcnn_rois"
    # the engine was verified on real proposals of real images: its outputs stay close to FP32
    assert stages["engine"].metrics["verify"]["cosine"] >= 0.99


def test_rcnn_defaults_to_a_dynamic_batch_and_chunks_any_number_of_regions(tiny_set, cache_dir, tmp_path) -> None:
    from enginesmith.backends.torch import TorchRunner
    from enginesmith.data.datasets import open_dataset
    from enginesmith.models import registry
    from enginesmith.runtime import load
    from enginesmith.runtime.two_stage import rcnn_raw

    result = _build("rcnn-vgg16-slim", "onnxruntime", "int8", tmp_path / "e", cache_dir, calib=tiny_set)
    manifest = json.loads((result.out / "manifest.json").read_text())
    assert manifest["input"]["shape"][0] == "batch"
    ds = open_dataset(tiny_set, "test")
    image = ds.load_image(0)
    det = load(result.out)
    props = det.proposals(image)
    assert len(props) > 200  # more regions than one engine call takes (128): several chunks
    boxes, scores = det.raw(image, props)
    spec = registry.get("rcnn-vgg16-slim")
    model = spec.create()  # the same seeded weights the build used
    with TorchRunner(model, "images", ["scores", "deltas"]) as ref:
        ref_boxes, ref_scores = rcnn_raw(ref.infer, image, props, spec.preprocess, spec.num_classes, chunk=len(props))
    det.close()
    assert boxes.shape == ref_boxes.shape == (len(props), spec.num_classes, 4)
    cos = float(np.dot(scores.ravel(), ref_scores.ravel()) / np.linalg.norm(scores) / np.linalg.norm(ref_scores))
    assert cos > 0.99, cos  # INT8 engine vs FP32 PyTorch, every region of a real image


def test_eval_of_a_fast_rcnn_engine_equals_pytorch_through_the_same_host_code(tiny_set, cache_dir, tmp_path,
                                                                               monkeypatch) -> None:
    from enginesmith.benchmarks.evaluate import evaluate

    monkeypatch.setenv("ENGINESMITH_CACHE", str(cache_dir))
    result = _build("fast-rcnn-vgg16-slim", "onnxruntime", "fp32", tmp_path / "e", cache_dir)
    engine = evaluate(result.out, tiny_set, "test", progress=False)
    torch_ = evaluate("fast-rcnn-vgg16-slim", tiny_set, "test", progress=False)
    assert engine["images"] == torch_["images"] == 2
    assert engine["voc07_map"] == pytest.approx(torch_["voc07_map"], abs=1e-6)
    assert engine["map"] == pytest.approx(torch_["map"], abs=1e-6)
    counts = {k: c["detections"] for k, c in engine["per_class"].items()}
    assert counts == {k: c["detections"] for k, c in torch_["per_class"].items()}
    assert sum(counts.values()) > 50  # the low evaluation threshold keeps many (untrained) detections to compare
    assert engine["timing"]["batch"] == 1


def test_build_refuses_engine_nms_and_val_for_two_stage_models(tmp_path, cache_dir, tiny_set) -> None:
    with pytest.raises(EnginesmithError, match="host"):
        _build("fast-rcnn-vgg16-slim", "onnxruntime", "fp32", tmp_path / "a", cache_dir, nms="engine")
    from enginesmith.pipeline.run import BuildConfig, validate

    with pytest.raises(EnginesmithError, match="MaxRoiPool"):  # before the (absent here) TensorRT check
        validate(BuildConfig("fast-rcnn-vgg16-slim", target="tensorrt"))
    with pytest.raises(EnginesmithError, match="enginesmith eval"):
        _build("rcnn-vgg16-slim", "onnxruntime", "fp32", tmp_path / "b", cache_dir, val=tiny_set)


def test_feed_maker_shapes_and_roi_scaling() -> None:
    from enginesmith.calibration.feeds import FeedMaker
    from enginesmith.models import registry
    from enginesmith.runtime.preprocess import preprocess
    from skimage import data

    image = np.ascontiguousarray(data.astronaut()[:300, :420])
    spec = registry.get("rcnn-vgg16-slim").preprocess
    static = FeedMaker("rcnn_regions", spec, static_batch=5)
    feeds = static(image)
    assert [f["images"].shape for f in feeds] == [(5, 3, 64, 64)] * 7  # 32 regions rounded up to 35
    assert static.feeds_per_image == 7
    dynamic = FeedMaker("rcnn_regions", spec)(image)
    assert [f["images"].shape for f in dynamic] == [(32, 3, 64, 64)]
    fspec = registry.get("fast-rcnn-vgg16-slim").preprocess
    maker = FeedMaker("fast_rcnn_rois", fspec)
    (feed,) = maker(image)
    props = maker.proposals(image)
    x, t = preprocess(image, fspec)
    np.testing.assert_array_equal(feed["images"][0], x)
    assert feed["rois"].shape == (min(300, len(props)), 4)
    # rois are the first proposals in input pixels: x * 320 / 420, y * 320 / 300
    np.testing.assert_allclose(feed["rois"][:, 0], props[: len(feed["rois"]), 0] * 320 / 420, rtol=1e-6)
    np.testing.assert_allclose(feed["rois"][:, 3], props[: len(feed["rois"]), 3] * 320 / 300, rtol=1e-6)


def test_run_batches_flattens_outputs_whose_rows_differ() -> None:
    from enginesmith.pipeline.build import run_batches

    class Echo:
        def infer(self, feed):
            return {"boxes": feed["rois"][None]}

    rois = [np.arange(8, dtype=np.float32).reshape(2, 4), np.arange(12, dtype=np.float32).reshape(3, 4)]
    out = run_batches(Echo(), "images", [{"images": np.zeros((1, 3, 8, 8)), "rois": r} for r in rois])
    np.testing.assert_array_equal(out["boxes"], np.concatenate([r.ravel() for r in rois]))
    same = run_batches(Echo(), "images", [{"images": np.zeros((1, 3, 8, 8)), "rois": rois[0]}] * 2)
    assert same["boxes"].shape == (2, 2, 4)


def test_selective_search_is_reproducible_and_split_proposals_are_cached(tiny_set, tmp_path) -> None:
    from enginesmith.data.datasets import open_dataset
    from enginesmith.data.proposals import split_proposals
    from enginesmith.runtime.proposals import selective_search

    ds = open_dataset(tiny_set, "val")
    first = split_proposals(ds, workers=1, cache_dir=tmp_path)
    (cached,) = list((tmp_path / "proposals").glob("val-fast-p2000-*.npz"))
    mtime = cached.stat().st_mtime_ns
    time.sleep(0.01)
    again = split_proposals(ds, workers=1, cache_dir=tmp_path)
    assert cached.stat().st_mtime_ns == mtime  # read, not recomputed
    for s in ds.samples:
        direct = selective_search(ds.load_image(ds.samples.index(s)))
        np.testing.assert_array_equal(first[s.image_id], direct)  # same boxes, same order, in another process
        np.testing.assert_array_equal(again[s.image_id], direct)
    assert first["__seconds__"][0] > 0


def test_arc_measure_matches_eval_and_times_every_stage(tiny_set, tmp_path, monkeypatch) -> None:
    from enginesmith.benchmarks.evaluate import evaluate
    from enginesmith.benchmarks.proposal_arc import measure, render_markdown, torch_host_model
    from enginesmith.data.datasets import open_dataset
    from enginesmith.data.proposals import split_proposals

    monkeypatch.setenv("ENGINESMITH_CACHE", str(tmp_path))
    ds = open_dataset(tiny_set, "test")
    host = torch_host_model("fast-rcnn-vgg16-slim", None, None)
    try:
        row = measure(host, ds, split_proposals(ds), timing_images=1)
    finally:
        host.close()
    reference = evaluate("fast-rcnn-vgg16-slim", tiny_set, "test", progress=False)
    assert row["map"] == pytest.approx(100 * reference["voc07_map"], abs=1e-9)
    assert row["timing_images"] == 1 and row["stage_seconds"]["proposals"] > 0 and row["stage_seconds"]["cnn"] > 0
    assert 0.5 < sum(row["stage_share"].values()) <= 1.0 + 1e-9
    header = {"date": "d", "machine": "m", "commit": "c", "versions": {"torch": "x"}}
    md = render_markdown([{**row, "model": "fast-rcnn-vgg16-slim", "method": "Fast", "target": "torch",
                           "precision": "fp32", "input_size": "320x320"}], header, Path("s.toml"), 1)
    assert "| Fast | torch | fp32 |" in md


def test_faster_rcnn_slim_builds_with_val(tiny_set, cache_dir, tmp_path) -> None:
    """--val on a batch-1 model: the FP32 PyTorch reference must run one image per call too."""
    result = _build("faster-rcnn-vgg16-slim", "onnxruntime", "fp32", tmp_path / "e", cache_dir, calib=tiny_set,
                    input_size=(128, 128), val=tiny_set)
    assert result.accuracy is not None and result.accuracy["images"] == 2
    assert result.accuracy["drop"] == pytest.approx(0.0, abs=1e-6)  # FP32 engine vs FP32 PyTorch
