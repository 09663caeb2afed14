"""The edge install for real: a fresh virtualenv with enginesmith's base dependencies (numpy, pillow, typer,
rich), onnxruntime and opencv-python-headless (no torch, no onnx), the repository on PYTHONPATH, a real engine built by the
pipeline in this environment. The runtime loads it, detects on a real photo exactly as this process does,
`torch` is neither installed nor imported there, the example app runs, and an OpenVINO engine is refused
in one line because OpenVINO is not installed there."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import venv
from pathlib import Path

import pytest
from PIL import Image

from enginesmith.data.offline_photos import base_photos
from enginesmith.pipeline.run import BuildConfig, build_engine
from enginesmith.runtime import load

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ["numpy", "pillow", "typer", "rich", "onnxruntime", "opencv-python-headless"]  # base deps + a backend

# Not marked slow: ~30 s here (the fresh venv takes ~9 s with pip's local index/cache). Skipped only when no package
# index is reachable (probed on its own first); any other pip failure fails the test.
PROBE = "typer"  # small, pure Python, and one of PACKAGES: if pip can fetch it, an index answers


def _index_unreachable(py: Path, where: Path) -> str | None:
    """None when pip (the fresh venv's, with this machine's pip configuration) can download PROBE from an index;
    else pip's last words. Nothing is installed; --no-cache-dir so a cached wheel does not stand in for an index."""
    probe = subprocess.run([str(py), "-m", "pip", "download", "-q", "--disable-pip-version-check", "--no-cache-dir",
                            "--no-deps", "--retries", "1", "--timeout", "30", "-d", str(where), PROBE],
                           capture_output=True, text=True, timeout=600)
    return None if probe.returncode == 0 else probe.stderr.strip()[-300:]


@pytest.fixture(scope="module")
def edge_env(tmp_path_factory) -> Path:
    """A virtualenv without torch; its python. Skipped (not failed) only when pip cannot reach any package index."""
    root = tmp_path_factory.mktemp("edge-venv")
    t0 = time.perf_counter()
    venv.EnvBuilder(with_pip=True, clear=True).create(root / "venv")
    py = root / "venv" / "bin" / "python"
    unreachable = _index_unreachable(py, root / "probe")
    if unreachable is not None:
        pytest.skip(f"no package index reachable: pip could not download {PROBE} ({unreachable})")
    pip = subprocess.run([str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", *PACKAGES],
                         capture_output=True, text=True, timeout=900)
    assert pip.returncode == 0, f"an index answers, yet pip could not install {PACKAGES}: {pip.stderr.strip()[-2000:]}"
    print(f"edge venv ready in {time.perf_counter() - t0:.1f} s")
    yield py
    shutil.rmtree(root, ignore_errors=True)


def _run(py: Path, code: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PYTHONPATH"] = str(REPO)
    return subprocess.run([str(py), "-c", code, *args], capture_output=True, text=True, env=env, timeout=300)


def test_runtime_in_a_virtualenv_without_torch(edge_env, tmp_path, cache_dir):
    engine = tmp_path / "yolo-ort"
    build_engine(BuildConfig(model="yolov3-tiny", target="onnxruntime", precision="fp32", input_size=(64, 64),
                             cache_dir=cache_dir, out=engine, latency_budget_s=0.2, calib_size=4))
    photo = tmp_path / "photo.png"
    Image.fromarray(list(base_photos())[1]).save(photo)

    probe = _run(edge_env, "import importlib.util as u; print([m for m in ('torch', 'torchvision', 'onnx', 'openvino')"
                           " if u.find_spec(m)])")
    assert probe.returncode == 0 and probe.stdout.strip() == "[]", probe.stdout + probe.stderr

    code = (
        "import json, sys\n"
        "from enginesmith.runtime import load\n"
        "det = load(sys.argv[1])\n"
        "dets = det(sys.argv[2])\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "print(json.dumps({'detections': [d.to_dict() for d in dets], 'heavy': sorted(m for m in sys.modules\n"
        "      if m.split('.')[0] in ('torch', 'onnx', 'openvino') or m.startswith('enginesmith.models'))}))\n"
    )
    out = _run(edge_env, code, str(engine), str(photo))
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["heavy"] == []
    with load(engine) as det:  # the same engine and photo in this (torch-carrying) environment
        want = [d.to_dict() for d in det(photo)]
    assert result["detections"] == want and want

    # the example app, with OpenCV, in the same torch-free environment
    import_cv2 = _run(edge_env, "import cv2, numpy as np, sys\n"
                      "w = cv2.VideoWriter(sys.argv[1], cv2.VideoWriter_fourcc(*'mp4v'), 10, (96, 64))\n"
                      "im = cv2.imread(sys.argv[2])\n"
                      "[w.write(cv2.resize(np.roll(im, 7 * k, axis=1), (96, 64))) for k in range(6)]\n"
                      "w.release()\n", str(tmp_path / "clip.mp4"), str(photo))
    assert import_cv2.returncode == 0, import_cv2.stderr
    env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
    env["PYTHONPATH"] = str(REPO)
    app = subprocess.run([str(edge_env), str(REPO / "examples" / "edge_app.py"), str(engine), str(tmp_path / "clip.mp4"),
                          "--out", str(tmp_path / "annotated.mp4")], capture_output=True, text=True, env=env, timeout=300)
    assert app.returncode == 0, app.stderr
    assert "6 frames" in app.stdout and "FPS" in app.stdout
    assert (tmp_path / "annotated.mp4").stat().st_size > 0


def test_engine_whose_backend_is_missing_is_one_line(edge_env, tmp_path, cache_dir):
    engine = tmp_path / "lenet-ov"
    build_engine(BuildConfig(model="lenet5", target="openvino", precision="fp32", cache_dir=cache_dir, out=engine,
                             latency_budget_s=0.2, calib_size=4))
    out = _run(edge_env, "import sys\nfrom enginesmith.errors import EnginesmithError\nfrom enginesmith.runtime import load\n"
                         "try:\n    load(sys.argv[1])\nexcept EnginesmithError as e:\n    print('ERROR', e)\n", str(engine))
    assert out.returncode == 0, out.stderr
    line = out.stdout.strip()
    assert line.startswith("ERROR ") and "\n" not in line
    assert "runs on OpenVINO, which is not installed here" in line and "runtime-openvino" in line
    # the same through `enginesmith classify` (rich must print the extra's brackets, not eat them as markup)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PYTHONPATH"] = str(REPO)
    photo = tmp_path / "photo.png"
    Image.fromarray(list(base_photos())[1]).save(photo)
    cli = subprocess.run([str(edge_env), "-m", "enginesmith.cli", "classify", str(engine), str(photo)],
                         capture_output=True, text=True, env=env, timeout=300)
    assert cli.returncode == 2 and "Traceback" not in cli.stderr, cli.stderr
    assert "pip install openvino" in cli.stderr and "'/path/to/enginesmith[runtime-openvino]'" in " ".join(cli.stderr.split())
