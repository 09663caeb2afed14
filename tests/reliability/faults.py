"""Shared helpers of the fault-injection suite: the real CLI in its own process group with its stderr streamed
line by line (so a test can wait for `  … STAGE building` and then SIGKILL the whole group), engine-folder
comparison, folder snapshots, lenet5 weights and calibration folders, and real mounts (a small tmpfs, a
read-only bind mount) that are always undone.

Nothing here mocks enginesmith: every build is `python -m enginesmith.cli build ...` in a subprocess.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

DEFAULT_TIMEOUT = 300.0  # seconds for one CLI run of this suite (lenet5 builds take 5-30 s on a loaded 2-core box)

# the stage lines the CLI prints on stderr: "  … export         building", "  ✓ export         cached"
STAGE_LINE = re.compile(r"^\s*\S+\s+(?P<stage>[a-z][a-z0-9-]*)\s+(?P<state>building|cached|built|waiting|discarded)\b")
BUILDING = r"^\s*\S+\s+{stage}\s+building\b"
TRACEBACK = "Traceback (most recent call last)"


def cli_env(cache: Path | None = None, **extra: str) -> dict[str, str]:
    env = {**os.environ, "COLUMNS": "200", "PYTHONUNBUFFERED": "1"}
    env.pop("ENGINESMITH_CACHE", None)
    if cache is not None:
        env["ENGINESMITH_CACHE"] = str(cache)
    env.update(extra)
    return env


def build_args(out: Path | str | None, target: str = "onnxruntime", precision: str = "int8", *, weights: Path | None = None,
               calib: Path | None = None, calib_size: int = 8, model: str = "lenet5", extra: tuple[str, ...] = ()) -> list[str]:
    """Arguments of `enginesmith build` for the small builds of this suite."""
    args = ["build", model, "--target", target, "--precision", precision]
    if out is not None:
        args += ["--out", str(out)]
    if precision in ("int8", "mixed"):
        args += ["--calib-size", str(calib_size)]
    if weights is not None:
        args += ["--weights", str(weights)]
    if calib is not None:
        args += ["--calib", str(calib)]
    return args + list(extra)


@dataclass
class Result:
    """A finished CLI run."""

    args: list[str]
    returncode: int
    stdout: str
    stderr: str
    wall_s: float

    @property
    def stderr_lines(self) -> list[str]:
        return [ln for ln in self.stderr.splitlines() if ln.strip()]

    def stages(self) -> dict[str, list[str]]:
        return stage_states(self.stderr)

    def describe(self) -> str:
        return f"exit {self.returncode} after {self.wall_s:.1f} s: {' '.join(self.args)}\n--- stderr ---\n{self.stderr}\n--- stdout (tail) ---\n{self.stdout[-1500:]}"


def stage_states(stderr: str) -> dict[str, list[str]]:
    """{stage: [states in order]} from the CLI's stage lines (building, built, cached, waiting, discarded)."""
    states: dict[str, list[str]] = {}
    for line in stderr.splitlines():
        m = STAGE_LINE.match(line)
        if m:
            states.setdefault(m["stage"], []).append(m["state"])
        elif line.lower().startswith("warning") and "discarded" in line.lower():  # "warning: STAGE: ... discarded"
            for stage in ("export", "simplify", "statistics", "quantize-qdq", "quantize-nncf", "engine", "latency", "fp16"):
                if re.search(rf"\b{re.escape(stage)}\b", line):
                    states.setdefault(stage, []).append("discarded")
                    break
    return states


def run_cli(args: list[str], cwd: Path, cache: Path | None = None, timeout: float = DEFAULT_TIMEOUT,
            env_extra: dict[str, str] | None = None) -> Result:
    """Run the real CLI to completion (niced like the test runner)."""
    start = time.monotonic()
    p = subprocess.run([sys.executable, "-m", "enginesmith.cli", *args], cwd=cwd, env=cli_env(cache, **(env_extra or {})),
                       capture_output=True, text=True, timeout=timeout)
    return Result(args, p.returncode, p.stdout, p.stderr, time.monotonic() - start)


