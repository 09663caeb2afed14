"""`build-engine MODEL --target auto` SIGKILLed mid-run (the whole process group: the CLI and the measuring child).

Its candidates are built into a hidden sibling of --out (`.OUT.auto-tmp-*`) and measured in child processes; a
kill there must leave the user's --out exactly as it was (an old engine byte for byte), and the next run with the
same arguments must succeed, publish a complete engine with its auto.json, and clear what the killed run left
beside --out (its candidate folder, its lock). Real builds of lenet5, no mocks.
"""

from __future__ import annotations

import json
import shutil
import signal

import pytest

import faults as F

ARGS = ["build", "lenet5", "--target", "auto", "--calib-size", "4"]


@pytest.mark.slow  # 2-2.5 min on 2 cores: the rerun builds and measures every candidate
def test_sigkill_during_auto_keeps_out_and_the_rerun_cleans_up(tmp_path, reference):
    out = tmp_path / "out"
    shutil.copytree(reference("openvino", "fp32").out, out)  # the user's engine, to be replaced only whole
    before = F.snapshot(out)
    cache = tmp_path / "cache"
    args = [*ARGS, "--out", str(out)]
    with F.Build(args, tmp_path, cache) as build:
        # the second candidate: the first is built and measured, its folder sits in the hidden sibling
        build.wait_for(r"auto: openvino/fp16/b1: building and measuring", timeout=600)
        scratch = [p.name for p in tmp_path.iterdir() if p.name.startswith(".out.auto-tmp")]
        build.kill()
    assert F.group_gone(build.pgid), "a process of the killed run is still alive"
    assert scratch, "the run kept no candidate folder beside --out (where did it build?)"
    assert F.snapshot(out) == before, "--out changed when --target auto was killed"

    again = F.run_cli(args, tmp_path, cache, timeout=900)
    assert again.returncode == 0, again.describe()
    assert F.is_complete_engine(out), sorted(p.name for p in out.iterdir())
    record = json.loads((out / "auto.json").read_text())
    manifest = json.loads((out / "manifest.json").read_text())
    assert record["settings"]["target"] == manifest["target"] and record["settings"]["precision"] == manifest["precision"]
    left = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".out"))
    assert left == [], f"left beside --out after the rerun: {left}"
    assert F.tmp_leftovers(cache) == []
