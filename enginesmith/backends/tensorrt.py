"""TensorRT 10+ backend: ONNX -> model.plan, run with cuda-python buffers (no torch).

Precision follows the ONNX file: an fp16-typed or Q/DQ model is built STRONGLY_TYPED (TensorRT 11
removed the fp16/int8 builder flags and the implicit INT8 calibrator). For an fp32 model asked for
fp16, TensorRT 10's BuilderFlag.FP16 is set where it still exists.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from enginesmith.backends.base import Runner as _BaseRunner
from enginesmith.backends.base import check_engine_file, check_precision, first_line
from enginesmith.errors import EnginesmithError

ENGINE_FILE = "model.plan"
TARGET = "tensorrt"


def _cudart() -> Any:
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
    return values[0] if len(values) == 1 else values


def available() -> tuple[bool, str]:
    try:
        import tensorrt as trt
    except Exception as e:
        return False, f"tensorrt cannot be imported: {first_line(e)}"
    major = int(str(trt.__version__).split(".")[0])
    if major < 10:
        return False, f"TensorRT {trt.__version__} is older than 10"
    try:
        cudart = _cudart()
    except Exception as e:
        return False, f"cuda-python cannot be imported: {first_line(e)}"
    err, count = cudart.cudaGetDeviceCount()
    if int(err) != 0 or count < 1:
        return False, "no CUDA GPU found"
    return True, ""


def _needs_strong_typing(onnx_path: Path) -> tuple[bool, bool]:
    """(has fp16 tensors, has Q/DQ nodes) of an ONNX file, read without its weights."""
    import onnx

    m = onnx.load(str(onnx_path), load_external_data=False)
    g = m.graph
    fp16 = any(t.data_type == onnx.TensorProto.FLOAT16 for t in g.initializer) or any(
        v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT16 for v in g.input
    )
    qdq = any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in g.node)
    return fp16, qdq


def build(source: Any, out_dir: Path, precision: str, *, max_batch: int = 8, workspace_mb: int = 2048) -> Path:
    """Parse the ONNX file with TensorRT's OnnxParser and write the serialized engine as model.plan."""
    check_precision(precision, TARGET)
    ok, reason = available()
    if not ok:
        raise EnginesmithError(
            f"target tensorrt needs NVIDIA TensorRT 10+ and a CUDA GPU, which this machine lacks ({reason}); "
            "build for --target openvino or onnxruntime, or run on a machine with TensorRT"
        )
    import tensorrt as trt

    from enginesmith.backends.onnxruntime import validate_onnx

    if not isinstance(source, (str, Path)):
        raise EnginesmithError(f"target tensorrt builds from an ONNX file, got {type(source).__name__}")
    src = Path(source)
    validate_onnx(src)
    fp16, qdq = _needs_strong_typing(src)
    if precision in ("int8", "mixed") and not qdq:
        raise EnginesmithError(
            f"TensorRT {precision} needs a Q/DQ ONNX (explicit quantization), but {src.name} has none; "
            "run the quantize stage for tensorrt first"
        )
    strongly_typed = fp16 or qdq
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if strongly_typed else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(src)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors)) or "unknown parser error"
        raise EnginesmithError(f"TensorRT cannot parse {src.name}: {errors[:500]}; simplify the ONNX or change the opset")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mb) << 20)
    if precision == "fp16" and not strongly_typed and hasattr(trt.BuilderFlag, "FP16"):
        config.set_flag(trt.BuilderFlag.FP16)
    dynamic = [network.get_input(i) for i in range(network.num_inputs) if -1 in tuple(network.get_input(i).shape)]
    if dynamic:
        profile = builder.create_optimization_profile()
        for tensor in dynamic:
            shape = tuple(tensor.shape)
            if -1 in shape[1:]:
                raise EnginesmithError(
                    f"TensorRT input {tensor.name} has dynamic dims {shape} beyond the batch; export with a fixed input size"
                )
            rest = shape[1:]
            profile.set_shape(tensor.name, (1, *rest), (1, *rest), (int(max_batch), *rest))
        config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise EnginesmithError(
            f"TensorRT failed to build an engine from {src.name} (see the TensorRT log above); "
            "try a larger workspace, another precision, or --target onnxruntime"
        )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    engine = out_dir / ENGINE_FILE
    engine.write_bytes(bytes(plan))
    return engine