class Build:
    """A CLI run in its own process group; stderr and stdout are streamed into lists by reader threads."""

    def __init__(self, args: list[str], cwd: Path, cache: Path | None = None, env_extra: dict[str, str] | None = None):
        self.args = list(args)
        self.start = time.monotonic()
        self.proc = subprocess.Popen([sys.executable, "-m", "enginesmith.cli", *args], cwd=cwd,
                                     env=cli_env(cache, **(env_extra or {})), stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, encoding="utf-8", errors="replace",
                                     start_new_session=True)
        self.pgid = self.proc.pid  # start_new_session: the child leads its own group
        self.err_lines: list[str] = []
        self.out_chunks: list[str] = []
        self._cond = threading.Condition()
        self._readers = [threading.Thread(target=self._pump, args=(self.proc.stderr, self.err_lines), daemon=True),
                         threading.Thread(target=self._pump, args=(self.proc.stdout, self.out_chunks), daemon=True)]
        for t in self._readers:
            t.start()
        self.killed_at: float | None = None

    def _pump(self, stream, sink: list[str]) -> None:  # type: ignore[no-untyped-def]
        for line in iter(stream.readline, ""):
            with self._cond:
                sink.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    @property
    def stderr(self) -> str:
        with self._cond:
            return "\n".join(self.err_lines)

    def wait_for(self, pattern: str, timeout: float = DEFAULT_TIMEOUT) -> str:
        """Block until a stderr line matches `pattern` (regex); return it. Fails the test if the process ends
        first or the timeout passes."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        seen = 0
        with self._cond:
            while True:
                for line in self.err_lines[seen:]:
                    if rx.search(line):
                        return line
                seen = len(self.err_lines)
                if self.proc.poll() is not None and not any(t.is_alive() for t in self._readers[:1]):
                    pytest.fail(f"the build ended (exit {self.proc.returncode}) before a line matching {pattern!r}:\n"
                                f"{self.stderr}")
                left = deadline - time.monotonic()
                if left <= 0:
                    pytest.fail(f"no stderr line matching {pattern!r} within {timeout:.0f} s:\n{self.stderr}")
                self._cond.wait(min(left, 0.2))

    def wait_for_stage(self, stage: str, timeout: float = DEFAULT_TIMEOUT) -> str:
        return self.wait_for(BUILDING.format(stage=re.escape(stage)), timeout)

    def kill(self) -> None:
        """SIGKILL the whole process group (the CLI and any child it started: isolated compiles, workers)."""
        self.killed_at = time.monotonic()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pgid, signal.SIGKILL)
        self.proc.wait(timeout=60)
        for t in self._readers:
            t.join(timeout=10)

    def wait(self, timeout: float = DEFAULT_TIMEOUT) -> Result:
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"build did not finish within {timeout:.0f} s: {' '.join(self.args)}\n{self.stderr}")
        for t in self._readers:
            t.join(timeout=30)
        return Result(self.args, rc, "\n".join(self.out_chunks), self.stderr, time.monotonic() - self.start)

    def __enter__(self) -> "Build":
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.kill()


def group_gone(pgid: int, timeout: float = 10.0) -> bool:
    """True once no process of group `pgid` is left (killed children reaped by init)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


# -- what a build leaves --------------------------------------------------------------------------------------------
ENGINE_SIDE_FILES = {"manifest.json", "report.md", "auto.json"}  # auto.json: --target auto's record


def engine_files(out: Path) -> dict[str, bytes]:
    """The engine's own files in a published folder (everything but manifest.json and report.md)."""
    return {p.name: p.read_bytes() for p in sorted(Path(out).iterdir()) if p.is_file() and p.name not in ENGINE_SIDE_FILES}


_AUTO_NAME = re.compile(rb'(?P<pre>\b[A-Za-z][A-Za-z0-9]*_)(?P<n>\d{2,})\b')


def _normalise_xml(data: bytes) -> bytes:
    """OpenVINO names nodes it creates from a process-wide counter (Constant_37502): the same graph saved by
    two processes differs only in those numbers. Renumber them by first appearance."""
    seen: dict[bytes, int] = {}

    def sub(m: re.Match[bytes]) -> bytes:
        n = seen.setdefault(m["n"], len(seen))
        return m["pre"] + b"#" + str(n).encode()

    return _AUTO_NAME.sub(sub, data)


