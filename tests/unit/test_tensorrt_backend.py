"""TensorRT backend, the parts that run without a GPU: precision/typing rules per TensorRT version, ONNX
inspection, build options and how they map onto Polygraphy's loaders (constructed here, inspected, never
called: that needs TensorRT), the timing-cache files, the device keys the runtime reads, and failing fast
(GPU checked before any TensorRT object) where there is no GPU."""

from __future__ import annotations

import ctypes

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from enginesmith.backends import tensorrt as trt_backend
from enginesmith.backends.tensorrt_device import check_tensorrt_compat, cuda_device_zero, recorded_tensorrt
from enginesmith.errors import EnginesmithError

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
    device = trt_backend.device_record("10.8.0.43", "NVIDIA L4 ", "8.9")  # as nvidia-smi reports it
    assert device == {"tensorrt": "10.8.0.43", "gpu": "NVIDIA L4", "compute_capability": "8.9"}
    assert recorded_tensorrt({"device": device}) == device
    check_tensorrt_compat(recorded_tensorrt({"device": device}), "10.8.0.43", "NVIDIA L4", "8.9")
    with pytest.raises(EnginesmithError, match="rebuild for this device"):
        check_tensorrt_compat(recorded_tensorrt({"device": device}), "11.4.0.106", "NVIDIA L4", "8.9")
    with pytest.raises(EnginesmithError, match="rebuild for this device"):
        check_tensorrt_compat(recorded_tensorrt({"device": device}), "10.8.0.43", "NVIDIA T4", "7.5")


SMI = ("0, GPU-11111111-aaaa-bbbb-cccc-000000000000, NVIDIA L4, 8.9\n"
       "1, GPU-22222222-aaaa-bbbb-cccc-000000000000, Tesla T4, 7.5\n")


@pytest.mark.parametrize("visible,expected", [
    (None, ("NVIDIA L4", "8.9")),  # unset: CUDA device 0 is nvidia-smi's first
    ("1", ("Tesla T4", "7.5")), ("1,0", ("Tesla T4", "7.5")),  # the first visible index
    ("GPU-2222", ("Tesla T4", "7.5")),  # a UUID prefix, as CUDA accepts it
    ("", (None, None)), ("-1", (None, None)), ("7", (None, None)),  # no device 0 among the GPUs
])
def test_cuda_device_zero_follows_cuda_visible_devices(visible, expected):
    """The GPU recorded for a plan (and checked when it is loaded) is the one TensorRT builds on: CUDA device 0."""
    assert cuda_device_zero(SMI, visible) == expected


def test_cuda_device_zero_reads_unreported_fields_as_unknown():
    assert cuda_device_zero("0, GPU-1, Orin (nvgpu), [N/A]\n", None) == ("Orin (nvgpu)", None)
    assert cuda_device_zero("", None) == (None, None)


def test_cpu_backends_keep_their_engine_stage_key():
    from enginesmith.backends.targets import TARGETS

    for target in ("onnxruntime", "openvino"):
        assert TARGETS[target].build_options(Path("/nonexistent")) == ({}, {})


# -- our options -> Polygraphy's loaders (constructed, never called) -------------------------------------
FAKE_TRT = SimpleNamespace(MemoryPoolType=SimpleNamespace(WORKSPACE="WORKSPACE"))  # all the loaders take from trt


def _loaders(onnx_path: Path, precision: str, trt_version: str = "10.8.0.43", cache=None, **options):
    fp16_typed, qdq = trt_backend.onnx_typing(onnx_path)
    strongly_typed, fp16_flag = trt_backend.plan_typing(trt_version, precision, fp16_typed, qdq)
    return trt_backend.polygraphy_loaders(FAKE_TRT, onnx_path, precision, trt_backend.BuildOptions(**options),
                                          strongly_typed, fp16_flag, cache)


