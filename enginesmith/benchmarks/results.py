"""Write a benchmark's results: results.json, results.csv, results.md and fps_vs_map.png (torch-free).

One row per model x input size x target x precision x batch (a dict with the keys of COLUMNS; None
where a value was not measured). results.md has the SSD paper's table (Method, mAP, FPS, batch size,
# Boxes, Input resolution) plus target and precision, then every measured column; a cell that was
not measured reads "—", never a made-up number. fps_vs_map.png (benchmarks/plot.py) plots FPS against mAP or
top-1, one marker per engine and one label per network; `python -m enginesmith.benchmarks.results RESULTS.json`
renders it again from a results.json.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any, Sequence

from enginesmith.benchmarks.paper import paper_order_section
from enginesmith.benchmarks.suite import REFERENCE_BASELINE
from enginesmith.errors import EnginesmithError
from enginesmith.files import write_json_atomic, write_text_atomic

DASH = "—"

# (key, what it is). The csv's columns, in order; every row dict has exactly these keys.
COLUMNS: tuple[tuple[str, str], ...] = (
    ("method", "the table's Method (suite label or model name)"),
    ("model", "registered model name"),
    ("input_size", "network input HxW"),
    ("target", "torch (PyTorch eager, CPU) | torch-cuda | onnxruntime | openvino | tensorrt"),
    ("precision", "fp32 | fp16 | bf16 | int8 | mixed"),
    ("batch", "images per inference call"),
    ("status", "ok | error"),
    ("map_voc07", "VOC07 11-point mAP@0.5, points (the SSD paper's metric, computed as the VOC devkit's "
                  "voc_eval.py computes it: pixel-inclusive boxes, IoU > 0.5)"),
    ("map_all_point", "all-point AP@0.5, points"),
    ("coco_ap", "COCO AP@[.5:.95], points"),
    ("top1", "classifiers: top-1, points"),
    ("accuracy_images", "held-out images the accuracy was measured on"),
    ("fps", "inference only: images/s at the mean latency of synchronous calls"),
    ("fps_e2e", "end to end as detector.batch() runs: decoded image in, detections out, preprocessing and "
                "decode/NMS overlapped with inference (runtime/overlap.py), images/s"),
    ("e2e_over_inference", "fps_e2e / fps"),
    ("preprocess_ms", "end to end, timed apart in a sequential loop: preprocessing per image"),
    ("inference_ms", "end to end, timed apart in a sequential loop: inference per image"),
    ("postprocess_ms", "end to end, timed apart in a sequential loop: decode + NMS (detectors) or top-5 "
                       "(classifiers) per image"),
    ("fps_throughput", "OpenVINO throughput mode (several streams, async requests), images/s"),
    ("throughput_streams", "OpenVINO throughput mode: CPU streams"),
    ("throughput_requests", "OpenVINO throughput mode: infer requests in flight"),
    ("latency_p50_ms", "per call"),
    ("latency_p90_ms", "per call"),
    ("latency_p99_ms", "per call"),
    ("latency_mean_ms", "per call"),
    ("latency_std_ms", "per call, population standard deviation"),
    ("iterations", "timed calls"),
    ("boxes", "detectors: boxes before NMS per image (A in boxes [N, A, 4])"),
    ("candidates", "detectors: (box, class) pairs above the NMS score threshold per image (mean)"),
    ("speedup_vs_torch", "fps / fps of PyTorch eager FP32 (same model, size, batch, run)"),
    ("macs", "multiply-accumulates per image (conv + linear)"),
    ("gmacs_per_s", "macs x fps / 1e9"),
    ("probe_gmacs", "the roofline probe's GMAC/s on the row's own target and precision, measured in the same run "
                    "(3x3 convolution stacks; see the header)"),
    ("fraction_of_probe", "gmacs_per_s / probe_gmacs"),
    ("peak_rss_mb", "peak resident memory of the measuring process (VmHWM)"),
    ("base_rss_mb", "its resident memory before the engine was loaded"),
    ("engine_mb", "engine files on disk (PyTorch: the state dict)"),
    ("build_s", "sum of the build stages' wall times (as first built, even when cached now)"),
    ("build_cached", "every stage came from the cache in this run"),
    ("verify_cosine", "cosine similarity of the engine's raw outputs to the FP32 ONNX's on the build's verification "
                      "images (INT8 under 0.99 is reported, not fatal, in a bench)"),
    ("load_s", "engine load / compile time in the measuring process"),
    ("weights", "checkpoint, or 'untrained (seed 0)'"),
    ("dataset", "held-out data for accuracy and the real images"),
    ("engine_dir", "the engine folder"),
    ("node", "--cluster: the host that built and measured it, with the Ray node id (the header's machine otherwise)"),
    ("machine", "--cluster: that host's CPU (ISA flags, cores) and GPU"),
    ("error", "why the run failed"),
)
KEYS = tuple(k for k, _ in COLUMNS)
PAPER_COLUMNS = ("Method", "mAP", "FPS", "batch size", "# Boxes", "Input resolution", "target", "precision")
DETAIL_COLUMNS = ("Method", "input", "target", "precision", "batch", "p50 ms", "p90 ms", "p99 ms", "mean ± std ms",
                  "FPS", "E2E FPS", "E2E/inf", "pre / inf / post ms per image", "OV throughput FPS",
                  "vs PyTorch", "GMAC/s", "% of probe", "boxes", "candidates", "peak RSS MB", "engine MB",
                  "build s", "cosine to FP32", "mAP", "COCO AP", "top-1")


def empty_row() -> dict[str, Any]:
    return {k: None for k in KEYS}


# ---------------------------------------------------------------------------------------------- Pareto


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points (x, y) that no other point dominates when both are maximised, by x ascending.

    q dominates p when q.x >= p.x and q.y >= p.y and q != p in one of them; equal points are both kept.
    O(n log n): sort by y descending; p survives when its x is the largest among points of its y and
    larger than every x seen at a strictly greater y."""
    order = sorted(range(len(points)), key=lambda i: (-points[i][1], -points[i][0]))
    front: list[int] = []
    best_x_above = float("-inf")
    i = 0
    while i < len(order):
        j = i
        y = points[order[i]][1]
        while j < len(order) and points[order[j]][1] == y:
            j += 1
        group = order[i:j]
        top = points[group[0]][0]  # the group's largest x (sorted by -x within a y)
        if top > best_x_above:
            front.extend(k for k in group if points[k][0] == top)
        best_x_above = max(best_x_above, top)
        i = j
    return sorted(front, key=lambda k: (points[k][0], -points[k][1], k))


