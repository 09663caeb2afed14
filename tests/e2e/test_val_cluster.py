"""`build-engine MODEL --val D --cluster ...`: the engine's held-out metric measured in shards, as executor jobs.

A really trained LeNet-5 on the 360 held-out digits: built with `--cluster local` (four shards, each a child
process running the engine's own runner), its accuracy stage's accuracy.json equals, key for key, the one measured
in this process without --cluster; and the two share one cache entry (the build without --cluster finds the stage
cached). Bad --cluster use through the real CLI is one line and exit 2.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from enginesmith.pipeline.artifacts import Artifact
from enginesmith.pipeline.run import BuildConfig, build_engine

from test_build_lenet5 import trained_lenet  # noqa: F401  (fixture)

KW = dict(target="onnxruntime", precision="int8", calib_size=32)


def _cli(cache_dir: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ENGINESMITH_CACHE": str(cache_dir), "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "enginesmith.cli", "build", "lenet5", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def _accuracy(ran: list[Artifact]) -> Artifact:
    (stage,) = [a for a in ran if a.stage == "accuracy"]
    return stage


def test_cluster_local_measures_the_same_metric_in_one_shared_cache_entry(trained_lenet, tmp_path, capfd):
    weights = trained_lenet[0]
    config = dict(weights=weights, val=Path("digits"), val_split="test", cache_dir=tmp_path / "cache",
                  latency_budget_s=0.2, **KW)
    sharded = build_engine(BuildConfig("lenet5", out=tmp_path / "sharded", cluster="local", **config))
    entry = _accuracy(sharded.ran)
    err = capfd.readouterr().err
    assert not entry.cached
    for k in range(1, 5):  # the measurement really ran as four shards, each in a child process
        assert f"accuracy shard {k}/4: images" in err, err[-3000:]

    shared = build_engine(BuildConfig("lenet5", out=tmp_path / "plain", **config))
    assert _accuracy(shared.ran).cached  # the key does not name --cluster: the sharded measurement is this entry

    again = build_engine(BuildConfig("lenet5", out=tmp_path / "again", rebuild=("accuracy",), **config))
    fresh = _accuracy(again.ran)
    assert not fresh.cached and fresh.folder == entry.folder  # measured afresh, in this process, unsharded
    assert "accuracy shard" not in capfd.readouterr().err
    assert json.loads((fresh.folder / "accuracy.json").read_text()) == entry.metrics  # every key, exactly
    assert fresh.metrics["images"] == 360 and sharded.accuracy == again.accuracy


@pytest.mark.parametrize("args,message", [
    (["--val", "digits", "--cluster", "nowhere"], "unknown --cluster 'nowhere': use local, ray"),
    (["--cluster", "local"], "--cluster runs the --val accuracy measurement in shards: give --val DATA"),
])
def test_bad_cluster_use_is_one_line(args, message, tmp_path):
    proc = _cli(tmp_path / "cache", tmp_path, *args, "--out", str(tmp_path / "out"))
    both = proc.stdout + proc.stderr
    assert proc.returncode == 2 and message in both, both
    assert "Traceback" not in both and not (tmp_path / "out").exists()


def test_a_worker_that_reads_other_files_fails_its_shard_in_one_line(tmp_path):
    """predict_val_shard checks what it reads against what the caller measured: the engine's cache manifest and
    the shard's labels."""
    import hashlib

    from enginesmith.errors import EnginesmithError
    from enginesmith.pipeline.accuracy_shards import predict_val_shard
    from enginesmith.runtime.preprocess import PreprocessSpec

    folder = tmp_path / "engine"
    folder.mkdir()
    (folder / "manifest.json").write_text("{}")
    sha = hashlib.sha256(b"{}").hexdigest()
    kw = dict(engine_folder=str(folder), engine_file="model.onnx", target="onnxruntime", precision="int8",
              val="digits", task="classification", split="test", preprocess=PreprocessSpec(input_size=(32, 32)),
              batch=1, start=0, stop=3)
    with pytest.raises(EnginesmithError, match=r"is not the engine this build measures \(its manifest.json differs"):
        predict_val_shard(manifest_sha256="0" * 64, expect=[0, 0, 0], **kw)
    with pytest.raises(EnginesmithError, match=r"is not the data this build measures \(images 0-2 differ\)"):
        predict_val_shard(manifest_sha256=sha, expect=[-1, -1, -1], **kw)
    with pytest.raises(EnginesmithError, match=r"does not exist on worker .*must be readable on every worker"):
        predict_val_shard(manifest_sha256=sha, expect=[0], **{**kw, "engine_folder": str(tmp_path / "gone")})


@pytest.mark.slow
def test_cluster_ray_at_a_static_batch_equals_the_in_process_metric(trained_lenet, tmp_path, capfd):
    """`--cluster ray` (a local Ray started for the build) at --batch 8: shards cut at whole batches, the last one
    padded as in one process; the accuracy.json equals the in-process one, key for key."""
    pytest.importorskip("ray")
    config = dict(weights=trained_lenet[0], val=Path("digits"), val_split="test", cache_dir=tmp_path / "cache",
                  latency_budget_s=0.2, batch=8, **KW)
    ray = _accuracy(build_engine(BuildConfig("lenet5", out=tmp_path / "ray", cluster="ray", **config)).ran)
    err = capfd.readouterr().err
    assert not ray.cached and "accuracy shard 1/" in err, err[-3000:]
    here = _accuracy(build_engine(BuildConfig("lenet5", out=tmp_path / "here", rebuild=("accuracy",), **config)).ran)
    assert not here.cached and here.folder == ray.folder
    assert json.loads((here.folder / "accuracy.json").read_text()) == ray.metrics


@pytest.mark.slow
def test_mixed_search_builds_its_steps_as_jobs_with_the_same_result(trained_lenet, tmp_path, capfd):
    """--precision mixed with --cluster local: the first step's metric is measured in shards, the later steps are
    built and measured as jobs (all of them, speculatively) on the build's one executor; the search (steps,
    metrics, drops, kept layers, ranking) equals the one built and measured step by step in this process."""
    from PIL import Image
    import numpy as np

    black = tmp_path / "black"
    black.mkdir()
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(black / "black.png")
    config = dict(weights=trained_lenet[0], val=Path("digits"), val_split="test", cache_dir=tmp_path / "cache",
                  latency_budget_s=0.2, target="onnxruntime", precision="mixed", calib=black, calib_size=1,
                  calib_method="minmax")
    sharded = build_engine(BuildConfig("lenet5", out=tmp_path / "sharded", cluster="local", **config))
    err = capfd.readouterr().err
    steps = sharded.accuracy["search"]["steps"]
    assert len(steps) >= 2 and err.count("accuracy shard 4/4: images") == 1, err[-3000:]
    assert f"mixed step {len(steps) - 1}/" in err and " built on " in err, err[-3000:]
    here = build_engine(BuildConfig("lenet5", out=tmp_path / "here", cache_dir=tmp_path / "cache-here",
                                    **{k: v for k, v in config.items() if k != "cache_dir"}))
    err = capfd.readouterr().err
    assert "accuracy shard" not in err and "mixed step" not in err
    assert here.accuracy == sharded.accuracy
    assert [a.stage for a in here.ran] == [a.stage for a in sharded.ran]  # the report lists the steps taken