@pytest.mark.parametrize("precision,dtype,typed,fp16,tf32", [
    ("fp32", TensorProto.FLOAT, True, False, False),  # TF32 cleared: an fp32 engine is held to the fp32 tolerance
    ("fp16", TensorProto.FLOAT16, True, False, True),  # FP16-typed ONNX: strongly typed, no precision flag
    ("fp16", TensorProto.FLOAT, False, True, True),  # TensorRT 10 only: weakly typed + the fp16 flag
])
def test_precision_maps_to_network_typing_and_config_flags(tmp_path, precision, dtype, typed, fp16, tf32):
    from polygraphy.backend.trt import CreateConfig, NetworkFromOnnxPath

    onnx_path = _save(_conv_model(dtype), tmp_path / "m.onnx")
    network, config = _loaders(onnx_path, precision)
    assert isinstance(network, NetworkFromOnnxPath) and isinstance(config, CreateConfig)
    assert network.path == str(onnx_path)
    assert (network.strongly_typed, config.fp16, config.tf32) == (typed, fp16, tf32)
    assert not (config.int8 or config.bf16 or config.fp8) and config.calibrator is None


def test_int8_is_a_strongly_typed_qdq_network_without_the_int8_flag(tmp_path):
    network, config = _loaders(_save(_qdq_model(0), tmp_path / "q.onnx"), "int8", trt_version="11.4.0.106")
    assert network.strongly_typed and not config.int8 and not config.fp16 and config.calibrator is None


def test_profile_workspace_and_timing_cache_map_onto_create_config(tmp_path):
    onnx_path = _save(_conv_model(), tmp_path / "m.onnx")
    cache = tmp_path / "timing.cache"
    cache.write_bytes(b"tactics")
    with open(cache, "rb") as f:
        _, config = _loaders(onnx_path, "fp32", cache=f, min_batch=2, opt_batch=4, max_batch=16, workspace_mb=512)
        assert config.timing_cache_path is f and config.timing_cache_path.read() == b"tactics"
    assert config.memory_pool_limits == {"WORKSPACE": 512 * 1024 * 1024}
    [profile] = config.profiles
    assert list(profile) == ["images"]
    shapes = profile["images"]
    assert (shapes.min, shapes.opt, shapes.max) == ((2, 16, 4, 4), (4, 16, 4, 4), (16, 16, 4, 4))


def test_a_static_model_gets_an_empty_profile_and_dynamic_spatial_dims_are_refused(tmp_path):
    static = _qdq_model(0)  # input [1, 4]
    _, config = _loaders(_save(static, tmp_path / "s.onnx"), "int8")
    assert [dict(p) for p in config.profiles] == [{}]  # Polygraphy fills a static input's shape itself
    old_ir = _conv_model()  # weights listed as graph inputs too (IR < 4 style): not profiled
    old_ir.graph.input.append(helper.make_tensor_value_info("W", TensorProto.FLOAT, ["n", 16, 1, 1]))
    _, config = _loaders(_save(old_ir, tmp_path / "w.onnx"), "fp32", max_batch=2)
    assert list(config.profiles[0]) == ["images"] and config.profiles[0]["images"].max == (2, 16, 4, 4)
    spatial = _conv_model()
    spatial.graph.input[0].type.tensor_type.shape.dim[2].dim_param = "height"
    with pytest.raises(EnginesmithError, match="TensorRT input images has dynamic dims \\[-1, 16, -1, 4\\] beyond the batch"):
        _loaders(_save(spatial, tmp_path / "d.onnx"), "fp32")


def test_polygraphy_failures_become_one_line_errors(tmp_path):
    """Calling a loader needs TensorRT: Polygraphy's own error (several lines) becomes our one line."""
    network, _ = _loaders(_save(_conv_model(), tmp_path / "m.onnx"), "fp32")
    with pytest.raises(EnginesmithError) as info:
        with trt_backend._polygraphy("TensorRT cannot parse m.onnx", "simplify the ONNX"):
            network()
    message = str(info.value)
    assert message.startswith("TensorRT cannot parse m.onnx: ") and message.endswith("; simplify the ONNX")
    assert "tensorrt" in message and "\n" not in message


