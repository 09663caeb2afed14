"""TensorRT 10/11 backend: ONNX -> model.plan, run with cuda-python device buffers (no torch).

Written against the TensorRT 10.x and 11.x Python API; `scripts/tensorrt_api_names.py` checks every
`trt.*` name and engine/builder method used here against the names in both bindings wheels.

Precision follows the ONNX file (explicit quantization): an FP16-typed model builds FP16, a symmetric
Q/DQ model (zero points 0) builds INT8, both as STRONGLY_TYPED networks. TensorRT 11 removed the
implicit INT8 calibrator and the fp16/int8 builder flags; only on TensorRT 10, an fp32 ONNX asked for
fp16 falls back to a weakly typed network with BuilderFlag.FP16.

An fp32 build clears BuilderFlag.TF32 (on by default on Ampere and later), so an fp32 engine computes
in fp32 and is held to the fp32 tolerance.

Build options: an optimization profile for a dynamic batch (min/opt/max), a timing cache file reused
across builds, the workspace limit, and optionally the EfficientNMS_TRT plugin on the raw detector head
(`detections [N, K, 6]`, `num_detections [N]` first, raw `boxes`/`scores` kept as outputs).

The GPU is checked (cudaGetDeviceCount) before any TensorRT builder or runtime is created: without one,
creating them can crash the process. Importing this module imports neither tensorrt nor cuda-python.

Longer than 400 lines: one backend's build options, builder, plan typing and CUDA runner, written against one
API and checked as one file by scripts/tensorrt_api_names.py; there is no GPU here to test a split against.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from enginesmith.backends.base import Runner as _BaseRunner
from enginesmith.backends.base import check_engine_file, check_precision, first_line
from enginesmith.backends.onnxruntime import validate_onnx
from enginesmith.errors import EnginesmithError

ENGINE_FILE = "model.plan"
TARGET = "tensorrt"
REBUILD = "rebuild for this device with `enginesmith build --target tensorrt`"


# -- cuda-python -------------------------------------------------------------------------------------
def _cudart() -> Any:
    """cuda-python's runtime module (cuda.bindings.runtime; older releases: cuda.cudart)."""
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        from cuda import cudart  # older cuda-python
    return cudart


