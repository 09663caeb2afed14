"""TensorRT backend, the parts that run without a GPU: precision/typing rules per TensorRT version, ONNX
inspection, build options, the device keys the runtime reads, and failing fast (GPU checked before any
TensorRT object) where there is no GPU."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from enginesmith.backends import tensorrt as trt_backend
from enginesmith.errors import EnginesmithError
from enginesmith.backends.tensorrt_device import check_tensorrt_compat, recorded_tensorrt

REPO = Path(__file__).resolve().parents[2]
HAS_GPU = trt_backend.gpu_count()[0] > 0


def _save(model: onnx.ModelProto, path: Path) -> Path:
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _conv_model(dtype: int = TensorProto.FLOAT) -> onnx.ModelProto:
    np_dtype = np.float16 if dtype == TensorProto.FLOAT16 else np.float32
    # 16 channels: TensorRT's Q/DQ placement leaves a Conv with fewer in float (calibration/tensorrt_placement.py)
    w = numpy_helper.from_array(np.ones((16, 16, 1, 1), np_dtype), "W")
    graph = helper.make_graph([helper.make_node("Conv", ["images", "W"], ["y"])], "conv",
                              [helper.make_tensor_value_info("images", dtype, ["batch", 16, 4, 4])],
                              [helper.make_tensor_value_info("y", dtype, ["batch", 16, 4, 4])], initializer=[w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _qdq_model(zero_point: int) -> onnx.ModelProto:
    inits = [numpy_helper.from_array(np.array(0.05, np.float32), "s"),
             numpy_helper.from_array(np.array(zero_point, np.int8), "zp")]
    nodes = [helper.make_node("QuantizeLinear", ["images", "s", "zp"], ["q"], name="q0"),
             helper.make_node("DequantizeLinear", ["q", "s", "zp"], ["y"], name="dq0")]
    graph = helper.make_graph(nodes, "qdq", [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


# -- precision rules --------------------------------------------------------------------------------
@pytest.mark.parametrize("version", ["10.0.1", "10.16.1.11", "11.4.0.106"])
def test_typed_onnx_builds_strongly_typed_on_10_and_11(version):
    assert trt_backend.plan_typing(version, "fp32", False, False) == (True, False)
    assert trt_backend.plan_typing(version, "fp16", True, False) == (True, False)
    assert trt_backend.plan_typing(version, "int8", False, True) == (True, False)
    with pytest.raises(EnginesmithError, match="TensorRT int8 needs a Q/DQ ONNX.*quantize stage"):
        trt_backend.plan_typing(version, "int8", True, False)


def test_fp16_from_an_fp32_onnx_only_on_tensorrt_10():
    # TensorRT 10: weakly typed network + BuilderFlag.FP16; 11 removed the flag, so it must be an FP16-typed ONNX
    assert trt_backend.plan_typing("10.8.0", "fp16", False, False) == (False, True)
    with pytest.raises(EnginesmithError, match="TensorRT 11.0.0.114 builds fp16 from an FP16-typed ONNX only"):
        trt_backend.plan_typing("11.0.0.114", "fp16", False, False)


def test_onnx_typing_reads_fp16_and_qdq(tmp_path):
    assert trt_backend.onnx_typing(_save(_conv_model(), tmp_path / "f32.onnx")) == (False, False)
    assert trt_backend.onnx_typing(_save(_conv_model(TensorProto.FLOAT16), tmp_path / "f16.onnx")) == (True, False)
    assert trt_backend.onnx_typing(_save(_qdq_model(0), tmp_path / "qdq.onnx")) == (False, True)


def test_qdq_must_be_symmetric(tmp_path):
    trt_backend.check_qdq_symmetric(_save(_qdq_model(0), tmp_path / "sym.onnx"))
    with pytest.raises(EnginesmithError, match="symmetric Q/DQ \\(zero points 0\\).*q0 in asym.onnx"):
        trt_backend.check_qdq_symmetric(_save(_qdq_model(3), tmp_path / "asym.onnx"))


def test_the_pipelines_tensorrt_models_are_what_tensorrt_11_takes(tmp_path):
    """The quantizer the pipeline runs for TensorRT (symmetric=True) gives zero points 0, the asymmetric one
    (ONNX Runtime's) does not, and the fp16 stage's model is FP16-typed: each builds strongly typed on 11."""
    from enginesmith.calibration.fp16 import onnx_to_fp16
    from enginesmith.calibration.qdq import quantize_qdq

    src = _save(_conv_model(), tmp_path / "f32.onnx")
    ranges = {"images": (-1.0, 3.0), "y": (-0.5, 6.0)}
    quantize_qdq(src, tmp_path / "sym.onnx", ranges, symmetric=True)
    quantize_qdq(src, tmp_path / "asym.onnx", ranges, symmetric=False)
    trt_backend.check_qdq_symmetric(tmp_path / "sym.onnx")
    with pytest.raises(EnginesmithError, match="non-zero zero point"):
        trt_backend.check_qdq_symmetric(tmp_path / "asym.onnx")
    fp16, qdq = trt_backend.onnx_typing(tmp_path / "sym.onnx")
    assert qdq and trt_backend.plan_typing("11.4.0.106", "int8", fp16, qdq) == (True, False)
    onnx_to_fp16(src, tmp_path / "f16.onnx", keep_io_types=True)
    fp16, qdq = trt_backend.onnx_typing(tmp_path / "f16.onnx")
    assert fp16 and not qdq and trt_backend.plan_typing("11.4.0.106", "fp16", fp16, qdq) == (True, False)


# -- options ------------------------------------------------------------------------------------------
def test_build_options_profile_and_key():
    opts = trt_backend.BuildOptions(min_batch=1, opt_batch=4, max_batch=8, workspace_mb=512,
                                    timing_cache=Path("/x/t.cache"),
                                    efficient_nms=trt_backend.EfficientNMS(iou=0.5, score=0.3, max_detections=50))
    opts.check()
    key = opts.cache_params()
    assert key == {"profile": [1, 4, 8], "workspace_mb": 512,
                   "efficient_nms": {"iou": 0.5, "score": 0.3, "max_detections": 50, "class_agnostic": False}}
    assert "timing_cache" not in key  # a timing cache speeds the build up; it does not change the plan's meaning
    for bad in (dict(min_batch=0), dict(min_batch=2, opt_batch=1), dict(opt_batch=9, max_batch=8)):
        with pytest.raises(EnginesmithError, match="min <= opt <= max batch"):
            trt_backend.BuildOptions(**bad).check()
    with pytest.raises(EnginesmithError, match="workspace must be at least 1 MB"):
        trt_backend.BuildOptions(workspace_mb=0).check()


def test_timing_cache_file_is_per_tensorrt_version_and_gpu(tmp_path):
    a = trt_backend.timing_cache_file(tmp_path, {"tensorrt": "10.8.0", "gpu": "NVIDIA L4", "compute_capability": "8.9"})
    b = trt_backend.timing_cache_file(tmp_path, {"tensorrt": "11.4.0", "gpu": "NVIDIA L4", "compute_capability": "8.9"})
    c = trt_backend.timing_cache_file(tmp_path, {"tensorrt": "10.8.0", "gpu": "Orin (nvgpu)", "compute_capability": "8.7"})
    assert a.parent == tmp_path and a.name == "timing-trt10.8.0-sm8.9-nvidia-l4.cache"
    assert len({a, b, c}) == 3 and "/" not in c.name[len("timing-"):]


def test_device_keys_are_what_the_runtime_reads():
    """manifest["device"] as the pipeline writes it (device_info's keys) is what runtime/manifest.py checks."""
    device = trt_backend.device_record("10.8.0.43", b"NVIDIA L4\0\0\0\0", 8, 9)  # as cuda-python reports it
    assert device == {"tensorrt": "10.8.0.43", "gpu": "NVIDIA L4", "compute_capability": "8.9"}
    assert recorded_tensorrt({"device": device}) == device
    check_tensorrt_compat(recorded_tensorrt({"device": device}), "10.8.0.43", "NVIDIA L4", "8.9")
    with pytest.raises(EnginesmithError, match="rebuild for this device"):
        check_tensorrt_compat(recorded_tensorrt({"device": device}), "11.4.0.106", "NVIDIA L4", "8.9")
    with pytest.raises(EnginesmithError, match="rebuild for this device"):
        check_tensorrt_compat(recorded_tensorrt({"device": device}), "10.8.0.43", "NVIDIA T4", "7.5")


def test_cpu_backends_keep_their_engine_stage_key():
    from enginesmith.backends.targets import TARGETS

    for target in ("onnxruntime", "openvino"):
        assert TARGETS[target].build_options(Path("/nonexistent")) == ({}, {})


# -- no GPU: fail fast, before any TensorRT object ----------------------------------------------------
@pytest.mark.skipif(HAS_GPU, reason="a CUDA GPU is present; the no-GPU path is not reachable")
def test_no_gpu_fails_fast_without_importing_tensorrt(tmp_path):
    onnx_path = _save(_conv_model(), tmp_path / "m.onnx")
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from enginesmith.backends import tensorrt as t\n"
        "from enginesmith.errors import EnginesmithError\n"
        "ok, why = t.available(); assert not ok and 'no CUDA GPU' in why, why\n"
        f"try:\n    t.build(Path({str(onnx_path)!r}), Path({str(tmp_path / 'out')!r}), 'fp32')\n"
        "except EnginesmithError as e:\n    print('BUILD', e)\n"
        f"try:\n    t.Runner(Path({str(tmp_path / 'model.plan')!r})).activate()\n"
        "except EnginesmithError as e:\n    print('RUN', e)\n"
        "print('IMPORTED', 'tensorrt' in sys.modules)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert r.returncode == 0, r.stderr
    lines = dict(line.split(" ", 1) for line in r.stdout.splitlines())
    assert lines["BUILD"].startswith("target tensorrt needs NVIDIA TensorRT 10+ and a CUDA GPU, which this machine lacks (")
    assert "no CUDA GPU" in lines["BUILD"] and "--target openvino" in lines["BUILD"] and "\n" not in lines["BUILD"]
    assert lines["RUN"].startswith("cannot run a TensorRT engine here: target tensorrt needs")
    assert lines["IMPORTED"] == "False"  # the GPU was checked first
    assert not (tmp_path / "out").exists()


def test_bad_options_are_refused_before_the_gpu_check(tmp_path):
    with pytest.raises(EnginesmithError, match="min <= opt <= max batch"):
        trt_backend.build(tmp_path / "m.onnx", tmp_path, "fp32", options=trt_backend.BuildOptions(max_batch=0))
    with pytest.raises(EnginesmithError, match="unknown precision 'int4'"):
        trt_backend.build(tmp_path / "m.onnx", tmp_path, "int4")


def test_importing_the_backend_imports_nothing_heavy():
    code = ("import sys, enginesmith.backends.tensorrt, enginesmith.backends.torch_compile, enginesmith.backends.torch\n"
            "print([m for m in ('tensorrt', 'torch', 'cuda', 'cuda.bindings', 'onnx') if m in sys.modules])")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"
    assert importlib.util.find_spec("enginesmith.backends.torch_compile") is not None
