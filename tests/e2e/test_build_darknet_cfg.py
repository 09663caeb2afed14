"""`build-engine darknet --cfg PATH --weights PATH.weights`: a user's cfg (yolov3-tiny edited to 2 classes, half the
channels, 128x128) built to ONNX Runtime FP32 (through the CLI) and OpenVINO INT8 (library API, 8 calibration
photos), loaded by the torch-free runtime and compared with the PyTorch network on a real photo; the cfg's bytes in
the cache key and the manifest; the CLI's one-line errors for bad cfgs and a .weights file of the wrong size."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from enginesmith.data.offline_photos import base_photos
from enginesmith.models.darknet_net import cfg_spec
from enginesmith.models.darknet_plan import read_cfg_source
from enginesmith.models.weights.darknet import save_darknet_weights
from enginesmith.models.weights.darknet_cfg import YOLOV3_TINY_CFG
from enginesmith.pipeline.run import BuildConfig, build_engine
from enginesmith.runtime import load
from enginesmith.runtime.nms import nms_detections
from enginesmith.runtime.preprocess import preprocess

SIZE = 128
SCORE = 0.3


def user_cfg_text() -> str:
    text = YOLOV3_TINY_CFG.replace("width=416", f"width={SIZE}").replace("height=416", f"height={SIZE}")
    text = text.replace("classes=80", "classes=2").replace("filters=255", "filters=X21")
    for f in (1024, 512, 256, 128, 64, 32, 16):
        text = text.replace(f"filters={f}\n", f"filters=X{f // 2}\n")
    return text.replace("filters=X", "filters=")


@pytest.fixture(scope="module")
def user_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("darknet-user")
    cfg, weights, names = d / "tiny-2cls.cfg", d / "tiny-2cls.weights", d / "tiny-2cls.names"
    cfg.write_text(user_cfg_text())
    names.write_text("digit\nshape\n")
    model = cfg_spec(read_cfg_source(cfg)).create(seed=11)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.2, generator=g)
                m.running_var.uniform_(0.5, 1.5, generator=g)
                m.bias.normal_(0, 0.1, generator=g)
    save_darknet_weights(model, weights)
    return {"cfg": cfg, "weights": weights, "names": names, "dir": d}


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return np.ascontiguousarray(next(iter(base_photos()))[100 : 100 + SIZE, 150 : 150 + SIZE])


def _pytorch(user_files: dict[str, Path], photo: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """boxes, scores of the PyTorch network loaded from the same files, and its host-NMS detections [K, 6]."""
    spec = cfg_spec(read_cfg_source(user_files["cfg"]))
    model = spec.create()
    spec.load_weights(model, user_files["weights"])
    x, _ = preprocess(photo, spec.preprocess)
    with torch.inference_mode():
        boxes, scores = (t.numpy() for t in model(torch.from_numpy(x[None])))
    dets, n = nms_detections(boxes, scores, score_threshold=SCORE)
    dets = dets[0, : n[0]].copy()
    dets[:, :4] = np.clip(dets[:, :4], 0, SIZE)
    return boxes, scores, dets


def _engine_detections(engine: Path, photo: np.ndarray) -> np.ndarray:
    det = load(engine).configure(score_threshold=SCORE)
    return np.array([[*d.box, d.score, d.class_id] for d in det(photo)], dtype=np.float32).reshape(-1, 6)


def test_cli_build_onnxruntime_fp32_matches_pytorch(run_cli, user_files, photo, tmp_path: Path) -> None:
    f = user_files
    proc = run_cli("build", "darknet", "--cfg", str(f["cfg"]), "--weights", str(f["weights"]), "--names",
                   str(f["names"]), "--target", "onnxruntime", "--precision", "fp32", "--out", "eng")
    assert proc.returncode == 0, proc.stderr[-3000:]
    engine = tmp_path / "eng"
    manifest = json.loads((engine / "manifest.json").read_text())
    assert manifest["model"] == "darknet" and manifest["class_names"] == ["digit", "shape"]
    assert manifest["definition"] == {"format": "darknet-cfg", "file": "tiny-2cls.cfg",
                                      "sha256": hashlib.sha256(f["cfg"].read_bytes()).hexdigest()}
    assert manifest["input"]["shape"] == [1, 3, SIZE, SIZE]

    boxes, scores, want = _pytorch(f, photo)
    raw, _ = load(engine).raw([photo])
    np.testing.assert_allclose(raw["boxes"], boxes, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(raw["scores"], scores, rtol=1e-4, atol=1e-5)
    got = _engine_detections(engine, photo)
    assert len(want) > 0 and got.shape == want.shape
    order = lambda d: d[np.lexsort((d[:, 0], -d[:, 4], d[:, 5]))]  # noqa: E731
    np.testing.assert_allclose(order(got), order(want), atol=1e-3)


def test_the_cfg_bytes_are_in_the_cache_key(user_files, cache_dir: Path, tmp_path: Path) -> None:
    """The same cfg reuses the CLI build's export; one more comment line in it builds the export again."""
    f = user_files

    def build(cfg: Path) -> dict[str, bool]:
        seen: dict[str, bool] = {}
        build_engine(BuildConfig("darknet", cfg=cfg, weights=f["weights"], names=f["names"], target="onnxruntime",
                                 precision="fp32", out=tmp_path / cfg.stem, cache_dir=cache_dir, latency_budget_s=0.2),
                     on_stage=lambda a: seen.__setitem__(a.stage, a.cached))
        return seen

    assert build(f["cfg"])["export"] is True
    edited = f["dir"] / "edited.cfg"
    edited.write_text("# my edit\n" + f["cfg"].read_text())
    assert build(edited)["export"] is False
    manifest = json.loads((tmp_path / "edited" / "manifest.json").read_text())
    assert manifest["definition"]["sha256"] == hashlib.sha256(edited.read_bytes()).hexdigest()