def _check(result: Any, what: str) -> Any:
    """cuda-python calls return (err, *values); raise on error, return the value(s)."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise EnginesmithError(f"CUDA error {err} in {what}; check the GPU and driver (nvidia-smi)")
    if not values:
        return None
    return values[0] if len(values) == 1 else values


def gpu_count() -> tuple[int, str]:
    """(number of CUDA GPUs, why none) through cuda-python; (0, reason) without a driver or GPU."""
    try:
        cudart = _cudart()
    except Exception as e:
        return 0, f"cuda-python cannot be imported ({first_line(e)}); pip install cuda-python"
    try:
        err, count = cudart.cudaGetDeviceCount()
    except Exception as e:  # a broken libcudart
        return 0, f"the CUDA runtime cannot be loaded ({first_line(e)})"
    if int(err) != 0:
        return 0, f"no CUDA GPU (cudaGetDeviceCount: {getattr(err, 'name', err)})"
    if not count:
        return 0, "no CUDA GPU"
    return int(count), ""


def available() -> tuple[bool, str]:
    """(True, "") when TensorRT 10+ imports and a CUDA GPU is present; the GPU is checked first."""
    count, why = gpu_count()
    if count < 1:
        return False, _lacks(why)
    try:
        import tensorrt as trt
    except Exception as e:
        return False, _lacks(f"tensorrt cannot be imported: {first_line(e)}")
    if _major(trt.__version__) < 10:
        return False, _lacks(f"TensorRT {trt.__version__} is older than 10")
    return True, ""


def _lacks(why: str) -> str:
    return (f"target tensorrt needs NVIDIA TensorRT 10+ and a CUDA GPU, which this machine lacks ({why}); "
            "build for --target openvino or onnxruntime, or run on a machine with TensorRT")


def _major(version: str) -> int:
    try:
        return int(str(version).split(".")[0])
    except ValueError:
        return 0


def device_info() -> dict[str, str]:
    """What a plan is tied to: {"tensorrt": version, "gpu": name, "compute_capability": "8.9"} of GPU 0.

    These are exactly the keys runtime/manifest.py reads from manifest["device"]."""
    count, why = gpu_count()
    if count < 1:
        raise EnginesmithError(f"cannot describe the TensorRT device: {why}; run on a machine with an NVIDIA GPU")
    import tensorrt as trt

    props = _check(_cudart().cudaGetDeviceProperties(0), "cudaGetDeviceProperties")
    return device_record(trt.__version__, props.name, props.major, props.minor)


def device_record(tensorrt_version: str, gpu_name: str | bytes, major: int, minor: int) -> dict[str, str]:
    """manifest["device"]: {"tensorrt": "10.8.0.43", "gpu": "NVIDIA L4", "compute_capability": "8.9"}
    (cuda-python gives the name as NUL-padded bytes)."""
    if isinstance(gpu_name, bytes):
        gpu_name = gpu_name.split(b"\0", 1)[0].decode(errors="replace")
    return {"tensorrt": str(tensorrt_version), "gpu": str(gpu_name).strip(), "compute_capability": f"{int(major)}.{int(minor)}"}


# -- build --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EfficientNMS:
    """EfficientNMS_TRT on the raw head: boxes [N, A, 4] x1y1x2y2 and scores [N, A, C] (probabilities)."""

    iou: float = 0.45
    score: float = 0.25
    max_detections: int = 100
    class_agnostic: bool = False
    boxes: str = "boxes"
    scores: str = "scores"


@dataclass(frozen=True)
class BuildOptions:
    """How a plan is built beyond the ONNX file.

    min/opt/max_batch: the optimization profile of a dynamic batch axis (a static batch needs none).
    timing_cache: a file read before and written after the build, so later builds reuse the tactic timings.
    workspace_mb: the builder's workspace limit. efficient_nms: append EfficientNMS_TRT to the raw head.
    """

    min_batch: int = 1
    opt_batch: int = 1
    max_batch: int = 8
    workspace_mb: int = 2048
    timing_cache: Path | None = None
    efficient_nms: EfficientNMS | None = None

    def check(self) -> None:
        if not 1 <= self.min_batch <= self.opt_batch <= self.max_batch:
            raise EnginesmithError(f"TensorRT profile needs 1 <= min <= opt <= max batch, got {self.min_batch}/"
                                   f"{self.opt_batch}/{self.max_batch}; fix the batch options")
        if self.workspace_mb < 1:
            raise EnginesmithError(f"TensorRT workspace must be at least 1 MB, got {self.workspace_mb}")

    def cache_params(self) -> dict[str, Any]:
        """What changes the plan (the timing cache only speeds the build up, so it is not part of the key)."""
        nms = self.efficient_nms
        return {"profile": [self.min_batch, self.opt_batch, self.max_batch], "workspace_mb": self.workspace_mb,
                "efficient_nms": None if nms is None else {"iou": nms.iou, "score": nms.score,
                                                           "max_detections": nms.max_detections,
                                                           "class_agnostic": nms.class_agnostic}}


def timing_cache_file(folder: Path, device: dict[str, str]) -> Path:
    """The timing cache for this TensorRT version and GPU inside `folder` (a cache from another device is not reused)."""
    slug = "".join(c if c.isalnum() else "-" for c in device.get("gpu", "gpu")).strip("-").lower() or "gpu"
    return Path(folder) / f"timing-trt{device.get('tensorrt', '?')}-sm{device.get('compute_capability', '?')}-{slug}.cache"


def stage_options(cache_root: Path, options: BuildOptions | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """(keyword arguments for `build`, what goes into the engine stage's cache key) for a pipeline build.

    The key holds the device (a plan is tied to its TensorRT version and GPU) and the options that shape
    the plan; the timing cache lives beside the stage cache (cache_root/tensorrt/), shared by every build."""
    device = device_info()
    opts = options or BuildOptions()
    if opts.timing_cache is None:
        from dataclasses import replace

        opts = replace(opts, timing_cache=timing_cache_file(Path(cache_root) / "tensorrt", device))
    return {"options": opts}, {"device": device, **opts.cache_params()}


def onnx_typing(onnx_path: Path) -> tuple[bool, bool]:
    """(has fp16 tensors, has Q/DQ nodes) of an ONNX file, read without its weights."""
    import onnx

    m = onnx.load(str(onnx_path), load_external_data=False)
    g = m.graph
    fp16 = any(t.data_type == onnx.TensorProto.FLOAT16 for t in g.initializer) or any(
        v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT16 for v in list(g.input) + list(g.output)
    )
    qdq = any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in g.node)
    return fp16, qdq


def check_qdq_symmetric(onnx_path: Path) -> None:
    """TensorRT's explicit quantization takes symmetric Q/DQ only: every zero point must be 0."""
    import onnx
    from onnx import numpy_helper

    m = onnx.load(str(onnx_path), load_external_data=False)
    inits = {t.name: t for t in m.graph.initializer}
    for node in m.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") and len(node.input) > 2 and node.input[2]:
            zp = inits.get(node.input[2])
            if zp is not None and np.any(numpy_helper.to_array(zp) != 0):
                raise EnginesmithError(f"TensorRT INT8 needs symmetric Q/DQ (zero points 0), but {node.name or node.op_type} "
                                       f"in {onnx_path.name} has a non-zero zero point; quantize with the tensorrt quantizer")


def network_flags(trt: Any, strongly_typed: bool) -> int:
    """create_network flags: STRONGLY_TYPED when asked (TensorRT 10 and 11); explicit batch is the only mode since 10."""
    return 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if strongly_typed else 0


def plan_typing(trt_version: str, precision: str, fp16_typed: bool, qdq: bool) -> tuple[bool, bool]:
    """(strongly typed network, set BuilderFlag.FP16) for a build; refuses what the TensorRT version cannot do.

    The ONNX file carries the precision: fp16 -> FP16-typed, int8 -> Q/DQ. Only TensorRT 10 may
    turn an fp32 ONNX into fp16 with the (weakly typed) FP16 flag; TensorRT 11 removed it."""
    if precision == "int8" and not qdq:
        raise EnginesmithError(f"TensorRT {precision} needs a Q/DQ ONNX (explicit quantization) and this one has none; "
                               "run the quantize stage for tensorrt first")
    if precision == "fp16" and not fp16_typed and not qdq:
        if _major(trt_version) >= 11:
            raise EnginesmithError(f"TensorRT {trt_version} builds fp16 from an FP16-typed ONNX only (the FP16 builder "
                                   "flag is gone); convert it with the fp16 precision stage first")
        return False, True
    return True, False


def _efficient_nms(trt: Any, network: Any, logger: Any, nms: EfficientNMS) -> None:
    """Append EfficientNMS_TRT to the raw head; outputs detections [N, K, 6], num_detections [N], then boxes/scores."""
    outputs = {network.get_output(i).name: network.get_output(i) for i in range(network.num_outputs)}
    if nms.boxes not in outputs or nms.scores not in outputs:
        raise EnginesmithError(f"EfficientNMS needs the raw head outputs {nms.boxes!r} and {nms.scores!r}, the network has "
                               f"{sorted(outputs)}; build with --nms host or export the raw head")
    trt.init_libnvinfer_plugins(logger, "")
    creator = trt.get_plugin_registry().get_creator("EfficientNMS_TRT", "1", "")
    if creator is None:
        raise EnginesmithError("this TensorRT has no EfficientNMS_TRT plugin; build with --nms host (NMS on the host)")
    f32, i32 = trt.PluginFieldType.FLOAT32, trt.PluginFieldType.INT32
    fields = trt.PluginFieldCollection([
        trt.PluginField("background_class", np.array([-1], np.int32), i32),
        trt.PluginField("max_output_boxes", np.array([nms.max_detections], np.int32), i32),
        trt.PluginField("score_threshold", np.array([nms.score], np.float32), f32),
        trt.PluginField("iou_threshold", np.array([nms.iou], np.float32), f32),
        trt.PluginField("score_activation", np.array([0], np.int32), i32),
        trt.PluginField("class_agnostic", np.array([int(nms.class_agnostic)], np.int32), i32),
        trt.PluginField("box_coding", np.array([0], np.int32), i32),  # corners x1y1x2y2
    ])
    inputs = [outputs[nms.boxes], outputs[nms.scores]]
    if isinstance(creator, trt.IPluginCreatorV3One):
        plugin = creator.create_plugin("efficient_nms", fields, trt.TensorRTPhase.BUILD)
        layer = network.add_plugin_v3(inputs, [], plugin)
    else:
        plugin = creator.create_plugin("efficient_nms", fields)
        layer = network.add_plugin_v2(inputs, plugin)
    if plugin is None or layer is None:
        raise EnginesmithError("TensorRT could not create the EfficientNMS_TRT layer; build with --nms host")
    count, det_boxes, det_scores, det_classes = (layer.get_output(i) for i in range(4))

    def column(t: Any) -> Any:  # [N, K] -> [N, K, 1]
        shuffle = network.add_shuffle(t)
        shuffle.reshape_dims = (0, 0, 1)
        return shuffle.get_output(0)

    classes = network.add_cast(det_classes, trt.float32).get_output(0)
    scores = network.add_cast(det_scores, trt.float32).get_output(0)
    concat = network.add_concatenation([network.add_cast(det_boxes, trt.float32).get_output(0), column(scores),
                                        column(classes)])
    concat.axis = 2
    flat = network.add_shuffle(count)  # [N, 1] -> [N]
    flat.reshape_dims = (0,)
    detections, num = concat.get_output(0), flat.get_output(0)
    detections.name, num.name = "detections", "num_detections"
    raw = [outputs[n] for n in outputs]
    for t in raw:
        network.unmark_output(t)
    for t in (detections, num, *raw):
        network.mark_output(t)


def _read_timing_cache(path: Path | None) -> bytes:
    if path is None or not Path(path).is_file():
        return b""
    return Path(path).read_bytes()


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def build(source: Any, out_dir: Path, precision: str, *, options: BuildOptions | None = None,
          max_batch: int | None = None, workspace_mb: int | None = None) -> Path:
    """Parse the ONNX file with TensorRT's OnnxParser and write the serialized engine as model.plan.

    max_batch / workspace_mb override the same fields of `options` (kept for older callers)."""
    check_precision(precision, TARGET)
    opts = options or BuildOptions()
    if max_batch is not None or workspace_mb is not None:
        from dataclasses import replace

        opts = replace(opts, max_batch=int(max_batch or opts.max_batch), workspace_mb=int(workspace_mb or opts.workspace_mb))
    opts.check()
    if not isinstance(source, (str, Path)):
        raise EnginesmithError(f"target tensorrt builds from an ONNX file, got {type(source).__name__}; pass the ONNX path")
    ok, reason = available()
    if not ok:
        raise EnginesmithError(reason)
    import tensorrt as trt

    src = Path(source)
    validate_onnx(src)
    fp16_typed, qdq = onnx_typing(src)
    if qdq:
        check_qdq_symmetric(src)
    strongly_typed, fp16_flag = plan_typing(trt.__version__, precision, fp16_typed, qdq)

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(network_flags(trt, strongly_typed))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(src)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors)) or "unknown parser error"
        raise EnginesmithError(f"TensorRT cannot parse {src.name}: {errors[:500]}; simplify the ONNX or change the opset")
    if opts.efficient_nms is not None:
        _efficient_nms(trt, network, logger, opts.efficient_nms)

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(opts.workspace_mb) << 20)
    if fp16_flag:
        config.set_flag(getattr(trt.BuilderFlag, "FP16"))  # TensorRT 10 only (plan_typing refuses it on 11)
    if precision == "fp32":  # TF32 is on by default; an fp32 engine is held to the fp32 tolerance
        config.clear_flag(trt.BuilderFlag.TF32)
    timing_cache = config.create_timing_cache(_read_timing_cache(opts.timing_cache))
    if not config.set_timing_cache(timing_cache, False):  # a cache from another device or version: start afresh
        config.set_timing_cache(config.create_timing_cache(b""), False)
    inputs = [network.get_input(i) for i in range(network.num_inputs)]
    dynamic = [t for t in inputs if -1 in tuple(t.shape)]
    if dynamic:
        profile = builder.create_optimization_profile()
        for tensor in dynamic:
            shape = tuple(tensor.shape)
            if -1 in shape[1:]:
                raise EnginesmithError(f"TensorRT input {tensor.name} has dynamic dims {shape} beyond the batch; "
                                       "export with a fixed input size")
            rest = shape[1:]
            profile.set_shape(tensor.name, (opts.min_batch, *rest), (opts.opt_batch, *rest), (opts.max_batch, *rest))
        config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise EnginesmithError(f"TensorRT failed to build an engine from {src.name} (see the TensorRT log above); "
                               "try a larger workspace, another precision, or --target onnxruntime")
    if opts.timing_cache is not None:
        _write_atomic(Path(opts.timing_cache), bytes(config.get_timing_cache().serialize()))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    engine_file = out_dir / ENGINE_FILE
    engine_file.write_bytes(bytes(plan))
    return engine_file


