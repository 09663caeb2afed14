"""evaluation/latency.py: interleaved pairs (`measure_pair`) against a simulated clock whose load comes and goes,
and the report's speed-up line (pipeline/report.speedup_line)."""

from __future__ import annotations

import math
from pathlib import Path
import time

import pytest

from enginesmith.evaluation import latency
from enginesmith.evaluation.latency import measure_latency, measure_pair
from enginesmith.pipeline.report import speedup_line


class Clock:
    """A fake perf_counter: each call of a runner advances it by the runner's cost times the load of the moment;
    `load(t)` is the slow-down factor at time t (s). Records which runner ran, in order."""

    def __init__(self, load=lambda t: 1.0) -> None:
        self.t, self.load, self.order = 0.0, load, []

    def __call__(self) -> float:
        return self.t

    def runner(self, name: str, cost_ms: float):
        def call() -> None:
            self.order.append(name)
            self.t += cost_ms / 1000.0 * self.load(self.t)
        return call


@pytest.fixture()
def clock(monkeypatch):
    def make(load=lambda t: 1.0) -> Clock:
        c = Clock(load)
        monkeypatch.setattr(latency.time, "perf_counter", c)
        return c
    return make


def burst(t: float) -> float:
    """Quiet for 2 s, then 4x slower (another job), and so on."""
    return 1.0 if int(t // 2) % 2 == 0 else 4.0


def test_pairs_see_a_load_burst_alike_where_back_to_back_runs_do_not(clock):
    c = clock(burst)
    m = measure_pair(c.runner("engine", 10.0), c.runner("ref", 100.0), batch=1, min_time_s=8.0)
    assert m.speedup == pytest.approx(10.0) and m.ratio_p50 == pytest.approx(10.0)
    assert m.ratio_p10 == pytest.approx(10.0) and m.ratio_p90 == pytest.approx(10.0)
    # the old way: the engine for its budget, then PyTorch for its own; the burst lands on one of them only
    c = clock(burst)
    eng = measure_latency(c.runner("engine", 10.0), 1, budget_s=1.5)
    ref = measure_latency(c.runner("ref", 100.0), 1, budget_s=1.5)
    assert ref.p50_ms / eng.p50_ms > 30  # 4x off: what the interleaving removes


def test_pairs_alternate_which_runner_goes_first_and_warm_up_untimed(clock):
    c = clock()
    m = measure_pair(c.runner("e", 1.0), c.runner("r", 2.0), batch=4, min_time_s=0.0, min_pairs=6, max_time_s=1.0,
                     warmup=2)
    assert c.order == ["e", "r"] * 2 + ["e", "r", "r", "e"] * 3
    assert m.pairs == 6 and m.engine.iterations == m.reference.iterations == 6 and m.engine.batch == 4
    assert m.engine.p50_ms == pytest.approx(1.0) and m.reference.fps == pytest.approx(2000.0)


@pytest.mark.parametrize("engine_ms, ref_ms, min_time, pairs", [
    (1.0, 10.0, 1.0, math.ceil(1000 / 11)),  # fast: the minimum time decides
    (1.0, 10.0, 0.1, 15),                    # the minimum count decides
    (0.01, 0.1, 100.0, 500),                 # very fast: max_pairs ends it
    (1.0, 1000.0, 8.0, 15),                  # slow: 15 pairs take 15 s, under 2.5 x 8 s
    (1.0, 3000.0, 8.0, 7),                   # slower: stopped at 2.5 x 8 = 20 s with 7 pairs
    (1.0, 30_000.0, 8.0, 3),                 # never fewer than 3 pairs
])
def test_pairs_stop_at_the_count_the_time_or_the_cap(clock, engine_ms, ref_ms, min_time, pairs):
    c = clock()
    m = measure_pair(c.runner("e", engine_ms), c.runner("r", ref_ms), 1, min_time_s=min_time, warmup=0)
    assert m.pairs == pairs
    assert m.seconds == pytest.approx(pairs * (engine_ms + ref_ms) / 1000.0)


def test_the_ratio_spread_is_the_per_pair_ratio():
    """With real (busy) timing: a 3 ms call against a 0.3 ms call; the spread brackets the median ratio."""
    m = measure_pair(lambda: time.sleep(0.0003), lambda: time.sleep(0.003), 1, min_time_s=0.2, warmup=1)
    assert m.ratio_p10 <= m.ratio_p50 <= m.ratio_p90 and m.pairs >= 15
    assert m.reference.p50_ms > m.engine.p50_ms


def test_the_speedup_line_says_the_spread_pairs_and_load():
    m = {"speedup": 9.876, "speedup_p10": 8.5, "speedup_p90": 11.25, "pairs": 42, "seconds": 8.04,
         "load_average": [3.88, 3.0, 2.0], "load_average_end": [4.12, 3.1, 2.1], "cpus": 2}
    assert speedup_line(m) == ("Engine speed-up over PyTorch eager: **9.88x** (median latency ratio; per-pair ratio "
                               "p10-p90 8.50-11.25x over 42 interleaved pairs in 8.0 s; load average 3.88 before, "
                               "4.12 after, 2 CPUs).")


def test_a_wide_spread_is_called_out_in_the_report():
    from types import SimpleNamespace

    from enginesmith.pipeline.report import render_report

    def report(p10: float, p90: float) -> str:
        stats = {"iterations": 20, "batch": 1, "p50_ms": 1.0, "p90_ms": 1.0, "mean_ms": 1.0, "fps": 1000.0}
        m = {"engine": stats, "pytorch_eager_fp32": stats, "speedup": 10.0, "speedup_p10": p10, "speedup_p90": p90,
             "pairs": 20, "seconds": 8.0, "load_average": [1.0], "load_average_end": [1.0], "cpus": 2}
        config = SimpleNamespace(dynamic_batch=False, batch=1, target="openvino", precision="fp32", weights=None)
        spec = SimpleNamespace(name="m", output_names=("logits",), definition=None, two_stage=None)
        pre = SimpleNamespace(input_size=(32, 32), channels=1)
        latency = SimpleNamespace(metrics=m, cached=False)
        return render_report(config, spec, pre, [], latency, Path("out"), trained=False, calibration_images=0)

    assert "not a number to quote" in report(3.0, 30.0)
    assert "not a number to quote" not in report(9.0, 11.0)
