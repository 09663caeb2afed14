"""Scratch folders in the system temp folder (files.scratch_dir / make_scratch: the bench's measuring jobs, the
cluster's local jobs, the roofline probe, auto's re-measuring, the QDQ quantizer's model copy) do not outlive a
SIGKILLed process: the next one made with the same prefix removes them, and never one whose process still runs.

Real processes killed with SIGKILL; TMPDIR points at the test's own folder, so nothing else in /tmp is touched."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from enginesmith.cluster.jobs import Job
from enginesmith.cluster.local import run_in_child
from enginesmith.files import scratch_dir


@pytest.fixture
def tmpdir_env(tmp_path, monkeypatch) -> Path:
    """This process's and its children's system temp folder: a fresh folder of the test's own."""
    root = tmp_path / "tmp"
    root.mkdir()
    monkeypatch.setenv("TMPDIR", str(root))
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    return root


def _holder(code: str) -> tuple[subprocess.Popen, str]:
    """A Python process that runs `code` (which prints a line when its scratch folder exists) and then sleeps;
    (the process, that line)."""
    p = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code) + "\nimport time\ntime.sleep(300)\n"],
                         stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None
    line = p.stdout.readline()
    assert line, "the holder process died before making its folder"
    return p, line


def _kill(p: subprocess.Popen) -> None:
    p.send_signal(signal.SIGKILL)
    p.wait()


def _entries(root: Path) -> set[str]:
    return {p.name for p in root.iterdir()}


def test_a_killed_holders_scratch_is_removed_by_the_next_and_a_live_ones_is_kept(tmpdir_env):
    make = "from enginesmith.files import make_scratch\nprint(make_scratch('es-test'), flush=True)"
    (dead, _), (live, _) = _holder(make), _holder(make)
    try:
        _kill(dead)
        left = _entries(tmpdir_env)
        assert len(left) == 2 and all(n.startswith(".es-test.tmp-") for n in left)
        dead_name = next(n for n in left if f"-{dead.pid}-" in n)
        live_name = next(n for n in left if f"-{live.pid}-" in n)
        with scratch_dir("es-test") as mine:
            assert mine.is_dir() and mine.parent == tmpdir_env
            assert _entries(tmpdir_env) == {live_name, mine.name}  # the killed one's is gone, the live one's kept
            with scratch_dir("es-other"):  # another prefix removes nothing of this one's
                assert live_name in _entries(tmpdir_env)
        assert _entries(tmpdir_env) == {live_name}
        assert dead_name not in _entries(tmpdir_env)
    finally:
        _kill(live)


def test_a_scratch_folder_is_removed_when_the_work_inside_raises(tmpdir_env):
    with pytest.raises(RuntimeError):
        with scratch_dir("es-test") as s:
            (s / "half.bin").write_bytes(b"x" * 1000)
            raise RuntimeError("mid-way")
    assert _entries(tmpdir_env) == set()


def test_a_local_job_whose_caller_is_killed_leaves_nothing_after_the_next_job(tmpdir_env):
    """cluster.local.run_in_child's folder (the pickled job and its result): its caller SIGKILLed while the job runs;
    the job's process dies with its caller, and the next job's run removes the folder."""
    caller, said = _holder("""
        import threading
        from enginesmith.cluster.jobs import Job
        from enginesmith.cluster.local import run_in_child
        threading.Thread(target=run_in_child, args=(Job("sleep", "multiprocessing.connection:wait", {"object_list": [], "timeout": 300}),), daemon=True).start()
        import time, pathlib, tempfile
        end = time.monotonic() + 60
        while time.monotonic() < end and not any(p.name.startswith(".es-job.tmp-")
                                                 for p in pathlib.Path(tempfile.gettempdir()).iterdir()):
            time.sleep(0.05)
        print("made" if time.monotonic() < end else "no scratch folder after 60 s", flush=True)
    """)
    _kill(caller)  # first, so a failed assertion leaves no process behind
    assert said == "made\n", said
    left = _entries(tmpdir_env)
    assert len(left) == 1 and next(iter(left)).startswith(f".es-job.tmp-{caller.pid}-")
    deadline = time.monotonic() + 30  # the job's own process follows its caller (prctl PDEATHSIG)
    while time.monotonic() < deadline and _job_processes(tmpdir_env):
        time.sleep(0.1)
    assert not _job_processes(tmpdir_env)
    value, error = run_in_child(Job("cpu count", "os:cpu_count", {}))
    assert error is None and value == os.cpu_count()
    assert _entries(tmpdir_env) == set()


def _job_processes(root: Path) -> list[int]:
    """pids of live `enginesmith.cluster.child` processes whose job file is under root."""
    found = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                cmd = (d / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"enginesmith.cluster.child" in cmd and any(str(root).encode() in c for c in cmd):
                found.append(int(d.name))
    return found
