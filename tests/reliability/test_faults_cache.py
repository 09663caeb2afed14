"""The stage cache under faults: identical builds at once, tampered entries, inputs (weights, calibration images)
changed while a build reads them, `cache info/clean`, --no-cache / --rebuild, and latency as a measurement."""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path

import pytest

import faults as F

QUICK = ("onnxruntime", "int8")
QUICK_STAGES = ["export", "simplify", "statistics", "quantize-qdq", "engine", "latency"]


# -- identical builds at the same time ------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [2, pytest.param(3, marks=pytest.mark.slow)])
def test_identical_concurrent_builds_build_each_stage_once(n, tmp_path, reference):
    cache = tmp_path / "cache"
    builds = [F.Build(F.build_args(tmp_path / f"out{i}", *QUICK), tmp_path, cache) for i in range(n)]
    try:
        results = [b.wait() for b in builds]
    finally:
        for b in builds:
            if b.proc.poll() is None:
                b.kill()
    for r in results:
        assert r.returncode == 0, r.describe()
    for stage in QUICK_STAGES:
        builders = [i for i, r in enumerate(results) if "building" in r.stages().get(stage, [])]
        assert len(builders) == 1, (f"{stage} was built by processes {builders} (want exactly one):\n"
                                    + "\n".join(r.stderr for r in results))
        for i, r in enumerate(results):
            if i != builders[0]:
                assert "cached" in r.stages().get(stage, []), f"process {i} did not reuse {stage}:\n{r.stderr}"
    first = F.engine_files(tmp_path / "out0")
    for i in range(1, n):
        assert F.engine_files(tmp_path / f"out{i}") == first, f"out{i} differs from out0"
    F.assert_same_engine(tmp_path / "out0", reference(*QUICK).out)
    assert F.tmp_leftovers(cache) == []
    assert all(len(v) == 1 for v in F.cache_entries(cache).values()), F.cache_entries(cache)


# -- tampered entries -----------------------------------------------------------------------------------------------
def _main_file(entry: Path) -> Path:
    manifest = json.loads((entry / "manifest.json").read_text())
    return entry / manifest["files"][0]


