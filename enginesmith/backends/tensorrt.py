"""TensorRT 10/11 backend: ONNX -> model.plan with Polygraphy's loaders, run with Polygraphy's TrtRunner.

What is ours, and checked on the CPU: the mapping from enginesmith's options to Polygraphy's loaders
(`polygraphy_loaders`: strongly typed or not, the fp16 flag only for TensorRT 10's weakly typed fallback,
TF32 off for fp32, the dynamic-batch profile, workspace, timing cache), the rules behind it
(tensorrt_options.py), EfficientNMS_TRT as an ONNX edit (tensorrt_nms.py), the device a plan is tied to
(tensorrt_device.py) and one-line errors. Creating the network, parsing, configuring the builder,
building, deserializing, CUDA buffers and streams are Polygraphy's, which handles TensorRT 10 vs 11 itself;
scripts/tensorrt_api_names.py checks the TensorRT names on both paths against the bindings wheels.

Files: model.plan is written by us, atomically (temp file + rename), from EngineBytesFromNetwork's bytes;
Polygraphy's SaveEngine would deserialize the engine first and then write the file in place. The timing
cache is read from an open file, and Polygraphy writes the updated cache into a temp file we rename.

The GPU is counted (cudaGetDeviceCount, through the CUDA runtime Polygraphy's runner loads) before any
TensorRT builder or runtime is created: without one, creating them can crash the process. Importing this
module imports neither tensorrt nor polygraphy.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import tempfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import IO, Any

import numpy as np

from enginesmith.backends.base import Runner as _BaseRunner
from enginesmith.backends.base import check_engine_file, check_precision, first_line
from enginesmith.backends.onnxruntime import validate_onnx
from enginesmith.backends.tensorrt_device import local_gpu
from enginesmith.backends.tensorrt_nms import EfficientNMS, efficient_nms_onnx
from enginesmith.backends.tensorrt_options import (BuildOptions, batch_profile, check_qdq_symmetric, major, onnx_typing,
                                                    plan_typing, timing_cache_file)
from enginesmith.errors import EnginesmithError
from enginesmith.files import scratch_dir

__all__ = ["ENGINE_FILE", "BuildOptions", "EfficientNMS", "Runner", "available", "build", "device_info", "stage_options"]

ENGINE_FILE = "model.plan"
TARGET = "tensorrt"
REBUILD = "rebuild for this device with `enginesmith build --target tensorrt`"


# -- the GPU and the device --------------------------------------------------------------------------
def _cudart() -> tuple[Any, str]:
    """(the CUDA runtime's C functions as polygraphy.cuda loads them, "") or (None, why it cannot be loaded)."""
    try:
        from polygraphy import cuda
        from polygraphy.logger import G_LOGGER
    except ImportError as e:
        return None, f"polygraphy cannot be imported ({first_line(e)}); pip install polygraphy"
    try:
        with G_LOGGER.verbosity(G_LOGGER.CRITICAL):  # its library search warns; the reason below says it in one line
            return cuda.wrapper().handle, ""
    except Exception as e:  # OSError: no libcudart on the loader path
        return None, f"no CUDA GPU: the CUDA runtime library cannot be loaded ({first_line(e)})"


def gpu_count() -> tuple[int, str]:
    """(number of CUDA GPUs this process sees, why none): cudaGetDeviceCount through polygraphy.cuda, the CUDA
    runtime (libcudart) TrtRunner uses, so it honours CUDA_VISIBLE_DEVICES; (0, reason) without one."""
    cudart, why = _cudart()
    if cudart is None:
        return 0, why
    count = ctypes.c_int(0)
    status = int(cudart.cudaGetDeviceCount(ctypes.byref(count)))
    if status != 0:
        cudart.cudaGetErrorName.restype = ctypes.c_char_p
        return 0, f"no CUDA GPU (cudaGetDeviceCount: {cudart.cudaGetErrorName(status).decode()})"
    if count.value < 1:
        return 0, "no CUDA GPU"
    return int(count.value), ""


def available() -> tuple[bool, str]:
    """(True, "") when TensorRT 10+ imports and a CUDA GPU is present; the GPU is checked first."""
    count, why = gpu_count()
    if count < 1:
        return False, _lacks(why)
    try:
        import tensorrt as trt
    except Exception as e:
        return False, _lacks(f"tensorrt cannot be imported: {first_line(e)}")
    if major(trt.__version__) < 10:
        return False, _lacks(f"TensorRT {trt.__version__} is older than 10")
    return True, ""


def _lacks(why: str) -> str:
    return (f"target tensorrt needs NVIDIA TensorRT 10+ and a CUDA GPU, which this machine lacks ({why}); "
            "build for --target openvino or onnxruntime, or run on a machine with TensorRT")


def device_info() -> dict[str, str]:
    """What a plan is tied to: {"tensorrt": version, "gpu": name, "compute_capability": "8.9"} of CUDA device 0.

    The GPU is described by nvidia-smi, as tensorrt_device.check_device describes it when the engine is
    loaded, so the record and the check read one source; where nvidia-smi cannot (Jetson has none), by the
    CUDA runtime. These are the keys runtime/manifest.py reads."""
    ok, why = available()
    if not ok:
        raise EnginesmithError(f"cannot describe the TensorRT device: {why}")
    import tensorrt as trt

    gpu, cc = local_gpu()
    if gpu is None or cc is None:  # no nvidia-smi (Jetson), or it cannot name device 0 (a MIG UUID): ask CUDA
        gpu, cc = cuda_device_zero_properties()
    if gpu is None or cc is None:
        raise EnginesmithError("cannot describe the TensorRT device: neither nvidia-smi nor the CUDA runtime reports "
                               "CUDA device 0's name and compute capability; check the driver and CUDA_VISIBLE_DEVICES")
    return device_record(trt.__version__, gpu, cc)


CUDA_DEV_ATTR_CC_MAJOR, CUDA_DEV_ATTR_CC_MINOR = 75, 76  # cudaDevAttrComputeCapabilityMajor/Minor (driver_types.h)
CUDA_DEVICE_PROP_BYTES = 1 << 13  # more than any release's cudaDeviceProp (1,008 bytes in CUDA 12); name is first


def cuda_device_zero_properties() -> tuple[str | None, str | None]:
    """(name, compute capability "8.7") of CUDA device 0 from the CUDA runtime Polygraphy loads (no nvidia-smi,
    as on Jetson): cudaDeviceGetAttribute for the capability, and cudaDeviceProp's first field, char name[256],
    for the name. (None, None) when the runtime cannot be asked."""
    cudart, _ = _cudart()
    if cudart is None:
        return None, None
    major_, minor_ = ctypes.c_int(0), ctypes.c_int(0)
    props = ctypes.create_string_buffer(CUDA_DEVICE_PROP_BYTES)
    if (int(cudart.cudaDeviceGetAttribute(ctypes.byref(major_), CUDA_DEV_ATTR_CC_MAJOR, 0)) != 0
            or int(cudart.cudaDeviceGetAttribute(ctypes.byref(minor_), CUDA_DEV_ATTR_CC_MINOR, 0)) != 0
            or int(cudart.cudaGetDeviceProperties(props, 0)) != 0):
        return None, None
    name = props.raw[:256].split(b"\0", 1)[0].decode(errors="replace").strip()
    return (name or None), f"{major_.value}.{minor_.value}"


def device_record(tensorrt_version: str, gpu_name: str, compute_capability: str) -> dict[str, str]:
    """manifest["device"]: {"tensorrt": "10.8.0.43", "gpu": "NVIDIA L4", "compute_capability": "8.9"}."""
    return {"tensorrt": str(tensorrt_version), "gpu": str(gpu_name).strip(), "compute_capability": str(compute_capability)}


# -- pipeline options ----------------------------------------------------------------------------------
def stage_options(cache_root: Path, options: BuildOptions | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """(keyword arguments for `build`, what goes into the engine stage's cache key) for a pipeline build.

    The key holds the device (a plan is tied to its TensorRT version and GPU) and the options that shape
    the plan; the timing cache lives beside the stage cache (cache_root/tensorrt/), shared by every build."""
    device = device_info()
    opts = options or BuildOptions()
    if opts.timing_cache is None:
        opts = replace(opts, timing_cache=timing_cache_file(Path(cache_root) / "tensorrt", device))
    return {"options": opts}, {"device": device, **opts.cache_params()}


# -- Polygraphy's loaders -------------------------------------------------------------------------------
def polygraphy_loaders(trt: Any, onnx_path: Path, precision: str, opts: BuildOptions, strongly_typed: bool,
                       fp16_flag: bool, load_cache: IO[bytes] | None) -> tuple[Any, Any]:
    """(NetworkFromOnnxPath, CreateConfig) for a build: constructed only (nothing runs until they are called).

    `trt` is the tensorrt module (for MemoryPoolType.WORKSPACE); load_cache: an open timing-cache file."""
    from polygraphy.backend.trt import CreateConfig, NetworkFromOnnxPath, Profile

    profile = Profile()
    for name, lo, mid, hi in batch_profile(onnx_path, opts):
        profile.add(name, lo, mid, hi)
    network = NetworkFromOnnxPath(str(onnx_path), strongly_typed=strongly_typed)
    config = CreateConfig(tf32=precision != "fp32", fp16=fp16_flag, profiles=[profile], load_timing_cache=load_cache,
                          memory_pool_limits={trt.MemoryPoolType.WORKSPACE: int(opts.workspace_mb) << 20})
    return network, config


@contextlib.contextmanager
def _polygraphy(what: str, hint: str, quiet: bool = True) -> Iterator[None]:
    """Run Polygraphy (and TensorRT under it): its INFO lines hidden when `quiet` (TensorRT's warnings and errors
    still print), and its exceptions turned into one line: "{what}: {first line}; {hint}"."""
    from polygraphy.logger import G_LOGGER

    with G_LOGGER.verbosity(G_LOGGER.WARNING) if quiet else contextlib.nullcontext():
        try:
            yield
        except EnginesmithError:
            raise
        except Exception as e:  # PolygraphyException from G_LOGGER.critical, TypeError/RuntimeError from TensorRT
            raise EnginesmithError(f"{what}: {first_line(e)}; {hint}") from None


@contextlib.contextmanager
def timing_cache_files(path: Path | None) -> Iterator[tuple[IO[bytes] | None, IO[bytes] | None]]:
    """(the timing cache to read, or None; a temp file for Polygraphy to write the updated cache into, or None).

    The temp file (".name.*" beside `path`) replaces `path` when the block ends without an error and it
    holds a cache; otherwise it is removed and `path` is left as it was."""
    if path is None:
        yield None, None
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        old = stack.enter_context(open(path, "rb")) if path.is_file() else None
        new = stack.enter_context(tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", delete=False))
        try:
            yield old, new
            new.flush()
            if os.fstat(new.fileno()).st_size:
                os.replace(new.name, path)
        finally:
            Path(new.name).unlink(missing_ok=True)


def write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temp file in the same folder and a rename: never a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# -- build ----------------------------------------------------------------------------------------------
def build(source: Any, out_dir: Path, precision: str, *, options: BuildOptions | None = None,
          max_batch: int | None = None, workspace_mb: int | None = None) -> Path:
    """Parse the ONNX file with TensorRT's parser and write the serialized engine as out_dir/model.plan.

    The options and the ONNX file (valid, symmetric Q/DQ) are checked before the GPU. max_batch /
    workspace_mb override the same fields of `options` (kept for older callers)."""
    check_precision(precision, TARGET)
    opts = options or BuildOptions()
    if max_batch is not None or workspace_mb is not None:
        opts = replace(opts, max_batch=int(max_batch or opts.max_batch), workspace_mb=int(workspace_mb or opts.workspace_mb))
    opts.check()
    if not isinstance(source, (str, Path)):
        raise EnginesmithError(f"target tensorrt builds from an ONNX file, got {type(source).__name__}; pass the ONNX path")
    src = Path(source)
    validate_onnx(src)
    fp16_typed, qdq = onnx_typing(src)
    if qdq:
        check_qdq_symmetric(src)
    ok, reason = available()
    if not ok:
        raise EnginesmithError(reason)
    import tensorrt as trt
    from polygraphy.backend.trt import EngineBytesFromNetwork

    strongly_typed, fp16_flag = plan_typing(trt.__version__, precision, fp16_typed, qdq)
    with scratch_dir("enginesmith-trt") as tmp, timing_cache_files(opts.timing_cache) as (old, new):
        onnx_path = src if opts.efficient_nms is None else efficient_nms_onnx(src, Path(tmp) / src.name, opts.efficient_nms)
        with _polygraphy(f"TensorRT cannot parse {src.name}", "simplify the ONNX or change the opset (parser errors above)"):
            network, config = polygraphy_loaders(trt, onnx_path, precision, opts, strongly_typed, fp16_flag, old)
            parsed = network()
        with _polygraphy(f"TensorRT failed to build an engine from {src.name}",
                         "try a larger workspace, another precision, or --target onnxruntime (TensorRT log above)"):
            plan = EngineBytesFromNetwork(parsed, config=config, save_timing_cache=new)()
    engine_file = Path(out_dir) / ENGINE_FILE
    write_atomic(engine_file, bytes(plan))
    return engine_file


# -- run ------------------------------------------------------------------------------------------------
class Runner(_BaseRunner):
    """Deserialize model.plan and run it with Polygraphy's TrtRunner (its CUDA stream, device buffers and
    output allocator, which also serves data-dependent output shapes).

    No CUDA events: TrtRunner's own `inference_time` is time.time() around the copies, execution and sync,
    and the benchmarks time every backend with perf_counter around `infer`, so a GPU-only time for one
    backend would compare with nothing and nothing reads it."""

    name = "tensorrt"

    def __init__(self, engine_path: str | Path, **_: Any) -> None:
        super().__init__()
        self.engine_path = Path(engine_path)
        self._runner: Any = None
        self._dtypes: dict[str, Any] = {}

    def _load(self) -> None:
        ok, reason = available()  # GPU first: creating a TensorRT runtime without one can crash the process
        if not ok:
            raise EnginesmithError(f"cannot run a TensorRT engine here: {reason}")
        import tensorrt as trt
        from polygraphy.backend.trt import EngineFromBytes, TrtRunner
        from polygraphy.backend.trt import util as trt_util
        from polygraphy.datatype import DataType

        path = check_engine_file(self.engine_path, "TensorRT engine")
        with _polygraphy(f"cannot load TensorRT engine {path} with TensorRT {trt.__version__} (corrupt, or built by "
                         "another TensorRT version or GPU)", REBUILD):
            runner = TrtRunner(EngineFromBytes(path.read_bytes()))
            runner.activate()
        self._runner = runner
        inputs = runner.get_input_metadata(use_numpy_dtypes=False)
        outputs = trt_util.get_metadata_from_engine(runner.engine, runner.context, mode=trt.TensorIOMode.OUTPUT)
        self.input_names, self.output_names = list(inputs), list(outputs)
        self._dtypes = {n: DataType.to_dtype(meta.dtype, "numpy") for n, meta in inputs.items()}

    def _infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        feed = {n: np.ascontiguousarray(feed[n], dtype=self._dtypes[n]) for n in self.input_names}
        shapes = {n: a.shape for n, a in feed.items()}
        with _polygraphy(f"TensorRT could not run {self.engine_path.name} on inputs {shapes}",
                         "feed shapes within the build's optimization profile (BuildOptions min/max batch)", quiet=False):
            out = self._runner.infer(feed, check_inputs=False)
        return {n: np.array(out[n]) for n in self.output_names}  # copies: TrtRunner reuses its host buffers

    def _release(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None and runner.is_active:
            runner.deactivate()
