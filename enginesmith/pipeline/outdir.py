"""What `--out` may replace, and publishing an engine folder there.

The rule (checked before any stage runs, and again at publish time):
- a missing path, or an empty folder: the engine folder is made there;
- an engine folder enginesmith wrote (its manifest.json carries `"schema": "enginesmith-engine"` and an
  int `"schema_version"`: runtime/manifest.py `is_engine_folder`): replaced, atomically (the old engine
  stays whole until the new folder is complete, then the two are swapped);
- anything else (a file, a folder holding other things): refused, unless `--force`;
- never: the working folder or one above it, the stage cache or a folder inside it, a mount point, a
  symbolic link (the swap would replace the link, not what it names).
A build holds an flock on the `--out` folder itself from the start to the end (no lock file is made), so a
second build into the same folder is refused at once, whatever cache it uses; at publish time the folder
must still be what was checked at the start (the same engine, by its `build_id`).
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
    """Hold `out` for the whole build: an exclusive flock on the folder itself (made empty first when it does not
    exist; removed again if the build publishes nothing). Any other build into the same folder, whatever its
    cache, is refused at once. The publish swaps a new folder in, so the next build locks that one."""
    out = Path(out)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    made = os.stat(out).st_ino if created else None
    fd = os.open(out, os.O_RDONLY | os.O_DIRECTORY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise EnginesmithError(f"another enginesmith build is writing to --out {out}; wait for it to finish or "
                                   "choose another --out") from None
        yield
    finally:
        os.close(fd)
        if made is not None:
            with contextlib.suppress(OSError):  # still the empty folder this build made: leave nothing behind
                if os.stat(out).st_ino == made and not any(out.iterdir()):
                    out.rmdir()


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