# ---------------------------------------------------------------------------------------------- cells


def _num(v: Any, digits: int) -> str:
    return DASH if v is None else f"{float(v):.{digits}f}"


def fmt_fps(v: float | None) -> str:
    """Images/s with three significant figures or so: 1234, 123.4, 12.34."""
    if v is None:
        return DASH
    v = float(v)
    return f"{v:.0f}" if v >= 1000 else f"{v:.1f}" if v >= 10 else f"{v:.2f}"


def fmt_ms(v: float | None) -> str:
    if v is None:
        return DASH
    v = float(v)
    return f"{v:.1f}" if v >= 100 else f"{v:.2f}" if v >= 1 else f"{v:.3f}"


def fmt_int(v: Any) -> str:
    return DASH if v is None else str(int(v))


def paper_cells(r: dict[str, Any]) -> list[str]:
    """One row of the paper's table: Method, mAP, FPS, batch size, # Boxes, Input resolution, target, precision."""
    return [str(r["method"]), _num(r["map_voc07"], 1), fmt_fps(r["fps"]), fmt_int(r["batch"]), fmt_int(r["boxes"]),
            str(r["input_size"]), str(r["target"]), str(r["precision"])]


SUMMARY_COLUMNS = ("Method", "input", "batch", "PyTorch FPS", "best engine", "FPS", "vs PyTorch", "E2E FPS",
                   "mAP (PyTorch)", "mAP (engine)")


