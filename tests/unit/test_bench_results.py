"""The benchmark's arithmetic and files: timing statistics, the Pareto front, the ratios (FPS over PyTorch,
GMAC/s over the roofline probe of the row's own target and precision), and results.json / results.csv / results.md agreeing row for row ("—" where nothing was measured)."""

from __future__ import annotations

import csv
import itertools
import json
import math
import struct
import time

import numpy as np
import pytest

from enginesmith.benchmarks.bench import add_ratios
from enginesmith.benchmarks.results import (DASH, DETAIL_COLUMNS, KEYS, PAPER_COLUMNS, detail_cells, empty_row,
                                            pareto_front, write_results)
from enginesmith.benchmarks.timing import TimingProfile, summarize, time_calls

# ------------------------------------------------------------------------------------------- timing


def test_summary_of_1_to_100_matches_hand_computed_values():
    s = summarize(list(range(1, 101)), batch=4)  # ms
    # linear interpolation at rank (n-1)q: p50 = 50.5, p90 = 90 + 0.1, p99 = 99 + 0.01
    assert s.p50_ms == pytest.approx(50.5) and s.p90_ms == pytest.approx(90.1) and s.p99_ms == pytest.approx(99.01)
    assert s.mean_ms == pytest.approx(50.5) and s.min_ms == 1 and s.max_ms == 100 and s.iterations == 100
    assert s.std_ms == pytest.approx(math.sqrt((100**2 - 1) / 12))  # population std of 1..n
    assert s.fps == pytest.approx(4 * 1000 / 50.5)  # images/s at the mean latency
    assert s.to_dict()["fps"] == s.fps


@pytest.mark.parametrize("seed", range(5))
def test_percentiles_match_numpy_on_skewed_samples(seed):
    a = np.random.default_rng(seed).lognormal(1.0, 0.7, size=int(np.random.default_rng(seed).integers(1, 400)))
    s = summarize(a, batch=1)
    assert [s.p50_ms, s.p90_ms, s.p99_ms] == pytest.approx(list(np.percentile(a, [50, 90, 99])))
    assert s.std_ms == pytest.approx(float(np.std(a))) and s.mean_ms == pytest.approx(float(np.mean(a)))
    assert s.p50_ms <= s.p90_ms <= s.p99_ms <= s.max_ms


def test_time_calls_warms_up_then_runs_until_min_iterations_and_min_time():
    calls = []
    profile = TimingProfile(warmup_iterations=2, warmup_s=0.0, min_iterations=4, min_time_s=0.05)
    samples = time_calls(lambda: (calls.append(1), time.sleep(0.002)), profile)
    assert len(samples) >= 4 and len(calls) == len(samples) + 2
    assert samples.sum() >= 50.0 - 3.0  # ms: ran for (about) the minimum time
    assert np.all(samples >= 1.9)  # each call slept 2 ms
    few = time_calls(lambda: None, TimingProfile(warmup_iterations=1, warmup_s=0, min_iterations=7, min_time_s=0,
                                                  max_iterations=7))
    assert len(few) == 7


def test_summary_refuses_no_samples():
    from enginesmith.errors import EnginesmithError

    with pytest.raises(EnginesmithError, match="no timed calls"):
        summarize([], batch=1)


# ------------------------------------------------------------------------------------------- Pareto


def _dominated_brute(points, i):
    xi, yi = points[i]
    return any(x >= xi and y >= yi and (x > xi or y > yi) for j, (x, y) in enumerate(points) if j != i)


@pytest.mark.parametrize("seed", range(40))
def test_pareto_front_matches_brute_force_dominance(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 30))
    # small integer grids force ties in x, in y and duplicate points
    points = [(float(x), float(y)) for x, y in rng.integers(0, 6 if seed % 2 else 50, size=(n, 2))]
    front = pareto_front(points)
    assert sorted(front) == [i for i in range(n) if not _dominated_brute(points, i)]
    assert [points[i][0] for i in front] == sorted(points[i][0] for i in front)  # by x ascending


