"""API drift check: every TensorRT name on our TensorRT path (our backend and the Polygraphy code it runs)
exists in the TensorRT 10.x and 11.x bindings wheels.

Offline: how names are read from a compiled extension, and which names a source uses and under which
guards, on snippets and on a small Polygraphy-shaped package written here (the expected names are written
out, not taken from the code under test). Online: the wheels (tensorrt-cu12-bindings, ~1.3 MB each) are
fetched with `pip download --no-deps` into a temporary folder that later runs reuse; those tests skip only
when the package index is unreachable.
"""

from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("tensorrt_api_names", REPO / "scripts" / "tensorrt_api_names.py")
api = importlib.util.module_from_spec(_spec)  # type: ignore[arg-type]
sys.modules["tensorrt_api_names"] = api
_spec.loader.exec_module(api)  # type: ignore[union-attr]
import tensorrt_api_usage as usage  # noqa: E402  (put on sys.path by the script)

BACKEND = REPO / "enginesmith" / "backends" / "tensorrt.py"
BACKEND_SOURCE = BACKEND.read_text()


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


# -- names a source uses, and under which guards ------------------------------------------------------
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
    used = usage.used_names(src)
    assert {"create_network", "NetworkDefinitionCreationFlag.STRONGLY_TYPED", "STRONGLY_TYPED", "set_memory_pool_limit",
            "MemoryPoolType.WORKSPACE", "BuilderFlag", "get_plugin_registry", "get_creator", "get_input",
            "shape"} <= set(used.required)
    assert "not_tensorrt" not in used.required and "net" not in used.required
    assert {"BuilderFlag.FP16", "set_flag"} <= set(used.optional) and "FP16" not in used.required
    assert used.required["set_memory_pool_limit"] == "<source>:4"  # where it is first used


GUARDS = textwrap.dedent("""\
    import contextlib
    def f(config, network, context, engine):
        try:
            config.in_try()
        except AttributeError:
            config.in_handler()
        else:
            config.in_else()
        try:
            config.in_other_try()
        except TypeError:
            pass
        with contextlib.suppress(AttributeError):
            config.in_suppress()
        if mod.version(trt.__version__) >= mod.version("10.1"):
            engine.in_new()
        else:
            engine.in_old()
        if hasattr(context, "maybe"):
            context.maybe()
        if hasattr(engine, "calib") and engine.calib_value and engine.then_too:
            pass
        if self.fp16:
            try_set_flag("FP16")
        G_LOGGER.verbose(lambda: network.only_when_verbose())
        G_LOGGER.info(f"{network.eager_in_fstring()}")
        def try_set_flag(flag_name):
            return config.set_flag(getattr(trt.BuilderFlag, flag_name))
        try_set_flag("TF32")
        if self.tiling_optimization_level is not None:
            config.never_taken = 1
    """)


def test_guards_make_names_optional():
    used = usage.used_names(GUARDS)
    required, optional = set(used.required), set(used.optional)
    assert {"in_else", "in_other_try", "eager_in_fstring", "TF32", "BuilderFlag.TF32", "set_flag"} <= required
    guarded = {"in_try", "in_handler", "in_suppress", "in_new", "in_old", "maybe", "calib", "calib_value", "then_too", "FP16"}
    assert guarded | {"BuilderFlag.FP16"} <= optional and not guarded & required
    assert "only_when_verbose" not in required | optional  # a logging callback
    assert "never_taken" not in required | optional  # an OPTION_BRANCHES "never" branch


def test_option_branches_decide_what_is_read(monkeypatch):
    monkeypatch.setattr(usage, "OPTION_BRANCHES", {})
    used = usage.used_names(GUARDS)
    assert "never_taken" in used.required and "FP16" in used.required  # unlisted: read and required


def test_a_module_named_like_a_tensorrt_object_is_not_one():
    """Polygraphy's `config` module (polygraphy.config.USE_TENSORRT_RTX) beside a builder config variable."""
    src = textwrap.dedent("""\
        from polygraphy import config
        def uses_the_module():
            return config.USE_TENSORRT_RTX
        def uses_a_builder_config(config):
            return config.set_flag(1)
        """)
    tree = ast.parse(src)
    used = usage.Used()
    for func in tree.body[1:]:
        shadowed = frozenset({"config"} - usage._local_names(func))
        usage._Walker(used, "m.py", shadowed=shadowed).run(func)
    assert set(used.required) == {"set_flag"}


