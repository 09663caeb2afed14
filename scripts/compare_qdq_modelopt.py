"""Where NVIDIA ModelOpt puts Q/DQ and where enginesmith's TensorRT form does, node by node (a developer tool).

usage: python scripts/compare_qdq_modelopt.py [--models resnet50 yolov3 ssd300] [--venv /tmp/modelopt-venv]
           [--work /tmp/qdq-compare] [--calib-images 8] [--out benchmarks/qdq-placement-modelopt.md]

ModelOpt (nvidia-modelopt[onnx]==0.47.0) is far too heavy to depend on and pins its own onnx/onnxruntime, so
it is installed into a throwaway virtualenv (--venv; kept for reruns, delete it when done) and run there by
subprocess. For each model the script
1. exports it with enginesmith (`build-engine MODEL --target onnxruntime --precision fp32`, seeded weights):
   that engine is the simplified ONNX, the file the TensorRT int8 path quantizes (checked by its sha256);
2. preprocesses --calib-images built-in photos as the pipeline does and saves them as .npy;
3. quantizes it with ours (qdq.calibration_tensors -> minmax ranges -> quantize_qdq(symmetric=True), what
   the pipeline's statistics and quantize-qdq stages run for --target tensorrt) and with ModelOpt
   (quantize(quantize_mode="int8", calibration_method="max", calibration_eps=["cpu"],
   high_precision_dtype="fp32"): its default placement, the rest of the graph kept fp32);
4. compares, for every node of the float graph (matched by name: both tools keep node names), which inputs
   are fed by a DequantizeLinear and whether a quantized weight is per channel (and on which axis).
The report (--out) holds the command, date, machine, versions, commit, a table per model and every
disagreement with its reason. Not in CI: it downloads about 2 GB (ModelOpt pulls onnxruntime-gpu and cupy).
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import platform
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
MODELOPT_VERSION = "0.47.0"
MODELOPT = f"nvidia-modelopt[onnx]=={MODELOPT_VERSION}"
MODELS = ("resnet50", "yolov3", "ssd300")
DECODE_PATTERN = "/decode/"
# Run in ModelOpt's venv: argv = float ONNX, calibration .npy, output ONNX.
MODELOPT_WORKER = """
import os, shutil, sys, numpy as np
from modelopt.onnx.quantization import quantize
src, npy, out = sys.argv[1:4]
work = out + ".work"
os.makedirs(work, exist_ok=True)
local = os.path.join(work, "model.onnx")
shutil.copyfile(src, local)  # ModelOpt writes its intermediate files beside the model it reads
quantize(local, quantize_mode="int8", calibration_data=np.load(npy), calibration_method="max",
         calibration_eps=["cpu"], output_path=out, high_precision_dtype="fp32", log_level="WARNING")
shutil.rmtree(work)
"""
VERSIONS_WORKER = """
import importlib.metadata as m
for p in ("nvidia-modelopt", "onnx", "onnxruntime-gpu", "onnxruntime", "onnx-graphsurgeon", "torch", "numpy"):
    try: print(p, m.version(p))
    except m.PackageNotFoundError: pass