# -- the timing cache and the plan are never half written ------------------------------------------------
def test_timing_cache_is_replaced_only_after_a_build_that_wrote_one(tmp_path):
    cache = tmp_path / "tensorrt" / "timing.cache"
    with trt_backend.timing_cache_files(cache) as (old, new):  # first build: nothing to read, folder made
        assert old is None and cache.parent.is_dir()
        new.write(b"v1")  # what Polygraphy's EngineBytesFromNetwork does with save_timing_cache
    assert cache.read_bytes() == b"v1"
    with trt_backend.timing_cache_files(cache) as (old, new):
        assert old.read() == b"v1"
        new.write(b"v2-longer")
    assert cache.read_bytes() == b"v2-longer"
    with pytest.raises(EnginesmithError):
        with trt_backend.timing_cache_files(cache) as (old, new):
            new.write(b"half")
            raise EnginesmithError("the build failed")
    with trt_backend.timing_cache_files(cache) as (old, new):
        pass  # a build that wrote no cache (e.g. TensorRT refused the old one) leaves it as it was
    assert cache.read_bytes() == b"v2-longer"
    assert sorted(p.name for p in cache.parent.iterdir()) == ["timing.cache"]  # no temp files left
    with trt_backend.timing_cache_files(None) as files:
        assert files == (None, None)


def test_write_atomic_leaves_the_old_file_on_failure(tmp_path):
    plan = tmp_path / "out" / "model.plan"
    trt_backend.write_atomic(plan, b"plan-1")
    assert plan.read_bytes() == b"plan-1"
    with pytest.raises(TypeError):
        trt_backend.write_atomic(plan, object())  # type: ignore[arg-type]  # fails mid-write
    assert plan.read_bytes() == b"plan-1" and sorted(p.name for p in plan.parent.iterdir()) == ["model.plan"]


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
        "try:\n    t.device_info()\n"
        "except EnginesmithError as e:\n    print('DEVICE', e)\n"
        "print('IMPORTED', 'tensorrt' in sys.modules)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert r.returncode == 0, r.stderr
    lines = dict(line.split(" ", 1) for line in r.stdout.splitlines())
    assert set(lines) == {"BUILD", "RUN", "DEVICE", "IMPORTED"}, r.stdout  # and Polygraphy printed nothing
    assert lines["BUILD"].startswith("target tensorrt needs NVIDIA TensorRT 10+ and a CUDA GPU, which this machine lacks (")
    assert "no CUDA GPU" in lines["BUILD"] and "--target openvino" in lines["BUILD"] and "\n" not in lines["BUILD"]
    assert lines["RUN"].startswith("cannot run a TensorRT engine here: target tensorrt needs")
    assert lines["DEVICE"].startswith("cannot describe the TensorRT device: target tensorrt needs")
    assert lines["IMPORTED"] == "False"  # the GPU was checked first
    assert not (tmp_path / "out").exists()


def test_a_gpu_without_tensorrt_is_refused_before_anything_runs(tmp_path, monkeypatch):
    """Past the GPU check, a machine without TensorRT gets the same one-line refusal from build and Runner."""
    monkeypatch.setattr(trt_backend, "gpu_count", lambda: (1, ""))
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # `import tensorrt` raises ImportError
    ok, why = trt_backend.available()
    assert not ok and "tensorrt cannot be imported" in why
    with pytest.raises(EnginesmithError, match="tensorrt cannot be imported"):
        trt_backend.build(_save(_conv_model(), tmp_path / "m.onnx"), tmp_path / "out", "fp16")
    with pytest.raises(EnginesmithError, match="cannot run a TensorRT engine here: .*tensorrt cannot be imported"):
        trt_backend.Runner(tmp_path / "model.plan").activate()
    with pytest.raises(EnginesmithError, match="cannot describe the TensorRT device: .*tensorrt cannot be imported"):
        trt_backend.device_info()
    assert not (tmp_path / "out").exists()


class _FakeCudart:
    """What polygraphy.cuda.wrapper().handle gives: the CUDA runtime's C functions (ctypes)."""

    def __init__(self, status: int, count: int) -> None:
        self.status, self.count = status, count
        self.cudaGetErrorName = lambda status: {100: b"cudaErrorNoDevice", 35: b"cudaErrorInsufficientDriver"}[status]

    def cudaGetDeviceCount(self, count_ref) -> int:  # noqa: N802  (the C name)
        count_ref._obj.value = self.count
        return self.status