class Runner(_BaseRunner):
    """Deserialize model.plan and run it with execute_async_v3 on device buffers from cuda-python."""

    name = "tensorrt"

    def __init__(self, engine_path: str | Path, **_: Any) -> None:
        super().__init__()
        self.engine_path = Path(engine_path)
        self._engine: Any = None
        self._context: Any = None
        self._stream: Any = None
        self._buffers: dict[str, tuple[int, int]] = {}  # name -> (device pointer, bytes), grown on demand

    def _load(self) -> None:
        ok, reason = available()
        if not ok:
            raise EnginesmithError(f"cannot run a TensorRT engine here ({reason}); use an openvino or onnxruntime engine")
        import tensorrt as trt

        path = check_engine_file(self.engine_path, "TensorRT engine")
        self._trt = trt
        self._runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self._engine = self._runtime.deserialize_cuda_engine(path.read_bytes())
        if self._engine is None:
            raise EnginesmithError(
                f"cannot load TensorRT engine {path}: corrupt, or built by another TensorRT version/GPU? rebuild it here"
            )
        self._context = self._engine.create_execution_context()
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        is_input = {n: self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self.input_names = [n for n in names if is_input[n]]
        self.output_names = [n for n in names if not is_input[n]]
        self._stream = _check(_cudart().cudaStreamCreate(), "cudaStreamCreate")

    def _device(self, name: str, nbytes: int) -> int:
        cudart = _cudart()
        ptr, size = self._buffers.get(name, (0, 0))
        if size < nbytes:
            if ptr:
                _check(cudart.cudaFree(ptr), "cudaFree")
            ptr = _check(cudart.cudaMalloc(max(nbytes, 1)), "cudaMalloc")
            self._buffers[name] = (ptr, nbytes)
        return ptr

    def _infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        cudart, trt = _cudart(), self._trt
        h2d, d2h = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        for name in self.input_names:
            arr = np.ascontiguousarray(feed[name], dtype=trt.nptype(self._engine.get_tensor_dtype(name)))
            if not self._context.set_input_shape(name, arr.shape):
                raise EnginesmithError(f"TensorRT engine rejects shape {arr.shape} for input {name}; stay within the build profile")
            ptr = self._device(name, arr.nbytes)
            _check(cudart.cudaMemcpyAsync(ptr, arr.ctypes.data, arr.nbytes, h2d, self._stream), "copy to GPU")
            self._context.set_tensor_address(name, ptr)
            feed[name] = arr  # keep the host array alive until the copy is done
        outputs: dict[str, np.ndarray] = {}
        for name in self.output_names:
            shape = tuple(self._context.get_tensor_shape(name))
            out = np.empty(shape, dtype=trt.nptype(self._engine.get_tensor_dtype(name)))
            self._context.set_tensor_address(name, self._device(name, out.nbytes))
            outputs[name] = out
        if not self._context.execute_async_v3(int(self._stream)):
            raise EnginesmithError("TensorRT execution failed (see the TensorRT log); check the input shapes")
        for name, out in outputs.items():
            ptr = self._buffers[name][0]
            _check(cudart.cudaMemcpyAsync(out.ctypes.data, ptr, out.nbytes, d2h, self._stream), "copy from GPU")
        _check(cudart.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")
        return outputs

    def _release(self) -> None:
        cudart = _cudart()
        for ptr, _ in self._buffers.values():
            cudart.cudaFree(ptr)
        self._buffers.clear()
        if self._stream is not None:
            cudart.cudaStreamDestroy(self._stream)
        self._stream = self._context = self._engine = None
