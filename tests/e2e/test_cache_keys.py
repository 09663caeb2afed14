"""Cache keys, one input at a time: changing only that input rebuilds exactly the stages it should, and no others.

What "should" means is written down here independently of the cache code, as the stage graph of DESIGN.md ("the
cache key is the hash of parents + parameters + tool versions") plus, per input, the stages whose own parameters
that input enters:

    export -> simplify -> statistics -> quantize-qdq (parents: simplify, statistics) -> engine -> latency

A stage must rebuild when the input enters its own key (DIRECT below) or when one of its parents' outputs changed
(content addressing: a parent rebuilt to the same bytes does not rebuild its children). Everything else must be a
cache hit. `on_start` (told a stage's name when it builds, never on a hit) records what really rebuilt.

Every test starts from its own copy of a baseline cache (a module fixture builds it once), so each passes when run
alone and none depends on another test file's cache. Inputs changed for real:
- weights: one float of a real state dict (torch.save'd again); calibration: one image file's pixels, the method,
  the size; preprocessing: the model's registered PreprocessSpec (the registry entry is replaced for the test: the
  spec *is* the preprocessing definition the build reads); input size: another size of a real detector;
- tool versions: a real package metadata folder (`onnxsim-99.0.dist-info`) put first on sys.path, so
  `importlib.metadata` (what the key reads) finds a different onnxsim exactly as after an upgrade; nothing in
  enginesmith is patched;
- the code: a copy of the enginesmith package with one byte of one comment changed, built in a child process that
  imports that copy (the key hashes the source files of the package it runs from).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from enginesmith.pipeline.artifacts import Artifact
from enginesmith.pipeline.run import BuildConfig, build_engine

INT8_PARENTS = {"export": [], "simplify": ["export"], "statistics": ["simplify"],
                "quantize-qdq": ["simplify", "statistics"], "engine": ["quantize-qdq"], "latency": ["engine"]}
FP32_PARENTS = {"export": [], "simplify": ["export"], "engine": ["simplify"], "latency": ["engine"]}
# the stages whose own key each input enters (DESIGN.md "The stage contract" and "Amendments")
DIRECT = {
    "weights": {"export", "latency"},  # the export key names the weights' sha256; latency compares with that model
    "calibration": {"statistics"},  # images' bytes, count, method, preprocessing: the calibration fingerprint
    "input_size": {"export"},  # the exported input shape
    "tools": set(INT8_PARENTS),  # every stage's key holds the tool versions
    "code": set(INT8_PARENTS),  # ... and enginesmith's own source hash
    "nothing": set(),
}


def expected_rebuilds(parents: dict[str, list[str]], direct: set[str], before: dict[str, Artifact],
                      after: dict[str, Artifact]) -> list[str]:
    """The stages that must rebuild, in build order: those the change enters directly, and those whose parents'
    outputs changed."""
    return [s for s in parents if s in direct or any(after[p].sha256 != before[p].sha256 for p in parents[s])]


class Recorder:
    """Collects what a build did: `started` (stages built, in order) and every stage artifact by name."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self.artifacts: dict[str, Artifact] = {}

    def on_stage(self, art: Artifact) -> None:
        self.artifacts[art.stage] = art

    def build(self, config: BuildConfig) -> Any:
        result = build_engine(config, on_stage=self.on_stage, on_start=self.started.append)
        if result.latency is not None:
            self.artifacts["latency"] = result.latency
        return result


# --------------------------------------------------------------------------------------------- the baseline


def _crops(n: int, seed: int) -> list[np.ndarray]:
    """n real photo crops (48x40 RGB) from the packaged skimage photographs."""
    from enginesmith.data.offline_photos import base_photos

    rng = np.random.default_rng(seed)
    photos = list(base_photos())
    out = []
    for k in range(n):
        p = photos[k % len(photos)]
        y, x = int(rng.integers(0, p.shape[0] - 40)), int(rng.integers(0, p.shape[1] - 48))
        out.append(np.ascontiguousarray(p[y : y + 40, x : x + 48]))
    return out


