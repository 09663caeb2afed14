"""The flock that holds `--out` for a build (pipeline/outdir.py hold_out), tested with real processes: a second
holder is refused at once, a SIGKILLed holder leaves no `--out` and its lock is taken over, and nothing the
build made stays behind when it publishes nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from enginesmith.errors import EnginesmithError
from enginesmith.pipeline import outdir
from enginesmith.pipeline.outdir import hold_out, lock_folder

HOLDER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from enginesmith.pipeline.outdir import hold_out
    with hold_out(Path(sys.argv[1])):
        print("held", flush=True)
        time.sleep(600)
""")
PROBE = textwrap.dedent("""
    import sys
    from pathlib import Path
    from enginesmith.errors import EnginesmithError
    from enginesmith.pipeline.outdir import hold_out
    try:
        with hold_out(Path(sys.argv[1])):
            print("held")
    except EnginesmithError as e:
        print(e)
""")


def _probe(out: Path) -> str:
    """What another process gets when it tries to hold `out`: "held", or the one-line refusal."""
    return subprocess.run([sys.executable, "-c", PROBE, str(out)], capture_output=True, text=True, timeout=60,
                          check=True).stdout.strip()


def _holder(out: Path) -> subprocess.Popen:
    """A process that holds `out` until it is killed; returns once it holds it."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def _kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)


def _tree(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_a_missing_out_is_not_made_by_the_lock(tmp_path):
    out = tmp_path / "build" / "model" / "openvino-fp32"
    with hold_out(out):
        assert not out.exists(), "--out was made before anything was published"
        assert lock_folder(out).is_dir()
    assert _tree(tmp_path) == [], "the lock or the parents it made were left behind"


@pytest.mark.parametrize("exists", [False, True])
def test_a_second_holder_is_refused_at_once(tmp_path, exists):
    out = tmp_path / "out"
    if exists:
        out.mkdir()
    proc = _holder(out)
    try:
        start = time.monotonic()
        with pytest.raises(EnginesmithError, match="another enginesmith build is writing to --out"):
            with hold_out(out):
                pass
        assert time.monotonic() - start < 5
    finally:
        _kill(proc)
    with hold_out(out):  # the kernel dropped the killed holder's lock
        pass


def test_a_killed_holder_leaves_no_out_and_its_lock_is_taken_over(tmp_path):
    out = tmp_path / "out"
    _kill(_holder(out))
    assert not out.exists(), "a build killed before its publish left an --out"
    assert lock_folder(out).is_dir()  # what SIGKILL leaves: the empty hidden lock folder
    with hold_out(out):
        assert "another enginesmith build" in _probe(out)  # the taken-over lock is held, not just present
    assert _tree(tmp_path) == []
    assert _probe(out) == "held"


def test_a_lock_folder_removed_under_a_waiting_build_is_made_again(tmp_path, monkeypatch):
    """The holder removes its lock folder as it ends. A build that opened that folder just before (the removal
    lands between its open and its flock, forced here by doing it inside the first flock call) must not hold the
    removed folder, or a third build would make a new one and hold it too."""
    out = tmp_path / "out"
    lock = lock_folder(out)
    lock.mkdir()  # a lock folder left by a killed build, about to be removed by the build ending beside us
    real_flock, calls = outdir.fcntl.flock, []

    def flock_after_removal(fd: int, op: int) -> None:
        if not calls:
            os.rmdir(lock)
        calls.append(fd)
        real_flock(fd, op)

    monkeypatch.setattr(outdir.fcntl, "flock", flock_after_removal)
    with hold_out(out):
        assert len(calls) == 2, "the removed folder was held, not the one made again"
        assert "another enginesmith build" in _probe(out)
    assert _tree(tmp_path) == []


def test_an_existing_out_is_locked_in_place_and_kept(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    with hold_out(out):
        assert not lock_folder(out).exists()
    assert out.is_dir() and _tree(tmp_path) == ["out"]
