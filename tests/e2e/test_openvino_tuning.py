"""The hand-tuned OpenVINO comparison (benchmarks/openvino_tuning.py) on real LeNet-5 engines at CI scale:
every configuration of the grid is compiled and timed, numerics are compared to the FP32 IR, and the
summary's best rows and ratios agree with a recomputation from the trials."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from enginesmith.benchmarks.bench_cli import bench
from enginesmith.benchmarks.openvino_tuning import config_grid, cosine, engines_from_results, main, min_cosine
from enginesmith.errors import EnginesmithError

app = typer.Typer(add_completion=False)
app.command("bench")(bench)
app.command("noop")(lambda: None)


def test_config_grid_covers_hints_threads_pinning_and_streams():
    grid = list(config_grid(2))
    sync = [c for m, c in grid if m == "sync"]
    asyn = [c for m, c in grid if m == "async"]
    assert len(sync) == 3 * 2 * 2 and len(asyn) == 3 * 2
    assert {(c["INFERENCE_PRECISION_HINT"], c["INFERENCE_NUM_THREADS"], c["ENABLE_CPU_PINNING"]) for c in sync} == {
        (h, t, p) for h in ("f32", "bf16", "f16") for t in (1, 2) for p in (True, False)}
    assert {(c["INFERENCE_PRECISION_HINT"], c["NUM_STREAMS"]) for c in asyn} == {
        (h, s) for h in ("f32", "bf16", "f16") for s in (1, 2)}


def test_cosine_matches_the_definition():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=50), rng.normal(size=50)
    assert cosine(a, b) == pytest.approx(sum(a * b) / (sum(a * a) ** 0.5 * sum(b * b) ** 0.5))
    assert cosine(a, 3 * a) == pytest.approx(1.0) and cosine(a, -a) == pytest.approx(-1.0)
    assert cosine(np.zeros(3), np.zeros(3)) == 1.0 and cosine(np.zeros(3), np.ones(3)) == 0.0


def test_min_cosine_sees_changed_scores_beside_large_boxes():
    """Boxes in pixels dwarf scores in [0, 1]: over the concatenation a changed score vector barely moves
    the cosine, output by output it shows."""
    rng = np.random.default_rng(2)
    boxes, scores = rng.uniform(0, 300, 4000), rng.uniform(0, 1, 2000)
    changed = rng.permutation(scores)
    assert cosine(np.concatenate([boxes, scores]), np.concatenate([boxes, changed])) > 0.99
    assert min_cosine([boxes, changed], [boxes, scores]) == pytest.approx(cosine(changed, scores))
    assert cosine(changed, scores) < 0.8
    with pytest.raises(EnginesmithError, match="1 outputs against 2"):
        min_cosine([boxes], [boxes, scores])


@pytest.mark.slow  # 28 s: a bench then the tuning sweep; the sweep's pieces are checked by the tests above
def test_tuning_lenet5_fp32_and_int8(tmp_path, cache_dir):
    out = tmp_path / "bench"
    result = CliRunner().invoke(app, ["bench", "lenet5", "--targets", "onnxruntime,openvino", "--precisions",
                                      "fp32,int8", "--batch", "1", "--quick", "--no-throughput", "--out", str(out),
                                      "--engines", str(tmp_path / "engines"), "--cache-dir", str(cache_dir)],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    results = json.loads((out / "results.json").read_text())
    with pytest.raises(EnginesmithError, match="no measured batch-1 engine of yolov3"):
        engines_from_results(results, "yolov3", None)
    size, refs = engines_from_results(results, "lenet5", None)
    assert size == "32x32" and {(r.target, r.precision) for r in refs} == {
        ("onnxruntime", "fp32"), ("onnxruntime", "int8"), ("openvino", "fp32"), ("openvino", "int8")}

    assert main([str(out / "results.json"), "lenet5", "--out", str(tmp_path / "t"), "--min-time", "0.05"]) == 0
    data = json.loads((tmp_path / "t" / "tuning-lenet5-32x32.json").read_text())
    trials = data["trials"]
    shipped = [t for t in trials if t["who"] == "enginesmith"]
    hand = [t for t in trials if t["who"] == "hand-tuned"]
    assert len(shipped) == 4 + 2  # every engine sync, the two OpenVINO engines also in throughput mode
    assert len(hand) == 2 * len(list(config_grid(os.cpu_count() or 1)))
    assert all(t["fps"] and t["fps"] > 0 and t["error"] is None for t in trials)
    # numerics: the FP32 IR at f32 is the reference itself; INT8 engines differ from it, but not by much
    f32_fp32 = [t for t in hand if t["engine"] == "openvino fp32" and t["config"]["INFERENCE_PRECISION_HINT"] == "f32"]
    assert f32_fp32 and all(t["cosine"] == pytest.approx(1.0, abs=1e-6) for t in f32_fp32)
    int8 = [t for t in shipped if t["engine"].endswith("int8")]
    assert int8 and all(0.9 < t["cosine"] < 1.0 - 1e-9 for t in int8)
    # the summary is the best of each side, recomputed here
    for s in data["summary"]:
        def best(who):
            pool = [t for t in trials if t["who"] == who and (s["mode"] == "either" or t["mode"] == s["mode"])
                    and (s["hints"] != "f32 only" or t["config"].get("INFERENCE_PRECISION_HINT", "f32") == "f32")]
            return max(t["fps"] for t in pool)
        assert s["enginesmith"]["fps"] == best("enginesmith") and s["hand_tuned"]["fps"] == best("hand-tuned")
        assert s["ratio"] == pytest.approx(best("enginesmith") / best("hand-tuned"))
    md = (tmp_path / "t" / "tuning-lenet5-32x32.md").read_text()
    assert md.count("| hand-tuned |") == len(hand)
    assert "python -m enginesmith.benchmarks.openvino_tuning " + str(out / "results.json") + " lenet5" in md