@pytest.fixture(scope="module")
def lenet_base(tmp_path_factory) -> dict[str, Any]:
    """A LeNet-5 ONNX Runtime INT8 build (weights file, a folder of 6 photo crops, 4 used) into a baseline cache."""
    torch = pytest.importorskip("torch")
    from PIL import Image

    from enginesmith.models import registry

    root = tmp_path_factory.mktemp("keys-lenet")
    weights = root / "w.pt"
    torch.save(registry.get("lenet5").create(seed=1).state_dict(), weights)
    calib = root / "calib"
    calib.mkdir()
    for i, im in enumerate(_crops(6, seed=0)):
        Image.fromarray(im).save(calib / f"img{i}.png")
    config = BuildConfig("lenet5", target="onnxruntime", precision="int8", weights=weights, calib=calib, calib_size=4,
                         cache_dir=root / "cache", out=root / "engine", latency_budget_s=0.02)
    rec = Recorder()
    rec.build(config)
    assert rec.started == list(INT8_PARENTS)
    return {"root": root, "config": config, "artifacts": rec.artifacts}


def rebuild(base: dict[str, Any], tmp_path: Path, **changes: Any) -> Recorder:
    """Copy the baseline cache into tmp_path, build the baseline config with `changes` there; return the record."""
    cache = tmp_path / "cache"
    shutil.copytree(base["config"].cache_dir, cache)
    config = dataclasses.replace(base["config"], cache_dir=cache, out=tmp_path / "engine", **changes)
    rec = Recorder()
    rec.build(config)
    return rec


def check_rebuilt(base: dict[str, Any], rec: Recorder, parents: dict[str, list[str]], direct: set[str]) -> None:
    want = expected_rebuilds(parents, direct, base["artifacts"], rec.artifacts)
    assert rec.started == want, f"rebuilt {rec.started}, expected {want}"
    for stage in parents:  # what was not rebuilt is the baseline's artifact itself
        if stage not in want:
            assert rec.artifacts[stage].cached and rec.artifacts[stage].sha256 == base["artifacts"][stage].sha256


# --------------------------------------------------------------------------------------------- the inputs


def test_same_inputs_elsewhere_rebuild_nothing(lenet_base, tmp_path):
    """Content, not place: the same weights under another name and the same images in another folder are all hits."""
    weights = tmp_path / "renamed.pt"
    shutil.copyfile(lenet_base["config"].weights, weights)
    calib = tmp_path / "elsewhere"
    shutil.copytree(lenet_base["config"].calib, calib)
    rec = rebuild(lenet_base, tmp_path, weights=weights, calib=calib)
    assert rec.started == []
    check_rebuilt(lenet_base, rec, INT8_PARENTS, DIRECT["nothing"])


def test_weights_bytes_rebuild_everything(lenet_base, tmp_path):
    """One float of the state dict changed: every stage rebuilds, and the new engine is the new weights' network."""
    torch = pytest.importorskip("torch")
    from enginesmith.backends.targets import TARGETS
    from enginesmith.calibration.sources import calibration_batches, calibration_source
    from enginesmith.models import registry

    state = torch.load(lenet_base["config"].weights)
    key = next(k for k, v in state.items() if v.dtype == torch.float32 and v.ndim == 4)
    state[key].view(-1)[0] += 0.5
    weights = tmp_path / "w2.pt"
    torch.save(state, weights)
    rec = rebuild(lenet_base, tmp_path, weights=weights)
    check_rebuilt(lenet_base, rec, INT8_PARENTS, DIRECT["weights"])
    assert rec.started == list(INT8_PARENTS)
    assert rec.artifacts["export"].sha256 != lenet_base["artifacts"]["export"].sha256
    # the rebuilt FP32 ONNX is the changed network (not the cached one of the old weights)
    spec = registry.get("lenet5")
    net = spec.create(seed=9)
    net.load_state_dict(state)
    x = np.concatenate(list(calibration_batches(calibration_source(None, "digits", 4), spec.preprocess, 4)))
    with torch.inference_mode():
        want = net(torch.from_numpy(x)).numpy()
    with TARGETS["onnxruntime"].backend.Runner(rec.artifacts["simplify"].file) as r:
        got = np.concatenate([r.infer({"images": x[i : i + 1]})["logits"] for i in range(len(x))])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("index", [0, 2, 3])
