"""The TensorRT-bound INT8 graph of a trained detector, its accuracy measured on ONNX Runtime CPU.

A `--target tensorrt --precision int8` build hands TensorRT a symmetric Q/DQ ONNX (calibration/qdq.py,
placement as TensorRT recommends). ONNX Runtime executes symmetric Q/DQ, so that exact file's task metric
can be measured without a GPU. This runs the build's own stages (export, simplify, statistics,
quantize-qdq for target tensorrt, all through the stage cache, with the build's calibration source and
defaults) and then evaluates, on ONNX Runtime CPU, the simplified FP32 ONNX and the Q/DQ ONNX on the same
held-out split. TensorRT's kernels may round differently: this measures the quantization (ranges and
placement), not TensorRT.

usage:
  python benchmarks/tensorrt_int8_on_cpu.py --dataset build/offline [--split test] [--calib-size 300]
      [--calib-method minmax] [--cache-dir DIR] [--json OUT.json] MODEL=CHECKPOINT.pt [MODEL=CHECKPOINT.pt ...]
prints one markdown table row per model (FP32 ONNX, TensorRT INT8, drop, Q/DQ pairs).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

from enginesmith.backends.onnxruntime import Runner
from enginesmith.benchmarks.machine import run_header
from enginesmith.files import write_json_atomic
from enginesmith.pipeline.accuracy import measure
from enginesmith.pipeline.config import BuildConfig
from enginesmith.pipeline.context import BuildContext
from enginesmith.pipeline.export import export_stage
from enginesmith.pipeline.quantize import precision_artifacts
from enginesmith.pipeline.simplify import simplify_stage


def measure_model(model: str, weights: Path, dataset: Path, split: str, calib_size: int, calib_method: str | None,
                  cache_dir: Path) -> dict[str, Any]:
    """{model, fp32, int8, drop, calib_method, quantize: the quantize stage's info} for one checkpoint."""
    # validated as an ONNX Runtime build (TensorRT is not installed here), then run as the TensorRT one: the
    # stages up to quantize-qdq take the target from the config, and none of them imports TensorRT
    config = BuildConfig(model=model, target="onnxruntime", precision="int8", weights=weights, calib=dataset,
                         calib_size=calib_size, val=dataset, val_split=split, cache_dir=cache_dir)
    spec = config.validate()
    config.target = "tensorrt"
    config.calib_method = calib_method or "minmax"  # tensorrt's default (backends/targets.py)
    ctx = BuildContext(config, spec, lambda art: print(f"  {art.stage}: {'cached' if art.cached else 'built'}",
                                                       file=sys.stderr))
    simplified = simplify_stage(export_stage(ctx), ctx)
    quantized = precision_artifacts(ctx.cache, "tensorrt", "int8", simplified, ctx.calibration, ctx.record)
    assert quantized is not None and quantized.stage == "quantize-qdq"

    def metric(onnx_path: Path) -> float:
        with Runner(onnx_path, intra_op_num_threads=os.cpu_count()) as runner:
            return float(measure(lambda x: runner.infer({"images": x}), config.batch, ctx.val, ctx.preprocess)["value"])

    fp32, int8 = metric(simplified.file), metric(quantized.file)
    info = {k: quantized.manifest.get("metrics", {}).get(k) for k in ("form", "qdq_pairs", "quantized_nodes",
                                                                        "decode_inputs_kept_float")}
    return {"model": model, "fp32": fp32, "int8": int8, "drop": fp32 - int8, "calib_method": config.calib_method,
            "calib_size": calib_size, "split": split, "images": len(ctx.val), "quantize": info,
            "qdq_onnx": str(quantized.file)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoints", nargs="+", help="MODEL=CHECKPOINT.pt")
    ap.add_argument("--dataset", type=Path, required=True)
    ap.add_argument("--split", default="test")
    ap.add_argument("--calib-size", type=int, default=300)
    ap.add_argument("--calib-method", default=None)
    ap.add_argument("--cache-dir", type=Path, default=Path(os.environ.get("ENGINESMITH_CACHE", "build/.cache")))
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    rows, load = [], os.getloadavg()
    print("| model | FP32 (ONNX Runtime) | TensorRT INT8 on ONNX Runtime | drop | Q/DQ pairs |\n|---|---|---|---|---|")
    for item in args.checkpoints:
        model, _, path = item.partition("=")
        start = time.time()
        r = measure_model(model, Path(path), args.dataset, args.split, args.calib_size, args.calib_method,
                          args.cache_dir)
        r["seconds"] = round(time.time() - start, 1)
        rows.append(r)
        print(f"| {model} | {r['fp32']:.2f} | {r['int8']:.2f} | {r['drop']:.2f} | {r['quantize']['qdq_pairs']} |",
              flush=True)
    if args.json:
        write_json_atomic(args.json, {"command": " ".join(sys.argv), **run_header(), "loadavg_start": load, "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