def engine_fingerprint(out: Path) -> dict[str, str]:
    """{file: sha256} of the engine files, OpenVINO IR .xml with its auto-generated node names renumbered.

    Measured here before writing the suite (two builds, each in a fresh cache): ONNX Runtime int8 model.onnx and
    OpenVINO fp32 model.xml/.bin are byte-identical; OpenVINO int8 (NNCF) model.bin is byte-identical and its
    model.xml differs only in counter-numbered node names (Constant_37502 vs Constant_37504), so .xml files are
    compared after renumbering and every other file byte for byte."""
    fp = {}
    for name, data in engine_files(out).items():
        if name.endswith(".xml"):
            data = _normalise_xml(data)
        fp[name] = hashlib.sha256(data).hexdigest()
    return fp


def assert_same_engine(got: Path, want: Path, what: str = "") -> None:
    a, b = engine_fingerprint(got), engine_fingerprint(want)
    assert a, f"{got} holds no engine files"
    assert a == b, f"{what}: engine in {got} differs from the one in {want}:\n{a}\n{b}"


def is_complete_engine(out: Path) -> bool:
    """A published engine folder: manifest.json naming an engine file that exists, and report.md."""
    m = Path(out) / "manifest.json"
    if not m.is_file():
        return False
    try:
        manifest = json.loads(m.read_text())
    except json.JSONDecodeError:
        return False
    eng = Path(out) / str(manifest.get("engine", ""))
    if not eng.is_file() or not (Path(out) / "report.md").is_file():
        return False
    if eng.suffix == ".xml" and not eng.with_suffix(".bin").is_file():
        return False
    want = manifest.get("sha256")
    if want:  # the manifest records sha256 over (name, sha256 of bytes) of the engine stage's files
        files = [Path(out) / s for s in _engine_stage_files(manifest, out)]
        if not all(f.is_file() for f in files) or combined_sha256(files) != want:
            return False
    return True


def file_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def combined_sha256(files: list[Path]) -> str:
    """What a stage manifest's "sha256" is: sha256 over (file name, hex sha256 of its bytes), in order."""
    h = hashlib.sha256()
    for p in files:
        h.update(p.name.encode())
        h.update(file_sha256(p).encode())
    return h.hexdigest()


def _engine_stage_files(manifest: dict, out: Path) -> list[str]:
    for s in manifest.get("stages", []):
        if s.get("stage") == "engine" and "files" in s:
            return list(s["files"])
    eng = manifest["engine"]
    rest = sorted(p.name for p in Path(out).iterdir() if p.is_file() and p.name not in ENGINE_SIDE_FILES and p.name != eng)
    return [eng, *rest]


def assert_out_nothing_or_complete(out: Path) -> None:
    """After a killed build: --out is absent, empty, or a complete engine; never a partial one."""
    out = Path(out)
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return
    assert is_complete_engine(out), f"{out} holds a partial engine: {sorted(p.name for p in out.iterdir())}"


def snapshot(path: Path) -> dict[str, object]:
    """Listing and bytes (and file modes) of everything under `path` (or of one file)."""
    path = Path(path)
    if path.is_file():
        return {".": (path.stat().st_mode, path.read_bytes())}
    snap: dict[str, object] = {}
    for p in sorted(path.rglob("*")):
        rel = p.relative_to(path).as_posix()
        if p.is_symlink():
            snap[rel] = ("link", os.readlink(p))
        elif p.is_dir():
            snap[rel] = ("dir", p.stat().st_mode)
        else:
            snap[rel] = (p.stat().st_mode, p.read_bytes())
    return snap


def tmp_leftovers(root: Path) -> list[str]:
    """Temporary build folders/files left under `root` (`.tmp-*` and `.*.tmp`)."""
    root = Path(root)
    if not root.exists():
        return []
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if ".tmp-" in p.name or p.name.endswith(".tmp"))


def cache_entries(cache: Path) -> dict[str, list[Path]]:
    """{stage: [entry folders]} (the `<cache>/<stage>/<key24>/` folders, temp and lock files left out)."""
    out: dict[str, list[Path]] = {}
    if not Path(cache).is_dir():
        return out
    for stage in sorted(p for p in Path(cache).iterdir() if p.is_dir() and not p.name.startswith(".")):
        entries = [e for e in sorted(stage.iterdir()) if e.is_dir() and re.fullmatch(r"[0-9a-f]{24}", e.name)]
        if entries:
            out[stage.name] = entries
    return out


