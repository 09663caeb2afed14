"""runtime/manifest.py: what the runtime reads from an engine folder, and each refusal as one line
(not an engine, missing engine file, backend not installed, TensorRT built for another version/GPU)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from enginesmith.errors import EnginesmithError
from enginesmith.backends.tensorrt_device import check_tensorrt_compat, recorded_tensorrt
from enginesmith.runtime.manifest import ENGINE_SCHEMA, SCHEMA_VERSION, check_runnable, engine_info, is_engine_folder, read_manifest

REPO = Path(__file__).resolve().parents[2]
PREPROCESS = {"color": "RGB", "crop_fraction": 0.875, "input_size": [64, 64], "mean": [0, 0, 0], "pad_value": 114,
              "resize": "letterbox", "scale": 1 / 255, "std": [1, 1, 1]}


def _engine(folder: Path, **overrides) -> Path:
    """A folder laid out as `enginesmith build` writes it (manifest keys as pipeline/run.py writes them)."""
    folder.mkdir(parents=True, exist_ok=True)
    manifest = {"schema": ENGINE_SCHEMA, "schema_version": SCHEMA_VERSION,
                "model": "yolov3-tiny", "task": "detection", "target": "onnxruntime", "precision": "fp32",
                "engine": "model.onnx", "input": {"name": "images", "shape": [1, 3, 64, 64]},
                "outputs": ["detections", "num_detections", "boxes", "scores"], "nms": "engine",
                "preprocess": PREPROCESS, "class_names": ["a", "b"], "trained": False,
                "stages": [{"stage": "nms", "params": {"iou": 0.5, "score": 0.3, "max_detections": 50},
                            "metrics": {"iou": 0.5, "score": 0.3, "max_detections": 50}, "tools": {}},
                           {"stage": "engine", "params": {}, "metrics": {}, "tools": {"tensorrt": "10.3.0"}}]}
    manifest.update(overrides)
    (folder / "manifest.json").write_text(json.dumps(manifest))
    (folder / manifest["engine"]).write_bytes(b"engine bytes")
    return folder


def _one_line(e: pytest.ExceptionInfo) -> str:
    text = str(e.value)
    assert "\n" not in text and len(text) < 400, text
    return text


def test_reads_what_the_runtime_needs(tmp_path):
    info = engine_info(_engine(tmp_path / "e"))
    assert (info.task, info.target, info.input_name, info.batch, info.channels) == ("detection", "onnxruntime",
                                                                                    "images", 1, 3)
    assert info.input_size == (64, 64) and info.preprocess.resize == "letterbox"
    assert info.nms == "engine" and info.nms_params == {"iou": 0.5, "score": 0.3, "max_detections": 50}
    assert info.class_name(1) == "b" and info.class_name(7) == "class 7"
    dyn = engine_info(_engine(tmp_path / "d", input={"name": "images", "shape": ["batch", 3, 64, 64]}))
    assert dyn.batch is None
    assert engine_info(tmp_path / "e" / "manifest.json").folder == tmp_path / "e"  # the manifest path works too
    assert is_engine_folder(tmp_path / "e") and is_engine_folder(tmp_path / "d")


def test_not_an_engine_folder(tmp_path):
    with pytest.raises(EnginesmithError, match="not found") as e:
        read_manifest(tmp_path / "missing")
    _one_line(e)
    (tmp_path / "photos").mkdir()
    with pytest.raises(EnginesmithError, match=r"not an engine folder \(no manifest.json\); build one") as e:
        engine_info(tmp_path / "photos")
    _one_line(e)
    (tmp_path / "x.jpg").write_bytes(b"x")
    with pytest.raises(EnginesmithError, match="is a file, not an engine folder"):
        engine_info(tmp_path / "x.jpg")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "manifest.json").write_text("{not json")
    with pytest.raises(EnginesmithError, match="cannot read") as e:
        engine_info(bad)
    _one_line(e)
    stage = tmp_path / "stage"
    stage.mkdir()
    (stage / "manifest.json").write_text(json.dumps({"stage": "export", "files": ["model.onnx"]}))  # a cache stage
    with pytest.raises(EnginesmithError, match=r"not an enginesmith engine folder.*\(no schema marker") as e:
        engine_info(stage)
    _one_line(e)
    assert not is_engine_folder(stage) and not is_engine_folder(bad) and not is_engine_folder(tmp_path / "photos")
    marked = {"schema": ENGINE_SCHEMA, "schema_version": SCHEMA_VERSION, "stage": "export", "files": ["model.onnx"]}
    (stage / "manifest.json").write_text(json.dumps(marked))  # marked, but without an engine's fields
    with pytest.raises(EnginesmithError, match="lacks task, target, precision, engine, input, outputs, preprocess, "
                       "class_names") as e:
        engine_info(stage)
    _one_line(e)


def test_missing_engine_file_and_unknown_entries(tmp_path):
    folder = _engine(tmp_path / "e")
    (folder / "model.onnx").unlink()
    with pytest.raises(EnginesmithError, match="engine file missing: .*model.onnx") as e:
        engine_info(folder)
    _one_line(e)
    with pytest.raises(EnginesmithError, match="unknown target 'coreml'"):
        engine_info(_engine(tmp_path / "t", target="coreml"))
    with pytest.raises(EnginesmithError, match="unknown task 'pose'"):
        engine_info(_engine(tmp_path / "k", task="pose"))


def test_backend_not_installed_is_one_line_with_the_install_hint(tmp_path):
    """openvino is blocked by an import hook in a child process: the check must not import it to decide."""
    folder = _engine(tmp_path / "ov", target="openvino", engine="model.xml")
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'openvino':\n"
        "            raise ModuleNotFoundError('blocked: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "from enginesmith.errors import EnginesmithError\n"
        "from enginesmith.runtime import load\n"
        "try:\n"
        f"    load({str(folder)!r})\n"
        "except EnginesmithError as e:\n"
        "    print(e)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    line = out.stdout.strip()
    assert "\n" not in line
    assert "runs on OpenVINO, which is not installed here" in line and "enginesmith[runtime-openvino]" in line


def test_tensorrt_engine_built_elsewhere_says_rebuild_for_this_device():
    rec = {"tensorrt": "10.3.0.26", "gpu": "NVIDIA A100-SXM4-80GB", "compute_capability": "8.0"}
    check_tensorrt_compat(rec, "10.3.0", "NVIDIA A100-SXM4-80GB", "8.0")  # same: fine
    check_tensorrt_compat(rec, "10.3.0.26", None, None)  # GPU unknown here: only the version is checked
    for installed, gpu, cc, words in [
        ("10.4.0", "NVIDIA A100-SXM4-80GB", "8.0", "built with TensorRT 10.3.0.26, this machine has TensorRT 10.4.0"),
        ("10.3.0", "NVIDIA H100 80GB HBM3", "9.0", "built for compute capability 8.0"),
        ("10.3.0", "NVIDIA A100-PCIE-40GB", "8.0", "built on a NVIDIA A100-SXM4-80GB"),
    ]:
        with pytest.raises(EnginesmithError, match="rebuild for this device") as e:
            check_tensorrt_compat(rec, installed, gpu, cc)
        assert words in _one_line(e)
    with pytest.raises(EnginesmithError, match="does not record the TensorRT version"):
        check_tensorrt_compat({"tensorrt": None, "gpu": None, "compute_capability": None}, "10.3.0", None, None)
    with pytest.raises(EnginesmithError, match="TensorRT is not installed here"):
        check_tensorrt_compat(rec, None, None, None)


def test_recorded_tensorrt_reads_device_then_engine_stage_tools(tmp_path):
    info = engine_info(_engine(tmp_path / "trt", target="tensorrt", engine="model.plan"))
    assert recorded_tensorrt(info.raw) == {"tensorrt": "10.3.0", "gpu": None, "compute_capability": None}
    raw = {**info.raw, "device": {"tensorrt": "10.8.0", "gpu": "NVIDIA L4", "compute_capability": "8.9"}}
    assert recorded_tensorrt(raw) == {"tensorrt": "10.8.0", "gpu": "NVIDIA L4", "compute_capability": "8.9"}


def test_tensorrt_engine_on_this_machine_is_refused_before_loading(tmp_path):
    """No TensorRT here (nor a GPU): the manifest check refuses the engine with what to do."""
    info = engine_info(_engine(tmp_path / "trt", target="tensorrt", engine="model.plan"))
    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("TensorRT is installed here")
    with pytest.raises(EnginesmithError, match="TensorRT is not installed here") as e:
        check_runnable(info)
    _one_line(e)


def test_dense_engine_that_is_not_segmentation_is_not_supported_yet(tmp_path):
    """SRResNet builds as a "dense" engine whose output is an image, not class logits: refused in one line."""
    from enginesmith.runtime import load

    folder = _engine(tmp_path / "sr", model="srresnet", task="dense", outputs=["image"], nms=None)
    with pytest.raises(EnginesmithError, match="not this one yet") as e:
        load(folder)
    assert "srresnet" in _one_line(e)
