"""Bad input through the real CLI: one clear line on stderr, exit code 2, no traceback, nothing written."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest


def _assert_clean_error(proc, *fragments: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
    err = proc.stderr
    assert "Traceback" not in err, err
    assert "error:" in err
    for f in fragments:
        assert f.lower() in err.lower(), (f, err)


def _nothing_built(tmp_path: Path) -> None:
    build = tmp_path / "build"
    assert not build.exists() or not any(p for p in build.rglob("*") if p.is_file()), list(build.rglob("*"))


def test_unknown_model_suggests_closest(run_cli, tmp_path):
    proc = run_cli("build", "yolov33")
    _assert_clean_error(proc, "unknown model", "yolov3")
    _nothing_built(tmp_path)


def test_build_engine_entry_point_same_errors(tmp_path):
    import shutil
    import subprocess
    import sys

    exe = Path(sys.executable).with_name("build-engine")
    if not exe.exists():
        exe = Path(shutil.which("build-engine") or "")
    if not exe.is_file():
        pytest.fail("the build-engine console script is not installed (pip install -e .)")
    proc = subprocess.run([str(exe), "lenett5"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    _assert_clean_error(proc, "lenet5")


def test_missing_weights_file(run_cli, tmp_path):
    proc = run_cli("build", "lenet5", "--weights", "nope.pt")
    _assert_clean_error(proc, "not found", "nope.pt")
    _nothing_built(tmp_path)


def test_truncated_darknet_weights_reports_sizes(run_cli, tmp_path):
    header = np.array([0, 2, 5], dtype=np.int32).tobytes() + np.array([0], dtype=np.int64).tobytes()
    (tmp_path / "yolov3.weights").write_bytes(header + np.zeros(1000, dtype=np.float32).tobytes())
    proc = run_cli("build", "yolov3", "--weights", "yolov3.weights", "--input-size", "64x64", "--precision", "fp32")
    _assert_clean_error(proc, "truncated", "expected")
    _nothing_built(tmp_path)


def test_state_dict_with_wrong_keys(run_cli, tmp_path):
    import torch

    torch.save({"conv.weight": torch.zeros(3)}, tmp_path / "bad.pt")
    proc = run_cli("build", "lenet5", "--weights", "bad.pt", "--precision", "fp32")
    _assert_clean_error(proc, "missing")
    _nothing_built(tmp_path)


def test_garbage_weights_file(run_cli, tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"this is not a checkpoint" * 10)
    proc = run_cli("build", "lenet5", "--weights", "junk.pt")
    _assert_clean_error(proc, "junk.pt")


def test_empty_calibration_folder(run_cli, tmp_path):
    (tmp_path / "calib").mkdir()
    (tmp_path / "calib" / "notes.txt").write_text("no images here")
    proc = run_cli("build", "lenet5", "--calib", "calib")
    _assert_clean_error(proc, "no images")
    _nothing_built(tmp_path)


def test_missing_calibration_folder(run_cli, tmp_path):
    proc = run_cli("build", "lenet5", "--calib", "does-not-exist")
    _assert_clean_error(proc, "not found")


def test_unreadable_calibration_image(run_cli, tmp_path):
    (tmp_path / "calib").mkdir()
    (tmp_path / "calib" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    proc = run_cli("build", "lenet5", "--calib", "calib", "--calib-size", "1")
    _assert_clean_error(proc, "broken.jpg")
    _nothing_built(tmp_path)


def test_tensorrt_unavailable_stops_at_once(run_cli, tmp_path):
    pytest.importorskip("onnx")
    import importlib.util

    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("TensorRT is installed here")
    proc = run_cli("build", "lenet5", "--target", "tensorrt")
    _assert_clean_error(proc, "tensorrt")
    _nothing_built(tmp_path)


def test_input_size_the_architecture_cannot_take(run_cli, tmp_path):
    proc = run_cli("build", "yolov3", "--input-size", "100x100")
    _assert_clean_error(proc, "32")
    proc = run_cli("build", "lenet5", "--input-size", "64x64")
    _assert_clean_error(proc, "32x32")


def test_bad_input_size_text(run_cli):
    _assert_clean_error(run_cli("build", "lenet5", "--input-size", "big"), "HxW")


def test_static_and_dynamic_batch_together(run_cli):
    _assert_clean_error(run_cli("build", "lenet5", "--batch", "4", "--dynamic-batch"), "not both")


def test_batch_for_a_batch1_only_detector(run_cli):
    _assert_clean_error(run_cli("build", "faster-rcnn-r50-fpn", "--batch", "2"), "batch 1 only")


def test_volumetric_model_is_refused_clearly(run_cli):
    _assert_clean_error(run_cli("build", "unet3d"), "volumes")


def test_unknown_target_and_precision(run_cli):
    _assert_clean_error(run_cli("build", "lenet5", "--target", "coreml"), "openvino")
    _assert_clean_error(run_cli("build", "lenet5", "--precision", "int4"), "fp32")


@pytest.mark.parametrize("args,fragments", [
    (("--precision", "mixed"), ("--val", "judge")),
    (("--precision", "int8", "--fallback", "auto"), ("--val",)),
    (("--precision", "fp16", "--fallback", "auto"), ("fallback auto", "fp16")),
    (("--fallback", "sometimes"), ("unknown --fallback",)),
    (("--val", "digits", "--accuracy-budget", "-1"), ("cannot be negative",)),
    (("--val", "no/such/dir"), ("no such file", "no/such/dir")),
    (("--nncf-preset", "fast"), ("unknown --nncf-preset",)),
])
def test_accuracy_options_rejected_up_front(run_cli, tmp_path, args, fragments):
    proc = run_cli("build", "lenet5", *args)
    _assert_clean_error(proc, *fragments)
    _nothing_built(tmp_path)


def test_val_for_a_dense_model_has_no_metric(run_cli, tmp_path):
    proc = run_cli("build", "fcn32s", "--input-size", "64x64", "--precision", "fp32", "--val", "digits")
    _assert_clean_error(proc, "no metric here", "drop --val")
    _nothing_built(tmp_path)


def test_val_with_other_class_count(run_cli, tmp_path):
    from enginesmith.data.offline_detection import generate_offline_dataset

    data = generate_offline_dataset(tmp_path / "offline", images=6, seed=1)
    proc = run_cli("build", "yolov3-tiny", "--input-size", "64x64", "--precision", "fp32", "--val", str(data))
    _assert_clean_error(proc, "16 classes", "80", "--num-classes")
    _nothing_built(tmp_path)


def test_eval_on_a_folder_that_is_not_an_engine(run_cli, tmp_path):
    (tmp_path / "empty").mkdir()
    proc = run_cli("eval", str(tmp_path / "empty"), "--dataset", "digits")
    _assert_clean_error(proc)


def test_data_offline_refuses_a_non_empty_folder(run_cli, tmp_path):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("mine")
    proc = run_cli("data", "offline", "--out", str(tmp_path / "busy"), "--images", "5")
    _assert_clean_error(proc, "busy")
    assert (tmp_path / "busy" / "keep.txt").read_text() == "mine"
