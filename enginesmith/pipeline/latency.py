"""The latency check: the engine against PyTorch eager FP32, same batch, same run, same machine.

A measurement, not a build product: the cached result carries when and under what load it was taken
(`--rebuild latency` measures again)."""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path
from typing import TYPE_CHECKING

from enginesmith.backends.targets import get_target
from enginesmith.backends.torch import TorchRunner
from enginesmith.calibration.feeds import as_feed, batch_len
from enginesmith.evaluation.latency import measure_latency
from enginesmith.files import write_json_atomic
from enginesmith.pipeline.artifacts import Artifact, StageResult
from enginesmith.pipeline.export import INPUT_NAME

if TYPE_CHECKING:
    from enginesmith.pipeline.context import BuildContext


def latency_stage(engine: Artifact, ctx: BuildContext) -> Artifact:
    """p50/p90 latency of the engine and of the PyTorch model on the first verification batch, and the speed-up
    (PyTorch p50 / engine p50); keyed by batch, time budget, machine, core count and weights."""
    c = ctx.config
    feed = as_feed(ctx.verify_batches[0], [INPUT_NAME])
    n = batch_len(feed)

    def produce(tmp: Path) -> StageResult:
        with get_target(c.target).runner(engine.file, c.precision) as runner:
            eng = measure_latency(lambda: runner.infer(feed), n, budget_s=c.latency_budget_s)
        with TorchRunner(ctx.model, ctx.input_names, list(ctx.spec.output_names)) as runner:
            ref = measure_latency(lambda: runner.infer(feed), n, budget_s=c.latency_budget_s)
        stats = {"engine": eng.to_dict(), "pytorch_eager_fp32": ref.to_dict(), "speedup": ref.p50_ms / eng.p50_ms,
                 # a measurement, not a build product: when and under what load it was taken travels with it
                 "measured_at": time.strftime("%Y-%m-%d %H:%M:%S %z"), "load_average": list(os.getloadavg()),
                 "cpus": os.cpu_count()}
        write_json_atomic(tmp / "latency.json", stats)
        return StageResult(["latency.json"], stats)

    params = {"batch": n, "budget_s": c.latency_budget_s, "machine": platform.processor() or platform.machine(),
              "cpus": os.cpu_count(), "weights": ctx.weights_id}
    return ctx.record(ctx.cache.run("latency", [engine], params, produce))
