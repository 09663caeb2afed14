"""`enginesmith models` rows cached by a hash of the model code (models/catalog_cache.py), and the table that
prints them (cli.print_models): cached numbers equal fresh ones, a changed model file recomputes, names are never
cut."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from io import StringIO
from pathlib import Path

import pytest
from rich.console import Console

from enginesmith.models import catalog_cache, registry
from enginesmith.models.catalog import model_rows
from enginesmith.models.catalog_cache import PREFIX, cached_rows, source_files, source_fingerprint
from enginesmith.models.profile import count_macs, count_parameters

FEW = ("lenet5", "resnet18", "yolov3-tiny")


def _refuse() -> list[dict]:
    raise AssertionError("computed although the cache holds the rows")


def test_cached_rows_equal_a_fresh_profile_on_the_cpu(tmp_path):
    """The catalog measures on torch's meta device; the reference here builds each model on the CPU and counts
    with models/profile.py directly, then checks the numbers that came back through the JSON cache file."""
    specs = [registry.get(n) for n in FEW]
    key = source_fingerprint()
    first = cached_rows(lambda: model_rows(specs), key, tmp_path)
    again = {r["name"]: r for r in cached_rows(_refuse, key, tmp_path)}  # read back from the file
    assert [r["name"] for r in first] == list(FEW) and set(again) == set(FEW)
    for spec in specs:
        model = spec.create()
        row = again[spec.name]
        assert row["params"] == count_parameters(model)
        assert row["macs"] == count_macs(model, (spec.preprocess.channels, *spec.input_size))
        assert row["input_size"] == list(spec.input_size) and row["task"] == spec.task
    assert again["lenet5"]["params"] == 61_706  # LeNet-5's published 156 + 2,416 + 48,120 + 10,164 + 850
    assert again["resnet18"]["params"] == 11_689_512  # torchvision's resnet18
    assert again["yolov3-tiny"]["boxes"] == (13 * 13 + 26 * 26) * 3


def _package_copy(tmp_path: Path) -> Path:
    """enginesmith/models and runtime/preprocess.py copied under tmp_path/enginesmith (what the key reads)."""
    pkg = tmp_path / "enginesmith"
    for f in source_files():
        dest = pkg / f.relative_to(catalog_cache.PACKAGE)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(f, dest)
    return pkg


def test_a_changed_model_file_gives_another_key_and_recomputes(tmp_path):
    pkg = _package_copy(tmp_path)
    assert source_fingerprint(pkg) == source_fingerprint()  # the key names the bytes, not where they lie
    folder = tmp_path / "cache"
    calls: list[int] = []

    def compute() -> list[dict]:
        calls.append(1)
        return [{"name": f"m{len(calls)}", "params": len(calls)}]

    old_key = source_fingerprint(pkg)
    assert cached_rows(compute, old_key, folder) == [{"name": "m1", "params": 1}]
    assert cached_rows(compute, old_key, folder) == [{"name": "m1", "params": 1}] and len(calls) == 1
    for name in ("lenet.py", "layers.py"):  # a family file, and a block several families share
        path = pkg / "models" / name
        path.write_text(path.read_text().replace("def ", "def\t", 1))  # same length: the bytes count
        new_key = source_fingerprint(pkg)
        assert new_key != old_key
        rows = cached_rows(compute, new_key, folder)
        assert rows[0]["name"] == f"m{len(calls)}" and len(calls) == (2 if name == "lenet.py" else 3)
        assert sorted(p.name for p in folder.iterdir()) == [f"{PREFIX}{new_key}.json"]  # the stale file is gone
        old_key = new_key
    (pkg / "runtime" / "preprocess.py").write_text("# changed\n", encoding="utf-8")
    assert source_fingerprint(pkg) != old_key


def test_a_malformed_cache_file_is_recomputed_and_an_unwritable_folder_is_no_error(tmp_path):
    folder = tmp_path / "cache"
    folder.mkdir()
    (folder / f"{PREFIX}k.json").write_text('{"not": "rows"')
    assert cached_rows(lambda: [{"name": "a"}], "k", folder) == [{"name": "a"}]
    assert json.loads((folder / f"{PREFIX}k.json").read_text()) == [{"name": "a"}]
    blocked = tmp_path / "file"
    blocked.write_text("")
    assert cached_rows(lambda: [{"name": "b"}], "k", blocked / "sub") == [{"name": "b"}]


ROWS = [
    {"name": "faster-rcnn-vgg16-slim", "task": "detection", "input_shape": [1, 3, 320, 320], "num_classes": 16,
     "params": 8_640_000, "macs": 4_320_000_000, "boxes": 300},
    {"name": "yolov3-tiny-3l-256", "task": "detection", "input_shape": [1, 3, 256, 256], "num_classes": 16,
     "params": 9_040_000, "macs": 1_350_000_000, "boxes": 4032},
    {"name": "a-model-name-of-forty-characters-exactly", "task": "classification",
     "input_shape": [1, 3, 116, 132, 132], "num_classes": 1000, "params": 138_360_000, "macs": 30_936_510_000_000},
]


@pytest.mark.parametrize("width, terminal", [(20, True), (40, True), (80, True), (80, False), (200, False)])
def test_the_table_never_cuts_a_name_or_a_cell(width, terminal):
    from enginesmith.cli import print_models

    buf = StringIO()
    print_models(ROWS, Console(file=buf, width=width, force_terminal=terminal, color_system=None))
    lines = buf.getvalue().splitlines()
    assert "…" not in buf.getvalue()
    for r in ROWS:  # each row whole on one line: a name a user copies, a row grep finds
        (line,) = [ln for ln in lines if ln.startswith(r["name"] + " ")]
        cells = line.split()
        assert cells[:4] == [r["name"], r["task"], "x".join(map(str, r["input_shape"][1:])), str(r["num_classes"])]
    assert "30.94 T" in buf.getvalue()


def test_the_cli_reads_the_cache_and_prints_whole_names_through_a_pipe_at_80_columns(tmp_path):
    """The real command, piped, COLUMNS=80, with a cache file seeded under today's key: printed from the cache
    (no model is profiled: this runs in about a second) with every name whole."""
    folder = tmp_path / "xdg" / "enginesmith"
    folder.mkdir(parents=True)
    (folder / f"{PREFIX}{source_fingerprint()}.json").write_text(json.dumps(ROWS))
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "xdg"), "COLUMNS": "80"}
    proc = subprocess.run([sys.executable, "-m", "enginesmith.cli", "models"], env=env, capture_output=True,
                          text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    names = [ln.split()[0] for ln in proc.stdout.splitlines()[2:] if ln.strip()]
    assert names == [r["name"] for r in ROWS], proc.stdout
    assert "torch" not in subprocess.run(
        [sys.executable, "-c", "import sys, enginesmith.cli as c; from enginesmith.models.catalog_cache import "
         "registered_rows; registered_rows(); print(' '.join(m for m in sys.modules if m.startswith('torch')))"],
        env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path).stdout.split()