def test_each_calibration_image_bytes_rebuild_the_calibration_stages(lenet_base, tmp_path, index):
    """Image `index` of the 4 used, mirrored left-right (same size, same name, other bytes)."""
    from PIL import Image

    calib = tmp_path / "calib"
    shutil.copytree(lenet_base["config"].calib, calib)
    path = calib / f"img{index}.png"
    Image.fromarray(np.asarray(Image.open(path))[:, ::-1].copy()).save(path)
    rec = rebuild(lenet_base, tmp_path, calib=calib)
    assert "statistics" in rec.started and "export" not in rec.started and "simplify" not in rec.started
    check_rebuilt(lenet_base, rec, INT8_PARENTS, DIRECT["calibration"])


def test_an_unused_calibration_image_rebuilds_nothing(lenet_base, tmp_path):
    """Image 5 of the folder is beyond --calib-size 4: changing it changes nothing the build uses."""
    from PIL import Image

    calib = tmp_path / "calib"
    shutil.copytree(lenet_base["config"].calib, calib)
    path = calib / "img5.png"
    Image.fromarray(255 - np.asarray(Image.open(path))).save(path)
    rec = rebuild(lenet_base, tmp_path, calib=calib)
    assert rec.started == []


@pytest.mark.parametrize("change", [{"calib_method": "minmax"}, {"calib_method": "entropy"}, {"calib_size": 5}],
                         ids=["method-minmax", "method-entropy", "size-5"])
def test_calibration_method_and_size_rebuild_the_calibration_stages(lenet_base, tmp_path, change):
    rec = rebuild(lenet_base, tmp_path, **change)
    assert rec.started[:1] == ["statistics"]
    check_rebuilt(lenet_base, rec, INT8_PARENTS, DIRECT["calibration"])
    assert rec.artifacts["statistics"].sha256 != lenet_base["artifacts"]["statistics"].sha256


def test_preprocessing_rebuilds_the_calibration_stages(lenet_base, tmp_path, monkeypatch):
    """The registered preprocessing with another mean: the calibration data the quantizer sees changes, the network
    and its ONNX do not."""
    from enginesmith.models import registry

    spec = registry.get("lenet5")
    changed = dataclasses.replace(spec, preprocess=dataclasses.replace(spec.preprocess, mean=(0.3,)))
    monkeypatch.setitem(registry._REGISTRY, "lenet5", changed)
    rec = rebuild(lenet_base, tmp_path)
    assert rec.started[:1] == ["statistics"]
    check_rebuilt(lenet_base, rec, INT8_PARENTS, DIRECT["calibration"])
    manifest = json.loads((tmp_path / "engine" / "manifest.json").read_text())
    assert manifest["preprocess"]["mean"] == [0.3]