def test_pareto_front_edge_cases():
    assert pareto_front([]) == []
    assert pareto_front([(1.0, 1.0)]) == [0]
    assert sorted(pareto_front([(1.0, 1.0), (1.0, 1.0)])) == [0, 1]  # equal points do not dominate each other
    assert pareto_front([(1.0, 5.0), (2.0, 5.0), (2.0, 1.0)]) == [1]


# ------------------------------------------------------------------------------------------- rows


def _row(method, target, precision, batch, fps, map_=None, macs=None, **kw):
    r = empty_row()
    r.update(method=method, model=method.lower(), input_size="300x300", target=target, precision=precision,
             batch=batch, status="ok", fps=fps, map_voc07=map_, macs=macs, latency_p50_ms=1000 * batch / fps,
             latency_p90_ms=1100 * batch / fps, latency_p99_ms=1200 * batch / fps, latency_mean_ms=1000 * batch / fps,
             latency_std_ms=0.5, iterations=10, fps_e2e=0.9 * fps, e2e_over_inference=0.9, preprocess_ms=0.5,
             inference_ms=1000 / fps, postprocess_ms=0.25, boxes=8732, candidates=12.0, peak_rss_mb=321.0,
             engine_mb=26.3, build_s=12.5, weights="untrained (seed 0)", **kw)
    return r


# roofline.probe_key -> the probe's GMAC/s, as Roofline.ceilings() gives them; onnxruntime/int8's probe failed
CEILINGS = {"torch/fp32": 50.0, "openvino/int8": 400.0, "openvino/fp32": 100.0, "onnxruntime/int8": None}


def test_ratios_use_the_same_models_pytorch_fp32_and_the_probe_of_the_rows_own_target_and_precision():
    rows = [_row("SSD300", "torch", "fp32", 1, 10.0, macs=2_000_000_000),
            _row("SSD300", "openvino", "int8", 1, 50.0, macs=2_000_000_000),
            _row("SSD300", "openvino", "int8", 8, 60.0, macs=2_000_000_000),  # no batch-8 baseline
            _row("SSD300", "tensorrt", "fp16", 1, 500.0, macs=2_000_000_000),  # GPU: no probe, no CUDA baseline
            _row("SSD300", "openvino", "mixed", 1, 40.0, macs=2_000_000_000),  # a mixed engine is an INT8 engine
            _row("SSD300", "onnxruntime", "int8", 1, 20.0, macs=2_000_000_000),  # its probe failed
            _row("SSD300", "openvino", "bf16", 1, 30.0, macs=2_000_000_000)]  # no bf16 probe measured
    add_ratios(rows, CEILINGS)
    assert rows[0]["speedup_vs_torch"] == 1.0 and rows[1]["speedup_vs_torch"] == 5.0
    assert rows[2]["speedup_vs_torch"] is None and rows[3]["speedup_vs_torch"] is None
    assert rows[1]["gmacs_per_s"] == pytest.approx(2.0 * 50) and rows[1]["probe_gmacs"] == 400.0
    assert rows[1]["fraction_of_probe"] == pytest.approx(100.0 / 400.0)
    assert rows[2]["fraction_of_probe"] == pytest.approx(120.0 / 400.0)
    assert rows[0]["probe_gmacs"] == 50.0 and rows[0]["fraction_of_probe"] == pytest.approx(20.0 / 50.0)
    assert rows[3]["gmacs_per_s"] == pytest.approx(1000.0) and rows[3]["fraction_of_probe"] is None
    assert rows[3]["probe_gmacs"] is None
    assert rows[4]["probe_gmacs"] == 400.0 and rows[4]["fraction_of_probe"] == pytest.approx(80.0 / 400.0)
    assert rows[5]["gmacs_per_s"] == pytest.approx(40.0) and rows[5]["fraction_of_probe"] is None
    assert rows[6]["probe_gmacs"] is None and rows[6]["fraction_of_probe"] is None