# -- run ----------------------------------------------------------------------------------------------
def _output_allocator_class(trt: Any) -> type:
    """An IOutputAllocator for outputs whose shape is known only after execution (data-dependent)."""

    class OutputAllocator(trt.IOutputAllocator):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            trt.IOutputAllocator.__init__(self)
            self.buffers: dict[str, tuple[int, int]] = {}
            self.shapes: dict[str, tuple[int, ...]] = {}

        def reallocate_output_async(self, tensor_name: str, memory: int, size: int, alignment: int,
                                    stream: int) -> int:
            ptr, have = self.buffers.get(tensor_name, (0, 0))
            if have < size:
                if ptr:
                    _check(_cudart().cudaFree(ptr), "cudaFree")
                ptr = _check(_cudart().cudaMalloc(max(int(size), 1)), "cudaMalloc")
                self.buffers[tensor_name] = (ptr, int(size))
            return ptr

        def reallocate_output(self, tensor_name: str, memory: int, size: int, alignment: int) -> int:
            return self.reallocate_output_async(tensor_name, memory, size, alignment, 0)

        def notify_shape(self, tensor_name: str, shape: Any) -> None:
            self.shapes[tensor_name] = tuple(int(d) for d in shape)

        def _free_all(self) -> None:
            for ptr, _ in self.buffers.values():
                _cudart().cudaFree(ptr)
            self.buffers.clear()

    return OutputAllocator