def _tamper(entry: Path, how: str) -> None:
    if how == "manifest-corrupt":
        m = entry / "manifest.json"
        m.write_bytes(m.read_bytes()[: len(m.read_bytes()) // 2])
        return
    if how == "manifest-same-size-edit":  # the stage's recorded wall time, shown in the report: first digit changed
        m = entry / "manifest.json"
        text = m.read_text()
        new, n = re.subn(r'("wall_time_s": )(\d)', lambda g: g[1] + str((int(g[2]) + 1) % 10), text, count=1)
        assert n == 1 and len(new) == len(text)
        m.write_text(new)
        return
    f = _main_file(entry)
    data = f.read_bytes()
    if how == "truncate":
        f.write_bytes(data[: len(data) // 2])
    elif how == "same-size-edit":  # one byte flipped near the end (an ONNX tensor's data, a JSON digit)
        i = len(data) - 10
        if f.suffix == ".json":  # keep it valid JSON with other numbers: change the last digit found
            i = max(j for j, c in enumerate(data) if chr(c).isdigit())
            f.write_bytes(data[:i] + bytes([ord("7") if data[i] != ord("7") else ord("3")]) + data[i + 1 :])
            return
        f.write_bytes(data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1 :])
    elif how == "delete":
        f.unlink()
    else:
        raise AssertionError(how)
    assert not f.exists() or f.read_bytes() != data


TAMPER_CI = [("statistics", "same-size-edit"), ("engine", "same-size-edit"), ("latency", "same-size-edit"),
             ("engine", "manifest-same-size-edit")]
TAMPER_SLOW = [("export", "same-size-edit"), ("simplify", "truncate"), ("quantize-qdq", "delete"),
               ("engine", "manifest-corrupt")]
TAMPER_ALL = [(s, h) for s in QUICK_STAGES for h in ("truncate", "same-size-edit", "delete", "manifest-corrupt",
                                                                 "manifest-same-size-edit")]


@pytest.mark.parametrize("stage,how", TAMPER_CI + [F.slow(s, h) for s, h in TAMPER_SLOW + [c for c in TAMPER_ALL
                                                                         if c not in TAMPER_CI + TAMPER_SLOW]])
def test_tampered_entry_warned_and_rebuilt(stage, how, tmp_path, reference):
    ref = reference(*QUICK)
    cache = ref.warm_cache(tmp_path / "cache")
    entry = F.entry_of(cache, stage)
    old_latency = json.loads((F.entry_of(cache, "latency") / "manifest.json").read_text())["metrics"]
    _tamper(entry, how)
    res = F.run_cli(F.build_args(tmp_path / "out", *QUICK), tmp_path, cache)
    assert res.returncode == 0, res.describe()
    warnings = [ln for ln in res.stderr_lines if "discarded" in ln]
    assert len(warnings) == 1 and stage in warnings[0], f"want one 'discarded' line for {stage}:\n{res.describe()}"
    assert "building" in res.stages().get(stage, []), res.describe()
    for other in QUICK_STAGES[: QUICK_STAGES.index(stage)]:  # upstream of the tampered stage: still reused
        assert res.stages().get(other) == ["cached"], f"{other}: {res.stages().get(other)}\n{res.describe()}"
    F.assert_same_engine(tmp_path / "out", ref.out, f"engine after {stage} entry {how}")
    F.assert_entries_complete(cache)
    report = (tmp_path / "out" / "report.md").read_text()
    if stage == "latency":  # never served: the report shows a new measurement, not the tampered entry's figures
        assert "measured in this run" in report, report
        new_latency = json.loads((tmp_path / "out" / "manifest.json").read_text())["latency"]
        assert new_latency.get("measured_at") != old_latency.get("measured_at") or \
            new_latency["engine"] != old_latency["engine"], "the report shows the tampered entry's latency"
    if stage == "engine":
        assert "| engine | built |" in report, report


@pytest.mark.parametrize("where", [F.slow("latency.json"), "manifest.json"])
def test_tampered_latency_figures_never_reported(where, tmp_path, reference):
    """Edit the latency entry's speed-up in place (same size: the number's digits become 7s) in latency.json or in
    the entry's manifest.json (where the report reads its figures from). The next build must warn that the entry
    was discarded and its report must not show the edited speed-up."""
    ref = reference(*QUICK)
    cache = ref.warm_cache(tmp_path / "cache")
    f = F.entry_of(cache, "latency") / where
    text = f.read_text()
    old = json.dumps(json.loads((F.entry_of(cache, "latency") / "latency.json").read_text())["speedup"])
    assert old in text, (old, where)
    new = re.sub(r"\d", "7", old)
    f.write_text(text.replace(old, new, 1))
    assert f.stat().st_size == len(text.encode())
    res = F.run_cli(F.build_args(tmp_path / "out", *QUICK), tmp_path, cache)
    assert res.returncode == 0, res.describe()
    shown = f"**{float(new):.2f}x**"
    assert shown not in (tmp_path / "out" / "report.md").read_text(), f"the report shows the edited speed-up {shown}"
    assert any("discarded" in ln and "latency" in ln for ln in res.stderr_lines), res.describe()


# -- the weights file swapped during the build ----------------------------------------------------------------------
@pytest.mark.parametrize("target,precision", [("onnxruntime", "fp32"),
                                              pytest.param("openvino", "fp32", marks=pytest.mark.slow)])
def test_weights_swapped_when_export_starts(target, precision, tmp_path, weights_ab, reference):
    """W = A; at the export stage's first read of W after its building line (held by fanotify so the swap
    lands exactly there; without a read, right after the line) W is overwritten in place with B. The engine
    must be A's, or the build fails with one line saying the file changed; then W = B builds B's engine and
    W = A again is served from the cache as A's."""
    F.require_fanotify(tmp_path)
    a, b = weights_ab
    w = tmp_path / "w.pt"
    shutil.copy2(a, w)
    cache = tmp_path / "cache"
    args = F.build_args(tmp_path / "out1", target, precision, weights=w)
    b_bytes = b.read_bytes()
    fd = os.open(w, os.O_RDWR)  # opened before the mark: our overwrite is no open of W
    swapped = {"at": None}
    try:
        build = F.Build(args, tmp_path, cache)

        def on_open(pid: int) -> None:
            if swapped["at"] or not F.in_group(pid, build.pgid):
                return
            deadline = time.monotonic() + 0.5  # a paused reader cannot print: a line seen now came before this read
            while time.monotonic() < deadline:
                if re.search(F.BUILDING.format(stage="export"), build.stderr, re.M):
                    F.overwrite_in_place(fd, b_bytes)
                    swapped["at"] = "the export stage's read of W"
                    return
                time.sleep(0.02)

        with build, F.OpenGate(w, on_open):
            build.wait_for_stage("export")
            time.sleep(1.0)
            if not swapped["at"]:  # the build does not read W during export (it read it once, earlier)
                F.overwrite_in_place(fd, b_bytes)
                swapped["at"] = "right after the export building line"
            res = build.wait()
    finally:
        os.close(fd)
    assert w.read_bytes() == b_bytes
    ref_a, ref_b = reference(target, precision, weights=a), reference(target, precision, weights=b)
    if res.returncode == 0:
        F.assert_same_engine(tmp_path / "out1", ref_a.out, f"W swapped to B at {swapped['at']}: published engine")
    else:
        line = F.one_line_error(res)
        assert str(w) in line or "changed" in line.lower(), line
    res_b = F.run_cli(F.build_args(tmp_path / "out2", target, precision, weights=w), tmp_path, cache)
    assert res_b.returncode == 0, res_b.describe()
    F.assert_same_engine(tmp_path / "out2", ref_b.out, "W = B after the swap")
    shutil.copy2(a, w)
    res_a = F.run_cli(F.build_args(tmp_path / "out3", target, precision, weights=w), tmp_path, cache)
    assert res_a.returncode == 0, res_a.describe()
    F.assert_same_engine(tmp_path / "out3", ref_a.out, "W = A again")
    if res.returncode == 0:
        assert res_a.stages().get("export") == ["cached"], res_a.describe()
        assert "building" not in res_a.stderr, res_a.describe()


# -- a calibration image replaced during the build ------------------------------------------------------------------
@pytest.mark.parametrize("target,stage", [("onnxruntime", "statistics"), F.slow("openvino", "quantize-nncf")])
def test_calibration_image_replaced_mid_build(target, stage, tmp_path, reference):
    """The last calibration image is overwritten in place at the first read of it after the calibration stage's
    building line (fanotify holds that read). The build fails with one line naming the image, or its engine is that
    of a clean build with the images it used; either way no entry names images it did not use: the original folder
    later builds, in the same cache, the engine of a fresh cache."""
    F.require_fanotify(tmp_path)
    calib = F.write_calib_folder(tmp_path / "calib", 8, size=64, seed=1)
    victim = calib / "img007.png"
    original = victim.read_bytes()
    other = F.write_calib_folder(tmp_path / "other", 1, size=64, seed=99) / "img000.png"
    new_bytes = other.read_bytes()
    snapshot_orig = tmp_path / "calib-original"
    shutil.copytree(calib, snapshot_orig)
    cache = tmp_path / "cache"
    args = F.build_args(tmp_path / "out1", target, "int8", calib=calib, calib_size=8)
    fd = os.open(victim, os.O_RDWR)
    swapped = {"at": None}
    try:
        build = F.Build(args, tmp_path, cache)

        def on_open(pid: int) -> None:
            if swapped["at"] or not F.in_group(pid, build.pgid):
                return
            deadline = time.monotonic() + 0.5
            while time.monotonic() < deadline:
                if re.search(F.BUILDING.format(stage=re.escape(stage)), build.stderr, re.M):
                    F.overwrite_in_place(fd, new_bytes)
                    swapped["at"] = f"the {stage} stage's read of {victim.name}"
                    return
                time.sleep(0.02)

        with build, F.OpenGate(victim, on_open):
            build.wait_for_stage(stage)
            time.sleep(1.0)
            if not swapped["at"]:
                F.overwrite_in_place(fd, new_bytes)
                swapped["at"] = f"right after the {stage} building line"
            res = build.wait()
    finally:
        os.close(fd)
    assert victim.read_bytes() == new_bytes
    ref_orig = reference(target, "int8", calib=snapshot_orig, calib_size=8)
    if res.returncode == 0:
        ref_new = reference(target, "int8", calib=calib, calib_size=8)
        fp = F.engine_fingerprint(tmp_path / "out1")
        assert fp in (F.engine_fingerprint(ref_orig.out), F.engine_fingerprint(ref_new.out)), \
            f"engine of a build whose image changed at {swapped['at']} matches neither image set"
    else:
        line = F.one_line_error(res)
        assert "img007.png" in line, line
    victim.write_bytes(original)
    again = F.run_cli(F.build_args(tmp_path / "out2", target, "int8", calib=calib, calib_size=8), tmp_path, cache)
    assert again.returncode == 0, again.describe()
    F.assert_same_engine(tmp_path / "out2", ref_orig.out, f"original folder after the image changed at {swapped['at']}")


# -- cache info / clean, --no-cache, --rebuild ----------------------------------------------------------------------
def _cache(tmp_path, *args: str) -> F.Result:
    return F.run_cli(["cache", *args], tmp_path, None, timeout=120)


def test_cache_info_lists_stages_counts_sizes(tmp_path, reference):
    cache = reference(*QUICK).warm_cache(tmp_path / "cache")
    res = _cache(tmp_path, "info", "--cache-dir", str(cache))
    assert res.returncode == 0, res.describe()
    text = res.stdout
    for stage in QUICK_STAGES:
        row = next((ln for ln in text.splitlines() if re.search(rf"\b{re.escape(stage)}\b", ln)), None)
        assert row is not None, f"{stage} missing from cache info:\n{text}"
        assert re.search(r"\b1\b", row), f"{stage} should show 1 entry: {row}"
        assert re.search(r"\d+(\.\d+)?\s*(B|kB|KB|MB|GB|KiB|MiB)", row), f"{stage} shows no size: {row}"


@pytest.mark.slow
def test_cache_clean_all_then_build_rebuilds_everything(tmp_path, reference):
    cache = reference(*QUICK).warm_cache(tmp_path / "cache")
    res = _cache(tmp_path, "clean", "--cache-dir", str(cache))
    assert res.returncode == 0, res.describe()
    assert re.search(r"freed\s+\d", res.stdout + res.stderr), res.describe()
    assert F.cache_entries(cache) == {}
    build = F.run_cli(F.build_args(tmp_path / "out", *QUICK), tmp_path, cache)
    assert build.returncode == 0, build.describe()
    for stage in QUICK_STAGES:
        assert "building" in build.stages().get(stage, []), build.describe()


def test_cache_clean_one_stage_rebuilds_only_that_stage(tmp_path, reference):
    ref = reference(*QUICK)
    cache = ref.warm_cache(tmp_path / "cache")
    res = _cache(tmp_path, "clean", "--cache-dir", str(cache), "--stage", "engine")
    assert res.returncode == 0, res.describe()
    left = F.cache_entries(cache)
    assert "engine" not in left and all(s in left for s in QUICK_STAGES if s != "engine"), left
    build = F.run_cli(F.build_args(tmp_path / "out", *QUICK), tmp_path, cache)
    assert build.returncode == 0, build.describe()
    st = build.stages()
    assert "building" in st["engine"], build.describe()
    for stage in ("export", "simplify", "statistics", "quantize-qdq", "latency"):  # same engine bytes: latency key same
        assert st.get(stage) == ["cached"], build.describe()
    F.assert_same_engine(tmp_path / "out", ref.out)


def test_cache_clean_older_than_removes_only_old_entries(tmp_path, reference):
    cache = reference(*QUICK).warm_cache(tmp_path / "cache")
    old = time.time() - 10 * 86400
    for stage in ("export", "simplify"):
        e = F.entry_of(cache, stage)
        for p in [*e.rglob("*"), e]:
            os.utime(p, (old, old))
    res = _cache(tmp_path, "clean", "--cache-dir", str(cache), "--older-than", "5")
    assert res.returncode == 0, res.describe()
    left = F.cache_entries(cache)
    assert "export" not in left and "simplify" not in left, left
    assert all(s in left for s in ("statistics", "quantize-qdq", "engine", "latency")), left


def test_cache_clean_max_size_shrinks_cache(tmp_path, reference):
    cache = reference(*QUICK).warm_cache(tmp_path / "cache")
    total = sum(F.folder_size(e) for es in F.cache_entries(cache).values() for e in es)
    limit_gb = total / 2 / 1e9
    res = _cache(tmp_path, "clean", "--cache-dir", str(cache), "--max-size", f"{limit_gb:.9f}")
    assert res.returncode == 0, res.describe()
    assert re.search(r"freed", res.stdout + res.stderr), res.describe()
    after = sum(F.folder_size(e) for es in F.cache_entries(cache).values() for e in es)
    assert 0 < after <= total / 2, (after, total)


@pytest.mark.slow
def test_no_cache_rebuilds_every_stage(tmp_path, reference):
    ref = reference(*QUICK)
    cache = ref.warm_cache(tmp_path / "cache")
    res = F.run_cli(F.build_args(tmp_path / "out", *QUICK, extra=("--no-cache",)), tmp_path, cache)
    assert res.returncode == 0, res.describe()
    for stage in QUICK_STAGES:
        assert "building" in res.stages().get(stage, []), res.describe()
    assert "cached" not in res.stderr, res.describe()
    F.assert_same_engine(tmp_path / "out", ref.out)
    F.assert_entries_complete(cache)
    assert all(len(v) == 1 for v in F.cache_entries(cache).values())


@pytest.mark.parametrize("stage", ["engine", F.slow("statistics")])
def test_rebuild_one_stage_only(stage, tmp_path, reference):
    ref = reference(*QUICK)
    cache = ref.warm_cache(tmp_path / "cache")
    res = F.run_cli(F.build_args(tmp_path / "out", *QUICK, extra=("--rebuild", stage)), tmp_path, cache)
    assert res.returncode == 0, res.describe()
    st = res.stages()
    assert "building" in st.get(stage, []), res.describe()
    for other in QUICK_STAGES:
        if other != stage:
            assert st.get(other) == ["cached"], f"{other}: {st.get(other)}\n{res.describe()}"
    F.assert_same_engine(tmp_path / "out", ref.out)


# -- latency is a measurement ---------------------------------------------------------------------------------------
def test_cached_latency_report_says_when_and_under_what_load(tmp_path, reference):
    ref = reference(*QUICK)
    cache = ref.warm_cache(tmp_path / "cache")
    first_report = (ref.out / "report.md").read_text()
    res = F.run_cli(F.build_args(tmp_path / "out", *QUICK), tmp_path, cache)
    assert res.returncode == 0, res.describe()
    report = (tmp_path / "out" / "report.md").read_text()
    section = report[report.index("## Latency"):]
    if res.stages().get("latency") == ["cached"]:
        stamp = re.search(r"\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}(:\d{2})?", section)
        assert stamp, f"a cached latency without its measurement time:\n{section}"
        assert re.search(r"load", section, re.I) and re.search(r"load[^\n]*\d+\.\d+", section, re.I), section
        assert stamp.group(0) in first_report, "the cached report's time is not the original measurement's"
        assert "measured in this run" not in section
    else:
        assert "measured in this run" in section, section
