"""The precision and engine stages of a build, once or as the mixed-precision search, held to the budget.

An attempt runs the precision stage (quantize.py) with some nodes kept in float, then the engine stage
(build.py) verified against the FP32 ONNX, then, with `--val`, the engine's task metric (accuracy.py). A
plain build makes one attempt and fails when its drop exceeds the budget; `--precision mixed` (or int8
`--fallback auto`) runs the search of mixed.py over attempts until the budget holds.
"""

from __future__ import annotations

import functools
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

import numpy as np

from enginesmith.backends.onnxruntime import Runner
from enginesmith.backends.targets import engine_precision, get_precision, get_target
from enginesmith.calibration.sensitivity import layer_sensitivity
from enginesmith.cluster.jobs import Done, Job
from enginesmith.errors import AccuracyBudgetError, EnginesmithError
from enginesmith.pipeline.accuracy import engine_accuracy_stage
from enginesmith.pipeline.artifacts import Artifact
from enginesmith.pipeline.build import engine_artifact, run_batches
from enginesmith.pipeline.export import INPUT_NAME
from enginesmith.pipeline.mixed import Attempt, SearchResult, search
from enginesmith.pipeline.quantize import DECODE_ONNX_PATTERN, QUANTIZED_OP_TYPES, QuantizeOptions, precision_artifacts

if TYPE_CHECKING:
    from enginesmith.pipeline.config import BuildConfig
    from enginesmith.pipeline.context import BuildContext

ATTEMPT_FUNC = "enginesmith.pipeline.engine_search:build_attempt"
# the stages an attempt builds with its own key (its nodes in float): a worker rebuilds these when asked; the
# lineage and the calibration statistics, shared by every attempt, were built (or rebuilt) by the caller
PER_ATTEMPT_STAGES = ("quantize-qdq", "quantize-nncf", "engine", "accuracy")


def precision_and_engine(base: Artifact, reference_acc: Artifact | None, ctx: BuildContext,
                         on_search_step: Callable[[int, int, Any], None] | None = None) -> SearchResult:
    """The attempts that led to the engine (the last one is it). `base`: the simplified ONNX (with NMS when
    asked); `reference_acc`: the FP32 PyTorch metric, or None without `--val`."""
    config = ctx.config
    calibrated = get_precision(config.precision).calibrated
    reference = functools.cache(lambda: _reference_outputs(base, ctx))  # once per build, not once per attempt

    def attempt(keep_float: tuple[str, ...]) -> Attempt:
        return _attempt(base, reference_acc, keep_float, reference, ctx)

    def within_budget(a: Attempt) -> bool:
        return a.ok and (a.drop is None or a.drop <= ctx.budget + 1e-9)

    if config.searches:
        on_cluster = (lambda keeps: _attempts_on_cluster(keeps, ctx)) if config.cluster is not None else None
        return search(attempt, lambda first: _rank_layers(config.target, base, first, ctx.verify_batches),
                      within_budget, on_step=on_search_step or (lambda i, n, a: None), attempt_all=on_cluster)
    result = SearchResult([attempt(())])
    if not within_budget(result.final):
        assert reference_acc is not None  # without --val every verified attempt is within budget
        hint = "" if not calibrated else "; try --precision mixed (keeps the most sensitive layers in float)"
        raise AccuracyBudgetError(
            f"the {config.target} {config.precision} engine's {ctx.val.metric} is {result.final.metric:.2f} against "
            f"{reference_acc.metrics['value']:.2f} for FP32 PyTorch on {len(ctx.val)} held-out images: a drop of "
            f"{result.final.drop:.2f} points exceeds --accuracy-budget {ctx.budget:g}{hint}"
        )
    return result


def _attempt(base: Artifact, reference_acc: Artifact | None, keep_float: tuple[str, ...],
             reference: Callable[[], dict[str, np.ndarray]], ctx: BuildContext) -> Attempt:
    """Build (precision stage + engine) with `keep_float` in float; measure it when --val is given."""
    config = ctx.config
    precision = engine_precision(config.precision)
    calibrated = get_precision(config.precision).calibrated
    quantized = precision_artifacts(ctx.cache, config.target, precision, base, ctx.calibration if calibrated else None,
                                    ctx.record, QuantizeOptions(keep_float=keep_float, nncf_preset=config.nncf_preset,
                                                                  overflow_fix=config.overflow_fix))
    try:
        engine = engine_artifact(ctx.cache, config.target, precision, quantized or base, INPUT_NAME,
                                 lambda: ctx.verify_batches, reference,
                                 judged_by_metric=(reference_acc is not None or config.record_int8_tolerance)
                                 and calibrated)
    except EnginesmithError as e:
        if not config.searches:
            raise
        return Attempt(keep_float, None, None, error=str(e), quantized=quantized)
    ctx.record(engine)
    if reference_acc is None:
        return Attempt(keep_float, None, None, engine=engine, quantized=quantized)
    acc = engine_accuracy_stage(engine, ctx).metrics
    return Attempt(keep_float, acc["value"], reference_acc.metrics["value"] - acc["value"], engine=engine,
                   quantized=quantized)