def summary_rows(rows: list[dict[str, Any]]) -> list[list[str]]:
    """Per (method, input, batch): PyTorch eager FP32 beside the engine with the highest inference FPS."""
    ok = [r for r in rows if r["status"] == "ok" and r["fps"]]
    out = []
    for key in dict.fromkeys((r["method"], r["input_size"], r["batch"]) for r in ok):
        group = [r for r in ok if (r["method"], r["input_size"], r["batch"]) == key]
        torch_row = next((r for r in group if r["target"] in REFERENCE_BASELINE.values() and r["precision"] == "fp32"),
                         None)
        engines = [r for r in group if r["target"] not in REFERENCE_BASELINE.values()]
        best = max(engines, key=lambda r: r["fps"]) if engines else None
        ratio = DASH if best is None or best["speedup_vs_torch"] is None else f"{best['speedup_vs_torch']:.2f}x"
        out.append([str(key[0]), str(key[1]), str(key[2]), fmt_fps(torch_row["fps"]) if torch_row else DASH,
                    f"{best['target']} {best['precision']}" if best else DASH, fmt_fps(best["fps"]) if best else DASH,
                    ratio, fmt_fps(best["fps_e2e"]) if best else DASH,
                    _num(torch_row["map_voc07"], 1) if torch_row else DASH, _num(best["map_voc07"], 1) if best else DASH])
    return out


def detail_cells(r: dict[str, Any]) -> list[str]:
    """One row of the details table (DETAIL_COLUMNS)."""
    mean = DASH if r["latency_mean_ms"] is None else f"{fmt_ms(r['latency_mean_ms'])} ± {fmt_ms(r['latency_std_ms'])}"
    split = DASH if r["inference_ms"] is None else \
        f"{fmt_ms(r['preprocess_ms'])} / {fmt_ms(r['inference_ms'])} / {fmt_ms(r['postprocess_ms'])}"
    thr = DASH if r["fps_throughput"] is None else \
        f"{fmt_fps(r['fps_throughput'])} ({r['throughput_streams']} streams, {r['throughput_requests']} requests)"
    ratio = DASH if r["speedup_vs_torch"] is None else f"{r['speedup_vs_torch']:.2f}x"
    e2e = DASH if r["e2e_over_inference"] is None else f"{100 * r['e2e_over_inference']:.0f}%"
    peak = DASH if r["fraction_of_probe"] is None else f"{100 * r['fraction_of_probe']:.1f}%"
    gmacs = DASH if r["gmacs_per_s"] is None else f"{r['gmacs_per_s']:.1f}"
    cand = DASH if r["candidates"] is None else f"{r['candidates']:.0f}"
    return [str(r["method"]), str(r["input_size"]), str(r["target"]), str(r["precision"]), fmt_int(r["batch"]),
            fmt_ms(r["latency_p50_ms"]), fmt_ms(r["latency_p90_ms"]), fmt_ms(r["latency_p99_ms"]), mean,
            fmt_fps(r["fps"]), fmt_fps(r["fps_e2e"]), e2e, split, thr, ratio, gmacs, peak, fmt_int(r["boxes"]), cand,
            _num(r["peak_rss_mb"], 0), _num(r["engine_mb"], 1), _num(r["build_s"], 1),
            _num(r.get("verify_cosine"), 4), _num(r["map_voc07"], 1),
            _num(r["coco_ap"], 1), _num(r["top1"], 1)]


def roofline_section(roof: dict[str, Any] | None) -> list[str]:
    """results.md's account of the ceiling: each (target, precision)'s probe, per stack, with the load it ran under."""
    if not roof or not roof.get("probes"):
        return ["## Roofline probe", "", "No probe was measured (no CPU rows): the % of probe column is empty.", ""]
    stacks = roof.get("stacks") or []
    names = [s["stack"] for s in stacks]
    nodes = any(p.get("node") for p in roof["probes"].values())  # --cluster: each node's own probe
    lines = ["## Roofline probe", "",
             "The ceiling each row's \"% of probe\" divides by: stacks of 3x3 convolutions (stride 1, pad 1, + ReLU, "
             "batch 1, seeded weights) built through the row's own target, precision and quantizer and timed as the "
             "engines are, in this run (--cluster: on each row's own node, after its rows); GMAC/s = the stack's MACs / the median call; the ceiling is the higher stack; "
             "inference precision: what the runtime reports it ran the float parts at (OpenVINO's "
             "INFERENCE_PRECISION_HINT after compiling; an int8 engine's quantized layers run int8). "
             f"Alone: `{roof.get('command')}`.", "",
             *_table((*(("node",) if nodes else ()), "target", "precision", "inference precision", *(f"{n} ({s['macs'] / 1e9:.2f} GMAC)" for n, s in zip(names, stacks)),
                      "ceiling GMAC/s", "load average", "build s"),
                     [[*([str(p.get("node"))] if nodes else []), *_probe_cells(p, names)] for p in roof["probes"].values()]), ""]
    return lines


