"""What `--out` may replace, and publishing an engine folder there.

The rule (checked before any stage runs, and again at publish time):
- a missing path, or an empty folder: the engine folder is made there;
- an engine folder enginesmith wrote (its manifest.json carries `"schema": "enginesmith-engine"` and an
  int `"schema_version"`: runtime/manifest.py `is_engine_folder`): replaced, atomically (the old engine
  stays whole until the new folder is complete, then the two are swapped);
- anything else (a file, a folder holding other things): refused, unless `--force`;
- never: the working folder or one above it, the stage cache or a folder inside it, a mount point, a
  symbolic link (the swap would replace the link, not what it names).
A build holds an flock from the start to the end, so a second build into the same folder is refused at once,
whatever cache it uses: on the `--out` folder itself when it exists, else on a hidden empty sibling folder
`.NAME.lock` (made for the build, removed after it; one a killed build left is reused and removed by the next
build). `--out` is never made before the publish, so a build killed before it leaves no `--out`. At publish time
the folder must still be what was checked at the start (the same engine, by its `build_id`).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from enginesmith.errors import EnginesmithError
from enginesmith.files import check_writable, dir_lock, publish_folder
from enginesmith.runtime.manifest import MANIFEST, is_engine_folder


@dataclass(frozen=True)
class OutState:
    """What `--out` held when the build started: "absent", "empty", "engine" (with its build_id) or "forced"."""

    kind: str
    build_id: str | None = None


def _build_id(folder: Path) -> str | None:
    try:
        value = json.loads((folder / MANIFEST).read_text()).get("build_id")
    except (OSError, ValueError, AttributeError):
        return None
    return str(value) if value is not None else None


def out_state(out: Path, cache_root: Path, force: bool) -> OutState:
    """Check that the build may write `out`; return its present state. One-line EnginesmithError otherwise."""
    out = Path(out)
    resolved = out.resolve()
    here = Path.cwd().resolve()
    if resolved == here or resolved in here.parents:
        raise EnginesmithError(f"--out {out} is the working folder or holds it: the engine folder replaces what is "
                               "there; give a folder of its own, e.g. build/MODEL")
    cache = Path(cache_root).resolve()
    if resolved == cache or cache in resolved.parents or resolved in cache.parents:
        raise EnginesmithError(f"--out {out} overlaps the stage cache {cache_root}; give a folder outside it")
    if out.is_symlink():
        raise EnginesmithError(f"--out {out} is a symbolic link; give the folder it points to ({resolved}) or another")
    if out.exists() and os.path.ismount(resolved):
        raise EnginesmithError(f"--out {out} is a mount point, which cannot be swapped atomically; give a folder "
                               "inside it")
    if out.exists() and not out.is_dir():
        raise EnginesmithError(f"--out {out} is a file; give a folder path (the file is left as it is)")
    state = OutState("absent")
    if out.is_dir():
        if is_engine_folder(out):
            state = OutState("engine", _build_id(out))
        elif not any(out.iterdir()):
            state = OutState("empty")
        elif force:
            state = OutState("forced")
        else:
            raise EnginesmithError(f"--out {out} is a folder that holds other files, not an engine folder enginesmith "
                                   "wrote; nothing was changed: give an empty or new folder, or --force to replace it")
    for folder, what in ((out.parent, "--out"), (cache_root, "the stage cache")):
        problem = check_writable(folder, what)
        if problem:
            raise EnginesmithError(problem + "; choose a writable folder")
    return state


@contextlib.contextmanager
def hold_out(out: Path) -> Iterator[None]:
    """Hold `out` for the whole build: an exclusive flock on the folder itself when it exists, else on the hidden
    sibling folder `.NAME.lock` (removed when the build ends). Any other build into the same folder, whatever its
    cache, is refused at once. The publish swaps a new folder in, so the next build locks that one."""
    out = Path(out)
    target = out if out.is_dir() else lock_folder(out)
    made = [p for p in reversed(out.parents) if not p.exists()]  # parents this build makes, outermost first
    fd = _lock_dir(target, out)
    try:
        yield
    finally:
        if target != out:
            _remove_lock_folder(target, fd)
        os.close(fd)
        for folder in reversed(made):  # nothing was published: leave no empty folders behind either
            with contextlib.suppress(OSError):
                folder.rmdir()


def lock_folder(out: Path) -> Path:
    """The hidden sibling a build into a not-yet-existing `out` locks: `.NAME.lock` beside it."""
    return out.with_name(f".{out.name}.lock")


def _lock_dir(folder: Path, out: Path) -> int:
    """An fd holding an exclusive flock on `folder` (made when missing). Refused at once if another build holds
    it. A lock folder removed by its previous holder between our open and our flock is opened again."""
    for _ in range(10):
        try:
            if folder != out:
                folder.parent.mkdir(parents=True, exist_ok=True)
                with contextlib.suppress(FileExistsError):
                    folder.mkdir()
            fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        except FileNotFoundError:  # a parent or the folder was removed meanwhile (a build ending beside us)
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise EnginesmithError(f"another enginesmith build is writing to --out {out}; wait for it to finish or "
                                   "choose another --out") from None
        try:
            same = os.stat(folder).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)  # the folder we locked was removed (or swapped) meanwhile: lock the one there now
    raise EnginesmithError(f"--out {out} keeps changing under this build (another build publishing there?); "
                           "run the build again")


def _remove_lock_folder(folder: Path, fd: int) -> None:
    """Remove the lock folder this build holds (while still holding it, so a build waiting on it re-checks)."""
    with contextlib.suppress(OSError):
        if os.stat(folder).st_ino == os.fstat(fd).st_ino:
            folder.rmdir()


def publish_engine_folder(fill: Callable[[Path], None], out: Path, state: OutState) -> None:
    """Fill a temporary folder with `fill(tmp)` and swap it in at `out`, if `out` is still as `state` saw it."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with dir_lock(out.parent):
        now = out_state_unchecked(out)
        same = (state.kind == "forced" or now.kind in ("absent", "empty") and state.kind in ("absent", "empty")
                or now == state)
        if not same:
            raise EnginesmithError(f"--out {out} was changed by someone else while this build ran (another build wrote "
                                   "there?); it was left as it is: run the build again (its stages are cached)")
        publish_folder(fill, out)


def out_state_unchecked(out: Path) -> OutState:
    """`out`'s state without the refusals (for the publish-time comparison)."""
    if not out.exists():
        return OutState("absent")
    if out.is_dir() and is_engine_folder(out):
        return OutState("engine", _build_id(out))
    if out.is_dir() and not any(out.iterdir()):
        return OutState("empty")
    return OutState("other")