@pytest.mark.parametrize("status,count,expected", [
    (100, 0, (0, "no CUDA GPU (cudaGetDeviceCount: cudaErrorNoDevice)")),
    (35, 0, (0, "no CUDA GPU (cudaGetDeviceCount: cudaErrorInsufficientDriver)")),
    (0, 0, (0, "no CUDA GPU")), (0, 2, (2, "")),
])
def test_gpu_count_asks_the_cuda_runtime(monkeypatch, status, count, expected):
    from polygraphy import cuda

    monkeypatch.setattr(cuda, "wrapper", lambda: SimpleNamespace(handle=_FakeCudart(status, count)))
    assert trt_backend.gpu_count() == expected


def test_gpu_count_without_the_cuda_runtime_library(monkeypatch):
    from polygraphy import cuda

    def no_library():
        raise OSError("libcudart.so: cannot open shared object file: No such file or directory")

    monkeypatch.setattr(cuda, "wrapper", no_library)
    assert trt_backend.gpu_count() == (0, "no CUDA GPU: the CUDA runtime library cannot be loaded (libcudart.so: cannot "
                                          "open shared object file: No such file or directory)")


def _fake_gpu_machine(monkeypatch, version: str = "10.8.0.43", gpu=("NVIDIA L4", "8.9")) -> None:
    """A GPU (as cudaGetDeviceCount says), a `tensorrt` module of `version` and nvidia-smi's answer `gpu`."""
    monkeypatch.setattr(trt_backend, "gpu_count", lambda: (1, ""))
    monkeypatch.setitem(sys.modules, "tensorrt", SimpleNamespace(__version__=version))
    monkeypatch.setattr(trt_backend, "local_gpu", lambda: gpu)


def test_tensorrt_older_than_10_is_refused(monkeypatch):
    _fake_gpu_machine(monkeypatch, version="8.6.1.6")
    ok, why = trt_backend.available()
    assert not ok and "(TensorRT 8.6.1.6 is older than 10)" in why


def test_the_engine_stage_key_holds_the_device_and_the_options(monkeypatch, tmp_path):
    """stage_options as the pipeline calls it (Target.build_options): the device from nvidia-smi and TensorRT's
    version, the profile/workspace/NMS options, and the shared timing cache beside the stage cache."""
    from enginesmith.backends.targets import TARGETS

    _fake_gpu_machine(monkeypatch)
    device = {"tensorrt": "10.8.0.43", "gpu": "NVIDIA L4", "compute_capability": "8.9"}
    assert trt_backend.device_info() == device
    kwargs, key = TARGETS["tensorrt"].build_options(tmp_path)
    assert kwargs == {"options": trt_backend.BuildOptions(
        timing_cache=tmp_path / "tensorrt" / "timing-trt10.8.0.43-sm8.9-nvidia-l4.cache")}
    assert key == {"device": device, "profile": [1, 1, 8], "workspace_mb": 2048, "efficient_nms": None}
    mine = trt_backend.BuildOptions(max_batch=4, timing_cache=tmp_path / "mine.cache",
                                    efficient_nms=trt_backend.EfficientNMS(max_detections=10))
    kwargs, key = trt_backend.stage_options(tmp_path, mine)
    assert kwargs == {"options": mine}  # a timing cache given is kept
    assert key["profile"] == [1, 1, 4] and key["efficient_nms"] == {"iou": 0.45, "score": 0.25, "max_detections": 10,
                                                                    "class_agnostic": False}


class _FakeCudartDevice(_FakeCudart):
    """A CUDA runtime that also describes device 0, the way libcudart's C functions fill their arguments."""

    def __init__(self, name: bytes, major: int, minor: int, status: int = 0) -> None:
        super().__init__(0, 1)
        self.name, self.attrs, self.prop_status = name, {75: major, 76: minor}, status

    def cudaDeviceGetAttribute(self, value_ref, attr: int, device: int) -> int:  # noqa: N802
        assert device == 0
        value_ref._obj.value = self.attrs[attr]
        return self.prop_status

    def cudaGetDeviceProperties(self, props, device: int) -> int:  # noqa: N802
        assert device == 0 and len(props.raw) >= 1008  # room for cudaDeviceProp
        ctypes.memmove(props, self.name + b"\0" * (256 - len(self.name)) + b"\x07" * 16, 256 + 16)
        return self.prop_status


