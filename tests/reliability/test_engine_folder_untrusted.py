"""An engine folder is untrusted input: a tampered or hand-made manifest.json is refused in one line, by
`runtime.load()` (an EnginesmithError, never another exception) and by `enginesmith detect` / `enginesmith eval`
(exit 2, one line on stderr, no traceback); the engine file must resolve inside the folder.

Every case starts from a copy of a real lenet5 engine built once for this module with the real pipeline, then
tampers with its manifest.json or its files on disk. No mocks."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable

import pytest
from PIL import Image

from enginesmith.errors import EnginesmithError
from enginesmith.pipeline.run import BuildConfig, build_engine
from enginesmith.runtime import load
from enginesmith.runtime.manifest import ENGINE_SCHEMA, SCHEMA_VERSION, engine_info, is_engine_folder

Tamper = Callable[[dict[str, Any], Path], Any]  # (manifest dict, folder) -> the new manifest: a dict, text or bytes


@pytest.fixture(scope="module")
def lenet(tmp_path_factory, cache_dir) -> Path:
    """A real lenet5 ONNX Runtime engine folder (fp32, batch 1, input [1, 1, 32, 32], GRAY preprocessing)."""
    out = tmp_path_factory.mktemp("untrusted-engine") / "lenet"
    build_engine(BuildConfig(model="lenet5", target="onnxruntime", precision="fp32", cache_dir=cache_dir, out=out,
                             latency_budget_s=0.2, calib_size=4))
    return out


@pytest.fixture()
def image(tmp_path) -> Path:
    p = tmp_path / "digit.png"
    Image.new("L", (32, 32), 128).save(p)
    return p


def _copy(lenet: Path, dest: Path, tamper: Tamper | None = None) -> Path:
    """A copy of the built engine folder with its manifest replaced by tamper(manifest, folder)."""
    shutil.copytree(lenet, dest, symlinks=True)
    if tamper is not None:
        manifest = json.loads((dest / "manifest.json").read_text())
        new = tamper(manifest, dest)
        if isinstance(new, bytes):
            (dest / "manifest.json").write_bytes(new)
        else:
            (dest / "manifest.json").write_text(new if isinstance(new, str) else json.dumps(new))
    return dest


def _set(path: str, value: Any) -> Tamper:
    """manifest with the dotted `path` set to value (a missing leaf is created)."""
    def tamper(m: dict[str, Any], folder: Path) -> dict[str, Any]:
        *parents, leaf = path.split(".")
        d = m
        for k in parents:
            d = d[k]
        d[leaf] = value
        return m
    return tamper


def _drop(key: str) -> Tamper:
    def tamper(m: dict[str, Any], folder: Path) -> dict[str, Any]:
        del m[key]
        return m
    return tamper


# -- engine files outside the folder ------------------------------------------------------------------------
def _outside_relative(m: dict[str, Any], folder: Path) -> dict[str, Any]:
    """../../elsewhere/model.onnx, where a real, loadable engine waits (following it would succeed)."""
    elsewhere = folder.parent.parent / "elsewhere"
    elsewhere.mkdir(parents=True, exist_ok=True)
    shutil.copy(folder / "model.onnx", elsewhere / "model.onnx")
    m["engine"] = "../../elsewhere/model.onnx"
    return m


def _symlink_to_outside(m: dict[str, Any], folder: Path) -> dict[str, Any]:
    """model.onnx inside the folder is a symlink to a (real, loadable) engine outside it."""
    outside = folder.parent / "outside.onnx"
    shutil.copy(folder / "model.onnx", outside)
    (folder / "model.onnx").unlink()
    os.symlink(outside, folder / "model.onnx")
    return m


def _symlinked_dir_to_outside(m: dict[str, Any], folder: Path) -> dict[str, Any]:
    """sub/ inside the folder is a symlink to a folder outside; engine "sub/model.onnx"."""
    outside = folder.parent / "outside-dir"
    outside.mkdir()
    shutil.copy(folder / "model.onnx", outside / "model.onnx")
    os.symlink(outside, folder / "sub")
    m["engine"] = "sub/model.onnx"
    return m


def _absolute_inside(m: dict[str, Any], folder: Path) -> dict[str, Any]:
    m["engine"] = str((folder / "model.onnx").resolve())  # inside, but absolute: refused too
    return m


def _symlink_loop(m: dict[str, Any], folder: Path) -> dict[str, Any]:
    os.symlink("loop.onnx", folder / "loop.onnx")
    m["engine"] = "loop.onnx"
    return m


TRAVERSAL: dict[str, tuple[Tamper, str]] = {
    "dotdot": (_outside_relative, "leads out of the engine folder"),
    "etc-passwd": (_set("engine", "/etc/passwd"), "is an absolute path"),
    "inner-dotdot": (_set("engine", "sub/../../lenet-other/model.onnx"), "leads out of the engine folder"),
    "symlink-file-outside": (_symlink_to_outside, "outside the engine folder"),
    "symlink-dir-outside": (_symlinked_dir_to_outside, "outside the engine folder"),
    "absolute-inside": (_absolute_inside, "is an absolute path"),
    "symlink-loop": (_symlink_loop, "symlink loop"),
    "the-folder-itself": (_set("engine", "."), "field engine must be the name of a file inside the engine folder"),
    "not-a-string": (_set("engine", 5), "field engine must be the name of a file inside the engine folder"),
}

# -- wrong types and values ----------------------------------------------------------------------------------
MALFORMED: dict[str, tuple[Tamper, str]] = {
    "shape-abc": (_set("input.shape", "abc"), 'field input.shape must be a list of 4 (batch, C, H, W)'),
    "shape-3-dims": (_set("input.shape", [1, 1, 32]), "field input.shape must be a list of 4"),
    "shape-negative": (_set("input.shape", [1, 1, -32, 32]), "field input.shape must be a list of 4"),
    "shape-vs-preprocess": (_set("input.shape", [1, 1, 64, 64]), "disagrees with preprocess"),
    "input-name-int": (_set("input.name", 7), "field input.name must be a non-empty string, got 7"),
    "input-not-object": (_set("input", [1, 2]), "field input must be a JSON object"),
    "class-names-5": (_set("class_names", 5), "field class_names must be a list of strings, got 5"),
    "class-names-mixed": (_set("class_names", ["0", 1]), "field class_names must be a list"),
    "input-size-x": (_set("preprocess.input_size", "x"), 'field preprocess.input_size must be [height, width]'),
    "preprocess-garbage": (_set("preprocess", "garbage"), "field preprocess must be a JSON object"),
    "preprocess-resize": (_set("preprocess.resize", "zoom"), "field preprocess.resize must be one of letterbox"),
    "preprocess-mean-2": (_set("preprocess.mean", [0.5, 0.5]), "field preprocess.mean must be a list of 1 or 3"),
    "preprocess-std-zero": (_set("preprocess.std", [0]), "none zero"),
    "preprocess-scale-nan": (lambda m, f: json.dumps(m).replace('"scale": 0.00392156862745098', '"scale": NaN'),
                             "field preprocess.scale must be a positive number, got NaN"),
    "preprocess-pad-300": (_set("preprocess.pad_value", 300), "field preprocess.pad_value must be an integer in [0, 255]"),
    "outputs-not-list": (_set("outputs", "logits"), 'field outputs must be a list of distinct non-empty strings'),
    "outputs-empty": (_set("outputs", []), "field outputs must be a non-empty list"),
    "nms-unknown": (_set("nms", "sometimes"), "field nms must be one of host, engine"),
    "nms-engine-without-detections": (lambda m, f: {**m, "task": "detection", "nms": "engine"},
                                      'field outputs must be a list holding "detections" and "num_detections"'),
    "inputs-not-list": (_set("inputs", "images"), "field inputs must be a non-empty list"),
    "task-int": (_set("task", 5), "unknown task 5"),
    "target-unknown": (_set("target", "coreml"), "unknown target 'coreml'"),
    "precision-fp64": (_set("precision", "fp64"), "field precision must be one of fp32, fp16, bf16, int8, mixed"),
    "trained-yes": (_set("trained", "yes"), "field trained must be true, false or null"),
    "device-string": (_set("device", "gpu"), "field device must be a JSON object or null"),
    "stages-string": (_set("stages", "x"), "field stages must be a list of stage records"),
    "runtime-string": (_set("runtime", "fast"), "field runtime must be a JSON object or null"),
    "runtime-on-onnxruntime": (_set("runtime", {"num_threads": 2}),
                               "field runtime.num_threads must be absent: onnxruntime engines take no runtime settings"),
    "runtime-unknown-setting": (lambda m, f: {**m, "target": "openvino", "runtime": {"hint": 3}},
                                "field runtime.hint must be absent: openvino engines take num_threads, num_streams"),
    "runtime-threads-negative": (lambda m, f: {**m, "target": "openvino", "runtime": {"num_threads": -1}},
                                 "field runtime.num_threads must be an integer in [1, 1024], got -1"),
    "runtime-streams-huge": (lambda m, f: {**m, "target": "openvino", "runtime": {"num_streams": 10**9}},
                             "field runtime.num_streams must be an integer in [1, 1024], got 1000000000"),
    "runtime-threads-bool": (lambda m, f: {**m, "target": "openvino", "runtime": {"num_threads": True}},
                             "field runtime.num_threads must be an integer in [1, 1024], got true"),
    "stage-nms-iou": (lambda m, f: {**m, "stages": [{"stage": "nms", "params": {"iou": "high"}}]},
                      "field stages[0].params.iou must be a number in [0, 1]"),
    "two-stage-kind": (_set("two_stage", {"kind": "yolo"}), "field two_stage.kind must be one of rcnn, fast-rcnn"),
    "two-stage-max-proposals": (_set("two_stage", {"kind": "rcnn", "proposals": {"max_proposals": "lots"}}),
                                "field two_stage.proposals.max_proposals must be an integer >= 1"),
    "two-stage-on-a-classifier": (_set("two_stage", {"kind": "rcnn"}), "field task must be detection for a two-stage"),
    "schema-missing": (_drop("schema"), "not an enginesmith engine folder, or built by an older enginesmith (no schema "
                                        "marker"),
    "schema-other": (_set("schema", "someone-elses-engine"), "not an enginesmith engine folder"),
    "schema-version-99": (_set("schema_version", 99), "schema_version 99 is newer than this enginesmith reads (up to 1)"
                                                      ": upgrade enginesmith"),
    "schema-version-str": (_set("schema_version", "1"), 'field schema_version must be a positive integer, got "1"'),
    "schema-version-missing": (_drop("schema_version"), "field schema_version must be a positive integer, got nothing"),
    "lacks-engine": (_drop("engine"), "lacks engine"),
    "json-array": (lambda m, f: json.dumps([m]), "is not an engine manifest (not a JSON object)"),
    "json-truncated": (lambda m, f: json.dumps(m)[:100], "cannot read"),
    "json-deep-nesting": (lambda m, f: "[" * 100_000 + "]" * 100_000, "cannot read"),
    "json-huge-int": (lambda m, f: json.dumps(m).replace('"schema_version": 1', '"schema_version": 1' + "0" * 5000),
                      "cannot read"),
    "not-utf8": (lambda m, f: json.dumps(m).encode().replace(b'"lenet5"', b'"lenet\xff"'), "cannot read"),
}
CASES = {**TRAVERSAL, **MALFORMED}
# `enginesmith eval` imports the whole evaluation stack (~10 s a process here): the traversal cases and a few
# malformed ones go through it, every case goes through `enginesmith detect` and runtime.load()
EVAL_CASES = ("dotdot", "etc-passwd", "symlink-file-outside", "absolute-inside", "shape-abc", "class-names-5",
              "preprocess-garbage", "schema-version-99", "json-array", "two-stage-kind")


def _one_line(proc) -> str:
    """The CLI refused: exit 2, one line on stderr, no traceback anywhere."""
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


def test_built_engine_carries_the_schema_marker_and_loads(lenet, image, run_cli, tmp_path):
    """The baseline every tampered copy starts from: the build writes the marker, and the copy runs."""
    manifest = json.loads((lenet / "manifest.json").read_text())
    assert manifest["schema"] == ENGINE_SCHEMA and manifest["schema_version"] == SCHEMA_VERSION
    assert is_engine_folder(lenet)
    copy = _copy(lenet, tmp_path / "copy")
    with load(copy) as clf:
        assert len(clf(image)) == 5
    proc = run_cli("classify", str(copy), str(image), "--out", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr
    # a symlink that stays inside the folder is fine
    inside = _copy(lenet, tmp_path / "inside")
    (inside / "real").mkdir()
    (inside / "model.onnx").rename(inside / "real" / "model.onnx")
    os.symlink("real/model.onnx", inside / "model.onnx")
    assert engine_info(inside).engine_file == inside / "model.onnx"
    with load(inside) as clf:
        assert len(clf(image)) == 5


@pytest.mark.parametrize("case", list(CASES))
def test_load_refuses_in_one_line(case, lenet, tmp_path):
    tamper, words = CASES[case]
    folder = _copy(lenet, tmp_path / "runs" / "lenet", tamper)
    with pytest.raises(EnginesmithError) as e:  # anything else (KeyError, TypeError, ...) fails the test
        load(folder)
    text = str(e.value)
    assert "\n" not in text and len(text) < 500, text
    assert words in text, text
    assert str(folder) in text  # names the folder (or its manifest.json)


@pytest.mark.parametrize("case", list(CASES))
def test_detect_cli_refuses_in_one_line(case, lenet, image, run_cli, tmp_path):
    tamper, words = CASES[case]
    folder = _copy(lenet, tmp_path / "runs" / "lenet", tamper)
    out = tmp_path / "out"
    line = _one_line(run_cli("detect", str(folder), str(image), "--out", str(out)))
    assert words in line, line
    assert not out.exists()  # refused before anything was written


@pytest.mark.parametrize("case", EVAL_CASES)
def test_eval_cli_refuses_in_one_line(case, lenet, run_cli, tmp_path):
    tamper, words = CASES[case]
    folder = _copy(lenet, tmp_path / "runs" / "lenet", tamper)
    line = _one_line(run_cli("eval", str(folder), "--dataset", "digits", "--limit", "4"))
    assert words in line, line


def test_is_engine_folder(lenet, tmp_path):
    """The build's test for whether `--out DIR` may be replaced: never raises, True only with the marker."""
    assert is_engine_folder(lenet) and not is_engine_folder(lenet / "manifest.json")  # a file is not a folder
    assert is_engine_folder(_copy(lenet, tmp_path / "v99", _set("schema_version", 99)))  # any version is ours
    assert is_engine_folder(_copy(lenet, tmp_path / "bad-shape", _set("input.shape", "abc")))  # marker only
    for case in ("schema-missing", "schema-other", "schema-version-str", "json-array", "json-truncated",
                 "json-deep-nesting", "not-utf8"):
        assert not is_engine_folder(_copy(lenet, tmp_path / case, CASES[case][0])), case
    assert not is_engine_folder(tmp_path / "missing")
    (tmp_path / "dir-manifest" / "manifest.json").mkdir(parents=True)
    assert not is_engine_folder(tmp_path / "dir-manifest")
    dangling = tmp_path / "dangling"
    dangling.mkdir()
    os.symlink(tmp_path / "nowhere.json", dangling / "manifest.json")
    assert not is_engine_folder(dangling)


def test_openvino_weights_beside_the_xml_must_be_inside_too(tmp_path, cache_dir, image):
    """OpenVINO opens model.bin beside model.xml (not named in the manifest): a symlink to weights outside is
    refused like the engine file itself."""
    pytest.importorskip("openvino")
    built = tmp_path / "ov"
    build_engine(BuildConfig(model="lenet5", target="openvino", precision="fp32", cache_dir=cache_dir, out=built,
                             latency_budget_s=0.2, calib_size=4))
    with load(built) as clf:  # the untampered engine runs
        assert len(clf(image)) == 5
    folder = _copy(built, tmp_path / "runs" / "ov")
    (folder / "model.bin").rename(tmp_path / "outside.bin")
    os.symlink(tmp_path / "outside.bin", folder / "model.bin")
    with pytest.raises(EnginesmithError) as e:
        load(folder)
    assert "\n" not in str(e.value)
    assert "field engine (its .bin weights)" in str(e.value) and "outside the engine folder" in str(e.value)
