"""Install from the repository as README.md says (issue 17: enginesmith is on no package index): build the wheel
with `pip wheel . -w dist --no-deps`, install it with a runtime extra into a fresh virtualenv, and run an engine
there without torch. Slow (~1-2 min: a wheel build and a venv with ONNX Runtime); README.md's own block (the
OpenVINO extra) runs in tests/e2e/test_readme_blocks.py -m slow."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import venv
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

from enginesmith.pipeline.run import BuildConfig, build_engine
from enginesmith.runtime import load

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _pip(py: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run([str(py), "-m", "pip", "--disable-pip-version-check", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=1200)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The README's command, run in a copy of this checkout: `pip wheel . -w dist --no-deps`."""
    root = tmp_path_factory.mktemp("wheel")
    src = root / "enginesmith"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(".venv", ".git", "build", "dist", "__pycache__",
                                                             "*.egg-info", "mutants"))
    proc = _pip(Path(sys.executable), "wheel", ".", "-w", "dist", "--no-deps", "-q", cwd=src)
    assert proc.returncode == 0, proc.stderr[-3000:]
    wheels = list((src / "dist").glob("enginesmith-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def test_wheel_holds_every_module_and_the_runtime_extras(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        meta_name = next(n for n in names if n.endswith(".dist-info/METADATA"))
        meta = Parser().parsestr(z.read(meta_name).decode())
        entry_points = z.read(meta_name.replace("METADATA", "entry_points.txt")).decode()
    sources = {p.relative_to(REPO).as_posix() for p in (REPO / "enginesmith").rglob("*.py")}
    assert sources <= names, sorted(sources - names)[:10]
    assert "enginesmith = enginesmith.cli:main" in entry_points
    requires = meta.get_all("Requires-Dist")
    for extra, package in (("runtime-openvino", "openvino"), ("runtime-onnxruntime", "onnxruntime")):
        assert any(r.startswith(package) and f'extra == "{extra}"' in r for r in requires), (extra, requires)
    base = [r for r in requires if "extra ==" not in r]
    assert sorted(r.split(">")[0] for r in base) == ["numpy", "pillow", "rich", "typer"]  # no torch in the base


def test_installed_wheel_runs_an_engine_without_torch(wheel, tmp_path, cache_dir):
    from PIL import Image

    from enginesmith.data.digits import load_digits_32

    env_dir = tmp_path / "app-env"
    venv.EnvBuilder(with_pip=True, clear=True).create(env_dir)
    py = env_dir / "bin" / "python"
    proc = _pip(py, "install", "-q", f"{wheel}[runtime-onnxruntime]", cwd=tmp_path)
    if proc.returncode != 0 and ("No matching distribution" in proc.stderr or "connection" in proc.stderr.lower()):
        pytest.skip(f"no package index reachable for the extra's dependencies: {proc.stderr.strip()[-300:]}")
    assert proc.returncode == 0, proc.stderr[-3000:]

    engine = tmp_path / "lenet"
    build_engine(BuildConfig(model="lenet5", target="onnxruntime", precision="fp32", cache_dir=cache_dir, out=engine,
                             latency_budget_s=0.2, calib_size=4))
    image = tmp_path / "digit.png"
    Image.fromarray(load_digits_32().test_images[0]).save(image)

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    check = ("import importlib.util, sys, enginesmith.runtime as r; "
             "assert importlib.util.find_spec('torch') is None, 'torch installed'; "
             "assert r.__file__.startswith(sys.prefix), r.__file__; print(r.__file__)")
    proc = subprocess.run([str(py), "-c", check], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr  # the installed copy, not this checkout
    out = tmp_path / "out"
    proc = subprocess.run([str(env_dir / "bin" / "enginesmith"), "classify", str(engine), str(image), "--out", str(out),
                           "--top-k", "3"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    got = json.loads((out / "classifications.json").read_text())["images"][0]["classes"]
    with load(engine, top_k=3) as clf:
        want = [c.to_dict() for c in clf(image)]
    assert [c["class_id"] for c in got] == [c["class_id"] for c in want]
    assert [c["score"] for c in got] == pytest.approx([c["score"] for c in want], abs=1e-5)
