"""--channels through the real CLI: it lands in manifest.json, enters the calibration's cache key, and the
torch-free runtime feeds the engine what a naive numpy computation of that channel order gives."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from enginesmith.data.offline_photos import base_photos

SIZE = 64


def _cli(cwd: Path, cache: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ENGINESMITH_CACHE": str(cache), "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "enginesmith.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


@pytest.fixture(scope="module")
def engines(tmp_path_factory, cache_dir) -> dict[str, Path]:
    """yolov3-tiny at 64x64, ONNX Runtime INT8, built twice: the default (RGB) and --channels bgr."""
    root = tmp_path_factory.mktemp("channels")
    out = {}
    for name, extra in (("rgb", []), ("bgr", ["--channels", "bgr"])):
        proc = _cli(root, cache_dir, "build", "yolov3-tiny", "--target", "onnxruntime", "--precision", "int8",
                    "--input-size", f"{SIZE}x{SIZE}", "--calib-size", "4", "--out", str(root / name), *extra)
        assert proc.returncode == 0, proc.stderr[-3000:]
        out[name] = root / name
    return out


def _manifest(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


def test_the_build_context_feeds_and_fingerprints_the_override(tmp_path):
    """Fast (no stage runs): what every stage and the manifest read, BuildContext.preprocess, carries --channels
    and --mean, and the calibration fingerprint (the precision stage's key) changes with it."""
    from enginesmith.pipeline.config import BuildConfig
    from enginesmith.pipeline.context import BuildContext

    ctxs = {}
    for name, opts in (("default", {}), ("bgr", {"channels": "bgr"}), ("mean", {"mean": (0.1, 0.2, 0.3)})):
        config = BuildConfig("yolov3-tiny", target="onnxruntime", input_size=(SIZE, SIZE), calib_size=4,
                             cache_dir=tmp_path / "cache", **opts)
        ctxs[name] = BuildContext(config, config.validate(), lambda a: None)
    assert [c.preprocess.color for c in ctxs.values()] == ["RGB", "BGR", "RGB"]
    assert ctxs["mean"].preprocess.mean == (0.1, 0.2, 0.3)
    prints = [json.dumps(c.calibration.fingerprint(), sort_keys=True) for c in ctxs.values()]
    assert len(set(prints)) == 3


@pytest.mark.slow  # two INT8 builds: ~35 s on a busy 2-core machine
def test_channels_lands_in_the_manifest_and_the_calibration_key(engines):
    a, b = _manifest(engines["rgb"]), _manifest(engines["bgr"])
    assert a["preprocess"]["color"] == "RGB" and b["preprocess"]["color"] == "BGR"
    assert {k: v for k, v in a["preprocess"].items() if k != "color"} == \
        {k: v for k, v in b["preprocess"].items() if k != "color"}  # yolov3's mean is 0: nothing else moves
    keys = [{s["stage"]: s["key"] for s in m["stages"]} for m in (a, b)]
    assert keys[0]["export"] == keys[1]["export"]  # the same network ...
    assert keys[0]["quantize-qdq"] != keys[1]["quantize-qdq"]  # ... calibrated on other inputs


def _photo() -> np.ndarray:
    p = next(p for p in base_photos() if min(p.shape[:2]) >= SIZE)
    return np.ascontiguousarray(p[:SIZE, :SIZE])  # 64x64: the letterbox is the identity


@pytest.mark.slow  # shares the two builds above
def test_the_runtime_feeds_the_recorded_channel_order(engines):
    ort = pytest.importorskip("onnxruntime")
    from enginesmith.runtime import load

    img = _photo()
    naive = {"rgb": img.astype(np.float32) / 255.0, "bgr": img[:, :, ::-1].astype(np.float32) / 255.0}
    outs = {}
    for name, folder in engines.items():
        m = _manifest(folder)
        session = ort.InferenceSession(str(folder / m["engine"]), providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]
        fed = {k: session.run(None, {m["input"]["name"]: v.transpose(2, 0, 1)[None]}) for k, v in naive.items()}
        det = load(folder)
        try:
            raw, _ = det.raw([img])
        finally:
            det.close()
        outs[name] = raw
        mine, other = fed[name], fed["bgr" if name == "rgb" else "rgb"]
        for n, want, not_want in zip(names, mine, other):
            np.testing.assert_allclose(raw[n], want, rtol=1e-5, atol=1e-5)
            assert not np.allclose(raw[n], not_want, rtol=1e-5, atol=1e-5)
    assert not np.allclose(outs["rgb"]["scores"], outs["bgr"]["scores"])


@pytest.mark.parametrize("args,fragment", [(("--channels", "xyz"), "choose rgb or bgr"),
                                           (("--mean", "1,2"), "give 3 values"),
                                           (("--std", "1,x,1"), "comma-separated numbers")])
def test_bad_channel_options_are_one_line_before_any_stage(args, fragment, tmp_path, cache_dir):
    proc = _cli(tmp_path, cache_dir, "build", "yolov3-tiny", "--target", "onnxruntime", "--precision", "fp32",
                "--input-size", f"{SIZE}x{SIZE}", *args)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert fragment in lines[0] and "Traceback" not in proc.stderr
    assert not (tmp_path / "build").exists()


@pytest.mark.slow  # shares the two builds above
def test_eval_refuses_channels_for_an_engine_folder(engines, tmp_path, cache_dir):
    proc = _cli(tmp_path, cache_dir, "eval", str(engines["rgb"]), "--dataset", "digits", "--channels", "bgr")
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and "preprocessing (manifest.json) is built in" in lines[0], \
        proc.stderr
