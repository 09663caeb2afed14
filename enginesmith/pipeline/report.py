"""The build report (printed and written as report.md beside the engine)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from enginesmith.backends.targets import get_precision
from enginesmith.evaluation.detection_metrics import voc_metric_label
from enginesmith.pipeline.artifacts import Artifact

BUSY_SPREAD = 2.0  # p90 / p10 of the per-pair speed-up above which the report calls the measurement unreliable

STAGE_CHECKS = {
    "export": "ONNX Runtime vs PyTorch",
    "simplify": "simplified vs exported (ONNX Runtime)",
    "nms": "engine NMS vs host NMS (ONNX Runtime)",
    "engine": "engine vs FP32 ONNX (ONNX Runtime)",
}


def _verify_text(metrics: dict[str, Any]) -> str:
    v = metrics.get("verify")
    parity = metrics.get("nms_parity")
    if not v:
        return f"identical detections (max abs Δ {parity['max_abs']:.2g})" if parity else "-"
    s = f"max abs Δ {v['max_abs']:.3g}, rel {v['max_rel']:.2g}, cosine {v['cosine']:.5f}"
    if v.get("top1_agreement") is not None:
        s += f", top-1 agree {v['top1_agreement']:.0%}"
    if parity:
        s += "; NMS = host NMS"
    if metrics.get("tolerance_exceeded"):
        s += " (below the cosine tolerance: judged by the --val metric instead)"
    return s


def _details(a: Artifact) -> str:
    m = a.metrics
    if a.stage == "export":
        return f"opset {m.get('opset')}, {m.get('nodes')} nodes"
    if a.stage == "simplify":
        return f"nodes {m.get('nodes_before')} -> {m.get('nodes_after')}"
    if a.stage == "nms":
        return f"IoU {m.get('iou')}, score > {m.get('score')}, top {m.get('max_detections')}"
    if a.stage == "engine":
        return f"{', '.join(a.manifest['files'])}: {m.get('engine_bytes', 0) / 1e6:.1f} MB"
    if a.stage == "latency":
        return f"{m.get('pairs', '?')} interleaved pairs: see the latency check below"
    return ", ".join(f"{k} {v}" for k, v in m.items() if isinstance(v, (int, float, str)) and k != "verify")


def speedup_line(m: dict[str, Any]) -> str:
    """The speed-up (PyTorch p50 / engine p50), the spread of the per-pair ratio, how many interleaved pairs
    and seconds it took, and the load average (1 min) before and after: a number and the conditions it was
    measured under, on one line."""
    line = f"Engine speed-up over PyTorch eager: **{m['speedup']:.2f}x** (median latency ratio"
    if m.get("pairs"):
        line += (f"; per-pair ratio p10-p90 {m['speedup_p10']:.2f}-{m['speedup_p90']:.2f}x over {m['pairs']} "
                 f"interleaved pairs in {m['seconds']:.1f} s")
    load = m.get("load_average")
    if load:
        end = m.get("load_average_end")
        line += f"; load average {load[0]:.2f}" + (f" before, {end[0]:.2f} after" if end else "")
        line += f", {m.get('cpus')} CPUs"
    return line + ")."


def render_report(config: Any, spec: Any, preprocess: Any, stages: list[Artifact], latency: Artifact | None,
                  out: Path, trained: bool, calibration_images: int, calibration_warning: str | None = None,
                  accuracy: dict[str, Any] | None = None) -> str:
    """Markdown: what was built, each stage's time and verification, the engine, a latency check."""
    size = preprocess.input_size
    batch = "dynamic" if config.dynamic_batch else str(config.batch)
    lines = [
        f"# {spec.name} -> {config.target} {config.precision}",
        "",
        f"- engine: `{out}/` (input `images` [{batch}, {preprocess.channels}, {size[0]}, {size[1]}], "
        f"outputs {', '.join(f'`{n}`' for n in spec.output_names)})",
        f"- weights: {config.weights if trained else 'none given: seeded, untrained'}",
    ]
    if spec.definition:
        lines.append(f"- network: {spec.definition['format']} `{spec.definition['file']}` (sha256 "
                     f"{spec.definition['sha256'][:16]}...)")
    if get_precision(config.precision).calibrated:
        src = config.calib or f"built-in offline set ({spec.default_calibration})"
        lines.append(f"- calibration: {src}, {calibration_images} images, method {config.calib_method}")
        if calibration_warning:
            lines.append(f"- warning: {calibration_warning}")
    if not trained:
        lines.append("- **accuracy cannot be judged for untrained weights: this report shows speed and "
                     "numerical equivalence only.** Give `--weights PATH` for a trained model.")
    # every stage the build ran or reused from the cache, in order, with the time it took (cached: its first build's)
    lines += ["", "| stage | status | time | check | result | details |", "|---|---|---|---|---|---|"]
    for a in stages:
        check = STAGE_CHECKS.get(a.stage, "-")
        lines.append(f"| {a.stage} | {'cached' if a.cached else 'built'} | {a.wall_time_s:.1f} s | {check} | "
                     f"{_verify_text(a.metrics)} | {_details(a)} |")
    if accuracy is not None:
        lines += _accuracy_lines(config, accuracy)
    if latency is not None:
        m = latency.metrics
        e, t = m["engine"], m["pytorch_eager_fp32"]
        lines += [
            "",
            f"## Latency check (batch {e['batch']}, {'measured by an earlier build' if latency.cached else 'measured in this run'})",
            "",
            "| runner | iterations | p50 ms | p90 ms | mean ms | FPS |",
            "|---|---|---|---|---|---|",
            f"| {config.target} {config.precision} engine | {e['iterations']} | {e['p50_ms']:.2f} | {e['p90_ms']:.2f} | "
            f"{e['mean_ms']:.2f} | {e['fps']:.1f} |",
            f"| PyTorch eager fp32 | {t['iterations']} | {t['p50_ms']:.2f} | {t['p90_ms']:.2f} | {t['mean_ms']:.2f} | "
            f"{t['fps']:.1f} |",
            "",
            speedup_line(m),
        ]
        if m.get("pairs") and m["speedup_p90"] > BUSY_SPREAD * m["speedup_p10"]:
            lines += ["", f"**The per-pair ratio varied more than {BUSY_SPREAD:g}x (p10-p90): the machine was busy, and "
                          "this speed-up is not a number to quote. Measure again on a quiet machine "
                          "(`--rebuild latency`).**"]
        if m.get("measured_at"):
            lines += ["", f"Measured {m['measured_at']}"
                      + ("; reused from the stage cache (`--rebuild latency` measures again)." if latency.cached else ".")]
        kind = spec.two_stage
        if kind:
            unit = "regions per second (one call = a batch of warped regions)" if kind == "rcnn" else \
                "images per second with one image's proposals per call"
            lines += ["", f"The engine alone: FPS here is {unit}. Selective search, the region warp and NMS run on the "
                          "host; `python -m enginesmith.benchmarks.proposal_arc` measures the whole detector per image."]
    return "\n".join(lines) + "\n"