def entry_of(cache: Path, stage: str) -> Path:
    entries = cache_entries(cache).get(stage, [])
    assert len(entries) == 1, f"expected one {stage} entry in {cache}, found {entries}"
    return entries[0]


def assert_entries_complete(cache: Path) -> None:
    """Every cache entry has a readable manifest whose files exist and hash to its recorded sha256."""
    for stage, entries in cache_entries(cache).items():
        for e in entries:
            m = e / "manifest.json"
            assert m.is_file(), f"entry without manifest: {e} ({sorted(p.name for p in e.iterdir())})"
            manifest = json.loads(m.read_text())
            files = [e / f for f in manifest["files"]]
            assert all(f.is_file() for f in files), f"entry with missing files: {e}"
            assert combined_sha256(files) == manifest["sha256"], f"entry whose files do not hash to its manifest: {e}"


def one_line_error(res: Result) -> str:
    """The run failed with exit 2 and one non-empty stderr line after the stage lines, no traceback; return it."""
    assert res.returncode == 2, res.describe()
    assert TRACEBACK not in res.stderr, res.describe()
    rest = [ln for ln in res.stderr_lines if not STAGE_LINE.match(ln)]
    assert len(rest) == 1, f"want one error line, got {rest}\n{res.describe()}"
    return rest[0]


# -- inputs ---------------------------------------------------------------------------------------------------------
def write_lenet_weights(path: Path, seed: int) -> Path:
    """A lenet5 state dict, as tests/e2e make them: torch.save(model.state_dict()) of the registry's model."""
    import torch

    from enginesmith.models import registry

    model = registry.get("lenet5").create(seed=seed)
    tmp = path.with_name(f".{path.name}.part")
    torch.save(model.state_dict(), tmp)
    os.replace(tmp, path)
    return path


