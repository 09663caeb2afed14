"""Fixtures of the fault-injection suite: lenet5 weights A/B and clean reference builds, each made once per session
in a fresh cache (a test that needs a warm cache copies a reference's cache into its own tmp_path)."""

from __future__ import annotations

import hashlib
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest

import faults as F


@dataclass(frozen=True)
class Ref:
    """A clean build in a fresh cache: its --out folder, its cache and the CLI run."""

    out: Path
    cache: Path
    result: F.Result
    source_version: str  # the enginesmith source hash in its cache keys

    def warm_cache(self, dest: Path) -> Path:
        """A copy of this build's cache for a test to damage."""
        shutil.copytree(self.cache, dest, symlinks=True)
        return dest


def _content_key(path: Path | None) -> str:
    if path is None:
        return "-"
    path = Path(path)
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for p in files:
        h.update(p.name.encode() + b"\0" + p.read_bytes())
    return h.hexdigest()[:16]


def _source_version() -> str:
    """The hash of enginesmith's source that cache keys carry, computed afresh (the production helper caches it)."""
    try:
        from enginesmith.pipeline.artifacts import _own_version
    except ImportError:
        return "unknown"
    return getattr(_own_version, "__wrapped__", _own_version)()


@pytest.fixture(scope="session")
def weights_ab(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two lenet5 state dicts (seeds 1 and 2): A and B."""
    pytest.importorskip("torch")
    d = tmp_path_factory.mktemp("session-reliability-weights")
    return F.write_lenet_weights(d / "A.pt", 1), F.write_lenet_weights(d / "B.pt", 2)


@pytest.fixture(scope="session")
def reference(tmp_path_factory: pytest.TempPathFactory):
    """reference(target, precision, weights=None, calib=None, calib_size=8) -> Ref: a clean build of lenet5 in a
    fresh cache, made once per session per (arguments, weights bytes, calibration folder bytes)."""
    root = tmp_path_factory.mktemp("session-reliability-refs")
    made: dict[tuple, Ref] = {}
    lock = threading.Lock()

    def get(target: str = "onnxruntime", precision: str = "int8", weights: Path | None = None,
            calib: Path | None = None, calib_size: int = 8) -> Ref:
        key = (target, precision, _content_key(weights), _content_key(calib), calib_size)
        with lock:
            # enginesmith's own source is in every cache key: when it was edited since the reference was built (while
            # developing), its cache would not be warm for the code under test any more, so build it again
            if key not in made or made[key].source_version != _source_version():
                d = root / f"{len(list(root.iterdir())):02d}-{target}-{precision}"
                d.mkdir()
                # inputs are copied so a test changing its own files later cannot change what the reference used
                w = None
                if weights is not None:
                    w = d / Path(weights).name
                    shutil.copy2(weights, w)
                c = None
                if calib is not None:
                    c = d / "calib"
                    shutil.copytree(calib, c)
                args = F.build_args(d / "out", target, precision, weights=w, calib=c, calib_size=calib_size)
                res = F.run_cli(args, d, d / "cache")
                assert res.returncode == 0, "reference build failed:\n" + res.describe()
                made[key] = Ref(d / "out", d / "cache", res, _source_version())
            return made[key]

    return get
