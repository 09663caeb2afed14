"""Compare quantizers and calibration methods per backend on one trained detector and its dataset.

    python -m enginesmith.benchmarks.quantizers MODEL --weights CKPT --dataset DIR
        [--calib-size 300] [--targets openvino,onnxruntime] [--out benchmarks/quantizers-cpu.md]

Each row is a real `build_engine` run: calibrated on the dataset's train split, its engine's VOC07
mAP measured on the test split against FP32 PyTorch by the build's own accuracy stage (budget set
wide open so every row is reported). The rows: OpenVINO with NNCF (presets, overflow fix, range
estimators), ONNX Runtime with our Q/DQ (minmax / entropy / percentile statistics), FP16 and FP32
on each. Results go to a markdown table and a json beside it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from enginesmith.backends.targets import TARGETS
from enginesmith.benchmarks.machine import run_header
from enginesmith.errors import EnginesmithError
from enginesmith.files import make_scratch
from enginesmith.pipeline.run import BuildConfig, build_engine
from enginesmith.progress import progress_bar

OPENVINO_ROWS = (
    # (precision, calib method, nncf preset, overflow fix)
    ("fp32", None, None, None),
    ("fp16", None, None, None),
    ("int8", "minmax", "performance", "enable"),
    ("int8", "minmax", "performance", "disable"),
    ("int8", "minmax", "mixed", "enable"),
    ("int8", "percentile", "performance", "enable"),
    ("int8", "entropy", "performance", "enable"),
)
ONNXRUNTIME_ROWS = (
    ("fp32", None, None, None),
    ("fp16", None, None, None),
    ("int8", "minmax", None, None),
    ("int8", "entropy", None, None),
    ("int8", "percentile", None, None),
)


@dataclass(frozen=True)
class Row:
    target: str
    precision: str
    method: str | None
    preset: str | None
    overflow_fix: str | None

    @property
    def quantizer(self) -> str:
        if self.precision != "int8":
            return "-"
        if TARGETS[self.target].int8_quantizer == "nncf":
            return f"NNCF {self.preset}, overflow fix {self.overflow_fix}"
        return "Q/DQ (ORT QDQQuantizer, our statistics)"


def rows_for(targets: list[str]) -> list[Row]:
    table = {"openvino": OPENVINO_ROWS, "onnxruntime": ONNXRUNTIME_ROWS}
    return [Row(t, *r) for t in targets for r in table[t]]


def run_row(row: Row, model: str, weights: Path, dataset: Path, calib_size: int, cache: Path, work: Path) -> dict[str, Any]:
    config = BuildConfig(model, target=row.target, precision=row.precision, weights=weights, calib=dataset,
                         calib_size=calib_size, val=dataset, val_split="test", accuracy_budget=100.0,
                         cache_dir=cache, out=work / "engine", latency_budget_s=3.0)
    if row.method:
        config.calib_method = row.method
    if row.preset:
        config.nncf_preset = row.preset
    if row.overflow_fix:
        config.overflow_fix = row.overflow_fix
    t0 = time.perf_counter()
    base = {"target": row.target, "precision": row.precision, "quantizer": row.quantizer, "method": row.method or "-"}
    seen: dict[str, Any] = {}  # every stage the build ran, the statistics pass included
    try:
        result = build_engine(config, on_stage=lambda a: seen.__setitem__(a.stage, a))
    except EnginesmithError as e:  # one failed configuration is a row, not the end of the comparison
        return {**base, "map_voc07": None, "fp32_pytorch": None, "drop": None, "calibration_s": 0,
                "calibration_images": calib_size, "engine_fps_b1": None, "build_wall_s": None, "engine_mb": 0,
                "error": str(e)}
    wall = time.perf_counter() - t0
    stages = {**seen, **{a.stage: a for a in result.stages}}
    calib_s = sum(stages[s].wall_time_s for s in ("statistics", "quantize-nncf", "quantize-qdq") if s in stages)
    acc = result.accuracy or {}
    lat = result.latency.metrics if result.latency else {}
    verify = stages["engine"].metrics.get("verify", {})
    return {
        **base, "cosine": verify.get("cosine"), "map_voc07": acc.get("engine"), "fp32_pytorch": acc.get("fp32_pytorch"), "drop": acc.get("drop"),
        "calibration_s": round(calib_s, 1), "calibration_images": calib_size if row.precision == "int8" else 0,
        "engine_fps_b1": lat.get("engine", {}).get("fps"), "build_wall_s": round(wall, 1),
        "engine_mb": round(stages["engine"].metrics.get("engine_bytes", 0) / 1e6, 2),
    }


def render(header: dict[str, Any], command: str, model: str, results: list[dict[str, Any]]) -> str:
    v = header["versions"]
    lines = [
        f"# Quantizers and calibration methods per backend: {model}", "",
        f"- command: `{command}`",
        f"- date: {header['date']}, enginesmith commit {header['commit']}",
        f"- machine: {header['machine']}",
        f"- versions: {', '.join(f'{k} {val}' for k, val in sorted(v.items()))}",
        "- mAP: VOC07 11-point AP@0.5 on the test split, measured by the build's accuracy stage; drop = FP32 PyTorch "
        "minus engine, in points. Calibration: the train split. FPS: batch 1, the build's latency check.",
        "- cosine: the engine's raw outputs against the FP32 ONNX on the build's verification images (the build's "
        "numeric check; with --val an INT8 engine is judged by the metric, so a cosine under 0.99 is reported, not fatal).",
        "", "| target | precision | quantizer | calibration | mAP | drop | cosine | calibration s | FPS b1 | engine MB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        m = "-" if r["map_voc07"] is None else f"{r['map_voc07']:.2f}"
        d = "-" if r["drop"] is None else f"{r['drop']:+.2f}"
        fps = "-" if r["engine_fps_b1"] is None else f"{r['engine_fps_b1']:.1f}"
        cos = "-" if r.get("cosine") is None else f"{r['cosine']:.4f}"
        if r.get("error"):
            m, d = "failed", r["error"][:120]
        lines.append(f"| {r['target']} | {r['precision']} | {r['quantizer']} | {r['method']} | {m} | {d} | {cos} | "
                     f"{r['calibration_s']} | {fps} | {r['engine_mb']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--weights", type=Path, required=True)
    ap.add_argument("--dataset", type=Path, required=True)
    ap.add_argument("--calib-size", type=int, default=300)
    ap.add_argument("--targets", default="openvino,onnxruntime")
    ap.add_argument("--cache-dir", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/quantizers-cpu.md"))
    args = ap.parse_args()

    header = run_header()
    work = make_scratch("es-quant")
    cache = args.cache_dir or work / "cache"
    rows = rows_for(args.targets.split(","))
    results = []
    try:
        with progress_bar("quantizer comparison", len(rows)) as update:
            for row in rows:
                r = run_row(row, args.model, args.weights, args.dataset, args.calib_size, cache, work)
                results.append(r)
                print(json.dumps(r), flush=True)
                update(1)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    command = f"python -m enginesmith.benchmarks.quantizers {' '.join(sys.argv[1:])}"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(render(header, command, args.model, results))
    args.out.with_suffix(".json").write_text(json.dumps({**header, "command": command, "model": args.model,
                                                         "rows": results}, indent=1))
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
