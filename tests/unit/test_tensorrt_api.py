"""API drift check: every TensorRT name the backend uses exists in the TensorRT 10.x and 11.x bindings wheels.

The wheels (tensorrt-cu12-bindings, ~1.3 MB each) are fetched with `pip download --no-deps` into a
temporary folder that later runs reuse; the network test skips only when the package index is unreachable.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("tensorrt_api_names", REPO / "scripts" / "tensorrt_api_names.py")
api = importlib.util.module_from_spec(_spec)  # type: ignore[arg-type]
sys.modules["tensorrt_api_names"] = api
_spec.loader.exec_module(api)  # type: ignore[union-attr]

BACKEND_SOURCE = api.BACKEND.read_text()


# -- reading names from a compiled extension ---------------------------------------------------------
def test_extension_names_follow_the_linkers_tail_merging():
    # "INT8" is stored as the tail of "UINT8" and "Builder" as the tail of "IBuilder"; "FP16" here appears
    # only at the end of a docstring, which is not a name.
    blob = b"\x7fELF\x00\x01\x02UINT8\x00IBuilder\x00    Example 2: CHW2 + FP16\x00set_flag\x00\x03\x04x\x00"
    names = api.names_in_extension(blob)
    assert {"UINT8", "INT8", "IBuilder", "Builder", "set_flag", "flag"} <= names
    assert "FP16" not in names and "Example" not in names
    assert "8" not in names and "NT8" in names  # tails are suffixes that start like an identifier


def test_python_names_of_the_wheels_init():
    src = "__version__ = '11.4.0'\ndef nptype(t):\n    return t\nILogger.__enter__ = f\nclass X: pass\n"
    assert api.names_in_python(src) >= {"__version__", "nptype", "__enter__", "X"}


# -- names the backend uses --------------------------------------------------------------------------
def test_used_names_of_a_snippet():
    src = (
        "import tensorrt as trt\n"
        "def f(builder, config, other):\n"
        "    net = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))\n"
        "    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, 1)\n"
        "    other.not_tensorrt()\n"
        "    if hasattr(trt.BuilderFlag, 'FP16'):\n"
        "        config.set_flag(getattr(trt.BuilderFlag, 'FP16'))\n"
        "    trt.get_plugin_registry().get_creator('EfficientNMS_TRT', '1', '')\n"
        "    builder.get_input(0).shape\n"
    )
    used = api.used_names(src)
    assert {"create_network", "NetworkDefinitionCreationFlag.STRONGLY_TYPED", "STRONGLY_TYPED", "set_memory_pool_limit",
            "MemoryPoolType.WORKSPACE", "BuilderFlag", "set_flag", "get_plugin_registry", "get_creator", "get_input",
            "shape"} <= set(used.required)
    assert "not_tensorrt" not in used.required and "net" not in used.required
    assert set(used.optional) == {"BuilderFlag.FP16"} and "FP16" not in used.required
    assert used.required["set_memory_pool_limit"] == 4  # first line it appears on


def test_backend_names_cover_build_and_run():
    used = api.used_names(BACKEND_SOURCE)
    must = {"Builder", "OnnxParser", "Runtime", "NetworkDefinitionCreationFlag.STRONGLY_TYPED", "MemoryPoolType.WORKSPACE",
            "create_network", "parse_from_file", "create_builder_config", "set_memory_pool_limit", "create_timing_cache",
            "set_timing_cache", "get_timing_cache", "serialize", "create_optimization_profile", "set_shape",
            "add_optimization_profile", "build_serialized_network", "deserialize_cuda_engine", "create_execution_context",
            "num_io_tensors", "get_tensor_name", "get_tensor_mode", "TensorIOMode.INPUT", "set_input_shape",
            "set_tensor_address", "execute_async_v3", "get_tensor_shape", "get_tensor_dtype", "nptype",
            "set_output_allocator", "IOutputAllocator", "reallocate_output_async", "notify_shape",
            "init_libnvinfer_plugins", "get_plugin_registry", "get_creator", "PluginField", "PluginFieldCollection",
            "add_plugin_v3", "add_plugin_v2", "add_shuffle", "add_concatenation", "add_cast", "mark_output", "unmark_output"}
    assert must <= set(used.required), sorted(must - set(used.required))
    # the flag TensorRT 11 removed is reached only behind a version guard
    assert "BuilderFlag.FP16" in used.optional
    assert "BuilderFlag.FP16" not in used.required and "FP16" not in used.required


# -- the check against the real wheels ---------------------------------------------------------------
def _index_reachable() -> tuple[bool, str]:
    r = subprocess.run([sys.executable, "-m", "pip", "index", "versions", "tensorrt-cu12-bindings"],
                       capture_output=True, text=True, timeout=120)
    if r.returncode != 0 or "Available versions" not in r.stdout:
        tail = (r.stderr or r.stdout).strip().splitlines()[-1:] or ["no output"]
        return False, tail[0]
    return True, ""


@pytest.fixture(scope="module")
def bindings() -> list:
    ok, why = _index_reachable()
    if not ok:
        pytest.skip(f"the package index is unreachable, so the TensorRT bindings wheels cannot be fetched: {why}")
    dest = Path(tempfile.gettempdir()) / "enginesmith-tensorrt-bindings"
    wheels = api.fetch_wheels(api.DEFAULT_SPECS, dest)  # reachable index: a failed download is a failure
    return [api.read_wheel(w) for w in wheels]


def test_wheels_are_tensorrt_10_and_11(bindings):
    majors = [b.version.split(".")[0] for b in bindings]
    assert majors == ["10", "10", "11"], [b.version for b in bindings]
    assert bindings[0].version.startswith("10.0.")


def test_known_drift_is_seen(bindings):
    """Ground truth from TensorRT's release notes: 11 removed the fp16/int8 builder flags, the implicit
    INT8 calibrator and IPluginRegistry.get_plugin_creator; 10.x and 11.x keep the strongly typed API."""
    v10_old, v10, v11 = (b.names for b in bindings)
    for gone in ("FP16", "int8_calibrator", "get_plugin_creator", "EXPLICIT_BATCH"):
        assert gone in v10_old and gone in v10 and gone not in v11, gone
    for kept in ("STRONGLY_TYPED", "execute_async_v3", "set_tensor_address", "build_serialized_network", "BuilderFlag",
                 "INT8", "Builder", "nptype", "__version__"):
        assert all(kept in names for names in (v10_old, v10, v11)), kept
    # the check fails a source that uses what 11 removed
    src = ("import tensorrt as trt\ndef f(config):\n    config.set_flag(trt.BuilderFlag.FP16)\n"
           "    config.int8_calibrator = None\n    x = getattr(trt.BuilderFlag, 'NO_SUCH_FLAG', None)\n")
    found = api.problems(api.used_names(src), bindings)
    assert any("'BuilderFlag.FP16'" in p and bindings[2].version in p for p in found), found
    assert any("int8_calibrator" in p for p in found), found
    assert any("NO_SUCH_FLAG" in p and "dead code" in p for p in found), found


def test_backend_uses_only_names_of_both_major_versions(bindings):
    used = api.used_names(BACKEND_SOURCE)
    assert api.problems(used, bindings) == []


def test_script_exit_status(bindings, tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import tensorrt as trt\ndef f(config):\n    config.set_flag(trt.BuilderFlag.FP16)\n")
    dest = str(Path(tempfile.gettempdir()) / "enginesmith-tensorrt-bindings")
    script = str(REPO / "scripts" / "tensorrt_api_names.py")
    ok = subprocess.run([sys.executable, script, "--dest", dest], capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "exist in TensorRT 10.0.1" in ok.stdout
    fail = subprocess.run([sys.executable, script, "--dest", dest, "--source", str(bad)], capture_output=True, text=True,
                          timeout=300)
    assert fail.returncode == 1 and "BuilderFlag.FP16" in fail.stdout
