"""SIGKILL faults: a build killed (the whole process group, no chance to clean up) while a stage is building.

The rebuild with the same arguments must succeed, give the engine of a clean build in a fresh cache, leave no
`.tmp-*` folder in the cache (the killed build's temp folder is removed once its owner is dead), and --out must
never hold a partial engine. Engines are compared byte for byte (OpenVINO IR .xml after renumbering the node
names OpenVINO makes from a process-wide counter; measured: everything else is byte-reproducible across fresh
caches for lenet5 - see faults.engine_fingerprint).
"""

from __future__ import annotations

import os
import shutil
import signal
import time

import pytest

import faults as F

QUICK = ("onnxruntime", "int8")
KILL_DELAY_S = 0.05  # "sleep a little" after the stage's building line: lenet5 stages take 0.1 - 3 s

CI_CASES = [
    ("onnxruntime", "int8", "statistics"),
    ("onnxruntime", "int8", "engine"),
]
SLOW_CASES = [
    ("onnxruntime", "int8", "export"),
    ("onnxruntime", "int8", "simplify"),
    ("onnxruntime", "int8", "quantize-qdq"),
    ("onnxruntime", "int8", "latency"),
    ("openvino", "int8", "quantize-nncf"),
    ("openvino", "int8", "engine"),
    ("openvino", "int8", "export"),
    ("openvino", "fp32", "engine"),
    ("openvino", "fp32", "latency"),
]


def _kill_during(stage: str, args: list[str], tmp_path, cache, delay: float = KILL_DELAY_S) -> F.Build:
    with F.Build(args, tmp_path, cache) as b:
        b.wait_for_stage(stage)
        time.sleep(delay)
        b.kill()
    assert F.group_gone(b.pgid), "processes of the killed build's group are still running"
    return b


@pytest.mark.parametrize(
    "target,precision,stage",
    CI_CASES + [pytest.param(*c, marks=pytest.mark.slow) for c in SLOW_CASES],
    ids=lambda v: v,
)
def test_sigkill_during_stage_then_rebuild_equals_clean_build(target, precision, stage, tmp_path, reference):
    cache, out = tmp_path / "cache", tmp_path / "out"
    args = F.build_args(out, target, precision)
    _kill_during(stage, args, tmp_path, cache)
    F.assert_out_nothing_or_complete(out)
    F.assert_entries_complete(cache)  # what the killed build left published is whole

    res = F.run_cli(args, tmp_path, cache)
    assert res.returncode == 0, res.describe()
    assert F.TRACEBACK not in res.stderr, res.describe()
    F.assert_same_engine(out, reference(target, precision).out, f"rebuild after SIGKILL during {stage}")
    assert F.is_complete_engine(out)
    assert F.tmp_leftovers(cache) == [], "temp folders of the killed build are still in the cache"
    F.assert_entries_complete(cache)


@pytest.mark.parametrize("old", ["old-engine", F.slow("no-old-engine")])
def test_sigkill_inside_publish(old, tmp_path, reference):
    """Kill inside the publish itself: every stage is cached (a copy of a clean cache), and the build is SIGKILLed
    at the moment it opens the engine entry's model.onnx while its staging folder beside --out exists (fanotify holds
    that open, so the kill lands inside the copy into the staging folder, not before or after). --out must still be
    the old engine byte for byte (or absent), and the rebuild publishes the clean engine and clears the staging
    folder the killed build left."""
    F.require_fanotify(tmp_path)
    ref = reference(*QUICK)
    cache = ref.warm_cache(tmp_path / "cache")
    out = tmp_path / "out"
    if old == "old-engine":
        shutil.copytree(reference("openvino", "fp32").out, out)
    before = F.snapshot(out) if out.exists() else None
    args = F.build_args(out, *QUICK)
    killed = {"at": None}
    build = F.Build(args, tmp_path, cache)

    def on_open(pid: int) -> None:
        if killed["at"] is None and F.in_group(pid, build.pgid) and list(tmp_path.glob(".out.tmp-*")):
            killed["at"] = sorted(p.name for p in tmp_path.glob(".out.tmp-*"))
            os.killpg(build.pgid, signal.SIGKILL)

    with build, F.OpenGate(F.entry_of(cache, "engine") / "model.onnx", on_open):
        res = build.wait()
    assert killed["at"], f"the build never opened the engine entry while publishing:\n{res.describe()}"
    assert res.returncode == -signal.SIGKILL, res.describe()
    if before is None:
        F.assert_out_nothing_or_complete(out)
        assert not out.exists(), "a killed first publish left --out"
    else:
        assert F.snapshot(out) == before, "the old engine changed when the publish replacing it was killed"
    again = F.run_cli(args, tmp_path, cache)
    assert again.returncode == 0, again.describe()
    F.assert_same_engine(out, ref.out, "rebuild after a kill inside the publish")
    left = [p.name for p in tmp_path.iterdir() if p.name.startswith(".out.")]
    assert left == [], f"staging folders of the killed publish left beside --out: {left}"


def test_killed_builder_releases_waiter(tmp_path, reference):
    """Two identical builds, one cache: the first is frozen (SIGSTOP) inside its export stage while the second
    arrives and waits for that stage; then the first is SIGKILLed. The waiter must take over (the lock dies with
    its holder), build the stage itself and finish with the clean engine; nothing temporary is left (the killed
    build's temp folder included: it is reaped only after the waiter ends, so it is a zombie while the waiter runs)."""
    cache = tmp_path / "cache"
    first = F.Build(F.build_args(tmp_path / "out1"), tmp_path, cache)
    try:
        first.wait_for_stage("export")
        deadline = time.monotonic() + 10
        while not list((cache / "export").glob(".tmp-*")) and time.monotonic() < deadline:
            time.sleep(0.005)
        os.killpg(first.pgid, signal.SIGSTOP)
        assert list((cache / "export").glob(".tmp-*")), "the first build made no temp folder in its export stage"
        with F.Build(F.build_args(tmp_path / "out2"), tmp_path, cache) as second:
            # the second build reaches the export stage and finds it being built
            line = second.wait_for(r"export|waiting", timeout=240)
            # SIGKILL, and reap it only after the waiter is done: the killed build stays a zombie meanwhile, as it
            # does under any parent that has not called wait() yet. A zombie is a dead owner: its temp folder is stale.
            os.killpg(first.pgid, signal.SIGKILL)
            res = second.wait()
            first.kill()
    finally:
        if first.proc.poll() is None:
            first.kill()
    assert res.returncode == 0, res.describe()
    assert "building" in " ".join(res.stages().get("export", [])), \
        f"the waiter should have built export itself after its builder died (first line seen: {line!r})\n{res.describe()}"
    F.assert_same_engine(tmp_path / "out2", reference().out, "waiter's engine")
    out1 = tmp_path / "out1"  # the killed build made it empty to hold it; nothing else may be there
    assert not out1.exists() or not any(out1.iterdir()) or F.is_complete_engine(out1)
    assert F.tmp_leftovers(cache) == [], F.tmp_leftovers(cache)
    F.assert_entries_complete(cache)
