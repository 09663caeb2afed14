"""Artifacts: a stage's output folder plus its manifest.json, content-addressed and written atomically.

A stage output lives in `<cache>/<stage>/<key>/` where key = sha256(stage, parent hashes,
parameters, tool versions). The folder is produced in a temporary sibling and renamed into place,
so a crash or Ctrl-C never leaves a half-written artifact; the same key later is reused ("cached").
Metadata never goes inside the engine file: native tools must still open it.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import shutil
import time
import uuid
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Iterable

MANIFEST = "manifest.json"
TOOL_PACKAGES = ("torch", "onnx", "onnxruntime", "onnxsim", "openvino", "nncf", "tensorrt", "numpy")


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    """sha256 of a file's bytes, streamed."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_paths(paths: Iterable[Path]) -> str:
    """sha256 over several files (name and bytes), in the given order."""
    h = hashlib.sha256()
    for p in paths:
        h.update(p.name.encode())
        h.update(sha256_file(p).encode())
    return h.hexdigest()


def sha256_json(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def tool_versions(packages: Iterable[str] = TOOL_PACKAGES) -> dict[str, str]:
    """Installed versions of the tools that shape an artifact (read from metadata, nothing imported)."""
    out: dict[str, str] = {"enginesmith": _own_version(), "python": platform.python_version()}
    for name in packages:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


@functools.lru_cache(maxsize=1)
def _own_version() -> str:
    """Package version plus a hash of its source, so a code change invalidates cached stages."""
    from enginesmith import __version__

    root = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for p in sorted(root.rglob("*.py")):
        h.update(p.relative_to(root).as_posix().encode())
        h.update(p.read_bytes())
    return f"{__version__}+src.{h.hexdigest()[:12]}"


@dataclass
class Artifact:
    """A stage output: `folder` holds `files` and manifest.json; `cached` says it was reused."""

    folder: Path
    manifest: dict[str, Any]
    cached: bool = False

    @property
    def stage(self) -> str:
        return self.manifest["stage"]

    @property
    def file(self) -> Path:
        """The main output file (first of `files`)."""
        return self.folder / self.manifest["files"][0]

    @property
    def sha256(self) -> str:
        return self.manifest["sha256"]

    @property
    def metrics(self) -> dict[str, Any]:
        return self.manifest.get("metrics", {})

    @property
    def wall_time_s(self) -> float:
        return float(self.manifest.get("wall_time_s", 0.0))


@dataclass
class StageResult:
    """What a stage's producer returns: the files it wrote (relative to its folder) and metrics."""

    files: list[str]
    metrics: dict[str, Any] = field(default_factory=dict)


class Cache:
    """Content-addressed store of artifacts under `root`."""

    def __init__(self, root: Path, on_start: Callable[[str], None] | None = None) -> None:
        self.root = Path(root)
        self.on_start = on_start  # told the stage name when a stage starts to build (not on a hit)

    def key(self, stage: str, parents: list[str], params: dict[str, Any], tools: dict[str, str]) -> str:
        return sha256_json({"stage": stage, "parents": parents, "params": params, "tools": tools})

    def lookup(self, stage: str, key: str) -> Artifact | None:
        folder = self.root / stage / key[:24]
        manifest_path = folder / MANIFEST
        if not manifest_path.is_file():
            return None
        try:
            manifest = json.loads(manifest_path.read_text())
        except (OSError, json.JSONDecodeError):
            return None
        if manifest.get("key") != key or not all((folder / f).exists() for f in manifest.get("files", [])):
            return None
        return Artifact(folder, manifest, cached=True)

    def run(
        self,
        stage: str,
        parents: list[Artifact] | list[str],
        params: dict[str, Any],
        produce: Callable[[Path], StageResult],
        tools: dict[str, str] | None = None,
    ) -> Artifact:
        """Return the cached artifact for this key, or run `produce(tmp_folder)` and publish it atomically."""
        tools = tools if tools is not None else tool_versions()
        parent_hashes = [p.sha256 if isinstance(p, Artifact) else str(p) for p in parents]
        key = self.key(stage, parent_hashes, params, tools)
        hit = self.lookup(stage, key)
        if hit is not None:
            return hit
        if self.on_start is not None:
            self.on_start(stage)
        final = self.root / stage / key[:24]
        tmp = self.root / stage / f".tmp-{key[:12]}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir(parents=True)
        try:
            start = time.perf_counter()
            result = produce(tmp)
            wall = time.perf_counter() - start
            manifest = {
                "stage": stage,
                "key": key,
                "files": result.files,
                "sha256": sha256_paths(tmp / f for f in result.files),
                "parents": parent_hashes,
                "params": params,
                "tools": tools,
                "metrics": result.metrics,
                "wall_time_s": round(wall, 3),
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
            write_json_atomic(tmp / MANIFEST, manifest)
            if final.exists():  # a stale or concurrent copy: the new one wins
                shutil.rmtree(final)
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return Artifact(final, manifest, cached=False)


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON to a temp file beside `path`, then rename over it."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)


def write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def publish_folder(build: Callable[[Path], None], dest: Path) -> None:
    """Fill a temporary sibling of `dest` with `build(tmp)`, then swap it into place."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        build(tmp)
        old = None
        if dest.exists():
            old = dest.with_name(f".{dest.name}.old-{uuid.uuid4().hex[:8]}")
            os.replace(dest, old)
        os.replace(tmp, dest)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
