"""Durable file operations every layer shares: atomic writes, fsync, folder swaps, locks, stale temp folders.

Standard library only (no enginesmith imports), so data/, pipeline/ and runtime/ can all use it.

- Atomic: a file or folder is written under a temporary name beside its destination, fsynced, then
  renamed over it; the parent folder is fsynced after the rename, so a crash or power cut leaves the
  old version or the new one, never half of one.
- Temporary names carry the writer's pid (`.NAME.tmp-PID-RANDOM`, `.tmp-KEY-PID-RANDOM`): one whose
  writer is gone (dead pid, or a pid reused by a process started after the folder was made) is stale
  and may be removed by anyone (`remove_stale_temps`).
- Scratch folders in the system temp folder (`scratch_dir`) are named the same way, so the next one made
  with the same prefix removes those a killed process left.
- Locks are `fcntl.flock` locks, released by the kernel when their holder dies: a SIGKILLed build
  never leaves a lock behind.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

STALE_AFTER_S = 2 * 24 * 3600.0  # a temp folder this old is stale whoever made it (no build takes two days)
_TEMP_PID = re.compile(r"^\..*(?:tmp|old|trash)-(?:[0-9a-f]+-)?(\d+)-[0-9a-f]{8}$")


def temp_name(prefix: str) -> str:
    """`.{prefix}-{pid}-{8 hex}`: a hidden sibling name that says which process owns it."""
    return f".{prefix}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def fsync_path(path: Path) -> None:
    """fsync a file or a folder (a folder's fsync makes the renames inside it durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(folder: Path) -> None:
    """fsync every file under `folder`, then every folder (deepest first)."""
    folders = []
    for root, dirs, files in os.walk(folder):
        folders.append(Path(root))
        for f in files:
            fsync_path(Path(root) / f)
    for d in reversed(folders):
        fsync_path(d)


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write `data` to a temp file beside `path`, fsync it, rename it over `path`, fsync the folder."""
    path = Path(path)
    tmp = path.with_name(temp_name(f"{path.name}.tmp"))
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_path(path.parent)


def write_text_atomic(path: Path, text: str) -> None:
    write_bytes_atomic(path, text.encode())


def write_json_atomic(path: Path, obj: Any) -> None:
    """JSON (indented, sorted keys) written atomically."""
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def process_start_time(pid: int) -> float | None:
    """When process `pid` started (seconds since the epoch), or None when there is no such process (or it has
    exited and is a zombie waiting to be reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] in ("Z", "X"):  # exited, not yet reaped by its parent: gone
            return None
        ticks = int(fields[19])  # field 22: start time in clock ticks after boot
        boot = next(float(ln.split()[1]) for ln in Path("/proc/stat").read_text().splitlines() if ln.startswith("btime"))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            return 0.0
        return 0.0  # alive, start time unknown (no /proc)


def is_stale_temp(path: Path, now: float | None = None) -> bool:
    """True for a temp file/folder (named by `temp_name`) whose writing process is gone, or that is older
    than STALE_AFTER_S. A name without a pid is never judged stale here."""
    m = _TEMP_PID.match(path.name)
    if not m:
        return False
    try:
        made = path.lstat().st_mtime
    except FileNotFoundError:
        return False
    if (now or time.time()) - made > STALE_AFTER_S:
        return True
    pid = int(m.group(1))
    if pid == os.getpid():
        return False
    started = process_start_time(pid)
    # pid gone, or reused by a process that started after this temp folder was last written
    return started is None or started > made + 1.0


def remove_stale_temps(folder: Path, prefix: str = ".") -> list[Path]:
    """Delete the stale temp files/folders directly inside `folder` whose names start with `prefix` (in a user's
    folder: only those named for the file being written); return what was removed."""
    removed = []
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return removed
    for p in entries:
        if p.name.startswith(prefix) and p.name.startswith(".") and is_stale_temp(p):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    p.unlink()
            removed.append(p)
    return removed


def make_scratch(prefix: str) -> Path:
    """A new private folder in the system temp folder, `.{prefix}.tmp-PID-RANDOM`, after removing the stale
    ones of the same prefix (their process was killed before it could remove them). The caller removes it."""
    root = Path(tempfile.gettempdir())
    remove_stale_temps(root, prefix=f".{prefix}.tmp-")
    path = root / temp_name(f"{prefix}.tmp")
    path.mkdir(mode=0o700)
    return path


@contextlib.contextmanager
def scratch_dir(prefix: str) -> Iterator[Path]:
    """`make_scratch(prefix)`, removed on leaving (also when what ran inside raised)."""
    path = make_scratch(prefix)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def publish_folder(build: Callable[[Path], None], dest: Path) -> None:
    """Fill a temporary sibling of `dest` with `build(tmp)`, fsync it, then swap it into place.

    The old `dest` (if any) stays whole until the new one is complete; what is at `dest` afterwards is
    either the old folder or the new one. Stale temp siblings of earlier killed runs are removed first."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    _restore_orphaned_old(dest)
    remove_stale_temps(dest.parent, prefix=f".{dest.name}.")  # ours only: the parent is the user's folder
    tmp = dest.with_name(temp_name(f"{dest.name}.tmp"))
    tmp.mkdir()
    try:
        build(tmp)
        fsync_tree(tmp)
        swap_in(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _restore_orphaned_old(dest: Path) -> None:
    """A writer killed between swap_in's two renames left `dest` missing and the old folder aside: put it back."""
    if dest.exists() or dest.is_symlink():
        return
    olds = sorted((p for p in dest.parent.glob(f".{dest.name}.old-*") if is_stale_temp(p)),
                  key=lambda p: p.lstat().st_mtime)
    if olds:
        os.replace(olds[-1], dest)


def swap_in(new: Path, dest: Path) -> None:
    """Rename folder `new` to `dest`; an existing `dest` is renamed aside first and removed after."""
    old = None
    if dest.exists() or dest.is_symlink():
        old = dest.with_name(temp_name(f"{dest.name}.old"))
        os.replace(dest, old)
    try:
        os.replace(new, dest)
    except BaseException:
        if old is not None:
            os.replace(old, dest)  # put the old one back
        raise
    fsync_path(dest.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink()


@contextlib.contextmanager
def file_lock(path: Path, blocking: bool = True, on_wait: Callable[[], None] | None = None) -> Iterator[bool]:
    """Hold an exclusive flock on `path` (created if missing). Yields True when held; with blocking=False,
    yields False at once if another process holds it. `on_wait` is called once before blocking."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            held = True
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            held = False
            if blocking:
                if on_wait is not None:
                    on_wait()
                fcntl.flock(fd, fcntl.LOCK_EX)
                held = True
        if held:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
        yield held
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def lock_holder(path: Path) -> int | None:
    """The pid written into a lock file by its last holder, if readable."""
    try:
        return int(Path(path).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def check_writable(folder: Path, what: str) -> str | None:
    """None when a file can be created in `folder` (or in its nearest existing ancestor, where it will be
    made); otherwise a one-line reason naming `what`."""
    p = Path(folder).absolute()
    while not p.exists():
        if p.parent == p:
            return f"{what} {folder}: no existing parent folder"
        p = p.parent
    if not p.is_dir():
        return f"{what} {folder}: {p} is a file, not a folder"
    probe = p / temp_name("write-probe")
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        return f"{what} {folder} is not writable ({e.strerror} in {p})"
    return None


def folder_bytes(folder: Path) -> int:
    """Total size of the files under `folder` (symlinks not followed)."""
    total = 0
    for root, _, files in os.walk(folder):
        for f in files:
            with contextlib.suppress(OSError):
                total += (Path(root) / f).lstat().st_size
    return total


@contextlib.contextmanager
def dir_lock(folder: Path) -> Iterator[None]:
    """Hold an exclusive flock on a folder itself (no file is created in it): serialises swaps into it."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
