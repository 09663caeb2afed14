"""The target and precision table (backends/targets.py) is the one place that says what a target is.

Checked here: no code outside the table and the backends' own modules compares a value with an engine
target's name; each decision the table carries gives what the pipeline decided before the table existed
(the quantizer, the precision-stage cache key, runner options, the default calibration method)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from enginesmith.backends.targets import CPU_TARGETS, PRECISIONS, TARGETS, engine_precision, get_precision
from enginesmith.errors import EnginesmithError

PACKAGE = Path(__file__).resolve().parents[2] / "enginesmith"
ENGINE_NAMES = {"openvino", "onnxruntime", "tensorrt"}  # written out: the test must not trust the table for them
# files whose subject is one engine: comparing with its name is what they are about
ALLOWED = {
    "backends/targets.py": "the table itself",
    "backends/openvino.py": "the OpenVINO backend",
    "backends/onnxruntime.py": "the ONNX Runtime backend",
    "backends/tensorrt.py": "the TensorRT backend",
    "backends/tensorrt_device.py": "the TensorRT backend's device check",
    "benchmarks/openvino_tuning.py": "a benchmark of OpenVINO's own configurations: picking OpenVINO engines is its subject",
}


def _engine_name_comparisons(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, source) of every comparison with a literal engine-target name (==, !=, in, not in a tuple)."""
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Compare):
            continue
        sides = [node.left, *node.comparators]
        literals = [s.value for s in sides if isinstance(s, ast.Constant)]
        literals += [e.value for s in sides if isinstance(s, (ast.Tuple, ast.List, ast.Set))
                     for e in s.elts if isinstance(e, ast.Constant)]
        if ENGINE_NAMES & {v for v in literals if isinstance(v, str)}:
            found.append((node.lineno, ast.unparse(node)))
    return found


def test_no_engine_target_is_compared_by_name_outside_the_table():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel in ALLOWED:
            continue
        offenders += [f"enginesmith/{rel}:{line}: {src}" for line, src in _engine_name_comparisons(ast.parse(path.read_text()))]
    assert not offenders, "ask backends/targets.py instead:\n" + "\n".join(offenders)


def test_the_check_finds_a_comparison_when_there_is_one():
    code = 'def f(c):\n    if c.target == "tensorrt":\n        return 1\n    return c.target in ("openvino", "x")\n'
    assert [line for line, _ in _engine_name_comparisons(ast.parse(code))] == [2, 4]


def test_table_covers_exactly_the_engine_targets_and_the_five_precisions():
    assert set(TARGETS) == ENGINE_NAMES
    assert tuple(PRECISIONS) == ("fp32", "fp16", "bf16", "int8", "mixed")
    assert {n: t.precisions for n, t in TARGETS.items()} == {  # bf16: OpenVINO's CPU plugin only
        "openvino": ("fp32", "fp16", "bf16", "int8", "mixed"), "onnxruntime": ("fp32", "fp16", "int8", "mixed"),
        "tensorrt": ("fp32", "fp16", "int8", "mixed")}
    assert CPU_TARGETS == ("openvino", "onnxruntime")


def test_mixed_is_int8_with_a_search_in_one_place():
    assert [engine_precision(p) for p in ("fp32", "fp16", "bf16", "int8", "mixed")] == ["fp32", "fp16", "bf16", "int8",
                                                                                     "int8"]
    assert [p for p, v in PRECISIONS.items() if v.calibrated] == ["int8", "mixed"]
    assert [p for p, v in PRECISIONS.items() if v.searches] == ["mixed"]
    with pytest.raises(EnginesmithError, match="unknown precision 'int4'; choose one of fp32, fp16, bf16, int8, mixed"):
        get_precision("int4")


# What the pipeline decided per target before the table, written out (pipeline/run.py, quantize.py, build.py and
# runtime/ of commit 5b2c6ad): the table must give the same decisions, or engines and cache keys would change.
BEFORE = {
    #              quantizer, symmetric, fp16 from, calib default, ranking runtime, GPU, MaxRoiPool, async, weights beside
    "openvino": ("nncf", False, "engine", "minmax", "openvino", False, True, True, (".bin",)),
    "onnxruntime": ("qdq", False, "onnx", "percentile", "onnxruntime", False, True, False, ()),
    "tensorrt": ("qdq", True, "onnx", "minmax", "onnxruntime", True, False, False, ()),
}


@pytest.mark.parametrize("name", sorted(BEFORE))
def test_each_target_decides_as_the_pipeline_did(name):
    t = TARGETS[name]
    assert (t.int8_quantizer, t.int8_symmetric, t.fp16_model, t.default_calib_method, t.layer_ranking, t.needs_gpu,
            t.takes_max_roi_pool, t.streams_async, t.engine_companions) == BEFORE[name]


def test_runner_options_execute_fp16_in_f16_bf16_in_bf16_and_every_other_openvino_build_in_f32():
    ov = TARGETS["openvino"]
    assert {p: ov.options(p) for p in PRECISIONS} == {
        "fp32": {"inference_precision": "f32"}, "fp16": {"inference_precision": "f16"},
        "bf16": {"inference_precision": "bf16"}, "int8": {"inference_precision": "f32"},
        "mixed": {"inference_precision": "f32"}}
    assert ov.options("fp16", inference_precision="f32", num_threads=2) == {"inference_precision": "f32", "num_threads": 2}
    assert all(TARGETS[n].options(p) == {} for n in ("onnxruntime", "tensorrt") for p in PRECISIONS)


def test_precision_stage_key_holds_the_options_its_quantizer_takes():
    """The cache key of the precision stage before the table: keep_float for every target, NNCF's preset and
    overflow fix for OpenVINO only (so ONNX Runtime and TensorRT keys did not change when they were added)."""
    from enginesmith.pipeline.quantize import QuantizeOptions

    o = QuantizeOptions(keep_float=("a",), nncf_preset="performance", overflow_fix="disable")
    assert o.params(TARGETS["openvino"]) == {"keep_float": ["a"], "nncf_preset": "performance", "overflow_fix": "disable"}
    assert o.params(TARGETS["onnxruntime"]) == o.params(TARGETS["tensorrt"]) == {"keep_float": ["a"]}


def test_build_config_default_calibration_method_comes_from_the_target():
    from enginesmith.pipeline.run import BuildConfig

    assert {t: BuildConfig("lenet5", target=t).calib_method for t in sorted(BEFORE)} == {
        "onnxruntime": "percentile", "openvino": "minmax", "tensorrt": "minmax"}
    assert BuildConfig("lenet5", target="nonsense").calib_method == "minmax"  # validate() then names the bad target


def test_a_precision_a_target_does_not_build_is_refused_before_any_stage(monkeypatch):
    from dataclasses import replace

    from enginesmith.pipeline.config import BuildConfig

    monkeypatch.setitem(TARGETS, "onnxruntime", replace(TARGETS["onnxruntime"], precisions=("fp32", "fp16")))
    with pytest.raises(EnginesmithError, match="^ONNX Runtime builds fp32, fp16, not int8; --target openvino or "
                                               "tensorrt builds it$"):
        BuildConfig("lenet5", target="onnxruntime", precision="int8").validate()
    assert BuildConfig("lenet5", target="onnxruntime", precision="fp16").validate().name == "lenet5"
