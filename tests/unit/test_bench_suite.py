"""Benchmark suites: TOML files and command lines expand into the expected runs, the shipped suites are
valid, and every mistake is a one-line EnginesmithError naming the file, the entry and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from enginesmith.benchmarks.suite import (expand_vars, load_suite, override, parse_weights, plan,
                                          suite_from_args)
from enginesmith.errors import EnginesmithError

SUITES = Path(__file__).resolve().parents[2] / "benchmarks" / "suites"


def _suite(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "s.toml"
    path.write_text(text)
    return path


BASIC = """
[suite]
name = "basic"
targets = ["torch", "onnxruntime", "openvino"]
precisions = ["fp32", "int8"]
batches = [1, 8]

[[model]]
model = "yolov3"
method = "YOLOv3"
input_sizes = [320, "416x416"]

[[model]]
model = "faster-rcnn-vgg16"
method = "Faster R-CNN (VGG16)"
targets = ["openvino"]
precisions = ["fp32"]
"""


def test_a_suite_expands_into_model_size_batch_target_precision_runs(tmp_path):
    suite = load_suite(_suite(tmp_path, BASIC))
    assert suite.name == "basic" and [e.model for e in suite.entries] == ["yolov3", "faster-rcnn-vgg16"]
    runs, skipped = plan(suite, env={})
    keys = [r.key for r in runs]
    expected = []
    for size in ("320x320", "416x416"):
        for b in (1, 8):
            expected += [f"yolov3@{size}/torch/fp32/b{b}"]  # PyTorch eager runs FP32 only: the baseline
            expected += [f"yolov3@{size}/{t}/{p}/b{b}" for t in ("onnxruntime", "openvino") for p in ("fp32", "int8")]
    expected += ["faster-rcnn-vgg16@600x600/openvino/fp32/b1"]  # the model's own size by default
    assert keys == expected
    assert {r.method for r in runs if r.model == "yolov3"} == {"YOLOv3"}
    reasons = {s.key: s.reason for s in skipped}
    assert "batch 1 only" in reasons["faster-rcnn-vgg16@600x600/openvino/fp32/b8"]
    assert any(k.startswith("yolov3/torch/int8") for k in reasons)
    assert all(r.weights is None and r.dataset is None and not r.measures_accuracy for r in runs)


def test_bf16_runs_on_the_target_that_builds_it_and_is_skipped_with_a_reason_elsewhere():
    suite = suite_from_args(["lenet5"], ("torch", "onnxruntime", "openvino"), ("fp32", "bf16"), (1,))
    runs, skipped = plan(suite, env={})
    assert [r.key for r in runs] == ["lenet5@32x32/torch/fp32/b1", "lenet5@32x32/onnxruntime/fp32/b1",
                                     "lenet5@32x32/openvino/fp32/b1", "lenet5@32x32/openvino/bf16/b1"]
    assert {s.key: s.reason for s in skipped} == {"lenet5/torch/bf16": "torch runs fp32 only (PyTorch)",
                                                  "lenet5/onnxruntime/bf16": "ONNX Runtime does not build bf16"}


def test_command_line_suite_with_model_at_size_and_overrides(tmp_path):
    suite = suite_from_args(["lenet5", "yolov3-tiny@64"], ("onnxruntime", "openvino"), ("fp32",), (1,))
    runs, _ = plan(suite, env={})
    assert [r.key for r in runs] == ["lenet5@32x32/onnxruntime/fp32/b1", "lenet5@32x32/openvino/fp32/b1",
                                     "yolov3-tiny@64x64/onnxruntime/fp32/b1", "yolov3-tiny@64x64/openvino/fp32/b1"]
    cut = override(load_suite(_suite(tmp_path, BASIC)), models=["Faster R-CNN (VGG16)"], batches=(1,),
                   targets=("torch",))
    assert [r.key for r in plan(cut, env={})[0]] == ["faster-rcnn-vgg16@600x600/torch/fp32/b1"]
    with pytest.raises(EnginesmithError, match="'ssd300' is not in suite basic"):
        override(load_suite(_suite(tmp_path, BASIC)), models=["ssd300"])


def test_paths_come_from_the_environment_or_the_command_line(tmp_path):
    weights = tmp_path / "tiny.pt"
    weights.write_bytes(b"x")
    data = tmp_path / "offline"
    data.mkdir()
    path = _suite(tmp_path, """
