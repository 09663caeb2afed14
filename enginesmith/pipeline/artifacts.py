"""Artifacts: a stage's output folder plus its manifest.json, content-addressed, written atomically, checked on reuse.

A stage output lives in `<cache>/<stage>/<key[:24]>/` where key = sha256(stage, parent hashes,
parameters, tool versions). The folder is produced in a temporary sibling (named with the builder's
pid), fsynced and renamed into place, so a crash, SIGKILL or Ctrl-C never leaves a half-written
artifact, and a killed build's temp folder is removed by the next build. The manifest records every
file's size and sha256; a reuse re-checks them. Metadata never goes inside the engine file: native
tools must still open it.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import platform
import shutil
import sys
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Iterable

from enginesmith import __version__
from enginesmith.errors import EnginesmithError
from enginesmith.files import file_lock, fsync_tree, remove_stale_temps, swap_in, temp_name

__all__ = ["Artifact", "Cache", "StageResult", "sha256_file", "sha256_json", "tool_versions"]

MANIFEST = "manifest.json"
LOCKS = ".locks"  # per-key lock files inside each stage folder
TOOL_PACKAGES = ("torch", "onnx", "onnxruntime", "onnxsim", "openvino", "nncf", "tensorrt", "numpy")


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    """sha256 of a file's bytes, streamed."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
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
    """Content-addressed store of artifacts under `root`: `<root>/<stage>/<key[:24]>/`.

    Published entries are immutable and checked on every reuse: the manifest records each file's size and
    sha256, and an entry that no longer matches (truncated, edited, a file missing, an unreadable
    manifest) is discarded with a one-line warning (`on_event`) and rebuilt. One flock per key makes
    concurrent builds of the same key do the work once: the others wait and then reuse the entry.
    `rebuild`: stage names (or True for all) to build afresh even when a valid entry exists; each key is
    rebuilt once per Cache object.
    """

    def __init__(self, root: Path, on_start: Callable[[str], None] | None = None,
                 on_event: Callable[[str, str], None] | None = None, rebuild: Iterable[str] | bool = ()) -> None:
        self.root = Path(root)
        self.on_start = on_start  # told the stage name when a stage starts to build (not on a hit)
        self.on_event = on_event or _warn_stderr  # (stage, one-line message): discarded entries, waiting
        self.rebuild: bool | frozenset[str] = rebuild if isinstance(rebuild, bool) else frozenset(rebuild)
        self._rebuilt: set[str] = set()

    def key(self, stage: str, parents: list[str], params: dict[str, Any], tools: dict[str, str]) -> str:
        return sha256_json({"stage": stage, "parents": parents, "params": params, "tools": tools})

    def folder(self, stage: str, key: str) -> Path:
        return self.root / stage / key[:24]

    def _lock_path(self, stage: str, key: str) -> Path:
        return self.root / stage / LOCKS / f"{key[:24]}.lock"

    def _wants_rebuild(self, stage: str, key: str) -> bool:
        if key in self._rebuilt:
            return False
        return self.rebuild is True or (not isinstance(self.rebuild, bool) and stage in self.rebuild)

    def lookup(self, stage: str, key: str, locked: bool = False) -> Artifact | None:
        """The valid entry for `key`, or None. An entry that fails its check is discarded (with a warning)
        under the key's lock (`locked`: the caller holds it already)."""
        folder = self.folder(stage, key)
        if not folder.exists():
            return None
        manifest, problem = _read_entry(folder, key)
        if problem is None:
            with contextlib.suppress(OSError):
                os.utime(folder)  # last use, for `enginesmith cache clean --older-than`
            return Artifact(folder, manifest, cached=True)  # type: ignore[arg-type]
        with contextlib.ExitStack() as stack:
            if not locked:
                stack.enter_context(file_lock(self._lock_path(stage, key)))
                manifest, problem = _read_entry(folder, key)  # another process may have replaced it meanwhile
                if problem is None:
                    return Artifact(folder, manifest, cached=True)  # type: ignore[arg-type]
            if folder.exists():
                self._discard(folder)
                self.on_event(stage, f"cache entry {folder} failed its check ({problem}): discarded, rebuilding")
        return None

    def _discard(self, folder: Path) -> None:
        trash = folder.with_name(temp_name("trash"))
        with contextlib.suppress(FileNotFoundError):
            os.replace(folder, trash)
            shutil.rmtree(trash, ignore_errors=True)

    def run(
        self,
        stage: str,
        parents: list[Artifact] | list[str],
        params: dict[str, Any],
        produce: Callable[[Path], StageResult],
        tools: dict[str, str] | None = None,
    ) -> Artifact:
        """Return the valid cached artifact for this key, or run `produce(tmp_folder)` and publish it atomically."""
        tools = tools if tools is not None else tool_versions()
        parent_hashes = [p.sha256 if isinstance(p, Artifact) else str(p) for p in parents]
        key = self.key(stage, parent_hashes, params, tools)
        rebuild = self._wants_rebuild(stage, key)
        if not rebuild:
            hit = self.lookup(stage, key)
            if hit is not None:
                return hit
        (self.root / stage).mkdir(parents=True, exist_ok=True)
        waiting = lambda: self.on_event(stage, "waiting for another build of the same stage (same inputs) to finish")
        with file_lock(self._lock_path(stage, key), on_wait=waiting):
            if not rebuild:
                hit = self.lookup(stage, key, locked=True)  # built by the process we waited for
                if hit is not None:
                    return hit
            if self.on_start is not None:
                self.on_start(stage)
            remove_stale_temps(self.root / stage)
            artifact = self._produce(stage, key, parents, parent_hashes, params, tools, produce)
        self._rebuilt.add(key)
        return artifact

    def _produce(self, stage: str, key: str, parents: list[Artifact] | list[str], parent_hashes: list[str],
                 params: dict[str, Any], tools: dict[str, str], produce: Callable[[Path], StageResult]) -> Artifact:
        final = self.folder(stage, key)
        tmp = self.root / stage / temp_name(f"tmp-{key[:12]}")
        tmp.mkdir(parents=True)
        try:
            start = time.perf_counter()
            try:
                result = produce(tmp)
            except Exception as e:
                gone = [p.folder for p in parents if isinstance(p, Artifact) and not (p.folder / MANIFEST).exists()]
                if gone:  # whatever the stage's tool said, the cause is the missing input
                    raise EnginesmithError(f"the {stage} stage's input {gone[0]} was removed from the cache during the "
                                           "build (by `enginesmith cache clean` or by hand); run the build again") from e
                raise
            wall = time.perf_counter() - start
            content = {f: {"size": (tmp / f).stat().st_size, "sha256": sha256_file(tmp / f)} for f in result.files}
            manifest = {
                "stage": stage,
                "key": key,
                "files": result.files,
                "content": content,
                "sha256": _combined_sha256(result.files, content),
                "parents": parent_hashes,
                "params": params,
                "tools": tools,
                "metrics": result.metrics,
                "wall_time_s": round(wall, 3),
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
            manifest = json.loads(json.dumps(manifest, default=str))  # what a reuse will read back
            manifest["manifest_sha256"] = _manifest_sha256(manifest)
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
            fsync_tree(tmp)
            swap_in(tmp, final)  # a stale or corrupt entry (or one being rebuilt) is set aside, then removed
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return Artifact(final, manifest, cached=False)


def _combined_sha256(files: list[str], content: dict[str, dict[str, Any]]) -> str:
    """sha256 over (name, sha256 of bytes) of each file, in order: the entry's identity as a parent."""
    h = hashlib.sha256()
    for f in files:
        h.update(f.encode())
        h.update(content[f]["sha256"].encode())
    return h.hexdigest()


def _manifest_sha256(manifest: dict[str, Any]) -> str:
    """sha256 of the manifest's canonical JSON without this field: its metrics (verification figures, latency)
    are served as they were written, or the entry is discarded."""
    return sha256_json({k: v for k, v in manifest.items() if k != "manifest_sha256"})


def _read_entry(folder: Path, key: str) -> tuple[dict[str, Any] | None, str | None]:
    """(manifest, None) when the entry at `folder` is whole and is the one for `key`; else (None, why)."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except FileNotFoundError:
        return None, "no manifest.json"
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        return None, f"manifest.json unreadable: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
    if not isinstance(manifest, dict) or manifest.get("key") != key:
        return None, "manifest.json is for another key"
    files, content = manifest.get("files"), manifest.get("content")
    if not isinstance(files, list) or not files or not isinstance(content, dict) or set(content) != set(files):
        return None, "manifest.json does not record its files' sizes and hashes"
    for f in files:
        path = folder / f
        try:
            size = path.stat().st_size
        except OSError:
            return None, f"{f} is missing"
        if size != content[f].get("size"):
            return None, f"{f} is {size} bytes, {content[f].get('size')} were written"
        if sha256_file(path) != content[f].get("sha256"):
            return None, f"{f} has other bytes than were written"
    if _combined_sha256(files, content) != manifest.get("sha256"):
        return None, "manifest.json's sha256 does not match its files"
    if _manifest_sha256(manifest) != manifest.get("manifest_sha256"):
        return None, "manifest.json was edited (its own sha256 does not match)"
    return manifest, None


def _warn_stderr(stage: str, message: str) -> None:
    print(f"warning: {stage}: {message}", file=sys.stderr)
