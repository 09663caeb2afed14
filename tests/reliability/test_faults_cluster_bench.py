"""`enginesmith bench --cluster local` with the build job's process SIGKILLed mid-build (the real CLI, a real
lenet5 INT8 OpenVINO build): the row fails in one line naming the kill, no engine file is published in --engines,
no temporary folder is left there, every stage-cache entry is whole, and the rerun builds the row."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from faults import Build, assert_entries_complete, cache_entries, run_cli, tmp_leftovers

CHILD = "enginesmith.cluster.child"


def _job_processes(pgid: int) -> list[int]:
    """Pids of the cluster job processes (python -m enginesmith.cluster.child) in process group `pgid`."""
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().split(b"\0")
            if CHILD.encode() in cmd and os.getpgid(int(d.name)) == pgid:
                pids.append(int(d.name))
        except (OSError, ProcessLookupError):
            continue
    return pids


def test_a_build_job_killed_mid_build_is_a_failed_row_and_leaves_nothing_partial(tmp_path):
    cache, engines, out = tmp_path / "cache", tmp_path / "engines", tmp_path / "res"
    args = ["bench", "lenet5", "--targets", "openvino", "--precisions", "int8", "--batch", "1", "--quick",
            "--cluster", "local", "--cache-dir", str(cache), "--engines", str(engines), "--out", str(out)]
    with Build(args, cwd=tmp_path) as b:
        deadline = time.monotonic() + 240
        killed = None
        while killed is None and time.monotonic() < deadline and b.proc.poll() is None:
            jobs = _job_processes(b.pgid)
            if jobs and cache_entries(cache):  # the build job runs and has finished a stage: mid-build
                os.kill(jobs[0], signal.SIGKILL)
                killed = jobs[0]
            time.sleep(0.02)
        assert killed is not None, f"never saw the build job mid-build:\n{b.stderr}"
        res = b.wait()
    assert res.returncode == 2, res.describe()
    assert "Traceback" not in res.stderr, res.describe()
    (row,) = json.loads((out / "results.json").read_text())["rows"]
    assert row["status"] == "error" and row["error"] == "its process was killed (signal 9, SIGKILL)", row
    published = [p.relative_to(engines).as_posix() for p in engines.rglob("*") if p.is_file()] if engines.exists() else []
    assert published == [], f"a killed build published files: {published}"
    assert tmp_leftovers(engines) == []
    assert_entries_complete(cache)

    again = run_cli(args, cwd=tmp_path)
    assert again.returncode == 0, again.describe()
    (row,) = json.loads((out / "results.json").read_text())["rows"]
    assert row["status"] == "ok" and (Path(row["engine_dir"]) / "manifest.json").is_file()
    assert tmp_leftovers(engines) == [] and tmp_leftovers(cache) == []
