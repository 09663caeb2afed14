"""`enginesmith detect` never leaves stale results looking current: an undecodable image in a folder run is
skipped and reported, the results JSON is written atomically at the end, a results JSON (and the drawn images it
lists) left by an earlier run is removed before anything new is written, a file enginesmith did not write is
never touched, and a run killed halfway leaves no JSON naming an older run's images.

A real yolov3-tiny engine (64x64, ONNX Runtime) is built once for the module; every run is the real CLI in a
subprocess on real image files (and real garbage bytes). No mocks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from enginesmith.data.offline_photos import base_photos
from enginesmith.pipeline.run import BuildConfig, build_engine
from enginesmith.runtime import load
from enginesmith.runtime.files import DETECTIONS_JSON, RESULT_SCHEMAS, detect_files

CORRUPT = b"\xff\xd8\xff\xe0 this is not a JPEG"


@pytest.fixture(scope="module")
def yolo(tmp_path_factory, cache_dir) -> Path:
    out = tmp_path_factory.mktemp("detect-outputs-engine") / "yolo"
    build_engine(BuildConfig(model="yolov3-tiny", target="onnxruntime", precision="fp32", input_size=(64, 64),
                             cache_dir=cache_dir, out=out, latency_budget_s=0.2, calib_size=4))
    return out


def _photo(i: int, path: Path, size: tuple[int, int] | None = (160, 120)) -> Path:
    im = Image.fromarray(list(base_photos())[i])
    (im.resize(size) if size else im).save(path)
    return path


def _one_line(proc) -> str:
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


def _earlier_run(yolo: Path, run_cli, tmp_path: Path, out: Path) -> list[str]:
    """A real earlier `enginesmith detect` into `out` over other images; returns its drawn images' names."""
    old = tmp_path / "old-photos"
    old.mkdir()
    _photo(5, old / "old0.png")
    _photo(6, old / "old1.png")
    proc = run_cli("detect", str(yolo), str(old), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    doc = json.loads((out / DETECTIONS_JSON).read_text())
    names = [r["output"] for r in doc["images"]]
    assert names == ["old0.png", "old1.png"] and all((out / n).is_file() for n in names)
    return names


def test_bad_image_in_the_middle_is_skipped_and_the_earlier_run_is_gone(yolo, run_cli, tmp_path):
    out = tmp_path / "out"
    old_names = _earlier_run(yolo, run_cli, tmp_path, out)
    photos = tmp_path / "photos"
    photos.mkdir()
    good_a = _photo(0, photos / "a_good.png")
    bad = photos / "b_corrupt.jpg"
    bad.write_bytes(CORRUPT)
    good_c = _photo(1, photos / "c_good.jpg")

    proc = run_cli("detect", str(yolo), str(photos), "--out", str(out), "--conf", "0.3")
    assert proc.returncode == 1, proc.stderr  # some images failed (tests/e2e/test_detect_bad_images.py)
    assert "Traceback" not in proc.stderr
    skip_lines = [ln for ln in proc.stdout.splitlines() if "skipped" in ln]
    assert len(skip_lines) == 1, proc.stdout  # the image's own line; the count closes stderr
    assert skip_lines[0].startswith(f"{bad}: skipped: cannot decode image {bad}")
    assert proc.stderr.splitlines()[-1].startswith(f"error: 1 of 3 images could not be decoded and were skipped: {bad}")
    assert "2 images" in proc.stdout

    doc = json.loads((out / DETECTIONS_JSON).read_text())
    assert doc["schema"] == RESULT_SCHEMAS[DETECTIONS_JSON]
    assert [r["image"] for r in doc["images"]] == [str(good_a), str(good_c)]
    assert len(doc["skipped"]) == 1 and doc["skipped"][0]["image"] == str(bad)
    assert doc["skipped"][0]["reason"].startswith(f"cannot decode image {bad}")
    # exactly this run's results: no drawn image of the earlier run, none for the bad image, no temporary files
    assert sorted(p.name for p in out.iterdir()) == sorted([DETECTIONS_JSON, "a_good.png", "c_good.jpg"])
    assert not set(old_names) & {p.name for p in out.iterdir()}
    with load(yolo) as det:
        det.configure(score_threshold=0.3)
        for rec in doc["images"]:
            assert rec["detections"] == [d.to_dict() for d in det(rec["image"])]
            assert Image.open(out / rec["output"]).size == Image.open(rec["image"]).size


def test_results_json_of_an_older_enginesmith_is_recognised_and_a_users_file_is_never_touched(yolo, run_cli, tmp_path):
    photo = _photo(2, tmp_path / "p.png")
    # what enginesmith wrote before the "schema" marker: these keys, images with "output" names
    out = tmp_path / "out"
    out.mkdir()
    _photo(3, out / "legacy.png")
    (out / "notes.txt").write_text("mine")
    legacy = {"config": {}, "nms": "host", "engine": "e", "model": "yolov3-tiny", "task": "detection",
              "target": "onnxruntime", "precision": "fp32", "input_size": [64, 64], "fps": 1.0, "timed": "...",
              "images": [{"image": "/gone/legacy.png", "output": "legacy.png", "width": 160, "height": 120,
                          "detections": []},
                         {"image": "/gone/x.png", "output": "../notes.txt", "detections": []}]}  # not a plain name
    (out / DETECTIONS_JSON).write_text(json.dumps(legacy))
    proc = run_cli("detect", str(yolo), str(photo), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted([DETECTIONS_JSON, "notes.txt", "p.png"])
    assert json.loads((out / DETECTIONS_JSON).read_text())["images"][0]["image"] == str(photo)
    assert (out / "notes.txt").read_text() == "mine"

    # a detections.json enginesmith did not write: refused, left as it was, nothing drawn
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / DETECTIONS_JSON).write_text('{"my": "own notes"}')
    line = _one_line(run_cli("detect", str(yolo), str(photo), "--out", str(mine)))
    assert f"{mine / DETECTIONS_JSON} exists and was not written by enginesmith" in line
    assert (mine / DETECTIONS_JSON).read_text() == '{"my": "own notes"}'
    assert [p.name for p in mine.iterdir()] == [DETECTIONS_JSON]


def test_all_bad_images_exit_2_and_leave_no_json(yolo, run_cli, tmp_path):
    out = tmp_path / "out"
    old_names = _earlier_run(yolo, run_cli, tmp_path, out)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "one.jpg").write_bytes(CORRUPT)
    (bad / "two.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)  # a PNG signature, then nothing valid
    line = _one_line(run_cli("detect", str(yolo), str(bad), "--out", str(out)))
    assert "no image could be decoded (2 given; first: cannot decode image" in line and str(bad / "one.jpg") in line
    assert not (out / DETECTIONS_JSON).exists()  # neither a new one nor the earlier run's
    assert not set(old_names) & {p.name for p in out.iterdir()}
    assert list(out.iterdir()) == []


def test_drawn_copies_never_overwrite_the_input_images(yolo, run_cli, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    before = {p.name: p.read_bytes() for p in (_photo(0, photos / "a.png"), _photo(1, photos / "b.jpg"))}
    line = _one_line(run_cli("detect", str(yolo), str(photos), "--out", str(photos)))
    assert "would be written over the image" in line
    assert {p.name: p.read_bytes() for p in photos.iterdir()} == before


def test_sigkill_midway_leaves_no_results_json_naming_an_older_run(yolo, run_cli, tmp_path, cache_dir):
    out = tmp_path / "out"
    old_names = _earlier_run(yolo, run_cli, tmp_path, out)
    photo = _photo(0, tmp_path / "new.png", size=None)  # full size: each image takes a while to draw and save
    args = [sys.executable, "-m", "enginesmith.cli", "detect", str(yolo), *[str(photo)] * 80, "--out", str(out)]
    env = {**os.environ, "ENGINESMITH_CACHE": str(cache_dir), "COLUMNS": "200"}
    proc = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        drawn: list[Path] = []
        while time.monotonic() < deadline and proc.poll() is None:
            drawn = [p for p in out.iterdir() if p.name.startswith("new") and p.suffix == ".png"]
            if len(drawn) >= 2:
                break
            time.sleep(0.02)
        assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr.read().decode()}"
        assert drawn, "no drawn image appeared"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    results = out / DETECTIONS_JSON
    if results.exists():  # whatever is there must not describe the earlier run
        doc = json.loads(results.read_text())
        assert not {Path(r["image"]).name for r in doc["images"]} & {"old0.png", "old1.png"}
    assert not results.exists()  # by design: the JSON is written only when a run finishes
    assert not set(old_names) & {p.name for p in out.iterdir()}
    for p in out.iterdir():  # every drawn image with a result's name is whole (temporary names are hidden)
        if not p.name.startswith("."):
            with Image.open(p) as im:
                im.load()
    # the next run cleans up after the killed one: only its own results, no temporary files
    proc2 = run_cli("detect", str(yolo), str(photo), "--out", str(out))
    assert proc2.returncode == 0, proc2.stderr
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_detect_files_reports_skips_through_the_api(yolo, tmp_path):
    """runtime.files.detect_files (what the CLI runs): skipped images come back in the summary and on_skip."""
    good = _photo(0, tmp_path / "good.png")
    bad = tmp_path / "bad.png"
    bad.write_bytes(CORRUPT)
    seen: list[tuple[Path, str]] = []
    with load(yolo) as det:
        summary = detect_files(det, [good, bad, good], tmp_path / "out", on_skip=lambda p, why: seen.append((p, why)))
    assert [Path(r["image"]) for r in summary.images] == [good, good]
    assert [r["output"] for r in summary.images] == ["good.png", "good_1.png"]  # distinct names for the same file
    assert summary.skipped == [{"image": str(bad), "reason": seen[0][1]}] and seen[0][0] == bad
    doc = json.loads(summary.json_path.read_text())
    assert doc["skipped"] == summary.skipped and len(doc["images"]) == 2
    assert np.isfinite(doc["fps"])
