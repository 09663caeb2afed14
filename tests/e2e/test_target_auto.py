"""`build-engine MODEL --target auto` on a really trained LeNet-5 with a calibration set that ruins INT8 (one
black image), so the accuracy judge has work: every INT8 candidate must be rejected by the task metric, the
mixed search must follow it on the same target, OpenVINO's thread counts must be measured on its fastest passing
candidate, and the winner must be the fastest that passed, its settings in the published manifest.

The published engine's top-1 and PyTorch's are computed here independently (test_build_lenet5's helpers); the
candidate list is written out from this machine's CPU flags (/proc/cpuinfo), not taken from the code."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from enginesmith.benchmarks.auto_target import AUTO_FILE, build_auto, candidates
from enginesmith.benchmarks.timing import TimingProfile
from enginesmith.pipeline.run import BuildConfig

from test_bf16_build import BF16_CPU
from test_build_lenet5 import _engine_top1, _torch_top1, trained_lenet  # noqa: F401  (fixture)

CPU_CANDIDATES = ["openvino/fp32", "openvino/fp16", *(["openvino/bf16"] if BF16_CPU else []), "openvino/int8",
                  "onnxruntime/fp32", "onnxruntime/fp16", "onnxruntime/int8"]


def _gpu_tensorrt() -> bool:
    try:
        import tensorrt  # noqa: F401
    except Exception:
        return False
    return True


def test_candidates_are_what_this_machine_runs():
    runnable, not_run = candidates("latency")
    assert [c.key for c in runnable if c.target != "tensorrt"] == [f"{k}/b1" for k in CPU_CANDIDATES]
    if not _gpu_tensorrt():
        assert [o.candidate.key for o in not_run] == [*([] if BF16_CPU else ["openvino/bf16/b1"]), "tensorrt/any/b1"]
        assert "TensorRT" in not_run[-1].reason and (BF16_CPU or "bf16 instructions" in not_run[0].reason)
    runnable8, _ = candidates("throughput")
    assert [c.key for c in runnable8 if c.target != "tensorrt"] == [f"{k}/b{b}" for k in CPU_CANDIDATES for b in (1, 8)]


@pytest.fixture(scope="module")
def black_calibration(tmp_path_factory) -> Path:
    from PIL import Image

    folder = tmp_path_factory.mktemp("black")
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(folder / "black.png")
    return folder


@pytest.fixture(scope="module")
def auto_run(trained_lenet, black_calibration, tmp_path_factory):
    weights, digits, model, _ = trained_lenet
    root = tmp_path_factory.mktemp("auto")
    config = BuildConfig("lenet5", weights=weights, val=Path("digits"), val_split="test", calib=black_calibration,
                         calib_size=1, cache_dir=root / "cache", out=root / "out", latency_budget_s=0.1)
    lines: list[str] = []
    out, outcomes = build_auto(config, "latency", calib_method="minmax", profile=TimingProfile.quick(),
                               echo=lines.append)
    return out, outcomes, lines


def test_int8_is_rejected_by_the_metric_and_mixed_is_tried_on_the_same_target(auto_run):
    out, outcomes, lines = auto_run
    record = json.loads((out / AUTO_FILE).read_text())
    status = {c["candidate"]: c for c in record["candidates"]}
    for target in ("openvino", "onnxruntime"):
        int8 = status[f"{target}/int8/b1"]
        assert int8["status"] == "rejected" and "exceeds --accuracy-budget 0.5" in int8["reason"], int8
        assert f"{target}/mixed/b1" in status, "no mixed search after a rejected INT8"
        order = list(status)
        assert order.index(f"{target}/mixed/b1") == order.index(f"{target}/int8/b1") + 1
    expected = {f"{k}/b1" for k in CPU_CANDIDATES} | {"openvino/mixed/b1", "onnxruntime/mixed/b1"}
    assert expected <= set(status)
    # OpenVINO's INFERENCE_NUM_THREADS: 1, half and all of this process's CPUs, on its fastest passing candidate only
    cores = len(os.sched_getaffinity(0))
    ov = [c for c in record["candidates"] if c["candidate"].startswith("openvino/") and c["status"] in ("winner", "passed")
          and "num_threads" not in c["candidate"]]
    fastest_ov = min(ov, key=lambda c: c["latency_ms"])["candidate"]
    threads = {f"{fastest_ov}/num_threads={n}" for n in {1, max(1, cores // 2), cores}}
    assert {k for k in status if "num_threads" in k} == threads
    for k in threads:
        assert status[k]["metric"] == status[fastest_ov]["metric"] and status[k]["latency_ms"] > 0
    assert any(line.startswith("auto: openvino/fp32/b1: ") for line in lines)  # progress, one line per step


def test_the_winner_is_the_fastest_that_passed_and_is_published_whole(auto_run, trained_lenet):
    from enginesmith import runtime
    from enginesmith.models import registry

    out, outcomes, _ = auto_run
    weights, digits, model, _ = trained_lenet
    record = json.loads((out / AUTO_FILE).read_text())
    passed = [c for c in record["candidates"] if c["status"] in ("winner", "passed")]
    assert passed and all(c["latency_ms"] and c["metric"] is not None and c["drop"] <= 0.5 for c in passed)
    fastest = min(passed, key=lambda c: c["latency_ms"])
    assert record["winner"] == fastest["candidate"] == next(c["candidate"] for c in passed if c["status"] == "winner")
    manifest = json.loads((out / "manifest.json").read_text())
    chosen = record["settings"]
    assert record["winner"].startswith(f"{chosen['target']}/{chosen['precision']}/b{chosen['batch']}")
    assert (manifest["target"], manifest["precision"], manifest["input"]["shape"][0]) == (
        chosen["target"], chosen["precision"], chosen["batch"])
    assert manifest.get("runtime", {}) == chosen["runtime"]
    assert bool(chosen["runtime"]) == ("num_threads=" in record["winner"])
    # the published engine's metric, measured here, is the one the winner was judged by
    fp32 = 100 * _torch_top1(model, digits.test_images, digits.test_labels, registry.get("lenet5").preprocess)
    engine = 100 * _engine_top1(out, digits.test_images, digits.test_labels)
    assert fastest["metric"] == pytest.approx(engine, abs=1e-6)
    assert fastest["drop"] == pytest.approx(fp32 - engine, abs=1e-6)
    report = (out / "report.md").read_text()
    assert "## --target auto (latency)" in report and all(c["candidate"] in report for c in record["candidates"])
    with runtime.load(out) as classifier:  # the app's path: the runtime runs what was published
        got = [classifier(image)[0].class_id for image in digits.test_images[:50]]
    assert np.mean(np.array(got) == digits.test_labels[:50]) >= 0.9
    left = [p.name for p in out.parent.iterdir() if p.name != out.name and p.name.startswith(f".{out.name}")]
    assert left == [], f"candidate folders left beside --out: {left}"


def test_the_runtime_runs_with_the_manifests_settings(tmp_path, cache_dir):
    """runtime.load and stream() compile with the manifest's num_threads / num_streams, as OpenVINO reports them."""
    from enginesmith import runtime
    from enginesmith.pipeline.run import build_engine

    out = tmp_path / "ov"
    build_engine(BuildConfig("lenet5", target="openvino", precision="fp32", cache_dir=cache_dir, out=out,
                             latency_budget_s=0.1, calib_size=4))
    image = np.full((32, 32), 128, np.uint8)
    cores = len(os.sched_getaffinity(0))
    with runtime.load(out) as plain:
        default_threads = int(plain._runner._compiled.get_property("INFERENCE_NUM_THREADS"))
        reference = plain(image)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["runtime"] = {"num_threads": 1, "num_streams": 1}
    (out / "manifest.json").write_text(json.dumps(manifest))
    with runtime.load(out) as tuned:
        assert int(tuned._runner._compiled.get_property("INFERENCE_NUM_THREADS")) == 1
        assert tuned(image)[0].class_id == reference[0].class_id
        assert [r[0].class_id for r in tuned.stream([image] * 3)] == [reference[0].class_id] * 3
        assert int(str(tuned._async._compiled.get_property("NUM_STREAMS"))) == 1
    if cores > 1:  # the setting changed something: the plugin's own choice uses every core
        assert default_threads != 1


@pytest.mark.parametrize("args,message", [
    (["--target", "auto", "--precision", "int8"], "--target auto chooses the precision and batch itself"),
    (["--target", "auto", "--batch", "8"], "drop --batch/--dynamic-batch"),
    (["--objective", "throughput"], "--objective chooses what --target auto optimises"),
    (["--target", "auto", "--objective", "fastest"], "unknown --objective 'fastest'; choose latency or throughput"),
])
def test_auto_options_are_refused_in_one_line(args, message, tmp_path):
    env = {**os.environ, "ENGINESMITH_CACHE": str(tmp_path / "cache"), "COLUMNS": "300"}
    proc = subprocess.run([sys.executable, "-m", "enginesmith.cli", "build", "lenet5", *args, "--out",
                           str(tmp_path / "out")], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and message in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr and not (tmp_path / "out").exists()