def test_without_nvidia_smi_the_device_is_described_by_the_cuda_runtime(monkeypatch):
    """Jetson has no nvidia-smi: the record comes from cudaDeviceGetAttribute and cudaDeviceProp.name."""
    from polygraphy import cuda

    _fake_gpu_machine(monkeypatch, gpu=(None, None))
    monkeypatch.setattr(cuda, "wrapper", lambda: SimpleNamespace(handle=_FakeCudartDevice(b"Orin", 8, 7)))
    assert trt_backend.device_info() == {"tensorrt": "10.8.0.43", "gpu": "Orin", "compute_capability": "8.7"}


def test_the_device_must_be_described_by_nvidia_smi_or_the_cuda_runtime(monkeypatch):
    from polygraphy import cuda

    _fake_gpu_machine(monkeypatch, gpu=(None, None))
    monkeypatch.setattr(cuda, "wrapper", lambda: SimpleNamespace(handle=_FakeCudartDevice(b"Orin", 8, 7, status=1)))
    with pytest.raises(EnginesmithError, match="neither nvidia-smi nor the CUDA runtime reports CUDA device 0's name"):
        trt_backend.device_info()


def test_local_gpu_runs_nvidia_smi(monkeypatch, tmp_path):
    """tensorrt_device.local_gpu with an nvidia-smi on PATH that answers like the real one."""
    from enginesmith.backends.tensorrt_device import local_gpu

    fake = tmp_path / "nvidia-smi"
    fake.write_text("#!/bin/sh\ncase \"$1\" in --query-gpu=index,uuid,name,compute_cap) printf '%s' \"$SMI\";; esac\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("SMI", SMI)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert local_gpu() == ("NVIDIA L4", "8.9")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    assert local_gpu() == ("Tesla T4", "7.5")
    monkeypatch.setenv("PATH", str(tmp_path / "none"))
    assert local_gpu() == (None, None)


def test_the_onnx_file_is_checked_before_the_gpu(tmp_path):
    with pytest.raises(EnginesmithError, match="symmetric Q/DQ \\(zero points 0\\).*q0 in asym.onnx"):
        trt_backend.build(_save(_qdq_model(3), tmp_path / "asym.onnx"), tmp_path / "out", "int8")
    with pytest.raises(EnginesmithError, match="ONNX file not found"):
        trt_backend.build(tmp_path / "missing.onnx", tmp_path / "out", "fp32", max_batch=4, workspace_mb=64)
    with pytest.raises(EnginesmithError, match="builds from an ONNX file, got ModelProto; pass the ONNX path"):
        trt_backend.build(_conv_model(), tmp_path / "out", "fp32")
    assert not (tmp_path / "out").exists()


def test_major_version():
    from enginesmith.backends.tensorrt_options import major

    assert [major("10.8.0.43"), major("11"), major("dev"), major("")] == [10, 11, 0, 0]


def test_bad_options_are_refused_before_the_gpu_check(tmp_path):
    with pytest.raises(EnginesmithError, match="min <= opt <= max batch"):
        trt_backend.build(tmp_path / "m.onnx", tmp_path, "fp32", options=trt_backend.BuildOptions(max_batch=0))
    with pytest.raises(EnginesmithError, match="unknown precision 'int4'"):
        trt_backend.build(tmp_path / "m.onnx", tmp_path, "int4")
    with pytest.raises(EnginesmithError, match="EfficientNMS max_detections must be >= 1"):
        trt_backend.build(tmp_path / "m.onnx", tmp_path, "fp32", options=trt_backend.BuildOptions(
            efficient_nms=trt_backend.EfficientNMS(max_detections=0)))


def test_importing_the_backend_imports_nothing_heavy():
    code = ("import sys, enginesmith.backends.tensorrt, enginesmith.backends.torch_compile, enginesmith.backends.torch\n"
            "print([m for m in ('tensorrt', 'torch', 'cuda', 'polygraphy', 'onnx_graphsurgeon', 'onnx') if m in sys.modules])")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"
    assert importlib.util.find_spec("enginesmith.backends.torch_compile") is not None