class Runner(_BaseRunner):
    """Deserialize model.plan and run it with execute_async_v3 on a CUDA stream, buffers from cuda-python.

    `last_gpu_ms` is the time between CUDA events recorded on the stream around the last execution
    (GPU time of the network, copies excluded)."""

    name = "tensorrt"

    def __init__(self, engine_path: str | Path, **_: Any) -> None:
        super().__init__()
        self.engine_path = Path(engine_path)
        self._engine: Any = None
        self._context: Any = None
        self._runtime: Any = None
        self._stream: Any = None
        self._events: tuple[Any, Any] | None = None
        self._allocator: Any = None
        self._dynamic_outputs: set[str] = set()
        self._buffers: dict[str, tuple[int, int]] = {}  # name -> (device pointer, bytes), grown on demand
        self.last_gpu_ms: float | None = None

    def _load(self) -> None:
        ok, reason = available()  # GPU first: creating a TensorRT runtime without one can crash the process
        if not ok:
            raise EnginesmithError(f"cannot run a TensorRT engine here: {reason}")
        import tensorrt as trt

        path = check_engine_file(self.engine_path, "TensorRT engine")
        self._trt = trt
        self._runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        try:
            engine = self._runtime.deserialize_cuda_engine(path.read_bytes())
        except Exception:  # some releases raise instead of returning None
            engine = None
        if engine is None:
            raise EnginesmithError(f"cannot load TensorRT engine {path} with TensorRT {trt.__version__}: corrupt, or built "
                                   f"by another TensorRT version or GPU; {REBUILD}")
        self._engine = engine
        self._context = engine.create_execution_context()
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        is_input = {n: engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self.input_names = [n for n in names if is_input[n]]
        self.output_names = [n for n in names if not is_input[n]]
        cudart = _cudart()
        self._stream = _check(cudart.cudaStreamCreate(), "cudaStreamCreate")
        self._events = (_check(cudart.cudaEventCreate(), "cudaEventCreate"), _check(cudart.cudaEventCreate(), "cudaEventCreate"))

    def _device(self, name: str, nbytes: int) -> int:
        ptr, size = self._buffers.get(name, (0, 0))
        if size < nbytes:
            cudart = _cudart()
            if ptr:
                _check(cudart.cudaFree(ptr), "cudaFree")
            ptr = _check(cudart.cudaMalloc(max(nbytes, 1)), "cudaMalloc")
            self._buffers[name] = (ptr, nbytes)
        return ptr

    def _infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        cudart, trt = _cudart(), self._trt
        engine, context = self._engine, self._context
        h2d, d2h = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        hosts: list[np.ndarray] = []  # kept alive until the stream is synchronised
        for name in self.input_names:
            arr = np.ascontiguousarray(feed[name], dtype=trt.nptype(engine.get_tensor_dtype(name)))
            if not context.set_input_shape(name, arr.shape):
                raise EnginesmithError(f"TensorRT engine rejects shape {arr.shape} for input {name}; stay within the "
                                       "build's optimization profile")
            ptr = self._device(name, arr.nbytes)
            _check(cudart.cudaMemcpyAsync(ptr, arr.ctypes.data, arr.nbytes, h2d, self._stream), "copy to GPU")
            context.set_tensor_address(name, ptr)
            hosts.append(arr)
        dtypes = {n: trt.nptype(engine.get_tensor_dtype(n)) for n in self.output_names}
        shapes: dict[str, tuple[int, ...]] = {}
        for name in self.output_names:
            shape = tuple(context.get_tensor_shape(name))
            if any(d < 0 for d in shape):  # data-dependent: TensorRT asks the allocator once it knows the size
                if self._allocator is None:
                    self._allocator = _output_allocator_class(trt)()
                context.set_output_allocator(name, self._allocator)
                self._dynamic_outputs.add(name)
                continue
            shapes[name] = shape
            context.set_tensor_address(name, self._device(name, int(np.prod(shape)) * np.dtype(dtypes[name]).itemsize))
        start, stop = self._events  # type: ignore[misc]
        _check(cudart.cudaEventRecord(start, self._stream), "cudaEventRecord")
        if not context.execute_async_v3(int(self._stream)):
            raise EnginesmithError("TensorRT execution failed (see the TensorRT log); check the input shapes")
        _check(cudart.cudaEventRecord(stop, self._stream), "cudaEventRecord")
        outputs: dict[str, np.ndarray] = {}
        for name in self.output_names:
            if name in self._dynamic_outputs:
                _check(cudart.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")
                shape, ptr = self._allocator.shapes[name], self._allocator.buffers[name][0]
            else:
                shape, ptr = shapes[name], self._buffers[name][0]
            out = np.empty(shape, dtype=dtypes[name])
            if out.nbytes:
                _check(cudart.cudaMemcpyAsync(out.ctypes.data, ptr, out.nbytes, d2h, self._stream), "copy from GPU")
            outputs[name] = out
        _check(cudart.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")
        self.last_gpu_ms = float(_check(cudart.cudaEventElapsedTime(start, stop), "cudaEventElapsedTime"))
        del hosts
        return outputs

    def _release(self) -> None:
        cudart = _cudart()
        for ptr, _ in self._buffers.values():
            cudart.cudaFree(ptr)
        self._buffers.clear()
        if self._allocator is not None:
            self._allocator._free_all()
            self._allocator = None
        for event in self._events or ():
            cudart.cudaEventDestroy(event)
        self._events = None
        if self._stream is not None:
            cudart.cudaStreamDestroy(self._stream)
        self._stream = self._context = self._engine = self._runtime = None
