"""The --out folder: what a build may replace, what it must refuse (exit 2, one line, every byte untouched), the
old engine intact while a new one is built (SIGKILL during each stage), a read-only parent, and two builds racing
for one folder."""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from pathlib import Path

import pytest

import faults as F

QUICK = ("onnxruntime", "int8")  # the build used where the engine's kind does not matter


def _engine_manifest(schema_version=1, schema="enginesmith-engine") -> dict:
    return {"schema": schema, "schema_version": schema_version, "model": "lenet5", "engine": "model.onnx"}


def _no_stage_ran(res: F.Result) -> None:
    assert "building" not in res.stderr, f"a stage ran before the refusal:\n{res.describe()}"


# -- folders it builds into -------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", [F.slow("missing"), "empty", F.slow("missing-parents")])
def test_out_missing_or_empty_is_built_into(kind, tmp_path, reference):
    ref = reference(*QUICK)
    cache = ref.warm_cache(tmp_path / "cache")  # warm: only the publish is under test
    out = tmp_path / ("a/b/out" if kind == "missing-parents" else "out")
    if kind == "empty":
        out.mkdir()
    res = F.run_cli(F.build_args(out, *QUICK), tmp_path, cache)
    assert res.returncode == 0, res.describe()
    F.assert_same_engine(out, ref.out)
    assert F.is_complete_engine(out)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest.get("schema") == "enginesmith-engine" and isinstance(manifest.get("schema_version"), int), manifest
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(".")] == [], "staging folders left beside --out"


@pytest.mark.slow
def test_out_engine_folder_is_replaced_whole(tmp_path, reference):
    """An OpenVINO engine folder enginesmith wrote is replaced by an ONNX Runtime one: nothing of the old stays."""
    old_ref, new_ref = reference("openvino", "fp32"), reference(*QUICK)
    out = tmp_path / "out"
    shutil.copytree(old_ref.out, out)
    cache = new_ref.warm_cache(tmp_path / "cache")
    res = F.run_cli(F.build_args(out, *QUICK), tmp_path, cache)
    assert res.returncode == 0, res.describe()
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in new_ref.out.iterdir())
    F.assert_same_engine(out, new_ref.out)
    assert json.loads((out / "manifest.json").read_text())["target"] == "onnxruntime"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")] == []


# -- folders it must refuse -------------------------------------------------------------------------------------
FOREIGN = {
    "plain-files": {"notes.txt": b"my notes\n", "sub/data.bin": os.urandom(2048)},
    "manifest-without-schema": {"manifest.json": json.dumps({"model": "x", "engine": "model.onnx"}).encode(),
                                "model.onnx": b"not an engine"},
    "schema-version-not-int": {"manifest.json": json.dumps(_engine_manifest(schema_version="1")).encode(),
                               "model.onnx": b"x"},
    "other-schema": {"manifest.json": json.dumps(_engine_manifest(schema="something-else")).encode()},
    "manifest-not-json": {"manifest.json": b"{ this is not json", "model.onnx": b"x"},
    "hidden-file-only": {".keep": b""},
}


def _make_foreign(out: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_bytes(data)
    os.chmod(out / next(iter(files)), 0o640)  # modes are part of "untouched"


@pytest.mark.parametrize("kind", [k if k == "manifest-without-schema" else F.slow(k) for k in FOREIGN])
def test_out_foreign_folder_refused_untouched(kind, tmp_path):
    out = tmp_path / "out"
    _make_foreign(out, FOREIGN[kind])
    before = F.snapshot(out)
    res = F.run_cli(F.build_args(out, *QUICK), tmp_path, tmp_path / "cache")
    line = F.one_line_error(res)
    assert "--force" in line, line
    _no_stage_ran(res)
    assert F.snapshot(out) == before, "the refused folder was changed"


@pytest.mark.slow
def test_out_foreign_folder_with_force_is_replaced(tmp_path, reference):
    ref = reference(*QUICK)
    out = tmp_path / "out"
    _make_foreign(out, FOREIGN["plain-files"])
    res = F.run_cli(F.build_args(out, *QUICK, extra=("--force",)), tmp_path, ref.warm_cache(tmp_path / "cache"))
    assert res.returncode == 0, res.describe()
    assert not (out / "notes.txt").exists() and not (out / "sub").exists()
    F.assert_same_engine(out, ref.out)


@pytest.mark.parametrize("force", [F.slow(False, id="plain"), True], ids=["plain", "force"])
def test_out_is_a_file_refused_untouched(force, tmp_path):
    out = tmp_path / "engine.onnx"
    out.write_bytes(b"precious" * 100)
    before = F.snapshot(out)
    res = F.run_cli(F.build_args(out, *QUICK, extra=("--force",) if force else ()), tmp_path, tmp_path / "cache")
    F.one_line_error(res)
    _no_stage_ran(res)
    assert F.snapshot(out) == before


@pytest.mark.parametrize("where", ["cwd", F.slow("ancestor-of-cwd"), "cache", F.slow("cache-env")])
def test_out_forbidden_places_refused_even_with_force(where, tmp_path):
    """--out . / an ancestor of the working folder / the cache folder: exit 2 even with --force (which would
    otherwise replace a non-engine folder): the build would delete the folder it runs in or its own cache."""
    top = tmp_path / "top"
    cwd = top / "work" / "here"
    cwd.mkdir(parents=True)
    (cwd / "script.py").write_text("print('mine')\n")
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "keep.txt").write_text("cache content\n")
    out = {"cwd": ".", "ancestor-of-cwd": str(top), "cache": str(cache), "cache-env": str(cache)}[where]
    before_top, before_cache = F.snapshot(top), F.snapshot(cache)
    args = F.build_args(out, *QUICK, extra=("--force",))
    if where == "cache-env":  # the cache given by ENGINESMITH_CACHE instead of --cache-dir
        res = F.run_cli(args, cwd, cache)
    else:
        res = F.run_cli(args + ["--cache-dir", str(cache)], cwd, None)
    F.one_line_error(res)
    _no_stage_ran(res)
    assert F.snapshot(top) == before_top
    assert F.snapshot(cache) == before_cache