def _write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(textwrap.dedent(text))
    return root


MINI_POLYGRAPHY = {
    "backend/trt/util.py": """\
        def get_logger():
            return trt.Logger(trt.Logger.WARNING)
        def check(parser):
            return parser.num_errors
        def unused(engine):
            return engine.never_called()
        """,
    "backend/trt/loader.py": """\
        from polygraphy import mod, config
        from polygraphy.backend.trt import util as trt_util
        from polygraphy.backend.trt.profile import Profile

        class Base:
            def call_impl(self):
                builder = trt.Builder(trt_util.get_logger())
                return builder.create_network(0)

        @mod.export(funcify=True)
        class CreateThing(Base):
            def __init__(self):
                self.x = 1
            def call_impl(self):
                builder, network = super().call_impl()
                trt_util.check(trt.OnnxParser(network, None))
                if config.USE_TENSORRT_RTX:
                    pass
                return self._helper(network)
            def _helper(self, network):
                return Profile().fill_defaults(network)

        class Loader:
            def call_impl(self):
                return create_thing()
        """,
    "backend/trt/profile.py": """\
        class Profile:
            def fill_defaults(self, network):
                return network.num_inputs
            def to_trt(self, builder):
                return builder.not_reached()
        """,
    "mod/importer.py": """\
        class LazyModule:
            def is_installed(self):
                return True
        """,
}


def test_polygraphy_calls_are_followed_through_the_package(tmp_path):
    root = _write(tmp_path / "polygraphy", MINI_POLYGRAPHY)
    used, functions = usage.polygraphy_names(root, {"backend/trt/loader.py": ("Loader.call_impl",)},
                                             modules=("backend/trt/loader.py", "backend/trt/profile.py",
                                                      "backend/trt/util.py"))
    assert functions == ["backend/trt/loader.py:Base.call_impl", "backend/trt/loader.py:CreateThing.__init__",
                         "backend/trt/loader.py:CreateThing._helper", "backend/trt/loader.py:CreateThing.call_impl",
                         "backend/trt/loader.py:Loader.call_impl", "backend/trt/profile.py:Profile.fill_defaults",
                         "backend/trt/util.py:check", "backend/trt/util.py:get_logger"]
    assert set(used.required) == {"Builder", "Logger", "WARNING", "Logger.WARNING", "create_network", "OnnxParser",
                                  "num_errors", "num_inputs"}
    assert used.required["num_errors"] == "polygraphy/backend/trt/util.py:4"
    with pytest.raises(KeyError, match="update POLYGRAPHY_ENTRIES"):
        usage.polygraphy_names(root, {"backend/trt/loader.py": ("Gone.call_impl",)}, modules=("backend/trt/loader.py",))