"""
DECODE_REASON = ("decode: kept float by design (DESIGN.md, Precision: the decode and the heads' raw outputs "
                 "stay float); ModelOpt quantizes its two-activation Mul like any other")


def run(cmd: list[str], **kw: Any) -> str:
    """Run `cmd`, raising with its output tail when it fails; return its stdout."""
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if r.returncode != 0:
        raise SystemExit(f"failed ({r.returncode}): {' '.join(cmd)}\n{(r.stdout + r.stderr)[-3000:]}")
    return r.stdout


def ensure_modelopt(venv: Path, torch_spec: str) -> Path:
    """The python of a virtualenv holding ModelOpt (created and installed on first use)."""
    py = venv / "bin" / "python"
    probe = [str(py), "-c", "import modelopt.onnx.quantization, modelopt; print(modelopt.__version__)"]
    if py.exists() and subprocess.run(probe, capture_output=True, text=True).stdout.strip() == MODELOPT_VERSION:
        return py
    print(f"installing {MODELOPT} into {venv} (about 2 GB)", flush=True)
    run([sys.executable, "-m", "venv", str(venv)])
    run([str(py), "-m", "pip", "install", "-q", torch_spec])  # first, so ModelOpt's torch>=2.8 is this one
    run([str(py), "-m", "pip", "install", "-q", MODELOPT])
    return py


def export_fp32(model: str, work: Path) -> Path:
    """The simplified FP32 ONNX of `model` (seeded weights), via the pipeline's onnxruntime fp32 build, whose
    engine is a copy of the simplify stage's output: checked against that cache entry's sha256."""
    out, cache = work / f"{model}-fp32", work / "cache"
    build = Path(sys.executable).parent / "build-engine"
    run([str(build), model, "--target", "onnxruntime", "--precision", "fp32", "--out", str(out),
         "--cache-dir", str(cache), "--force"])
    manifest = json.loads((out / "manifest.json").read_text())
    key = next(s["key"] for s in manifest["stages"] if s["stage"] == "simplify")
    entry = json.loads((cache / "simplify" / key[:24] / "manifest.json").read_text())
    engine = out / manifest["engine"]
    if hashlib.sha256(engine.read_bytes()).hexdigest() != entry["content"]["model.onnx"]["sha256"]:
        raise SystemExit(f"{engine} is not the simplify stage's output")
    return engine


def calibration_npy(engine: Path, count: int, npy: Path) -> Any:
    """`count` built-in photos preprocessed with the engine's spec, saved (N, C, H, W) to `npy`; returns the
    batch factory the statistics use (batch 1, as the pipeline for a batch-1 engine)."""
    import numpy as np

    from enginesmith.calibration.sources import calibration_batches, calibration_source
    from enginesmith.runtime.preprocess import PreprocessSpec

    spec = PreprocessSpec.from_dict(json.loads((engine.parent / "manifest.json").read_text())["preprocess"])
    x = np.concatenate(list(calibration_batches(calibration_source(None, "photos", count), spec, 1)))
    np.save(npy, x)
    return lambda: (x[i:i + 1] for i in range(len(x)))


def quantize_ours(engine: Path, batches: Any, out: Path) -> dict[str, Any]:
    """What the pipeline's statistics + quantize-qdq stages do for --target tensorrt (minmax, its default)."""
    from enginesmith.calibration.qdq import calibration_tensors, quantize_qdq
    from enginesmith.calibration.statistics import activation_ranges

    names = calibration_tensors(engine, symmetric=True, exclude_patterns=(DECODE_PATTERN,))
    ranges = activation_ranges(engine, batches, names, "minmax")
    return quantize_qdq(engine, out, ranges, symmetric=True, exclude_patterns=(DECODE_PATTERN,))


@dataclass
class NodeQ:
    """One compute node's quantization: input position -> "act", or "w/axis=N" | "w/tensor" for a weight."""

    op: str
    inputs: dict[int, str] = field(default_factory=dict)

    def describe(self) -> str:
        return ", ".join(f"in{k}:{v}" for k, v in sorted(self.inputs.items())) or "float"