def _probe_cells(p: dict[str, Any], names: list[str]) -> list[str]:
    by = {s["stack"]: s for s in p.get("stacks") or []}
    cells = [f"{by[n]['gmacs_per_s']:.0f} GMAC/s ({fmt_ms(by[n]['p50_ms'])} ms)" if n in by else DASH for n in names]
    ceiling = f"{p['gmacs_per_s']:.0f}" if p.get("gmacs_per_s") else f"failed: {p.get('error')}"
    load = ", ".join(map(str, p.get("load_average") or [])) or "?"
    runs = next((s.get("inference_precision") for s in p.get("stacks") or [] if s.get("inference_precision")), None)
    return [str(p["target"]), str(p["precision"]), runs or DASH, *cells, ceiling, load, _num(p.get("build_s"), 1)]


def _table(header: Sequence[str], rows: list[list[str]]) -> list[str]:
    esc = lambda c: str(c).replace("|", "\\|")  # noqa: E731
    return ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|",
            *["| " + " | ".join(esc(c) for c in row) + " |" for row in rows]]


# ---------------------------------------------------------------------------------------------- render


def render_markdown(run: dict[str, Any], rows: list[dict[str, Any]], skipped: list[dict[str, str]]) -> str:
    """results.md: where and how it was measured, the paper's table, the details, failures and skips."""
    ok = [r for r in rows if r["status"] == "ok"]
    failed = [r for r in rows if r["status"] != "ok"]
    v = run.get("versions", {})
    prof = run.get("timing", {})
    lines = [f"# Benchmark: {run.get('suite', 'enginesmith bench')}", ""]
    if run.get("description"):
        lines += [str(run["description"]), ""]
    lines += [
        f"- command: `{run.get('command', '?')}`",
        f"- date: {run.get('date', '?')}, enginesmith commit {run.get('commit', '?')}",
        f"- machine: {run.get('machine', '?')}" + (f"; GPU: {run['gpu']}" if run.get("gpu") else ""),
        f"- versions: {', '.join(f'{k} {val}' for k, val in sorted(v.items()))}",
        f"- load average at the start (1/5/15 min): {', '.join(map(str, run.get('load_average') or [])) or '?'}"
        " (anything else running on the machine slows every number here)",
        "",
        ("How it was measured: each engine runs in its own process (peak RSS is that process's VmHWM). "
         if run.get("isolated", True) else
         "How it was measured: in the benchmark's own process (--in-process: no per-engine peak RSS). ")
        + ("A --quick run (CI): few iterations and at most 8 calibration images for INT8. " if run.get("quick") else "")
        + f"Warm-up ({prof.get('warmup_iterations', '?')} calls and {prof.get('warmup_s', '?')} s), then synchronous "
        f"calls on one preprocessed batch of real images until {prof.get('min_iterations', '?')} calls and "
        f"{prof.get('min_time_s', '?')} s: latency percentiles per call, FPS = batch / mean latency "
        "(inference only). End to end: the same engine fed decoded real images (uint8, original sizes), "
        "timing preprocessing, inference and decode + NMS (host NMS, score > 0.25, IoU 0.45, 100 per image) "
        "separately in a sequential loop over as many calls (the pre / inf / post ms), then the same batches "
        "through the loop detector.batch() runs, host work overlapped with inference (E2E FPS). OpenVINO's throughput mode (PERFORMANCE_HINT THROUGHPUT, the "
        "plugin's streams, its optimal number of async requests) runs for "
        f"{prof.get('throughput_s', '?')} s. mAP is VOC07 11-point AP@0.5 on the held-out split, computed as the VOC "
        "devkit's voc_eval.py computes it (pixel-inclusive boxes, IoU > 0.5), when weights and a dataset are given, else —. The torch target is PyTorch eager FP32 on the CPU, "
        "the baseline of 'vs PyTorch' (GPU targets: torch-cuda FP32). Untrained weights give real speed "
        "but no accuracy, and their score distribution sets the NMS work (see candidates).",
        "",
        *roofline_section(run.get("roofline")),
        "## Best engine per network",
        "",
        *_table(SUMMARY_COLUMNS, summary_rows(rows)),
        "",
        "## The SSD paper's table",
        "",
        *_table(PAPER_COLUMNS, [paper_cells(r) for r in ok]),
        "",
        *paper_order_section(rows),
        "## Details",
        "",
        *_table(DETAIL_COLUMNS, [detail_cells(r) for r in ok]),
    ]
    if failed:
        lines += ["", "## Failed runs", "", *_table(("run", "error"), [
            [f"{r['model']}@{r['input_size']}/{r['target']}/{r['precision']}/b{r['batch']}", str(r["error"])]
            for r in failed])]
    if skipped:
        lines += ["", "## Not run", "", *_table(("combination", "why"), [[s["key"], s["reason"]] for s in skipped])]
    lines += ["", "![FPS vs mAP](fps_vs_map.png)", ""]
    return "\n".join(lines)