# -- the tables stay true to Polygraphy and to our backend ---------------------------------------------
def _calls_in_backend() -> dict[str, set[str]]:
    """Polygraphy class -> the keyword arguments backends/tensorrt.py passes it."""
    out: dict[str, set[str]] = {}
    for node in ast.walk(ast.parse(BACKEND_SOURCE)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            out.setdefault(node.func.id, set()).update(k.arg for k in node.keywords if k.arg)
    return out


def test_option_branches_exist_in_polygraphy_and_match_our_options():
    root = usage.polygraphy_root()
    tests = {ast.unparse(n.test) for m in usage.POLYGRAPHY_MODULES for n in ast.walk(ast.parse((root / m).read_text()))
             if isinstance(n, ast.If)}
    passed = _calls_in_backend()
    for test, (rule, loader, option) in usage.OPTION_BRANCHES.items():
        assert test in tests, f"Polygraphy has no `if {test}` any more: update OPTION_BRANCHES"
        assert loader in passed, loader
        if rule == "never":
            assert option not in passed[loader], f"backends/tensorrt.py now passes {loader}({option}=...)"
        else:
            assert option in passed[loader], f"backends/tensorrt.py no longer passes {loader}({option}=...)"


def test_entries_cover_every_polygraphy_class_the_backend_uses():
    """What backends/tensorrt.py imports from polygraphy.backend.trt is either followed or holds no TensorRT call."""
    imported = {a.name for n in ast.walk(ast.parse(BACKEND_SOURCE)) if isinstance(n, ast.ImportFrom)
                and n.module == "polygraphy.backend.trt" for a in n.names}
    entries = {q.split(".")[0] for names in usage.POLYGRAPHY_ENTRIES.values() for q in names}
    assert imported == {"CreateConfig", "NetworkFromOnnxPath", "Profile", "EngineBytesFromNetwork", "EngineFromBytes",
                        "TrtRunner", "util"}
    assert imported - {"util"} <= entries
    assert "get_metadata_from_engine" in entries  # the one util function the backend calls


def test_backend_and_polygraphy_names_cover_build_and_run():
    """The TensorRT calls a build and a run need (TensorRT's Python API docs), found on our path."""
    ours = set(usage.used_names(BACKEND_SOURCE).required)
    assert {"MemoryPoolType.WORKSPACE", "TensorIOMode.OUTPUT", "__version__"} <= ours
    used, functions = usage.polygraphy_names()
    found = set(used.required) | set(used.optional)
    must = {"Builder", "OnnxParser", "Runtime", "NetworkDefinitionCreationFlag.STRONGLY_TYPED", "create_network",
            "parse_from_file", "init_libnvinfer_plugins", "create_builder_config", "set_memory_pool_limit",
            "create_timing_cache", "set_timing_cache", "get_timing_cache", "combine", "serialize",
            "create_optimization_profile", "set_shape", "add_optimization_profile", "build_serialized_network",
            "BuilderFlag.TF32", "clear_flag", "deserialize_cuda_engine", "create_execution_context", "num_io_tensors",
            "get_tensor_name", "get_tensor_mode", "TensorIOMode.INPUT", "set_input_shape", "set_tensor_address",
            "execute_async_v3", "get_tensor_shape", "get_tensor_dtype", "set_output_allocator", "IOutputAllocator",
            "reallocate_output_async", "notify_shape", "ILogger", "log"}
    assert must <= found, sorted(must - found)
    # the fp16 flag only on the branch our options take for TensorRT 10 (removed in 11)
    assert "BuilderFlag.FP16" in used.optional and "BuilderFlag.FP16" not in used.required
    assert "backend/trt/runner.py:TrtRunner._infer_impl" in functions and "backend/trt/util.py:str_from_config" in functions


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
    for path in usage.BACKEND_FILES:
        assert api.problems(api.used_names(path.read_text()), bindings) == [], path.name


def test_polygraphy_on_our_path_uses_only_names_of_both_major_versions(bindings):
    used, _ = usage.polygraphy_names()
    assert api.problems(used, bindings, dead_code=False) == []
    # Polygraphy's own fallback for TensorRT < 8 (builder.build_engine) is a dead guard on 10 and 11: a note
    assert [p.split(": ", 1)[1] for p in api.dead_guards(used, bindings)] == [
        "guarded trt name 'build_engine' exists in none of TensorRT "
        f"{', '.join(b.version for b in bindings)} (dead code)"]


def test_branches_our_options_never_take_would_break_on_a_checked_version(bindings, monkeypatch):
    """Why OPTION_BRANCHES matters: read as if we passed those options, Polygraphy needs names 10.0.1 or 11 lack
    (precision constraints and quantization flags are gone in 11; runtime_platform and tiling came after 10.0)."""
    monkeypatch.setattr(usage, "OPTION_BRANCHES", {k: v for k, v in usage.OPTION_BRANCHES.items() if v[0] != "never"})
    used, _ = usage.polygraphy_names()
    missing = {p.split("'")[1] for p in api.problems(used, bindings, dead_code=False)}
    assert {"BuilderFlag.PREFER_PRECISION_CONSTRAINTS", "QuantizationFlag", "set_quantization_flag", "runtime_platform",
            "tiling_optimization_level", "mark_unfused_tensors_as_debug_tensors"} <= missing, sorted(missing)


def test_script_exit_status(bindings, tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import tensorrt as trt\ndef f(config):\n    config.set_flag(trt.BuilderFlag.FP16)\n")
    dest = str(Path(tempfile.gettempdir()) / "enginesmith-tensorrt-bindings")
    script = str(REPO / "scripts" / "tensorrt_api_names.py")
    ok = subprocess.run([sys.executable, script, "--dest", dest], capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "tensorrt.py: all " in ok.stdout and "exist in TensorRT 10.0.1" in ok.stdout
    assert "Polygraphy " in ok.stdout and "functions on our path exist in TensorRT" in ok.stdout
    fail = subprocess.run([sys.executable, script, "--dest", dest, "--source", str(bad)], capture_output=True, text=True,
                          timeout=300)
    assert fail.returncode == 1 and "BuilderFlag.FP16" in fail.stdout