ROOFLINE = {"stacks": [{"stack": "4x conv3x3 256ch 52x52", "channels": 256, "size": 52, "convs": 4, "macs": 6_379_536_384},
                       {"stack": "4x conv3x3 512ch 26x26", "channels": 512, "size": 26, "convs": 4, "macs": 6_379_536_384}],
            "command": "python -m enginesmith.benchmarks.roofline --targets openvino --precisions int8",
            "probes": {"openvino/int8": {"target": "openvino", "precision": "int8", "gmacs_per_s": 400.0,
                                         "load_average": [0.5, 0.4, 0.3], "build_s": 6.25, "error": None,
                                         "stacks": [{"stack": "4x conv3x3 256ch 52x52", "gmacs_per_s": 400.0,
                                                     "p50_ms": 15.95, "inference_precision": "f32"},
                                                    {"stack": "4x conv3x3 512ch 26x26", "gmacs_per_s": 380.0,
                                                     "p50_ms": 16.79}]},
                       "onnxruntime/int8": {"target": "onnxruntime", "precision": "int8", "gmacs_per_s": None,
                                            "load_average": [0.5, 0.4, 0.3], "build_s": None, "stacks": [],
                                            "error": "the probe failed | here"}}}


def _md_table(text: str, heading: str) -> list[list[str]]:
    lines = text.split(heading, 1)[1].strip().splitlines()
    rows = []
    for ln in lines:
        if not ln.startswith("|"):
            if rows:
                break
            continue
        rows.append([c.strip().replace("\\|", "|") for c in ln.strip()[1:-1].split(" | ")])
    return rows


def test_json_csv_and_md_agree_row_for_row_and_unmeasured_cells_read_dash(tmp_path):
    rows = [_row("SSD300", "torch", "fp32", 1, 9.87654321, map_=None, macs=31_000_000_000),
            _row("SSD300", "openvino", "int8", 8, 123.456, map_=77.26, coco_ap=45.5, macs=31_000_000_000,
                 fps_throughput=150.5, throughput_streams=2, throughput_requests=4),
            _row("LeNet-5", "onnxruntime", "fp32", 1, 20000.0, top1=98.9)]
    failed = empty_row()
    failed.update(method="YOLOv3", model="yolov3", input_size="416x416", target="onnxruntime", precision="int8",
                  batch=1, status="error", error="the onnxruntime int8 engine failed | its check")
    rows.append(failed)
    add_ratios(rows, CEILINGS)
    run = {"suite": "unit", "command": "enginesmith bench ssd300", "roofline": ROOFLINE}
    paths = write_results(tmp_path, run, rows, [{"key": "faster-rcnn-vgg16/b8", "reason": "batch 1 only"}])

    data = json.loads(paths["json"].read_text())
    assert [r["method"] for r in data["rows"]] == ["SSD300", "SSD300", "LeNet-5", "YOLOv3"]
    assert data["run"]["command"] == "enginesmith bench ssd300" and data["skipped"][0]["reason"] == "batch 1 only"
    with open(paths["csv"]) as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == KEYS
        csv_rows = list(reader)
    assert len(csv_rows) == len(data["rows"])
    for c, j in zip(csv_rows, data["rows"]):
        assert set(j) == set(KEYS)
        for k in KEYS:
            v = j[k]
            if v is None:
                assert c[k] == "", k
            elif isinstance(v, bool):
                assert c[k] == str(v).lower()
            elif isinstance(v, (int, float)):
                assert float(c[k]) == v, k  # exact: the csv keeps every digit
            else:
                assert c[k] == v

    md = paths["md"].read_text()
    paper = _md_table(md, "## The SSD paper's table")
    assert tuple(paper[0]) == PAPER_COLUMNS
    ok = [r for r in data["rows"] if r["status"] == "ok"]
    assert len(paper) - 2 == len(ok)  # header + rule, then one line per measured engine
    by_col = [dict(zip(paper[0], line)) for line in paper[2:]]
    assert [p["Method"] for p in by_col] == [r["method"] for r in ok]
    assert [p["target"] for p in by_col] == [r["target"] for r in ok]
    assert [p["batch size"] for p in by_col] == ["1", "8", "1"]
    assert [p["mAP"] for p in by_col] == [DASH, "77.3", DASH]
    assert by_col[0]["FPS"] == "9.88" and by_col[1]["FPS"] == "123.5" and by_col[2]["FPS"] == "20000"
    assert by_col[0]["# Boxes"] == "8732" and by_col[0]["Input resolution"] == "300x300"
    details = _md_table(md, "## Details")
    assert tuple(details[0]) == DETAIL_COLUMNS
    assert details[2:] == [detail_cells(r) for r in ok]
    d = [dict(zip(DETAIL_COLUMNS, line)) for line in details[2:]]
    assert [x["COCO AP"] for x in d] == [DASH, "45.5", DASH] and [x["top-1"] for x in d] == [DASH, DASH, "98.9"]
    assert d[1]["vs PyTorch"] == DASH  # no batch-8 PyTorch row
    assert d[0]["vs PyTorch"] == "1.00x" and d[1]["OV throughput FPS"] == "150.5 (2 streams, 4 requests)"
    assert d[1]["% of probe"] == f"{100 * 31 * 123.456 / 400:.1f}%" and d[2]["% of probe"] == DASH
    probe = _md_table(md, "## Roofline probe")
    assert probe[0][:3] == ["target", "precision", "inference precision"] and probe[0][3] == "4x conv3x3 256ch 52x52 (6.38 GMAC)"
    assert probe[2][:6] == ["openvino", "int8", "f32", "400 GMAC/s (15.95 ms)", "380 GMAC/s (16.79 ms)", "400"]
    assert probe[3][2] == DASH and probe[3][5] == "failed: the probe failed | here" and ROOFLINE["command"] in md
    failed_md = _md_table(md, "## Failed runs")
    assert failed_md[2][0] == "yolov3@416x416/onnxruntime/int8/b1" and "failed | its check" in failed_md[2][1]
    assert "batch 1 only" in md.split("## Not run", 1)[1]

    png = paths["png"].read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and png[12:16] == b"IHDR"
    width, height = struct.unpack(">II", png[16:24])
    assert width > 500 and height > 300


