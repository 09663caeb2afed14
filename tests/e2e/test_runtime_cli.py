"""`enginesmith detect` / `enginesmith classify` as a user runs them (the real CLI in a subprocess), on real
engines and real photos: drawn images and JSON equal the runtime's own results; bad input is one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from enginesmith.data.offline_photos import base_photos
from enginesmith.pipeline.run import BuildConfig, build_engine
from enginesmith.runtime import load


@pytest.fixture(scope="module")
def engines(tmp_path_factory, cache_dir):
    root = tmp_path_factory.mktemp("cli-engines")
    yolo, lenet = root / "yolo", root / "lenet"
    build_engine(BuildConfig(model="yolov3-tiny", target="onnxruntime", precision="fp32", input_size=(64, 64),
                             cache_dir=cache_dir, out=yolo, latency_budget_s=0.2, calib_size=4))
    build_engine(BuildConfig(model="lenet5", target="onnxruntime", precision="fp32", cache_dir=cache_dir, out=lenet,
                             latency_budget_s=0.2, calib_size=4))
    yield yolo, lenet
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture()
def photo_dir(tmp_path) -> Path:
    d = tmp_path / "photos"
    d.mkdir()
    for i, im in enumerate(list(base_photos())[:3]):
        Image.fromarray(im).save(d / f"photo{i}.png")
    return d


def _error_line(proc) -> str:
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


def test_detect_writes_drawn_images_and_json_equal_to_the_runtime(engines, photo_dir, run_cli, tmp_path):
    yolo, _ = engines
    single = tmp_path / "single.jpg"
    Image.fromarray(list(base_photos())[4]).save(single)
    out = tmp_path / "out"
    proc = run_cli("detect", str(yolo), str(photo_dir), str(single), "--out", str(out), "--conf", "0.3")
    assert proc.returncode == 0, proc.stderr
    assert "FPS" in proc.stdout and "4 images" in proc.stdout
    doc = json.loads((out / "detections.json").read_text())
    assert doc["model"] == "yolov3-tiny" and doc["config"]["score_threshold"] == 0.3 and doc["fps"] > 0
    assert [Path(r["image"]).name for r in doc["images"]] == ["photo0.png", "photo1.png", "photo2.png", "single.jpg"]
    with load(yolo) as det:
        det.configure(score_threshold=0.3)
        for rec in doc["images"]:
            want = [d.to_dict() for d in det(rec["image"])]
            assert rec["detections"] == want
            original = np.asarray(Image.open(rec["image"]).convert("RGB"))
            drawn = np.asarray(Image.open(out / rec["output"]).convert("RGB"))
            assert drawn.shape == original.shape == (rec["height"], rec["width"], 3)
            if want:  # boxes were drawn: the pixels along the first box's top edge changed
                x1, y1, x2, _ = (int(v) for v in want[0]["box"])
                assert (drawn[min(y1 + 1, drawn.shape[0] - 1), x1:x2] != original[min(y1 + 1, drawn.shape[0] - 1),
                                                                                  x1:x2]).any()
    assert sum(len(r["detections"]) for r in doc["images"]) > 0


def test_classify_top_k_json(engines, run_cli, tmp_path):
    from enginesmith.data.digits import load_digits_32

    _, lenet = engines
    d = tmp_path / "digits"
    d.mkdir()
    for i, im in enumerate(load_digits_32().test_images[:4]):
        Image.fromarray(im).save(d / f"digit{i}.png")
    out = tmp_path / "out"
    proc = run_cli("classify", str(lenet), str(d), "--out", str(out), "--top-k", "3")
    assert proc.returncode == 0, proc.stderr
    assert "FPS" in proc.stdout
    doc = json.loads((out / "classifications.json").read_text())
    assert len(doc["images"]) == 4 and all(len(r["classes"]) == 3 for r in doc["images"])
    with load(lenet, top_k=3) as clf:
        for rec in doc["images"]:
            assert rec["classes"] == [c.to_dict() for c in clf(rec["image"])]
    assert all((out / r["output"]).is_file() for r in doc["images"])


def test_bad_input_is_one_clear_line(engines, photo_dir, run_cli, tmp_path):
    yolo, lenet = engines
    assert "not an engine folder (no manifest.json)" in _error_line(run_cli("detect", str(photo_dir), str(photo_dir)))
    assert "engine folder not found" in _error_line(run_cli("detect", str(tmp_path / "nope"), str(photo_dir)))
    (photo_dir / "zz-broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    proc = run_cli("detect", str(yolo), str(photo_dir), "--out", str(tmp_path / "o"))  # a folder run skips it
    assert proc.returncode == 1 and "zz-broken.jpg: skipped: cannot decode image" in proc.stdout  # test_detect_bad_images.py
    line = _error_line(run_cli("detect", str(yolo), str(photo_dir / "zz-broken.jpg"), "--out", str(tmp_path / "o2")))
    assert "no image could be decoded" in line and "zz-broken.jpg" in line
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no images in" in _error_line(run_cli("detect", str(yolo), str(empty)))
    line = _error_line(run_cli("classify", str(yolo), str(photo_dir / "photo0.png")))
    assert "is a detection engine" in line and "enginesmith detect" in line
    assert "is a classification engine" in _error_line(run_cli("detect", str(lenet), str(photo_dir / "photo0.png")))
    assert "--conf" in _error_line(run_cli("detect", str(yolo), str(photo_dir), "--conf", "1.5"))


def test_example_edge_app_runs_on_a_video(engines, tmp_path):
    """The example app with OpenCV (skipped where opencv-python-headless is not installed; the torch-free
    venv test installs it and runs the app there too)."""
    cv2 = pytest.importorskip("cv2")
    import subprocess
    import sys

    yolo, _ = engines
    video = tmp_path / "clip.mp4"
    w = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 10, (160, 120))
    for im in list(base_photos())[:3]:
        w.write(cv2.resize(np.ascontiguousarray(im[:, :, ::-1]), (160, 120)))
    w.release()
    repo = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, str(repo / "examples" / "edge_app.py"), str(yolo), str(video), "--out",
                           str(tmp_path / "annotated.mp4"), "--conf", "0.3"], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "3 frames" in proc.stdout and "FPS" in proc.stdout
    assert (tmp_path / "annotated.mp4").stat().st_size > 0