def test_openvino_int8_build_detects_like_pytorch(user_files, photo, cache_dir: Path, tmp_path: Path) -> None:
    f = user_files
    pytest.importorskip("openvino")
    result = build_engine(BuildConfig("darknet", cfg=f["cfg"], weights=f["weights"], target="openvino",
                                      precision="int8", calib_size=8, out=tmp_path / "ov", cache_dir=cache_dir,
                                      latency_budget_s=0.2))
    boxes, scores, want = _pytorch(f, photo)
    raw, _ = load(result.out).raw([photo])
    for got_, want_ in ((raw["scores"], scores), (raw["boxes"], boxes)):
        a, b = got_.ravel().astype(np.float64), want_.ravel().astype(np.float64)
        assert float(a @ b / np.linalg.norm(a) / np.linalg.norm(b)) > 0.99
    got = _engine_detections(result.out, photo)
    assert len(got) > 0 and set(got[:, 5].astype(int)) <= {0, 1}


# ---------------------------------------------------------------------------------------------- one-line errors
def _clean_error(proc, *fragments: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr and "error:" in proc.stderr
    for frag in fragments:
        assert frag in proc.stderr, (frag, proc.stderr)


def test_cli_malformed_cfg_names_file_and_line(run_cli, tmp_path: Path) -> None:
    text = user_cfg_text().replace("[upsample]", "[upsampel]")
    line = text.split("\n").index("[upsampel]") + 1
    (tmp_path / "yolov3-custom.cfg").write_text(text)
    proc = run_cli("build", "darknet", "--cfg", "yolov3-custom.cfg", "--target", "onnxruntime", "--precision", "fp32")
    _clean_error(proc, f"yolov3-custom.cfg line {line}: [upsampel] is not a Darknet layer enginesmith builds")
    assert not (tmp_path / "build").exists()


def test_cli_darknet_needs_cfg_and_cfg_needs_darknet(run_cli, user_files) -> None:
    _clean_error(run_cli("build", "darknet"), "give --cfg PATH")
    _clean_error(run_cli("build", "yolov3-tiny", "--cfg", str(user_files["cfg"])), "give the model name darknet")


def test_cli_weights_of_the_wrong_size_are_refused_before_reading(run_cli, user_files, tmp_path: Path) -> None:
    """A 12 GiB (sparse) file with a valid header: refused from its size alone, in seconds, before any stage."""
    big = tmp_path / "big.weights"
    with open(big, "wb") as fh:
        fh.write(np.array([0, 2, 0, 0, 0], dtype="<i4").tobytes())
        fh.truncate(12 * 2**30)
    proc = run_cli("build", "darknet", "--cfg", str(user_files["cfg"]), "--weights", str(big), "--target",
                   "onnxruntime", "--precision", "fp32", timeout=120)
    _clean_error(proc, "do not match the architecture", "12.00 GiB")
    assert not (tmp_path / "build").exists()


def test_cli_models_prints_the_cfg_row(run_cli, user_files) -> None:
    proc = run_cli("models", "--cfg", str(user_files["cfg"]), "--json")
    assert proc.returncode == 0, proc.stderr
    (row,) = json.loads(proc.stdout)
    spec = cfg_spec(read_cfg_source(user_files["cfg"]))
    params = sum(p.numel() for p in spec.create().parameters())
    assert row["name"] == "darknet:tiny-2cls.cfg" and row["params"] == params and row["num_classes"] == 2
    assert row["boxes"] == 3 * (4 * 4 + 8 * 8) and row["macs"] > 0
