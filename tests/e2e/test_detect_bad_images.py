"""`enginesmith detect` / `classify` over a folder with bad files in it (issue 17): every decodable image is
processed and written, each bad one is named (stdout as it is skipped, then the closing error line on stderr) and under "skipped" in the JSON, and the exit code is 1.
The faults are real files: a JPEG cut in half, a text file named .png, an empty .jpg."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from enginesmith.data.offline_photos import base_photos
from enginesmith.pipeline.run import BuildConfig, build_engine
from enginesmith.runtime import load

BAD = ("b-truncated.jpg", "d-notes.png", "f-empty.jpg")


@pytest.fixture(scope="module")
def engines(tmp_path_factory, cache_dir):
    root = tmp_path_factory.mktemp("bad-images")
    common = dict(target="onnxruntime", precision="fp32", cache_dir=cache_dir, latency_budget_s=0.2, calib_size=4)
    build_engine(BuildConfig(model="yolov3-tiny", input_size=(64, 64), out=root / "yolo", **common))
    build_engine(BuildConfig(model="lenet5", out=root / "lenet", **common))
    yield root / "yolo", root / "lenet"
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture()
def folder(tmp_path) -> Path:
    """a-, c-, e-photo: real photos; the BAD files sorted between them, so the run must go on past each."""
    d = tmp_path / "images"
    d.mkdir()
    photos = base_photos()
    for name, im in zip(("a-photo.png", "c-photo.jpg", "e-photo.png"), photos[:3]):
        Image.fromarray(im).save(d / name)
    buf = io.BytesIO()
    Image.fromarray(photos[3]).save(buf, format="JPEG", quality=90)
    (d / BAD[0]).write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])  # a real JPEG, cut in half
    (d / BAD[1]).write_text("shopping list: milk, eggs\n")  # not an image, image extension
    (d / BAD[2]).write_bytes(b"")
    return d


def _check_run(proc, out: Path, json_name: str, folder: Path) -> dict:
    assert proc.returncode == 1, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr
    doc = json.loads((out / json_name).read_text())
    assert [Path(r["image"]).name for r in doc["images"]] == ["a-photo.png", "c-photo.jpg", "e-photo.png"]
    assert all((out / r["output"]).is_file() for r in doc["images"])
    assert sorted(Path(s["image"]).name for s in doc["skipped"]) == sorted(BAD)
    lines = proc.stdout.splitlines()
    for name in BAD:  # one line per input as it goes: results, or "PATH: skipped: why"
        assert any(name in ln and "skipped: cannot decode image" in ln for ln in lines), proc.stdout
    last = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
    assert len(last) == 1 and last[0].startswith("error: 3 of 6 images could not be decoded"), proc.stderr
    assert all(name in last[0] for name in BAD)  # and the closing error names every bad file
    return doc


def test_detect_goes_on_past_bad_files_and_exits_1(engines, folder, run_cli, tmp_path):
    yolo, _ = engines
    out = tmp_path / "out"
    proc = run_cli("detect", str(yolo), str(folder), "--out", str(out))
    doc = _check_run(proc, out, "detections.json", folder)
    with load(yolo) as det:  # the good images' detections are the runtime's own
        for rec in doc["images"]:
            assert rec["detections"] == [d.to_dict() for d in det(rec["image"])]
    assert "3 images" in proc.stdout and "FPS" in proc.stdout


def test_classify_goes_on_past_bad_files_and_exits_1(engines, folder, run_cli, tmp_path):
    _, lenet = engines
    out = tmp_path / "out"
    proc = run_cli("classify", str(lenet), str(folder), "--out", str(out), "--top-k", "3")
    doc = _check_run(proc, out, "classifications.json", folder)
    with load(lenet, top_k=3) as clf:
        for rec in doc["images"]:
            assert rec["classes"] == [c.to_dict() for c in clf(rec["image"])]


def test_all_good_is_exit_0_and_all_bad_is_one_error_line(engines, folder, run_cli, tmp_path):
    yolo, _ = engines
    for name in BAD:
        (folder / name).unlink()
    proc = run_cli("detect", str(yolo), str(folder), "--out", str(tmp_path / "o1"))
    assert proc.returncode == 0 and "error" not in proc.stderr, proc.stderr
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.jpg").write_text("not a jpeg")
    proc = run_cli("detect", str(yolo), str(bad), "--out", str(tmp_path / "o2"))
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
    assert proc.returncode == 2 and len(errors) == 1 and "no image could be decoded" in errors[0], proc.stderr
    assert not (tmp_path / "o2" / "detections.json").exists()