[suite]
dataset = "${ES_TEST_DATA:-%s}"
targets = ["openvino"]
precisions = ["fp32"]
batches = [1]
[[model]]
model = "yolov3-tiny-256"
weights = "${ES_TEST_WEIGHTS}"
""" % data)
    suite = load_suite(path)
    with pytest.raises(EnginesmithError) as e:
        plan(suite, env={})
    msg = str(e.value)
    assert "ES_TEST_WEIGHTS" in msg and "not set" in msg and "--weights MODEL=PATH" in msg and "\n" not in msg
    runs, _ = plan(suite, env={"ES_TEST_WEIGHTS": str(weights)})
    assert runs[0].weights == weights and runs[0].dataset == data and runs[0].measures_accuracy
    # the command line wins, and then the unset variable does not matter
    runs, _ = plan(suite, weights={"yolov3-tiny-256": weights}, env={})
    assert runs[0].weights == weights
    with pytest.raises(EnginesmithError, match="weights file not found"):
        plan(suite, env={"ES_TEST_WEIGHTS": str(tmp_path / "missing.pt")})
    with pytest.raises(EnginesmithError, match="dataset not found"):
        plan(suite, env={"ES_TEST_WEIGHTS": str(weights), "ES_TEST_DATA": str(tmp_path / "nowhere")})
    assert expand_vars("${A}/${B:-b}/c", {"A": "a"}, "x") == "a/b/c"


def test_weights_options():
    assert parse_weights(["w.pt"], ["ssd300"]) == {"ssd300": Path("w.pt")}
    assert parse_weights(["SSD300=a.pt", "yolov3=b.weights"], ["ssd300", "yolov3"]) == {
        "ssd300": Path("a.pt"), "yolov3": Path("b.weights")}
    with pytest.raises(EnginesmithError, match="MODEL=PATH"):
        parse_weights(["w.pt"], ["ssd300", "yolov3"])
    with pytest.raises(EnginesmithError, match="unknown model 'ssd3000'"):
        parse_weights(["ssd3000=a.pt"], ["ssd300"])


@pytest.mark.parametrize("text,message", [
    ("[[model]]\nmodel = 'yolov3'\nbatchs = [1]", r"unknown key 'batchs'; did you mean 'batches'\?"),
    ("[[model]]\nmodel = 'yolov3'\ntargets = ['openvno']", r"unknown target 'openvno' \(did you mean openvino\?\)"),
    ("[[model]]\nmodel = 'yolov3'\ntargets = 'openvino'", r"targets must be a list"),
    ("[[model]]\nmodel = 'yolov3'\nprecisions = ['int4']", r"unknown precision 'int4'"),
    ("[[model]]\nmodel = 'yolov3'\nbatches = [0]", r"batch 0 is not a whole number >= 1"),
    ("[[model]]\nmodel = 'yolov3'\nbatches = ['x']", r"batch 'x' is not a whole number"),
    ("[[model]]\nmodel = 'yolov3'\ninput_sizes = ['416x']", r"input size '416x' is not HxW"),
    ("[[model]]\nmodel = 'lenet5'\ninput_sizes = [64]", r"\[\[model\]\] #1 \(lenet5\): lenet5 takes exactly 32x32"),
    ("[[model]]\nmodel = 'yolov4'", r"\[\[model\]\] #1: unknown model 'yolov4'"),
    ("[[model]]\nmethod = 'YOLO'", r"every \[\[model\]\] needs model = "),
    ("[suite]\nname = 'x'", r"no models; add \[\[model\]\]"),
    ("[suite]\ncalib_size = 0\n[[model]]\nmodel = 'yolov3'", r"calib_size must be a whole number >= 1"),
    ("[suites]\n[[model]]\nmodel = 'yolov3'", r"unknown table 'suites'"),
    ("[[model]]\nmodel = 'lenet5'\nnms = 'engine'", r"nms = \"engine\" is for detectors"),
    ("[[model]]\nmodel = 'yolov3'\n[[model]]\nmodel = 'yolov3'", r"yolov3@416x416/torch/fp32/b1 is listed twice"),
    ("[[model]]\nmodel = 'yolov3'\nprecisions = ['mixed']", r"precision mixed searches by the task metric"),
    ("[[model]\nmodel = 'yolov3'", r"is not valid TOML"),
    ("[[model]]\nmodel = 'yolov3'\ndevice = 'tpu'", r"\(yolov3\): device 'tpu' is not a device kind: write cpu, gpu"),
    ("[[model]]\nmodel = 'yolov3'\ndevice = {openvno = 'cpu:amx'}", r"unknown target 'openvno' \(did you mean openvino\?\)"),
    ("[[model]]\nmodel = 'yolov3'\ndevice = {openvino = 'cpu amx'}", r"device.openvino 'cpu amx' is not a device kind"),
    ("[[model]]\nmodel = 'yolov3'\ndevice = 3", r"device must be a device kind"),
])
def test_suite_mistakes_are_one_line_errors_naming_the_file(tmp_path, text, message):
    path = _suite(tmp_path, text)
    with pytest.raises(EnginesmithError, match=message) as e:
        plan(load_suite(path), env={})
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_missing_suite_file(tmp_path):
    with pytest.raises(EnginesmithError, match="suite file not found"):
        load_suite(tmp_path / "nope.toml")


def test_the_shipped_suites_are_valid(tmp_path):
    seed = load_suite(SUITES / "seed-table.toml")
    runs, skipped = plan(seed, env={})
    models = {r.model for r in runs}
    assert {"faster-rcnn-vgg16", "fast-yolo", "yolo-vgg16", "yolov1", "ssd300", "ssd512", "yolov2", "yolov2-544",
            "yolov3", "retinanet-r50-fpn"} <= models
    assert {r.input_size for r in runs if r.model == "yolov3"} == {(320, 320), (416, 416), (608, 608)}
    assert {r.input_size for r in runs if r.model == "ssd512"} == {(512, 512)}
    assert {r.batch for r in runs} == {1, 8} and {r.target for r in runs} == {"torch", "onnxruntime", "openvino"}
    assert not any(r.model == "faster-rcnn-vgg16" and r.batch == 8 for r in runs)

    edge = load_suite(SUITES / "edge.toml")
    assert [e.model for e in edge.entries] == ["yolov3-tiny-256", "yolov3-tiny-3l-256", "ssd-slim-256"]
    with pytest.raises(EnginesmithError, match="ENGINESMITH_WEIGHTS_YOLOV3_TINY_256"):
        plan(edge, env={"ENGINESMITH_OFFLINE_DATA": str(tmp_path)})
    w = tmp_path / "w.pt"
    w.write_bytes(b"x")
    env = {"ENGINESMITH_OFFLINE_DATA": str(tmp_path), "ENGINESMITH_WEIGHTS_YOLOV3_TINY_256": str(w),
           "ENGINESMITH_WEIGHTS_YOLOV3_TINY_3L_256": str(w), "ENGINESMITH_WEIGHTS_SSD_SLIM_256": str(w)}
    runs, _ = plan(edge, env=env)
    assert all(r.measures_accuracy and r.dataset == tmp_path and r.split == "test" for r in runs)
    assert {r.precision for r in runs if r.target == "openvino"} == {"fp32", "fp16", "int8"}


def test_channel_options_per_model_reach_the_runs_and_are_checked_before_any_build(tmp_path):
    from enginesmith.benchmarks.suite import parse_preprocess
    from enginesmith.runtime.preprocess_override import PreprocessOverride

    pre = parse_preprocess(["bgr"], ["123,117,104"], None, ["ssd300"])
    assert pre == {"ssd300": PreprocessOverride("BGR", (123.0, 117.0, 104.0), None)}
    pre = parse_preprocess(["yolov3=bgr"], None, None, ["ssd300", "yolov3"])
    assert pre == {"yolov3": PreprocessOverride("BGR", None, None)}
    with pytest.raises(EnginesmithError, match="MODEL=VALUE"):
        parse_preprocess(["bgr"], None, None, ["ssd300", "yolov3"])
    runs, _ = plan(load_suite(_suite(tmp_path, BASIC)), preprocess=pre)
    assert {r.preprocess for r in runs if r.model == "yolov3"} == {PreprocessOverride("BGR", None, None)}
    with pytest.raises(EnginesmithError, match="give 3 values"):
        plan(load_suite(_suite(tmp_path, BASIC)), preprocess=parse_preprocess(None, ["yolov3=1,2"], None, ["yolov3"]))


def test_rows_carry_the_device_kind_they_must_run_on(tmp_path):
    """device = KIND for every target of an entry, a table by target, [suite] defaults, GPU targets default to
    "gpu", and --device (override) for every row."""
    path = _suite(tmp_path, """
[suite]
targets = ["onnxruntime", "openvino", "tensorrt"]
precisions = ["fp32"]
batches = [1]
device = {openvino = "cpu:amx"}

[[model]]
model = "lenet5"

[[model]]
model = "alexnet"
device = "cpu:vnni"
targets = ["onnxruntime", "openvino"]
""")
    runs, _ = plan(load_suite(path), env={})
    got = {r.key: r.device for r in runs}
    assert got == {"lenet5@32x32/onnxruntime/fp32/b1": None, "lenet5@32x32/openvino/fp32/b1": "cpu:amx",
                   "lenet5@32x32/tensorrt/fp32/b1": "gpu", "alexnet@227x227/onnxruntime/fp32/b1": "cpu:vnni",
                   "alexnet@227x227/openvino/fp32/b1": "cpu:vnni"}
    runs, _ = plan(override(load_suite(path), device="cpu:avx2"), env={})
    assert {r.device for r in runs} == {"cpu:avx2"}
