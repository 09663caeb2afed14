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
from enginesmith.evaluation.latency import measure_pair
from enginesmith.files import write_json_atomic
from enginesmith.pipeline.artifacts import Artifact, StageResult
from enginesmith.pipeline.export import INPUT_NAME

if TYPE_CHECKING:
    from enginesmith.pipeline.context import BuildContext


def latency_stage(engine: Artifact, ctx: BuildContext) -> Artifact:
    """p50/p90 latency of the engine and of the PyTorch model on the first verification batch, timed in
    interleaved pairs (evaluation/latency.measure_pair) for at least `latency_budget_s`, the speed-up (PyTorch
    p50 / engine p50) and the p10-p90 of the per-pair ratio, with the load average before and after; keyed by
    batch, time budget, machine, core count and weights."""
    c = ctx.config
    feed = as_feed(ctx.verify_batches[0], [INPUT_NAME])
    n = batch_len(feed)

    def produce(tmp: Path) -> StageResult:
        load_before = list(os.getloadavg())
        with get_target(c.target).runner(engine.file, c.precision) as eng_runner, \
                TorchRunner(ctx.model, ctx.input_names, list(ctx.spec.output_names)) as ref_runner:
            m = measure_pair(lambda: eng_runner.infer(feed), lambda: ref_runner.infer(feed), n,
                             min_time_s=c.latency_budget_s)
        stats = {"engine": m.engine.to_dict(), "pytorch_eager_fp32": m.reference.to_dict(), "speedup": m.speedup,
                 "method": "interleaved pairs", "pairs": m.pairs, "seconds": m.seconds,
                 "speedup_p10": m.ratio_p10, "speedup_p50_of_pairs": m.ratio_p50, "speedup_p90": m.ratio_p90,
                 # a measurement, not a build product: when and under what load it was taken travels with it
                 "measured_at": time.strftime("%Y-%m-%d %H:%M:%S %z"), "load_average": load_before,
                 "load_average_end": list(os.getloadavg()), "cpus": os.cpu_count()}
        write_json_atomic(tmp / "latency.json", stats)
        return StageResult(["latency.json"], stats)

    params = {"batch": n, "budget_s": c.latency_budget_s, "method": "interleaved pairs",
              "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(), "weights": ctx.weights_id}
    return ctx.record(ctx.cache.run("latency", [engine], params, produce))
