"""Chain the stages of one build: export -> simplify -> [nms] -> precision -> engine -> latency -> publish.

Every stage is a function `(inputs: Artifact..., ctx: BuildContext) -> Artifact` in its own module, cached
by content hash (artifacts.Cache) and verified against the stage before it. Bad input is refused up front
by `BuildConfig.validate()` (config.py), before any heavy work, with one-line EnginesmithErrors.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from enginesmith.pipeline.accuracy import reference_accuracy_stage
from enginesmith.pipeline.artifacts import Artifact
from enginesmith.pipeline.config import BuildConfig, parse_input_size, validate
from enginesmith.pipeline.context import BuildContext
from enginesmith.pipeline.engine_search import precision_and_engine
from enginesmith.pipeline.export import export_stage
from enginesmith.pipeline.latency import latency_stage
from enginesmith.pipeline.nms import nms_stage
from enginesmith.pipeline.outdir import OutState, hold_out, out_state
from enginesmith.pipeline.publish import publish
from enginesmith.pipeline.report import render_report
from enginesmith.pipeline.simplify import simplify_stage

__all__ = ["BuildConfig", "BuildResult", "MEASUREMENT_STAGES", "build_engine", "parse_input_size", "validate"]

# stages that measure what was built (speed, the task metric) rather than make it: not build time
MEASUREMENT_STAGES = ("latency", "accuracy", "accuracy-fp32")


@dataclass
class BuildResult:
    config: BuildConfig
    out: Path
    engine: Path
    stages: list[Artifact]  # the engine's lineage: export, simplify, [nms], [precision], engine
    latency: Artifact | None
    report: str
    accuracy: dict[str, Any] | None = None
    ran: list[Artifact] = field(default_factory=list)  # every stage run or reused, in order (report, manifest)


def build_engine(
    config: BuildConfig,
    on_stage: Callable[[Artifact], None] = lambda a: None,
    on_start: Callable[[str], None] | None = None,
    on_search_step: Callable[[int, int, Any], None] | None = None,
) -> BuildResult:
    """Run the whole pipeline for `config` and publish the engine, its manifest and report.md.

    `--out` is checked before any stage runs (pipeline/outdir.py: what may be replaced) and held by this
    build until the engine folder is published."""
    spec = config.validate()
    out = Path(config.out) if config.out else default_out(spec, config)
    state = out_state(out, Path(config.cache_dir), config.force)
    with hold_out(out):
        ctx = BuildContext(config, spec, on_stage)
        ctx.cache.on_start = on_start
        try:
            return _run_stages(ctx, out, state, on_search_step)
        finally:
            ctx.close()


def default_out(spec: Any, config: BuildConfig) -> Path:
    """build/MODEL/TARGET-PRECISION; a cfg-built network: build/darknet/CFG_STEM/TARGET-PRECISION."""
    name = Path(spec.name) / Path(spec.definition["file"]).stem if spec.definition else Path(spec.name)
    return Path("build") / name / f"{config.target}-{config.precision}"


def lineage(ctx: BuildContext) -> tuple[Artifact, Artifact, Artifact | None, Artifact | None]:
    """The stages before the precision and engine stages: (exported, simplified, with NMS or None, the FP32
    PyTorch metric or None without --val)."""
    config = ctx.config
    if config.val is not None:
        ctx.val  # read (and check) the held-out data before any heavy work
    exported = export_stage(ctx)
    simplified = simplify_stage(exported, ctx)
    with_nms = nms_stage(simplified, ctx) if config.nms == "engine" else None
    reference_acc = reference_accuracy_stage(exported, ctx) if config.val is not None else None
    return exported, simplified, with_nms, reference_acc


def _run_stages(ctx: BuildContext, out: Path, state: OutState,
                on_search_step: Callable[[int, int, Any], None] | None) -> BuildResult:
    """The stages of one build in order, then the engine folder published at `out`."""
    config = ctx.config
    exported, simplified, with_nms, reference_acc = lineage(ctx)
    result = precision_and_engine(with_nms or simplified, reference_acc, ctx, on_search_step)
    quantized, engine = result.final.quantized, result.final.engine
    assert engine is not None
    accuracy = _accuracy_summary(ctx, result, reference_acc)
    latency = latency_stage(engine, ctx)
    stages = [a for a in (exported, simplified, with_nms, quantized, engine) if a is not None]
    ran = list(ctx.ran)  # the lineage and everything else that ran: statistics, accuracy, search attempts, latency
    report = render_report(config, ctx.spec, ctx.preprocess, ran, latency, out, trained=ctx.trained,
                           calibration_images=len(ctx.source), calibration_warning=ctx.source.warning,
                           accuracy=accuracy)
    publish(ctx, out, state, engine, ran, with_nms, latency, accuracy, report)
    return BuildResult(config, out, out / engine.manifest["files"][0], stages, latency, report, accuracy, ran)


def _accuracy_summary(ctx: BuildContext, result: Any, reference_acc: Artifact | None) -> dict[str, Any] | None:
    """What the manifest and report say of the --val measurement (None without --val)."""
    if reference_acc is None:
        return None
    final = result.final
    accuracy = {"metric": ctx.val.metric, "fp32_pytorch": reference_acc.metrics["value"], "engine": final.metric,
                "drop": final.drop, "budget": ctx.budget, "val": str(ctx.config.val), "split": ctx.val.split,
                "images": len(ctx.val), "kept_float": list(final.keep_float)}
    if ctx.config.searches:
        accuracy["search"] = result.to_dict()
    return accuracy