def _reference_outputs(base: Artifact, ctx: BuildContext) -> dict[str, np.ndarray]:
    """The model's own outputs (raw head for detectors) from the FP32 ONNX on ONNX Runtime: what every engine
    is verified against."""
    with Runner(base.file) as runner:
        outs = run_batches(runner, INPUT_NAME, ctx.verify_batches)
    return {k: v for k, v in outs.items() if k in ctx.spec.output_names}


def _rank_layers(target: str, base: Artifact, first: Any, batches: list[np.ndarray]) -> list[Any]:
    """Layers by added quantization noise, measured on the first attempt's quantized model run by
    the engine's own backend (ONNX Runtime stands in for TensorRT's Q/DQ)."""
    if first.quantized is None:
        raise EnginesmithError("the mixed-precision search needs an INT8 model to rank layers; none was built")
    return layer_sensitivity(base.file, first.quantized.file, get_target(target).layer_ranking, batches,
                             QUANTIZED_OP_TYPES, (DECODE_ONNX_PATTERN,))


# ---------------------------------------------------------------------------------------------- on a cluster


def _attempts_on_cluster(keeps: list[tuple[str, ...]], ctx: BuildContext) -> Iterator[Attempt]:
    """The search's steps after the first, built at once as jobs on the build's executor (speculatively: all of
    them, in parallel where the executor runs jobs in parallel), yielded in order. A step's stages are recorded
    in this build when the search takes it, so the report lists the steps it took, as without --cluster."""
    worker = _worker_config(ctx.config)
    jobs = [Job(key=f"mixed step {i}/{len(keeps)} ({len(keep)} layers in float)", func=ATTEMPT_FUNC,
                kwargs={"config": worker, "keep_float": list(keep)}) for i, keep in enumerate(keeps, start=1)]
    dones: dict[str, Done] = {}
    for done in ctx.executor().run(jobs):
        dones[done.job.key] = done
        print(f"{done.job.key}: {'built' if done.ok else 'failed'} on {done.host or 'a worker'} "
              f"[{len(dones)}/{len(jobs)}]", file=sys.stderr, flush=True)
    for job in jobs:
        done = dones.get(job.key)
        if done is None or not done.ok:
            why = done.error if done is not None else "it never finished"
            raise EnginesmithError(f"{job.key} failed on {(done and done.host) or 'a worker'}: {why}")
        for art in done.value["ran"]:
            ctx.record(art)
        yield done.value["attempt"]


def _worker_config(config: BuildConfig) -> BuildConfig:
    """The build's config as a worker takes it: paths absolute, measured in that process (no --cluster), no --out,
    and only the per-attempt stages rebuilt (see PER_ATTEMPT_STAGES)."""
    def absolute(p: Path | None) -> Path | None:
        return None if p is None else Path(os.path.abspath(p))

    val = config.val if config.val is None or (str(config.val) == "digits" and not Path(config.val).exists()) \
        else absolute(config.val)
    wanted = PER_ATTEMPT_STAGES if config.rebuild is True else tuple(config.rebuild or ())
    return replace(config, cluster=None, out=None, weights=absolute(config.weights), cfg=absolute(config.cfg),
                   names=absolute(config.names), calib=absolute(config.calib), cache_dir=absolute(config.cache_dir),
                   val=val, rebuild=tuple(s for s in wanted if s in PER_ATTEMPT_STAGES))


def build_attempt(config: BuildConfig, keep_float: list[str]) -> dict[str, Any]:
    """A search step's job, run on a worker: the build's lineage (found in the stage cache at config.cache_dir,
    which the worker must share) and one attempt with `keep_float` in float, measured there. Returns {"attempt":
    the Attempt, "ran": the stages the attempt ran or reused, in order}."""
    from enginesmith.pipeline.context import BuildContext
    from enginesmith.pipeline.run import lineage

    ctx = BuildContext(config, config.validate(), lambda a: None)
    _, simplified, with_nms, reference_acc = lineage(ctx)
    base = with_nms or simplified
    first = len(ctx.ran)
    reference = functools.cache(lambda: _reference_outputs(base, ctx))
    attempt = _attempt(base, reference_acc, tuple(keep_float), reference, ctx)
    return {"attempt": attempt, "ran": ctx.ran[first:]}