def test_tool_version_rebuilds_every_stage(lenet_base, tmp_path, monkeypatch):
    """onnxsim "upgraded" (its metadata says 99.0): every stage's key holds the tool versions, so all rebuild; the
    same for a package enginesmith does not key on (rich) rebuilds nothing."""
    from importlib import metadata

    fake = tmp_path / "site"
    for name in ("onnxsim", "rich"):
        dist = fake / name / f"{name}-99.0.dist-info"
        dist.mkdir(parents=True)
        (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 99.0\n")

    monkeypatch.syspath_prepend(str(fake / "rich"))
    assert metadata.version("rich") == "99.0"
    rec = rebuild(lenet_base, tmp_path / "rich")
    assert rec.started == []
    monkeypatch.undo()

    monkeypatch.syspath_prepend(str(fake / "onnxsim"))
    assert metadata.version("onnxsim") == "99.0"
    rec = rebuild(lenet_base, tmp_path / "onnxsim")
    check_rebuilt(lenet_base, rec, INT8_PARENTS, DIRECT["tools"])
    assert rec.started == list(INT8_PARENTS)
    assert all(a.manifest["tools"]["onnxsim"] == "99.0" for a in rec.artifacts.values())


def test_input_size_rebuilds_every_stage(tmp_path):
    """ssd-slim-256 FP32 at 64x64, then at 96x96 (same weights, seed, calibration): a new export and everything
    after it; back at 64x64 everything is a hit."""
    cfg = dict(target="onnxruntime", precision="fp32", calib_size=2, cache_dir=tmp_path / "cache",
               latency_budget_s=0.02)
    base = Recorder()
    base.build(BuildConfig("ssd-slim-256", input_size=(64, 64), out=tmp_path / "a", **cfg))
    assert base.started == list(FP32_PARENTS)
    other = Recorder()
    other.build(BuildConfig("ssd-slim-256", input_size=(96, 96), out=tmp_path / "b", **cfg))
    want = expected_rebuilds(FP32_PARENTS, DIRECT["input_size"], base.artifacts, other.artifacts)
    assert other.started == want == list(FP32_PARENTS)
    again = Recorder()
    again.build(BuildConfig("ssd-slim-256", input_size=(64, 64), out=tmp_path / "c", **cfg))
    assert again.started == []


_CHILD = """
import json, sys
from pathlib import Path
import enginesmith
assert Path(enginesmith.__file__).resolve().is_relative_to(Path(sys.argv[1]).resolve()), enginesmith.__file__
from enginesmith.pipeline.run import BuildConfig, build_engine
started, shas = [], {}
build_engine(BuildConfig("lenet5", target="onnxruntime", precision="fp32", calib_size=2, cache_dir=Path(sys.argv[2]),
                         out=Path(sys.argv[3]), latency_budget_s=0.02),
             on_stage=lambda a: shas.update({a.stage: a.manifest["tools"]["enginesmith"]}), on_start=started.append)
print(json.dumps({"started": started, "enginesmith": sorted(set(shas.values()))}))
"""


def test_one_comment_byte_of_the_code_rebuilds_every_stage(tmp_path):
    """Three child processes, each importing a copy of the package: as copied (all built), with one byte of a
    comment in models/vgg.py changed (all rebuilt: the key hashes enginesmith's source), and with the byte restored
    (all hits: the key depends on the bytes, nothing else)."""
    import enginesmith

    pkg = Path(enginesmith.__file__).resolve().parent
    copy = tmp_path / "src"
    shutil.copytree(pkg, copy / "enginesmith", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    target = copy / "enginesmith" / "models" / "vgg.py"
    original = target.read_bytes()
    lines = original.split(b"\n")
    k = next(i for i, line in enumerate(lines) if line.strip().startswith(b"#") and len(line.strip()) > 3)
    lines[k] = lines[k][:-1] + (b"X" if lines[k][-1:] != b"X" else b"Y")

    def child(out: str) -> dict[str, Any]:
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "ENGINESMITH_CACHE")}
        env["PYTHONPATH"] = str(copy)
        p = subprocess.run([sys.executable, "-c", _CHILD, str(copy), str(tmp_path / "cache"), str(tmp_path / out)],
                           cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert p.returncode == 0, p.stderr[-3000:]
        return json.loads(p.stdout.strip().splitlines()[-1])

    first = child("a")
    assert first["started"] == list(FP32_PARENTS)
    target.write_bytes(b"\n".join(lines))
    assert sum(a != b for a, b in zip(target.read_bytes(), original)) == 1
    changed = child("b")
    assert changed["started"] == list(FP32_PARENTS)
    assert changed["enginesmith"] != first["enginesmith"]
    target.write_bytes(original)
    assert child("c") == first | {"started": []}