def placement(path: Path) -> tuple[dict[str, NodeQ], dict[str, int]]:
    """Per node (Q/DQ and Constant nodes left out), which inputs a DequantizeLinear feeds; and counts of Q/DQ
    nodes and of non-zero zero points. A weight is an initializer behind the DQ, directly (int8 weights) or
    through a QuantizeLinear (ModelOpt keeps float weights with a Q/DQ pair)."""
    import onnx
    from onnx import numpy_helper

    g = onnx.load(str(path)).graph
    producer = {o: n for n in g.node for o in n.output}
    inits = {i.name: i for i in g.initializer}
    nodes = {}
    for n in g.node:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear", "Constant"):
            continue
        q = NodeQ(n.op_type)
        for k, name in enumerate(n.input):
            dq = producer.get(name)
            if dq is not None and dq.op_type == "DequantizeLinear":
                q.inputs[k] = _input_kind(dq, producer, inits)
        nodes[n.name] = q
    qdq = [n for n in g.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    nonzero = sum(1 for n in qdq if len(n.input) > 2 and n.input[2] in inits
                  and numpy_helper.to_array(inits[n.input[2]]).any())
    return nodes, {"QuantizeLinear": sum(n.op_type == "QuantizeLinear" for n in qdq),
                   "DequantizeLinear": sum(n.op_type == "DequantizeLinear" for n in qdq), "nonzero_zero_points": nonzero}


def _input_kind(dq: Any, producer: dict[str, Any], inits: dict[str, Any]) -> str:
    """"act" for an activation, "w/axis=N" or "w/tensor" for a weight (a constant behind the DQ)."""
    src = dq.input[0]
    q = producer.get(src)
    origin = q.input[0] if q is not None and q.op_type == "QuantizeLinear" else src
    if origin not in inits:
        return "act"
    scale = inits.get(dq.input[1])
    if scale is None or len(scale.dims) == 0 or scale.dims[0] == 1:
        return "w/tensor"
    return f"w/axis={next((a.i for a in dq.attribute if a.name == 'axis'), 1)}"


def decode_region(engine: Path) -> set[str]:
    """The nodes our TensorRT form keeps float by design: the decode and the layout ops that feed only it."""
    import onnx

    from enginesmith.calibration.qdq import decode_feeders
    from enginesmith.calibration.statistics import decode_node_names

    g = onnx.load(str(engine), load_external_data=False).graph
    return decode_feeders(g, decode_node_names(g, (DECODE_PATTERN,)))


@dataclass
class Comparison:
    model: str
    per_op: dict[str, Counter] = field(default_factory=dict)
    disagreements: list[tuple[str, str, str, str, str]] = field(default_factory=list)  # node, op, MO, ours, why
    counts: dict[str, dict[str, int]] = field(default_factory=dict)


def compare(model: str, engine: Path, mo: Path, ours: Path) -> Comparison:
    """Node by node: agreement when both quantize the same inputs the same way (weights: same granularity)."""
    (a, ca), (b, cb) = placement(mo), placement(ours)
    region = decode_region(engine)
    c = Comparison(model, counts={"ModelOpt": ca, "enginesmith": cb})
    for name in list(a) + [n for n in b if n not in a]:
        qa, qb = a.get(name), b.get(name)
        op = (qa or qb).op
        tally = c.per_op.setdefault(op, Counter())
        tally["nodes"] += 1
        tally["quantized (ModelOpt)"] += bool(qa and qa.inputs)
        tally["quantized (ours)"] += bool(qb and qb.inputs)
        if qa is not None and qb is not None and qa.inputs == qb.inputs:
            tally["agree"] += 1
            continue
        tally["disagree"] += 1
        why = DECODE_REASON if name in region else "UNEXPLAINED"
        c.disagreements.append((name, op, qa.describe() if qa else "(no node)", qb.describe() if qb else "(no node)", why))
    return c


def versions(modelopt_py: Path) -> dict[str, str]:
    """Tool versions on both sides."""
    import onnx
    import onnxruntime
    import torch

    ours = {"enginesmith onnx": onnx.__version__, "enginesmith onnxruntime": onnxruntime.__version__,
            "enginesmith torch": torch.__version__}
    theirs = dict(line.split(" ", 1) for line in run([str(modelopt_py), "-c", VERSIONS_WORKER]).splitlines())
    return {**ours, **{f"ModelOpt venv {k}": v for k, v in theirs.items()}}


def machine() -> str:
    """The CPU (lscpu model name, family, vector extensions) and core count."""
    info = dict(line.split(":", 1) for line in run(["lscpu"]).splitlines() if ":" in line)
    flags = [f for f in info.get("Flags", "").split() if f in ("avx2", "avx512f", "avx512_vnni", "amx_int8")]
    return (f"{info.get('Model name', '?').strip()} (family {info.get('CPU family', '?').strip()}), "
            f"{' '.join(flags)}, {os.cpu_count()} cores, {platform.system()} {platform.release()}")


def commit() -> str:
    rev = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    return rev.stdout.strip() + (" + uncommitted changes" if dirty else "")


def report(results: list[Comparison], args: argparse.Namespace, vers: dict[str, str]) -> str:
    """The markdown report."""
    lines = [
        "# Q/DQ placement: enginesmith's TensorRT form against NVIDIA ModelOpt, node by node",
        "",
        "Generated by `scripts/compare_qdq_modelopt.py` (a developer tool, not in CI). Both tools quantize the same",
        "file: the simplified FP32 ONNX the `--target tensorrt --precision int8` path quantizes (seeded weights,",
        f"exported by `build-engine MODEL --target onnxruntime --precision fp32`), calibrated on {args.calib_images}",
        "built-in photos preprocessed as the pipeline does. Ours: `qdq.calibration_tensors` -> minmax ranges ->",
        "`quantize_qdq(symmetric=True)`. ModelOpt: `quantize(quantize_mode=\"int8\", calibration_method=\"max\",",
        "calibration_eps=[\"cpu\"], high_precision_dtype=\"fp32\")`, its default placement. A node agrees when",
        "the same inputs are fed by a DequantizeLinear in both, and a quantized weight has the same granularity",
        "(`w/axis=0`: per output channel). Placement only: scales come from each tool's own calibration.",
        "Our rules, with their sources (NVIDIA's TensorRT guide, ModelOpt's functions), are the docstring of",
        "`enginesmith/calibration/tensorrt_placement.py`.",
        "",
        f"- command: `python scripts/compare_qdq_modelopt.py {' '.join(sys.argv[1:])}`",
        f"- date: {dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- machine: {machine()}",
        f"- enginesmith commit: {commit()}",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in vers.items()),
        "",
        "## Summary",
        "",
        "| model | compute nodes | agree | disagree | of which unexplained | QuantizeLinear+DequantizeLinear (ModelOpt / ours) | non-zero zero points (ModelOpt / ours) |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in results:
        total = Counter()
        for t in c.per_op.values():
            total.update(t)
        unexplained = sum(d[4] == "UNEXPLAINED" for d in c.disagreements)
        qa, qb = c.counts["ModelOpt"], c.counts["enginesmith"]
        lines.append(f"| {c.model} | {total['nodes']} | {total['agree']} | {total['disagree']} | {unexplained} | "
                     f"{qa['QuantizeLinear']}+{qa['DequantizeLinear']} / {qb['QuantizeLinear']}+{qb['DequantizeLinear']} | "
                     f"{qa['nonzero_zero_points']} / {qb['nonzero_zero_points']} |")
    for c in results:
        lines += ["", f"## {c.model}", "", "| op | nodes | quantized (ModelOpt) | quantized (ours) | agree | disagree |",
                  "|---|---|---|---|---|---|"]
        for op, t in sorted(c.per_op.items(), key=lambda kv: -kv[1]["nodes"]):
            lines.append(f"| {op} | {t['nodes']} | {t['quantized (ModelOpt)']} | {t['quantized (ours)']} | "
                         f"{t['agree']} | {t['disagree']} |")
        if c.disagreements:
            lines += ["", "| node | op | ModelOpt | ours | reason |", "|---|---|---|---|---|"]
            lines += [f"| `{n}` | {op} | {a} | {b} | {why} |" for n, op, a, b, why in c.disagreements]
        else:
            lines += ["", "No disagreement."]
    lines += ["", "Representation (not placement): ModelOpt keeps weights in float behind a Q/DQ pair",
              "(`AddQDQPairToWeight`); ours stores int8 weights behind a DequantizeLinear. TensorRT takes both."]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS))
    ap.add_argument("--venv", type=Path, default=Path("/tmp/modelopt-venv"), help="ModelOpt's throwaway virtualenv")
    ap.add_argument("--torch", default="torch==2.14.1", help="torch for ModelOpt's venv (installed first)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/qdq-compare"))
    ap.add_argument("--calib-images", type=int, default=8)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "qdq-placement-modelopt.md")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    modelopt_py = ensure_modelopt(args.venv, args.torch)
    results = []
    for model in args.models:
        print(f"{model}: export, calibration data, ours, ModelOpt", flush=True)
        engine = export_fp32(model, args.work)
        npy = args.work / f"{model}-calib.npy"
        batches = calibration_npy(engine, args.calib_images, npy)
        ours, mo = args.work / f"{model}-ours.onnx", args.work / f"{model}-modelopt.onnx"
        quantize_ours(engine, batches, ours)
        run([str(modelopt_py), "-c", MODELOPT_WORKER, str(engine), str(npy), str(mo)])
        results.append(compare(model, engine, mo, ours))
        print(f"  {len(results[-1].disagreements)} disagreement(s)", flush=True)
    args.out.write_text(report(results, args, versions(modelopt_py)))
    print(f"report: {args.out}")


if __name__ == "__main__":
    main()