def write_calib_folder(folder: Path, n: int, size: int = 256, seed: int = 0) -> Path:
    """`n` PNG noise images (size x size RGB, incompressible so each takes a moment to decode): img000.png, ..."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"img{i:03d}.png")
    return folder


# -- mounts ---------------------------------------------------------------------------------------------------------
def _run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(cmd), capture_output=True, text=True)


def _umount(path: Path) -> None:
    for _ in range(20):
        if _run("umount", str(path)).returncode == 0:
            return
        time.sleep(0.2)
    _run("umount", "-l", str(path))


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str = "20m") -> Iterator[Path]:
    """A real tmpfs of `size` mounted at `path` (skips the test, with the reason, when mount is not permitted)."""
    path.mkdir(parents=True, exist_ok=True)
    r = _run("mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path))
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip() or r.returncode}): disk-full is not testable")
    try:
        yield path
    finally:
        _umount(path)


def fill(path: Path, leave_bytes: int) -> Path:
    """Fill the filesystem holding `path` with a ballast file until `leave_bytes` are free (as statvfs says)."""
    ballast = path / "ballast.bin"
    st = os.statvfs(path)
    free = st.f_bavail * st.f_frsize
    n = free - leave_bytes
    if n > 0:
        with open(ballast, "ab") as f:
            block = b"\0" * (1 << 20)
            while n > 0:
                f.write(block[: min(n, len(block))])
                n -= len(block)
    return ballast


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


@contextlib.contextmanager
def read_only(path: Path) -> Iterator[str]:
    """Make folder `path` read-only for root too: a read-only bind mount over itself; else `chattr +i`; else skip.
    Yields how it was done."""
    path.mkdir(parents=True, exist_ok=True)
    r = _run("mount", "--bind", str(path), str(path))
    if r.returncode == 0:
        r2 = _run("mount", "-o", "remount,ro,bind", str(path))
        if r2.returncode == 0:
            try:
                yield "read-only bind mount"
            finally:
                _umount(path)
            return
        _umount(path)
    r = _run("chattr", "+i", str(path))
    if r.returncode == 0:
        try:
            yield "chattr +i"
        finally:
            _run("chattr", "-i", str(path))
        return
    pytest.skip(f"cannot make {path} read-only for root (no bind mount, no chattr +i): {r.stderr.strip()}")


# -- pausing a process at the moment it opens a file ------------------------------------------------------------
class OpenGate:
    """fanotify FAN_OPEN_PERM on one file: every open of it, by any process, waits until `on_open(pid)` has
    returned (the kernel holds the open). That makes "change the file just before the build reads it" exact
    instead of a race: `on_open` may rewrite the file in place (through a descriptor opened before the mark, so
    that write is no open of ours) and the paused open then sees the new bytes.

    Needs CAP_SYS_ADMIN and a kernel with fanotify permission events; `available()` says why not."""

    FAN_CLOEXEC, FAN_CLASS_CONTENT, FAN_OPEN_PERM, FAN_MARK_ADD, FAN_ALLOW = 0x1, 0x4, 0x10000, 0x1, 0x1

    def __init__(self, path: Path, on_open) -> None:  # type: ignore[no-untyped-def]
        import ctypes

        self.path, self.on_open = Path(path), on_open
        self._libc = ctypes.CDLL(None, use_errno=True)
        self._libc.fanotify_mark.argtypes = [ctypes.c_int, ctypes.c_uint, ctypes.c_uint64, ctypes.c_int, ctypes.c_char_p]
        self.fd = self._libc.fanotify_init(self.FAN_CLASS_CONTENT | self.FAN_CLOEXEC, os.O_RDONLY)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), f"fanotify_init: {os.strerror(ctypes.get_errno())}")
        if self._libc.fanotify_mark(self.fd, self.FAN_MARK_ADD, self.FAN_OPEN_PERM, -100, str(self.path).encode()) != 0:
            err = ctypes.get_errno()
            os.close(self.fd)
            raise OSError(err, f"fanotify_mark {self.path}: {os.strerror(err)}")
        self.opens: list[int] = []
        self.error: Exception | None = None
        self._stop = False
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    @staticmethod
    def available(probe_dir: Path) -> str | None:
        """None when fanotify permission events work here, else why not."""
        probe = Path(probe_dir) / ".fanotify-probe"
        probe.write_bytes(b"")
        try:
            gate = OpenGate(probe, lambda pid: None)
        except OSError as e:
            return str(e)
        gate.close()
        probe.unlink()
        return None

    def _loop(self) -> None:
        import select
        import struct

        while not self._stop:
            ready, _, _ = select.select([self.fd], [], [], 0.1)
            if not ready:
                continue
            try:
                data = os.read(self.fd, 4096)
            except OSError:
                return
            off = 0
            while off + 24 <= len(data):
                event_len, _, _, _, mask, efd, pid = struct.unpack_from("IBBHQii", data, off)
                try:
                    self.opens.append(pid)
                    if pid != os.getpid():
                        try:
                            self.on_open(pid)
                        except Exception as e:  # noqa: BLE001 - never leave an open hanging
                            self.error = e
                finally:
                    os.write(self.fd, struct.pack("iI", efd, self.FAN_ALLOW))
                    if efd >= 0:
                        os.close(efd)
                off += event_len

    def close(self) -> None:
        self._stop = True
        self._thread.join(timeout=5)
        os.close(self.fd)  # opens still held are allowed by the kernel when the group goes

    def __enter__(self) -> "OpenGate":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def require_fanotify(probe_dir: Path) -> None:
    why = OpenGate.available(probe_dir)
    if why:
        pytest.skip(f"fanotify permission events are not available here ({why}): the file cannot be swapped at the "
                    "exact moment the build reads it")


def overwrite_in_place(fd: int, data: bytes) -> None:
    """Rewrite a file through a descriptor opened earlier (no new open): truncate, write, flush to the page cache."""
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)
    os.fsync(fd)


def in_group(pid: int, pgid: int) -> bool:
    try:
        return os.getpgid(pid) == pgid
    except ProcessLookupError:
        return False


def folder_size(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def slow(*values: object, id: str | None = None):  # noqa: A002
    """A parametrize case kept out of CI (`-m "not slow"`)."""
    return pytest.param(*values, marks=pytest.mark.slow, id=id)