def render_csv(rows: list[dict[str, Any]]) -> str:
    """results.csv: the COLUMNS in order; empty cells where nothing was measured."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(KEYS)
    for r in rows:
        w.writerow(["" if r.get(k) is None else ("true" if r[k] is True else "false" if r[k] is False else r[k])
                    for k in KEYS])
    return buf.getvalue()


def write_results(out: Path, run: dict[str, Any], rows: list[dict[str, Any]], skipped: list[dict[str, str]],
                  plot: bool = True) -> dict[str, Path]:
    """Write results.json, results.csv, results.md (and fps_vs_map.png) into `out`, each atomically."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for r in rows:
        missing = set(KEYS) ^ set(r)
        if missing:
            raise ValueError(f"result row keys differ from COLUMNS: {sorted(missing)}")
    paths = {"json": out / "results.json", "csv": out / "results.csv", "md": out / "results.md"}
    write_json_atomic(paths["json"], {"run": run, "columns": dict(COLUMNS), "rows": rows, "skipped": skipped})
    write_text_atomic(paths["csv"], render_csv(rows))
    write_text_atomic(paths["md"], render_markdown(run, rows, skipped))
    if plot:
        paths["png"] = out / "fps_vs_map.png"
        render_plot(run, rows, paths["png"])
    return paths


def render_plot(run: dict[str, Any], rows: list[dict[str, Any]], path: Path) -> None:
    """fps_vs_map.png of a run's rows (benchmarks/plot.py), titled with its suite."""
    from enginesmith.benchmarks.plot import plot_fps_vs_map

    plot_fps_vs_map(rows, path, str(run.get("suite") or "enginesmith bench"))


def load_results(path: Path) -> dict[str, Any]:
    """results.json as written by write_results."""
    return json.loads(Path(path).read_text())


def main(argv: Sequence[str] | None = None) -> Path:
    """`python -m enginesmith.benchmarks.results RESULTS.json [--out PNG]`: render the plot again from a results.json
    (default: fps_vs_map.png beside it); nothing is measured and the json is only read."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m enginesmith.benchmarks.results", description=main.__doc__)
    parser.add_argument("results", type=Path, help="a results.json written by `enginesmith bench`")
    parser.add_argument("--out", type=Path, default=None, help="the PNG to write (default: fps_vs_map.png beside it)")
    args = parser.parse_args(argv)
    data = load_results(args.results)
    out = args.out or args.results.with_name("fps_vs_map.png")
    render_plot(data.get("run") or {}, data["rows"], out)
    print(out)
    return out


if __name__ == "__main__":
    main()