def _accuracy_lines(config: Any, acc: dict[str, Any]) -> list[str]:
    """The accuracy check and, for a mixed-precision search, each step and the layers kept in float."""
    name = {"voc07_map": "VOC07 mAP@0.5", "top1": "top-1"}.get(acc["metric"], acc["metric"])
    if "voc_convention" in acc:
        name = voc_metric_label(acc["voc_convention"])
    lines = [
        "", f"## Accuracy ({name}, {acc['images']} held-out images of {acc['val']} split `{acc['split']}`)", "",
        f"| model | {name} | drop (points) |", "|---|---|---|",
        f"| PyTorch eager fp32 | {acc['fp32_pytorch']:.2f} | - |",
        f"| {config.target} {config.precision} engine | {acc['engine']:.2f} | {acc['drop']:.2f} (budget {acc['budget']:g}) |",
    ]
    search = acc.get("search")
    if search:
        lines += ["", "Mixed-precision search (layers ranked by the quantization noise power each adds):", "",
                  f"| step | layers kept in float | {name} | drop | note |", "|---|---|---|---|---|"]
        for i, step in enumerate(search["steps"]):
            metric = "-" if step["metric"] is None else f"{step['metric']:.2f}"
            drop = "-" if step["drop"] is None else f"{step['drop']:.2f}"
            note = step["error"][:80] if step["error"] else ""
            lines.append(f"| {i} | {step['kept_float']} | {metric} | {drop} | {note} |")
        if acc["kept_float"]:
            lines += ["", "Kept in float: " + ", ".join(f"`{n}`" for n in acc["kept_float"])]
    return lines