@pytest.mark.parametrize("what", ["out-parent", F.slow("cache")])
def test_read_only_folder_refused_before_any_stage(what, tmp_path):
    """The folder --out would be made in (or the stage cache) is read-only (a read-only bind mount: root ignores
    file modes): exit 2 with one line before any stage runs, nothing in it changed."""
    ro = tmp_path / "ro"
    ro.mkdir()
    (ro / "existing.txt").write_text("x")
    out, cache = (ro / "out", tmp_path / "cache") if what == "out-parent" else (tmp_path / "out", ro)
    with F.read_only(ro) as how:
        before = F.snapshot(ro)
        res = F.run_cli(F.build_args(out, *QUICK), tmp_path, cache)
        F.one_line_error(res)
        _no_stage_ran(res)
        assert F.snapshot(ro) == before, how
    assert not out.exists()


# -- the old engine stays whole while a new one is built ------------------------------------------------------
OLD_INTACT_STAGES = ["export", "simplify", "statistics", "quantize-qdq", "engine", "latency"]


@pytest.mark.parametrize("stage", [s if s == "engine" else F.slow(s)
                                   for s in OLD_INTACT_STAGES])
def test_old_engine_byte_identical_when_replacing_build_is_killed(stage, tmp_path, reference):
    old = reference("openvino", "fp32")
    out = tmp_path / "out"
    shutil.copytree(old.out, out)
    before = F.snapshot(out)
    args = F.build_args(out, *QUICK)
    with F.Build(args, tmp_path, tmp_path / "cache") as b:
        b.wait_for_stage(stage)
        time.sleep(0.05)
        b.kill()
    assert F.snapshot(out) == before, f"the old engine changed while a build killed during {stage} replaced it"


# -- two builds, one --out ------------------------------------------------------------------------------------------
# same-cache: -m slow only; separate caches is the stronger case (nothing but the flock on --out can stop it)
@pytest.mark.parametrize("caches", [F.slow("same-cache"), "separate-caches"])
def test_second_concurrent_build_into_same_out_refused(caches, tmp_path, reference):
    """`--target openvino` starts; once it prints its first building line it is frozen (SIGSTOP) so the race is
    not left to timing; `--target onnxruntime` into the same --out must exit 2 with one line saying another build
    is writing there. Then the first resumes, succeeds, and its engine is the one in the folder."""
    out = tmp_path / "out"
    first = F.Build(F.build_args(out, "openvino", "fp32"), tmp_path, tmp_path / "cache1")
    try:
        first.wait_for(r"building")
        os.killpg(first.pgid, signal.SIGSTOP)
        try:
            second_cache = tmp_path / ("cache1" if caches == "same-cache" else "cache2")
            second = F.run_cli(F.build_args(out, *QUICK), tmp_path, second_cache)
        finally:
            os.killpg(first.pgid, signal.SIGCONT)
        res1 = first.wait()
    finally:
        if first.proc.poll() is None:
            first.kill()
    line = F.one_line_error(second)
    assert "another" in line.lower() and ("writ" in line.lower() or "build" in line.lower()), line
    assert res1.returncode == 0, res1.describe()
    F.assert_same_engine(out, reference("openvino", "fp32").out, "the first build's engine")
    assert json.loads((out / "manifest.json").read_text())["target"] == "openvino"
