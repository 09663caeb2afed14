"""Backends on a tiny real ONNX model (Conv + Relu + GlobalAveragePool + Flatten), checked against numpy."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from enginesmith.backends.targets import TARGETS, get_target
from enginesmith.backends import onnxruntime as ort_backend
from enginesmith.backends import openvino as ov_backend
from enginesmith.backends import tensorrt as trt_backend
from enginesmith.backends.isolation import run_isolated
from enginesmith.errors import EnginesmithError

REPO = Path(__file__).resolve().parents[2]
RNG = np.random.default_rng(0)
W = RNG.standard_normal((4, 3, 3, 3)).astype(np.float32) * 0.5
B = RNG.standard_normal(4).astype(np.float32) * 0.1


def reference(x: np.ndarray) -> np.ndarray:
    """Naive numpy Conv(3x3, pad 1) + ReLU + global average pool + flatten."""
    n, c, h, w = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    y = np.zeros((n, W.shape[0], h, w), dtype=np.float64)
    for i in range(h):
        for j in range(w):
            patch = xp[:, :, i : i + 3, j : j + 3]  # (n, c, 3, 3)
            y[:, :, i, j] = np.einsum("nckl,ockl->no", patch, W)
    y += B[None, :, None, None]
    return np.maximum(y, 0).mean(axis=(2, 3)).astype(np.float32)


@pytest.fixture(scope="module")
def onnx_path(tmp_path_factory) -> Path:
    # Dynamic batch ("batch"); the fp16 check compares .bin sizes, which shrink with the conv weights.
    nodes = [
        helper.make_node("Conv", ["images", "W", "B"], ["conv"], pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
        helper.make_node("Relu", ["conv"], ["relu"]),
        helper.make_node("GlobalAveragePool", ["relu"], ["pool"]),
        helper.make_node("Flatten", ["pool"], ["logits"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 4])],
        initializer=[numpy_helper.from_array(W, "W"), numpy_helper.from_array(B, "B")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def inputs() -> dict[int, np.ndarray]:
    return {n: RNG.standard_normal((n, 3, 8, 8)).astype(np.float32) for n in (1, 3)}


@pytest.fixture(scope="module")
def ov_engines(onnx_path, tmp_path_factory) -> dict[str, Path]:
    return {p: ov_backend.build(onnx_path, tmp_path_factory.mktemp(f"ov_{p}"), p) for p in ("fp32", "fp16")}


# -- registry -------------------------------------------------------------------------------------
def test_target_table_names_each_backend_module():
    assert tuple(TARGETS) == ("openvino", "onnxruntime", "tensorrt")
    assert TARGETS["openvino"].backend is ov_backend
    assert TARGETS["onnxruntime"].backend is ort_backend and TARGETS["tensorrt"].backend is trt_backend
    assert [t.engine_file for t in TARGETS.values()] == ["model.xml", "model.onnx", "model.plan"]
    with pytest.raises(EnginesmithError, match="unknown target 'foo'; choose one of openvino, onnxruntime, tensorrt"):
        get_target("foo")


def test_engine_modules_do_not_import_torch():
    code = (
        "import enginesmith.backends, enginesmith.backends.targets, enginesmith.backends.openvino, "
        "enginesmith.backends.onnxruntime, "
        "enginesmith.backends.tensorrt, sys; "
        "bad = [m for m in ('torch', 'openvino', 'onnxruntime', 'tensorrt') if m in sys.modules]; "
        "assert not bad, bad"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, env=env)


# -- ONNX Runtime ---------------------------------------------------------------------------------
def test_onnxruntime_build_and_run(onnx_path, inputs, tmp_path):
    assert ort_backend.available() == (True, "")
    engine = ort_backend.build(onnx_path, tmp_path, "fp32")
    assert engine == tmp_path / "model.onnx" and engine.read_bytes() == onnx_path.read_bytes()
    with ort_backend.Runner(engine, intra_op_num_threads=1) as runner:
        assert runner.input_names == ["images"] and runner.output_names == ["logits"]
        for x in inputs.values():
            out = runner.infer({"images": x})["logits"]
            np.testing.assert_allclose(out, reference(x), atol=1e-4)
    assert not runner.is_active


def test_onnxruntime_copies_external_data(onnx_path, inputs, tmp_path):
    model = onnx.load(str(onnx_path))
    src = tmp_path / "src" / "ext.onnx"
    src.parent.mkdir()
    onnx.save(model, str(src), save_as_external_data=True, location="ext.weights", size_threshold=0)
    engine = ort_backend.build(src, tmp_path / "out", "fp32")
    assert (tmp_path / "out" / "ext.weights").is_file()
    with ort_backend.Runner(engine) as runner:
        np.testing.assert_allclose(runner.infer({"images": inputs[1]})["logits"], reference(inputs[1]), atol=1e-4)


def test_runner_checks_feed_and_lifecycle(onnx_path, inputs):
    runner = ort_backend.Runner(onnx_path)
    with pytest.raises(EnginesmithError, match="not loaded"):
        runner.infer({"images": inputs[1]})
    with runner:
        with pytest.raises(EnginesmithError, match="engine takes"):
            runner.infer({"image": inputs[1]})
        with pytest.raises(EnginesmithError, match="ONNX Runtime inference failed"):
            runner.infer({"images": np.zeros((1, 3, 5, 5), np.float32)})


def test_corrupt_onnx(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07garbage\xff\x00 not a model")
    for backend in (ort_backend, ov_backend):
        with pytest.raises(EnginesmithError, match="corrupt ONNX file .*re-export it"):
            backend.build(bad, tmp_path / backend.TARGET, "fp32")
    with pytest.raises(EnginesmithError, match="ONNX file not found"):
        ort_backend.validate_onnx(tmp_path / "missing.onnx")
    with pytest.raises(EnginesmithError, match="cannot load ONNX Runtime engine"):
        ort_backend.Runner(bad).activate()


def test_missing_engines(tmp_path):
    for runner in (
        ort_backend.Runner(tmp_path / "model.onnx"),
        ov_backend.Runner(tmp_path / "model.xml"),
    ):
        with pytest.raises(EnginesmithError, match="engine not found"):
            with runner:
                pass


def test_unknown_precision(onnx_path, tmp_path):
    with pytest.raises(EnginesmithError, match="unknown precision"):
        ort_backend.build(onnx_path, tmp_path, "int4")


# -- OpenVINO -------------------------------------------------------------------------------------
def test_openvino_fp32(ov_engines, inputs):
    xml = ov_engines["fp32"]
    assert xml.name == "model.xml" and xml.with_suffix(".bin").is_file()
    for hint in ("LATENCY", "THROUGHPUT"):
        with ov_backend.Runner(xml, performance_hint=hint) as runner:
            assert runner.input_names == ["images"] and runner.output_names == ["logits"]
            for x in inputs.values():
                np.testing.assert_allclose(runner.infer({"images": x})["logits"], reference(x), atol=1e-4)


def test_openvino_fp16(ov_engines, inputs):
    bin32 = ov_engines["fp32"].with_suffix(".bin").stat().st_size
    bin16 = ov_engines["fp16"].with_suffix(".bin").stat().st_size
    assert bin16 < bin32, (bin16, bin32)
    with ov_backend.Runner(ov_engines["fp16"], inference_precision="f16") as runner:
        for x in inputs.values():
            np.testing.assert_allclose(runner.infer({"images": x})["logits"], reference(x), atol=1e-2)


def test_openvino_from_model_object(onnx_path, inputs, tmp_path):
    import openvino as ov

    xml = ov_backend.build(ov.convert_model(str(onnx_path)), tmp_path, "int8")
    with ov_backend.Runner(xml) as runner:
        np.testing.assert_allclose(runner.infer({"images": inputs[3]})["logits"], reference(inputs[3]), atol=1e-4)


def test_openvino_plain_runner(onnx_path, inputs, ov_engines):
    # No config: the CPU plugin picks its own precision (bf16 on AMX/AVX512-BF16 CPUs, f32 elsewhere).
    with ov_backend.plain_runner(onnx_path) as runner:
        assert runner.inference_precision in ("f32", "bf16", "f16")
        atol = 1e-4 if runner.inference_precision == "f32" else 1e-2
        for x in inputs.values():
            np.testing.assert_allclose(runner.infer({"images": x})["logits"], reference(x), atol=atol)
    with ov_backend.Runner(ov_engines["fp32"]) as runner:
        assert runner.inference_precision == "f32"


def test_openvino_corrupt_and_missing_bin(ov_engines, tmp_path):
    xml = tmp_path / "model.xml"
    xml.write_text("<net>truncated")
    (tmp_path / "model.bin").write_bytes(b"")
    with pytest.raises(EnginesmithError, match="cannot load OpenVINO engine"):
        ov_backend.Runner(xml).activate()
    lonely = tmp_path / "lonely" / "model.xml"
    lonely.parent.mkdir()
    lonely.write_bytes(ov_engines["fp32"].read_bytes())
    with pytest.raises(EnginesmithError, match="model.bin"):
        ov_backend.Runner(lonely).activate()
    with pytest.raises(EnginesmithError, match="performance hint"):
        ov_backend.Runner(xml, performance_hint="FAST")


# -- isolation ------------------------------------------------------------------------------------
def test_isolation_ok():
    assert run_isolated("import sys; print(sys.argv[1])", ["hello"], "engine", "echoing", 30) == "hello\n"


def test_isolation_segfault():
    code = "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)"
    with pytest.raises(EnginesmithError) as e:
        run_isolated(code, [], "engine", "compiling model.xml for CPU", 30, tool="OpenVINO")
    msg = str(e.value)
    assert msg.startswith("OpenVINO crashed (signal 11, SIGSEGV) compiling model.xml for CPU in stage engine; ")
    assert "\n" not in msg


def test_isolation_failure_and_timeout():
    code = "import sys; print('detail', file=sys.stderr); sys.exit('last line of stderr')"
    with pytest.raises(EnginesmithError, match=r"failed \(exit code 1\) .*stage verify: last line of stderr"):
        run_isolated(code, [], "verify", "checking", 30)
    with pytest.raises(EnginesmithError, match="timed out"):
        run_isolated("import time; time.sleep(30)", [], "engine", "sleeping", 0.5)


# -- TensorRT -------------------------------------------------------------------------------------
HAS_TRT = importlib.util.find_spec("tensorrt") is not None


@pytest.mark.skipif(HAS_TRT, reason="TensorRT is installed; the absent-target path is not reachable")
def test_tensorrt_absent_fails_fast(onnx_path, tmp_path):
    ok, reason = trt_backend.available()
    assert not ok and reason
    t0 = time.perf_counter()
    with pytest.raises(EnginesmithError, match="target tensorrt needs NVIDIA TensorRT 10\\+ and a CUDA GPU.*--target openvino"):
        TARGETS["tensorrt"].backend.build(onnx_path, tmp_path, "fp16")
    with pytest.raises(EnginesmithError, match="cannot run a TensorRT engine here"):
        trt_backend.Runner(tmp_path / "model.plan").activate()
    assert time.perf_counter() - t0 < 5
    assert not list(tmp_path.iterdir())


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_TRT, reason="TensorRT is not installed")
def test_tensorrt_build_and_run(onnx_path, inputs, tmp_path):
    ok, reason = trt_backend.available()
    if not ok:
        pytest.skip(reason)
    engine = trt_backend.build(onnx_path, tmp_path, "fp32")
    assert engine.name == "model.plan"
    with trt_backend.Runner(engine) as runner:
        assert runner.input_names == ["images"] and runner.output_names == ["logits"]
        for x in inputs.values():
            np.testing.assert_allclose(runner.infer({"images": x})["logits"], reference(x), atol=1e-3)
    # fp16 from an FP16-typed ONNX (what the precision stage makes; TensorRT 11 has no FP16 builder flag)
    from enginesmith.calibration.fp16 import onnx_to_fp16

    onnx_to_fp16(onnx_path, tmp_path / "fp16.onnx", keep_io_types=True)
    engine16 = trt_backend.build(tmp_path / "fp16.onnx", tmp_path / "fp16", "fp16")
    with trt_backend.Runner(engine16) as runner:
        np.testing.assert_allclose(runner.infer({"images": inputs[3]})["logits"], reference(inputs[3]), atol=2e-2)
    bad = tmp_path / "bad.plan"
    bad.write_bytes(b"not an engine")
    with pytest.raises(EnginesmithError, match="cannot load TensorRT engine"):
        trt_backend.Runner(bad).activate()


# -- PyTorch baseline -----------------------------------------------------------------------------
def test_torch_runner(inputs):
    torch = pytest.importorskip("torch")
    from enginesmith.backends.torch import TorchRunner

    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()
    )
    with torch.no_grad():
        net[0].weight.copy_(torch.from_numpy(W))
        net[0].bias.copy_(torch.from_numpy(B))
    net.train()
    with TorchRunner(net, "images", ["logits"]) as runner:
        assert not net.training
        out = runner.infer({"images": inputs[3]})["logits"]
        assert isinstance(out, np.ndarray)
        np.testing.assert_allclose(out, reference(inputs[3]), atol=1e-4)
    assert net.training
