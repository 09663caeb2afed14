"""TensorRT and the CUDA targets end to end, where an NVIDIA GPU (and, for TensorRT, TensorRT 10+) exists.

Every test here is marked `gpu` and skips with the reason when this machine cannot run it. References are
independent of the engine under test: PyTorch eager FP32 on the CPU, host NMS (runtime/nms.py) on the
engine's own raw outputs, and the device as nvidia-smi reports it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import typer
from onnx import TensorProto, helper
from typer.testing import CliRunner

from enginesmith.backends import tensorrt as trt_backend
from enginesmith.errors import EnginesmithError

pytestmark = pytest.mark.gpu


def _need_tensorrt() -> None:
    ok, why = trt_backend.available()
    if not ok:
        pytest.skip(why)


def _need_cuda() -> None:
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU: PyTorch sees none here")


def _lenet_reference(x: np.ndarray) -> np.ndarray:
    from enginesmith.backends.torch import TorchRunner
    from enginesmith.models import registry

    spec = registry.get("lenet5")
    model = spec.create(num_classes=spec.num_classes, input_size=tuple(spec.input_size), seed=0)
    with TorchRunner(model, "images", list(spec.output_names)) as r:
        return r.infer({"images": x})["logits"]


@pytest.mark.parametrize("precision,tol", [("fp32", 1e-3), ("fp16", 3e-2), ("int8", None)])
def test_pipeline_builds_tensorrt_lenet5_with_its_device(tmp_path, cache_dir, precision, tol):
    _need_tensorrt()
    from enginesmith.pipeline.run import BuildConfig, build_engine
    from enginesmith.runtime import load

    out = tmp_path / f"lenet5-{precision}"
    build_engine(BuildConfig(model="lenet5", target="tensorrt", precision=precision, cache_dir=cache_dir, out=out,
                             calib_size=8, latency_budget_s=0.3))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["device"] == trt_backend.device_info()  # {"tensorrt", "gpu", "compute_capability"}
    assert (out / "model.plan").is_file()
    assert list((Path(cache_dir) / "tensorrt").glob("timing-trt*.cache"))  # the shared timing cache was written
    x = np.random.default_rng(0).standard_normal((1, 1, 32, 32)).astype(np.float32)
    with trt_backend.Runner(out / "model.plan") as r:
        got = r.infer({"images": x})["logits"]
        again = r.infer({"images": -x})["logits"]
    assert not np.array_equal(got, again)  # each call's outputs are the caller's (TrtRunner reuses its buffers)
    if tol is not None:
        np.testing.assert_allclose(got, _lenet_reference(x), rtol=tol, atol=tol)
    top = load(out)(np.zeros((40, 30, 3), np.uint8))
    assert len(top) == 5
    # the same folder claimed by another GPU is refused with the rebuild message
    manifest["device"] = {**manifest["device"], "gpu": "Some Other GPU", "compute_capability": "1.0"}
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(EnginesmithError, match="rebuild for this device"):
        load(out)


def test_dynamic_batch_profile_and_timing_cache_reuse(tmp_path):
    _need_tensorrt()
    from enginesmith.pipeline.export import export_onnx
    from enginesmith.models import registry

    spec = registry.get("lenet5")
    model = spec.create(num_classes=spec.num_classes, input_size=tuple(spec.input_size), seed=0).eval()
    onnx_path = tmp_path / "lenet5.onnx"
    export_onnx(model, onnx_path, (1, 1, 32, 32), spec.output_names, True)
    cache = tmp_path / "timing.cache"
    opts = trt_backend.BuildOptions(min_batch=1, opt_batch=4, max_batch=8, workspace_mb=256, timing_cache=cache)
    plan = trt_backend.build(onnx_path, tmp_path / "a", "fp32", options=opts)
    assert cache.is_file() and cache.stat().st_size > 0
    size = cache.stat().st_size
    trt_backend.build(onnx_path, tmp_path / "b", "fp32", options=opts)  # reads the cache, writes it back
    assert cache.stat().st_size >= size
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith((".", "timing"))) == ["timing.cache"]
    x = np.random.default_rng(1).standard_normal((9, 1, 32, 32)).astype(np.float32)
    ref = _lenet_reference(x)
    with trt_backend.Runner(plan) as r:
        for n in (1, 3, 8):
            np.testing.assert_allclose(r.infer({"images": x[:n]})["logits"], ref[:n], rtol=1e-3, atol=1e-3)
        with pytest.raises(EnginesmithError, match="optimization profile"):
            r.infer({"images": x})


def _raw_head_onnx(path: Path, anchors: int, classes: int) -> Path:
    """raw [N, A, 4 + C] -> boxes [N, A, 4] (x1y1x2y2) and scores [N, A, C]: a detector's raw head."""
    starts = helper.make_tensor("s", TensorProto.INT64, [1], [0])
    mid = helper.make_tensor("m", TensorProto.INT64, [1], [4])
    end = helper.make_tensor("e", TensorProto.INT64, [1], [4 + classes])
    axis = helper.make_tensor("a", TensorProto.INT64, [1], [2])
    nodes = [helper.make_node("Slice", ["raw", "s", "m", "a"], ["boxes"]),
             helper.make_node("Slice", ["raw", "m", "e", "a"], ["scores"])]
    graph = helper.make_graph(nodes, "head", [helper.make_tensor_value_info("raw", TensorProto.FLOAT, [2, anchors, 4 + classes])],
                              [helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [2, anchors, 4]),
                               helper.make_tensor_value_info("scores", TensorProto.FLOAT, [2, anchors, classes])],
                              initializer=[starts, mid, end, axis])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_efficient_nms_equals_host_nms(tmp_path):
    _need_tensorrt()
    from enginesmith.pipeline.verify import nms_parity

    anchors, classes = 300, 3
    onnx_path = _raw_head_onnx(tmp_path / "head.onnx", anchors, classes)
    nms = trt_backend.EfficientNMS(iou=0.45, score=0.25, max_detections=50)
    plan = trt_backend.build(onnx_path, tmp_path, "fp32", options=trt_backend.BuildOptions(efficient_nms=nms))
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 200, (2, anchors, 2))
    wh = rng.uniform(5, 60, (2, anchors, 2))
    raw = np.concatenate([xy, xy + wh, rng.uniform(0, 1, (2, anchors, classes))], axis=2).astype(np.float32)
    with trt_backend.Runner(plan) as r:
        assert {"detections", "num_detections", "boxes", "scores"} == set(r.output_names)
        out = r.infer({"raw": raw})
    assert out["detections"].shape == (2, 50, 6) and out["num_detections"].shape == (2,)
    np.testing.assert_array_equal(out["boxes"], raw[..., :4])
    parity = nms_parity({**out, "num_detections": out["num_detections"].astype(np.int64)}, nms.iou, nms.score)
    assert parity["count_mismatches"] == 0


def test_bench_runs_the_gpu_targets(tmp_path, cache_dir):
    _need_cuda()
    from enginesmith.benchmarks.bench_cli import bench

    app = typer.Typer(add_completion=False)
    app.command("bench")(bench)
    app.command("noop")(lambda: None)
    targets = "torch-cuda,torch-compile" + (",tensorrt" if trt_backend.available()[0] else "")
    out = tmp_path / "results"
    result = CliRunner().invoke(app, ["bench", "lenet5", "--targets", targets, "--precisions", "fp32,fp16", "--batch", "1,8",
                                      "--quick", "--out", str(out), "--engines", str(tmp_path / "engines"),
                                      "--cache-dir", str(cache_dir)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    rows = json.loads((out / "results.json").read_text())["rows"]
    got = {(r["target"], r["precision"], r["batch"]) for r in rows if r["status"] == "ok"}
    for t in ("torch-cuda", "torch-compile"):
        for p in ("fp32", "fp16"):
            assert {(t, p, 1), (t, p, 8)} <= got