def test_results_refuse_rows_with_unknown_keys(tmp_path):
    bad = {**empty_row(), "fsp": 1.0}
    with pytest.raises(ValueError, match="fsp"):
        write_results(tmp_path, {}, [bad], [], plot=False)


def test_every_column_is_documented_and_unique():
    assert len(KEYS) == len(set(KEYS))
    assert all(isinstance(k, str) and k for k in itertools.chain(KEYS, PAPER_COLUMNS, DETAIL_COLUMNS))


def test_best_engine_summary_picks_the_fastest_engine_beside_pytorch():
    from enginesmith.benchmarks.results import summary_rows

    def row(target, precision, fps, batch=1, map_=None, e2e=None, speedup=None):
        r = empty_row()
        r.update(method="SSD300", input_size="300x300", target=target, precision=precision, batch=batch, fps=fps,
                 status="ok", map_voc07=map_, fps_e2e=e2e, speedup_vs_torch=speedup)
        return r

    rows = [row("torch", "fp32", 4.0, map_=70.0), row("onnxruntime", "int8", 12.0, map_=69.0, e2e=11.0, speedup=3.0),
            row("openvino", "int8", 20.0, map_=69.5, e2e=18.0, speedup=5.0), row("openvino", "fp32", 9.0),
            row("openvino", "int8", 30.0, batch=8), {**row("openvino", "fp16", 99.0), "status": "error"}]
    assert summary_rows(rows) == [
        ["SSD300", "300x300", "1", "4.00", "openvino int8", "20.0", "5.00x", "18.0", "70.0", "69.5"],
        ["SSD300", "300x300", "8", "—", "openvino int8", "30.0", "—", "—", "—", "—"]]
