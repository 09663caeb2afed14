"""Disk faults: a real 20 MB tmpfs filled until the cache or the engine folder cannot be written, and the cache
folder deleted under a running build. Wanted: exit 2 with one line (no traceback), no partial cache entry or engine
folder, an older engine in --out untouched."""

from __future__ import annotations

import shutil
import time

import pytest

import faults as F

QUICK = ("onnxruntime", "int8")
KB = 1024


@pytest.fixture()
def fs(tmp_path):
    """A 20 MB tmpfs at tmp_path/fs, unmounted after the test whatever happens."""
    with F.small_tmpfs(tmp_path / "fs", "20m") as path:
        yield path


def _leftovers(root) -> list[str]:
    return [p.relative_to(root).as_posix() for p in root.rglob("*")
            if p.name != "ballast.bin" and (p.name.startswith(".") and p.name != ".locks") and ".locks" not in p.parts]


# free bytes left on the tmpfs holding the cache: export's model.onnx alone needs ~250 KB, export + simplify
# ~510 KB, up to quantize-qdq ~600 KB, the whole lenet5 int8 cache ~700 KB
@pytest.mark.parametrize("leave_kb", [100, F.slow(400), F.slow(560), F.slow(660)])
def test_disk_full_in_cache_fails_in_one_line_without_partial_entries(leave_kb, fs, tmp_path):
    cache = fs / "cache"
    out = tmp_path / "out"
    F.fill(fs, leave_kb * KB)
    res = F.run_cli(F.build_args(out, *QUICK), tmp_path, cache)
    line = F.one_line_error(res)
    assert "space" in line.lower() or "disk" in line.lower(), line
    F.assert_entries_complete(cache)
    assert F.tmp_leftovers(cache) == [], F.tmp_leftovers(cache)
    assert not out.exists() or not any(out.iterdir()), f"--out was made: {list(out.iterdir())}"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")] == []
    # space again: the same cache builds the clean engine
    (fs / "ballast.bin").unlink()
    res = F.run_cli(F.build_args(out, *QUICK), tmp_path, cache)
    assert res.returncode == 0, res.describe()


@pytest.mark.parametrize("leave_kb", [F.slow(40), 82])  # 40: no room for model.onnx (77 KB); 82: for it, not for the rest
def test_disk_full_publishing_keeps_older_engine(leave_kb, fs, tmp_path, reference):
    old = reference("openvino", "fp32")
    new = reference(*QUICK)
    out = fs / "engine"
    shutil.copytree(old.out, out)
    before = F.snapshot(out)
    cache = new.warm_cache(tmp_path / "cache")  # every stage cached: only the publish writes to the full disk
    F.fill(fs, leave_kb * KB)
    res = F.run_cli(F.build_args(out, *QUICK), tmp_path, cache)
    line = F.one_line_error(res)
    assert "space" in line.lower() or "disk" in line.lower(), line
    assert F.snapshot(out) == before, "the older engine changed"
    assert _leftovers(fs) == [], _leftovers(fs)


@pytest.mark.slow
def test_disk_full_publishing_into_new_folder_leaves_nothing(fs, tmp_path, reference):
    new = reference(*QUICK)
    out = fs / "engine"
    cache = new.warm_cache(tmp_path / "cache")
    F.fill(fs, 40 * KB)
    res = F.run_cli(F.build_args(out, *QUICK), tmp_path, cache)
    F.one_line_error(res)
    assert not out.exists() or not any(out.iterdir()), sorted(p.name for p in out.iterdir())
    assert _leftovers(fs) == [], _leftovers(fs)


@pytest.mark.parametrize("stage", [F.slow("export"), "engine", F.slow("latency"), F.slow("statistics"), F.slow("simplify")])
def test_cache_folder_deleted_mid_build(stage, tmp_path):
    cache, out = tmp_path / "cache", tmp_path / "out"
    with F.Build(F.build_args(out, *QUICK), tmp_path, cache) as b:
        b.wait_for_stage(stage)
        time.sleep(0.05)
        shutil.rmtree(cache, ignore_errors=True)
        res = b.wait()
    print(f"cache deleted during {stage}: exit {res.returncode}: {res.stderr_lines[-1] if res.stderr_lines else ''}")
    assert F.TRACEBACK not in res.stderr, res.describe()
    if res.returncode == 0:
        assert F.is_complete_engine(out), res.describe()
    else:
        F.one_line_error(res)
        F.assert_out_nothing_or_complete(out)
