"""`enginesmith bench` end to end at CI scale: real builds through the pipeline, real measurements in
child processes, and results files whose rows, boxes and accuracy are checked against independent
numbers (the anchor count from the strides; top-1 from plain PyTorch)."""

from __future__ import annotations

import csv
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from enginesmith.benchmarks.bench_cli import bench

app = typer.Typer(add_completion=False)
app.command("bench")(bench)
app.command("noop")(lambda: None)  # a second command keeps typer from flattening `bench` into the app


def _bench(*args: str):
    return CliRunner().invoke(app, ["bench", *args], catch_exceptions=False)


def _png_ok(path: Path) -> bool:
    data = path.read_bytes()
    return data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR" and min(struct.unpack(">II", data[16:24])) > 100


@pytest.mark.slow  # 56 s; in CI the bench is run whole by the two tests below (top-1 against PyTorch; a failed run)
def test_quick_bench_lenet5_and_yolov3_tiny_on_onnxruntime_and_openvino(tmp_path, cache_dir):
    out = tmp_path / "results"
    result = _bench("lenet5", "yolov3-tiny@64", "--targets", "onnxruntime,openvino", "--precisions", "fp32",
                    "--batch", "1", "--quick", "--out", str(out), "--engines", str(tmp_path / "engines"),
                    "--cache-dir", str(cache_dir))
    assert result.exit_code == 0, result.output
    data = json.loads((out / "results.json").read_text())
    rows = data["rows"]
    assert [(r["model"], r["input_size"], r["target"], r["precision"], r["batch"]) for r in rows] == [
        ("lenet5", "32x32", "onnxruntime", "fp32", 1), ("lenet5", "32x32", "openvino", "fp32", 1),
        ("yolov3-tiny", "64x64", "onnxruntime", "fp32", 1), ("yolov3-tiny", "64x64", "openvino", "fp32", 1)]
    anchors = 3 * sum((64 // s) ** 2 for s in (32, 16))  # yolov3-tiny: 3 anchors per cell at strides 32 and 16 = 60
    for r in rows:
        assert r["status"] == "ok" and r["error"] is None
        assert r["fps"] > 0 and r["fps_e2e"] > 0 and r["latency_p50_ms"] <= r["latency_p99_ms"]
        assert r["iterations"] >= 3 and r["inference_ms"] > 0 and r["preprocess_ms"] > 0
        assert r["boxes"] == (anchors if r["model"] == "yolov3-tiny" else None)
        assert r["map_voc07"] is None and r["top1"] is None  # no weights, no dataset: nothing made up
        assert r["peak_rss_mb"] > r["base_rss_mb"] > 0 and r["engine_mb"] > 0 and r["build_s"] > 0
        assert r["macs"] > 0 and r["gmacs_per_s"] == pytest.approx(r["macs"] * r["fps"] / 1e9)
        probe = data["run"]["roofline"]["probes"][f"{r['target']}/{r['precision']}"]
        assert r["probe_gmacs"] == probe["gmacs_per_s"] == max(s["gmacs_per_s"] for s in probe["stacks"])
        assert r["fraction_of_probe"] == pytest.approx(r["gmacs_per_s"] / probe["gmacs_per_s"])
        assert r["speedup_vs_torch"] is None  # torch not among the targets
        assert (r["fps_throughput"] is not None) == (r["target"] == "openvino")
        assert Path(r["engine_dir"], "manifest.json").is_file()
        assert r["verify_cosine"] > 0.999  # an FP32 engine reproduces the FP32 ONNX
    # MACs by hand: LeNet-5 C1 + C3 + C5 + F6 + output; yolov3-tiny.cfg at 64x64, layer by layer (out pixels x
    # out channels x in channels x taps)
    assert rows[0]["macs"] == 28 * 28 * 6 * 25 + 10 * 10 * 16 * 6 * 25 + 120 * 16 * 25 + 84 * 120 + 10 * 84
    tiny = (64 * 64 * 16 * 3 * 9 + 32 * 32 * 32 * 16 * 9 + 16 * 16 * 64 * 32 * 9 + 8 * 8 * 128 * 64 * 9
            + 4 * 4 * 256 * 128 * 9 + 2 * 2 * 512 * 256 * 9 + 2 * 2 * 1024 * 512 * 9 + 2 * 2 * 256 * 1024
            + 2 * 2 * 512 * 256 * 9 + 2 * 2 * 255 * 512 + 2 * 2 * 128 * 256 + 4 * 4 * 256 * 384 * 9 + 4 * 4 * 255 * 256)
    assert rows[2]["macs"] == tiny
    assert data["run"]["command"].startswith("enginesmith ")
    assert set(data["run"]["roofline"]["probes"]) == {"onnxruntime/fp32", "openvino/fp32"}
    with open(out / "results.csv") as f:
        assert len(list(csv.DictReader(f))) == 4
    md = (out / "results.md").read_text()
    assert "| yolov3-tiny | — | " in md and f"| 1 | {anchors} | 64x64 | openvino | fp32 |" in md
    assert _png_ok(out / "fps_vs_map.png")
    assert "| Method | mAP | FPS | batch size | # Boxes | Input resolution | target | precision |" in result.stdout

    # the measuring process of an engine imports no torch, so its peak memory is a deployment's
    from enginesmith.benchmarks.bench import Built, make_job, measure_isolated
    from enginesmith.benchmarks.suite import plan, suite_from_args
    from enginesmith.benchmarks.timing import TimingProfile

    run = plan(suite_from_args(["yolov3-tiny@64"], ("openvino",), ("fp32",), (1,)), env={})[0][0]
    engine_dir = Path(rows[3]["engine_dir"])
    built = Built(engine_dir=engine_dir, engine_file=engine_dir / "model.xml",
                  manifest=json.loads((engine_dir / "manifest.json").read_text()))
    child = measure_isolated(make_job(run, built, TimingProfile.quick(), False, None), timeout_s=120)
    assert child["torch_imported"] is False and child["boxes"] == anchors and child["throughput"] is None


def test_bench_measures_top1_only_with_weights_and_data_and_it_matches_plain_pytorch(tmp_path, cache_dir):
    """LeNet-5 with (seeded, saved) weights on the held-out digits: top-1 of the PyTorch row equals a plain
    PyTorch loop's; the engine's is within half a point; mAP stays "—" for a classifier."""
    torch = pytest.importorskip("torch")
    from enginesmith.data.classification import classification_samples
    from enginesmith.models import registry
    from enginesmith.runtime.preprocess import preprocess

    spec = registry.get("lenet5")
    model = spec.create(seed=3)
    weights = tmp_path / "lenet5.pt"
    torch.save(model.state_dict(), weights)
    digits = classification_samples("digits", "test")
    x = np.stack([preprocess(digits.load_image(i), spec.preprocess)[0] for i in range(len(digits))])
    with torch.inference_mode():
        expected = 100.0 * float(np.mean(model(torch.from_numpy(x)).numpy().argmax(1) == digits.labels))

    out = tmp_path / "acc"
    result = _bench("lenet5", "--targets", "torch,openvino", "--precisions", "fp32", "--batch", "1", "--quick",
                    "--no-throughput", "--dataset", "digits", "--weights", str(weights), "--out", str(out),
                    "--engines", str(tmp_path / "engines"), "--cache-dir", str(cache_dir))
    assert result.exit_code == 0, result.output
    rows = {r["target"]: r for r in json.loads((out / "results.json").read_text())["rows"]}
    assert set(rows) == {"torch", "openvino"}
    assert rows["torch"]["top1"] == pytest.approx(expected, abs=1e-6)
    assert rows["openvino"]["top1"] == pytest.approx(expected, abs=0.5)
    assert rows["torch"]["accuracy_images"] == len(digits) == 360
    assert all(r["map_voc07"] is None for r in rows.values())
    assert rows["torch"]["speedup_vs_torch"] == 1.0 and rows["openvino"]["speedup_vs_torch"] > 0
    # each row's fraction is over the probe of its own target and precision, measured in this run
    roofline = json.loads((out / "results.json").read_text())["run"]["roofline"]
    assert set(roofline["probes"]) == {"torch/fp32", "openvino/fp32"}
    for target, r in rows.items():
        probe = roofline["probes"][f"{target}/fp32"]
        assert probe["error"] is None and [s["macs"] for s in probe["stacks"]] == [6_379_536_384, 6_379_536_384]
        assert probe["gmacs_per_s"] == max(s["gmacs_per_s"] for s in probe["stacks"]) > 0
        assert r["probe_gmacs"] == probe["gmacs_per_s"]
        assert r["fraction_of_probe"] == pytest.approx(r["macs"] * r["fps"] / 1e9 / probe["gmacs_per_s"])
    assert roofline["probes"]["openvino/fp32"]["stacks"][0]["inference_precision"] == "f32"
    assert rows["torch"]["weights"] == str(weights) and rows["torch"]["engine_mb"] == pytest.approx(
        sum(p.numel() * 4 for p in model.state_dict().values()) / 1e6)
    md = (out / "results.md").read_text()
    assert md.count("| lenet5 | — |") == 2  # the paper's mAP column: not measured for a classifier


@pytest.mark.parametrize("args,message", [
    (["yolov3", "--targets", "openvino,cuda"], "unknown target 'cuda'"),
    (["yolov3", "--batch", "0"], "batch '0' is not a whole number"),
    (["lenet5", "yolov3", "--weights", "w.pt"], "with several models write MODEL=PATH"),
    (["--suite", "nope.toml"], "suite file not found: nope.toml"),
    ([], "give one or more MODEL names, or --suite FILE"),
    (["yolov3", "--min-time", "-1"], "--min-time must be >= 0"),
])
def test_bench_bad_input_is_a_one_line_error_before_any_work(tmp_path, args, message, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = _bench(*args, "--out", str(tmp_path / "o"))
    assert result.exit_code == 2, result.output
    assert message in result.output.replace("\n", " ") and "Traceback" not in result.output
    assert not (tmp_path / "o").exists()


def test_a_failed_run_is_a_row_with_its_error_and_the_exit_code_says_so(tmp_path, cache_dir):
    junk = tmp_path / "lenet5.pt"
    junk.write_bytes(b"not a checkpoint")
    out = tmp_path / "failed"
    result = _bench("lenet5", "--targets", "torch,onnxruntime", "--precisions", "fp32", "--batch", "1", "--quick",
                    "--weights", str(junk), "--out", str(out), "--engines", str(tmp_path / "engines"),
                    "--cache-dir", str(cache_dir))
    assert result.exit_code == 2 and "2 of 2 runs failed" in result.output.replace("\n", " ")
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert [r["status"] for r in rows] == ["error", "error"] and all(r["fps"] is None for r in rows)
    assert all(str(junk) in r["error"] and "\n" not in r["error"] for r in rows)
    md = (out / "results.md").read_text()
    assert "## Failed runs" in md and "lenet5@32x32/onnxruntime/fp32/b1" in md
    assert json.loads((out / "results.json").read_text())["run"]["roofline"] is None  # no row measured, no probe
    assert _png_ok(out / "fps_vs_map.png")
