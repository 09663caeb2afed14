"""`build-engine MODEL --target auto`: the fastest engine this machine can run inside the accuracy budget.

Every candidate this machine can run is built through the cached pipeline (targets that are installed and
usable here; precisions fp32, fp16, bf16 and int8 that the target builds and this CPU runs; batch 1, and also
8 when the objective is throughput), measured as `enginesmith bench` measures (benchmarks/bench.py
`measure_isolated`: its own process, warm-up, then timed calls), and judged:
- with `--val DATA`: by the task metric (mAP / top-1) against FP32 PyTorch, within `--accuracy-budget`; an
  INT8 candidate over the budget is followed by the same target's `mixed` search (INT8 with the most sensitive
  layers in float until the budget holds);
- without it: by the verification tolerance alone (every built engine passed it), which the report says.
The fastest candidate that passes wins: by the median latency of one call at batch 1 (objective latency),
or by images per second (objective throughput; OpenVINO's throughput mode where the target streams).
Runtime settings (Target.runtime_settings: OpenVINO's INFERENCE_NUM_THREADS for latency, NUM_STREAMS for
throughput; the performance hint follows the objective) are measured on the fastest passing candidate of a
target that takes them (`settings="all"`: on every passing one, the exhaustive sweep); they change no numerics,
so they keep that candidate's accuracy. The winner's engine folder is published at `--out`, its manifest's
"runtime" holding the winning settings (the runtime and the bench use them), with `auto.json` (every
candidate: time, accuracy, why rejected) and a section of report.md saying why it won. Candidates that cannot
run here are listed with the reason.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable

from enginesmith.backends.targets import PRECISIONS, TARGETS
from enginesmith.benchmarks.bench import CHILD_TIMEOUT_S, Built, make_job, measure_isolated
from enginesmith.benchmarks.suite import Run
from enginesmith.benchmarks.timing import TimingProfile
from enginesmith.errors import AccuracyBudgetError, EnginesmithError
from enginesmith.files import remove_stale_temps, scratch_dir, temp_name, write_json_atomic
from enginesmith.models import registry
from enginesmith.pipeline.accuracy import DEFAULT_BUDGET
from enginesmith.pipeline.outdir import hold_out, out_state, publish_engine_folder
from enginesmith.pipeline.run import BuildConfig, build_engine

AUTO_TARGET = "auto"  # the --target value
OBJECTIVES = ("latency", "throughput")
BATCHES = {"latency": (1,), "throughput": (1, 8)}
AUTO_FILE = "auto.json"


@dataclass(frozen=True)
class Candidate:
    """One engine configuration `--target auto` may pick."""

    target: str
    precision: str
    batch: int = 1
    settings: tuple[tuple[str, int], ...] = ()  # runtime settings (Target.runtime_settings); () = the backend's own

    @property
    def key(self) -> str:
        return f"{self.target}/{self.precision}/b{self.batch}" + "".join(f"/{k}={v}" for k, v in self.settings)


@dataclass
class Outcome:
    """What became of one candidate. status: winner | passed | rejected (accuracy) | failed (build or
    measurement error) | not run (this machine cannot run it)."""

    candidate: Candidate
    status: str
    reason: str = ""
    latency_ms: float | None = None  # median wall time of one call (a batch)
    fps: float | None = None  # images per second: batch / mean call time, or OpenVINO's throughput mode
    metric: float | None = None  # the engine's mAP / top-1 on --val (points)
    drop: float | None = None  # FP32 PyTorch minus the engine, points
    verify_cosine: float | None = None  # against the FP32 ONNX on the verification images
    build_s: float | None = None
    engine_dir: Path | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["candidate"] = self.candidate.key
        d["engine_dir"] = None
        return d


def check_options(target: str, precision: str | None, batch: int, dynamic_batch: bool, fallback: str,
                  objective: str) -> None:
    """build-engine's options against --target auto: it chooses the precision and batch itself, so options that
    would fix them are refused; --objective means nothing without it. One-line EnginesmithError."""
    if target != AUTO_TARGET:
        if objective != "latency":
            raise EnginesmithError("--objective chooses what --target auto optimises; give --target auto or drop it")
        return
    for given, what in ((precision is not None, "--precision"), (batch != 1 or dynamic_batch, "--batch/--dynamic-batch"),
                        (fallback != "none", "--fallback")):
        if given:
            raise EnginesmithError(f"--target auto chooses the precision and batch itself (by --objective); drop {what}")


def candidates(objective: str) -> tuple[list[Candidate], list[Outcome]]:
    """(the candidates this machine can run, the ones it cannot with why). `mixed` is not among them: it is
    tried only after a target's INT8 misses the budget."""
    if objective not in OBJECTIVES:
        raise EnginesmithError(f"unknown --objective {objective!r}; choose latency or throughput")
    runnable: list[Candidate] = []
    not_run: list[Outcome] = []
    for target in TARGETS.values():
        ok, why = target.available()
        if not ok:
            not_run.append(Outcome(Candidate(target.name, "any"), "not run", why))
            continue
        for name in target.precisions:
            precision = PRECISIONS[name]
            if precision.searches:
                continue
            ok, why = target.precision_runs_here(precision.engine)
            for batch in BATCHES[objective]:
                if ok:
                    runnable.append(Candidate(target.name, name, batch))
                else:
                    not_run.append(Outcome(Candidate(target.name, name, batch), "not run", why))
    return runnable, not_run


def settings_variants(target: str, objective: str, cores: int | None = None) -> list[tuple[tuple[str, int], ...]]:
    """The runtime settings worth measuring for `target` under `objective` on a machine with `cores` CPUs this
    process may use (default: its affinity): 1, half and all of them, as threads (latency: one synchronous call
    at a time) or streams (throughput). [] when the target takes none."""
    cores = cores or len(os.sched_getaffinity(0))
    name = "num_threads" if objective == "latency" else "num_streams"
    if name not in TARGETS[target].runtime_settings:
        return []
    return [((name, n),) for n in sorted({1, max(1, cores // 2), cores})]


def speed(o: Outcome, objective: str) -> float:
    """Higher is better: images per second (throughput) or 1 / latency of one batch-1 call (latency)."""
    if objective == "throughput":
        return o.fps or 0.0
    return 1000.0 / o.latency_ms if o.latency_ms else 0.0


def build_auto(config: BuildConfig, objective: str = "latency", calib_method: str | None = None,
               profile: TimingProfile | None = None, settings: str = "fastest",
               echo: Callable[[str], None] = lambda line: print(line, file=sys.stderr)) -> tuple[Path, list[Outcome]]:
    """Build, measure and judge every candidate for `config` (its target, precision and fallback are ignored);
    publish the winner at config.out (default build/MODEL/auto-OBJECTIVE). `calib_method`: the user's, for
    every INT8 candidate (None: each target's own default). `settings`: measure runtime settings on the fastest
    passing candidate of each target that takes them ("fastest") or on every passing one ("all": the exhaustive
    sweep the pruned search is checked against). Returns (the engine folder, all outcomes)."""
    if settings not in ("fastest", "all"):
        raise EnginesmithError(f"unknown settings search {settings!r}; use fastest or all")
    runnable, outcomes = candidates(objective)
    if not runnable:
        raise EnginesmithError("no engine target can run here: " + "; ".join(o.reason for o in outcomes))
    spec = registry.get(config.model)
    budget = config.accuracy_budget if config.accuracy_budget is not None else DEFAULT_BUDGET.get(spec.task, 1.0)
    cache = Path(config.cache_dir)
    out = Path(config.out) if config.out else Path("build") / spec.name / f"auto-{objective}"
    config = replace(config, out=out, fallback="none", calib_method=calib_method or "minmax")
    replace(config, target=runnable[0].target, precision=runnable[0].precision).validate()  # the model and options
    state = out_state(out, cache, config.force)
    profile = profile or TimingProfile()
    with hold_out(out):
        # the candidates' engine folders: a hidden sibling of --out (not in the cache: --out may not be there),
        # removed at the end; one a killed run left is removed by the next
        out.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(out.parent, prefix=f".{out.name}.auto-tmp")
        scratch = out.with_name(temp_name(f"{out.name}.auto-tmp"))
        scratch.mkdir()
        try:
            queue = list(runnable)
            while queue:
                cand = queue.pop(0)
                echo(f"auto: {cand.key}: building and measuring")
                o = _try(cand, config, calib_method, budget, objective, profile, scratch, spec.task)
                outcomes.append(o)
                echo(f"auto: {cand.key}: {_describe(o)}")
                if o.status == "rejected" and cand.precision == "int8" and config.val is not None:
                    queue.insert(0, Candidate(cand.target, "mixed", cand.batch))
            for base in _settings_bases(outcomes, objective, settings):
                for variant in settings_variants(base.candidate.target, objective):
                    cand = replace(base.candidate, settings=variant)
                    echo(f"auto: {cand.key}: measuring")
                    o = _measure_settings(cand, base, config, objective, profile, spec.task)
                    outcomes.append(o)
                    echo(f"auto: {cand.key}: {_describe(o)}")
            passed = [o for o in outcomes if o.status == "passed"]
            if not passed:
                raise EnginesmithError("no candidate passed: " + "; ".join(f"{o.candidate.key}: {o.reason}"
                                                                           for o in outcomes if o.reason)[:2000])
            winner = max(passed, key=lambda o: speed(o, objective))
            winner.status = "winner"
            record = _record(outcomes, winner, objective, budget, config)
            assert winner.engine_dir is not None

            def fill(tmp: Path) -> None:
                shutil.copytree(winner.engine_dir, tmp, dirs_exist_ok=True)
                if winner.candidate.settings:  # the runtime and the bench read them from the manifest
                    manifest = json.loads((tmp / "manifest.json").read_text())
                    manifest["runtime"] = dict(winner.candidate.settings)
                    write_json_atomic(tmp / "manifest.json", manifest)
                write_json_atomic(tmp / AUTO_FILE, record)
                with open(tmp / "report.md", "a") as f:
                    f.write("\n" + render_auto(record) + "\n")

            publish_engine_folder(fill, out, state)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    return out, outcomes


def remeasure(cands: list[Candidate], config: BuildConfig, objective: str = "latency", rounds: int = 5,
              profile: TimingProfile | None = None, echo: Callable[[str], None] = lambda line: None) -> dict[str, list[float]]:
    """speed() of each candidate over `rounds` interleaved rounds (each round measures every candidate once, the
    order rotated from round to round), for contenders whose single measurements lie within the machine's spread.
    Each engine comes from the stage cache of build_auto's builds (same config), into a temporary folder."""
    spec = registry.get(config.model)
    budget = config.accuracy_budget if config.accuracy_budget is not None else DEFAULT_BUDGET.get(spec.task, 1.0)
    calib_method = config.calib_method
    config = replace(config, fallback="none", calib_method=calib_method or "minmax")
    profile = profile or TimingProfile()
    speeds: dict[str, list[float]] = {c.key: [] for c in cands}
    with scratch_dir("es-remeasure") as tmp:
        bases: dict[str, Outcome] = {}
        for c in cands:
            plain = replace(c, settings=())
            if plain.key not in bases:
                bases[plain.key] = _try(plain, config, calib_method, budget, objective, profile, Path(tmp), spec.task)
                if bases[plain.key].engine_dir is None:
                    raise EnginesmithError(f"{plain.key}: {bases[plain.key].reason}")
        for r in range(rounds):
            k = r % len(cands)
            for c in cands[k:] + cands[:k]:
                o = _measure_settings(c, bases[replace(c, settings=()).key], config, objective, profile, spec.task)
                if o.status != "passed":
                    raise EnginesmithError(f"{c.key}: {o.reason}")
                speeds[c.key].append(speed(o, objective))
                echo(f"round {r + 1}/{rounds}: {c.key}: {speeds[c.key][-1]:.1f}")
    return speeds


def _settings_bases(outcomes: list[Outcome], objective: str, settings: str) -> list[Outcome]:
    """The passing candidates whose runtime settings get measured: per target that takes settings, the fastest
    ("fastest") or every one ("all")."""
    bases: list[Outcome] = []
    for target in TARGETS.values():
        passed = [o for o in outcomes if o.status == "passed" and o.candidate.target == target.name
                  and not o.candidate.settings and o.engine_dir is not None]
        if not target.runtime_settings or not passed:
            continue
        bases.extend(passed if settings == "all" else [max(passed, key=lambda o: speed(o, objective))])
    return bases


def _try(cand: Candidate, config: BuildConfig, calib_method: str | None, budget: float, objective: str,
         profile: TimingProfile, scratch: Path, task: str) -> Outcome:
    """Build one candidate (into scratch), judge its accuracy, measure it."""
    # replace() runs BuildConfig.__post_init__: a calib_method of None becomes the target's own default
    cfg = replace(config, target=cand.target, precision=cand.precision, batch=cand.batch, dynamic_batch=False,
                  out=scratch / cand.key.replace("/", "-"), force=False, calib_method=calib_method,
                  accuracy_budget=budget, record_int8_tolerance=True)
    try:
        result = build_engine(cfg)
    except AccuracyBudgetError as e:  # built and measured: over the budget (the message says by how much)
        return Outcome(cand, "rejected", str(e))
    except EnginesmithError as e:
        return Outcome(cand, "failed", str(e))
    manifest = json.loads((result.out / "manifest.json").read_text())
    engine_stage = next(s for s in manifest["stages"] if s["stage"] == "engine")
    o = Outcome(cand, "passed", engine_dir=result.out,
                verify_cosine=(engine_stage["metrics"].get("verify") or {}).get("cosine"),
                build_s=round(sum(float(s.get("wall_time_s", 0.0)) for s in manifest["stages"]), 1))
    if result.accuracy is not None:  # within the budget: the build refuses an engine over it
        o.metric, o.drop = float(result.accuracy["engine"]), float(result.accuracy["drop"])
    return _measure(o, config, manifest, result.engine, objective, profile, task)


def _measure_settings(cand: Candidate, base: Outcome, config: BuildConfig, objective: str, profile: TimingProfile,
                      task: str) -> Outcome:
    """Measure `base`'s engine under `cand.settings`; the accuracy is base's (the settings change no numerics)."""
    assert base.engine_dir is not None
    o = replace(base, candidate=cand, status="passed", reason=f"the engine of {base.candidate.key}", latency_ms=None,
                fps=None, build_s=0.0)
    manifest = json.loads((base.engine_dir / "manifest.json").read_text())
    manifest["runtime"] = dict(cand.settings)
    return _measure(o, config, manifest, base.engine_dir / manifest["engine"], objective, profile, task)


def _measure(o: Outcome, config: BuildConfig, manifest: dict[str, Any], engine: Path, objective: str,
             profile: TimingProfile, task: str) -> Outcome:
    """Fill o's latency and fps as `enginesmith bench` measures them (its own process), with the manifest's
    runtime settings; a measuring error makes it failed."""
    cand = o.candidate
    assert o.engine_dir is not None
    run = Run(model=config.model, method=config.model, input_size=tuple(manifest["input"]["shape"][-2:]),
              target=cand.target, precision=cand.precision, batch=cand.batch, task=task, weights=config.weights,
              dataset=config.val, split=config.val_split)
    built = Built(engine_dir=o.engine_dir, engine_file=engine, manifest=manifest)
    try:
        job = {**make_job(run, built, profile, objective == "throughput", None), "e2e": False}  # inference only
        measured = measure_isolated(job, CHILD_TIMEOUT_S["full"])
    except EnginesmithError as e:
        o.status, o.reason = "failed", f"measuring: {e}"
        return o
    lat = measured["latency"]
    o.latency_ms = float(lat["p50_ms"])
    o.fps = float(measured["throughput"]["fps"]) if measured.get("throughput") else float(lat["fps"])
    return o


def _describe(o: Outcome) -> str:
    if o.status in ("failed", "rejected", "not run") and o.latency_ms is None:
        return f"{o.status}: {o.reason}"
    acc = f", metric {o.metric:.2f} (drop {o.drop:.2f})" if o.metric is not None else ""
    return f"{o.status}: {o.latency_ms:.3g} ms per call, {o.fps:.1f} images/s{acc}" + (
        f"; {o.reason}" if o.reason else "")


def _record(outcomes: list[Outcome], winner: Outcome, objective: str, budget: float,
            config: BuildConfig) -> dict[str, Any]:
    judged = ("the task metric on --val, budget {:g} points".format(budget) if config.val is not None
              else "the verification tolerance only (no --val: accuracy was not measured)")
    passed = sorted((o for o in outcomes if o.status in ("winner", "passed")), key=lambda o: -speed(o, objective))
    runner_up = passed[1] if len(passed) > 1 else None
    why = (f"fastest of {len(passed)} candidates that passed ({'images/s' if objective == 'throughput' else 'median latency'})"
           + (f"; next: {runner_up.candidate.key}, {speed(winner, objective) / speed(runner_up, objective):.2f}x slower"
              if runner_up and speed(runner_up, objective) else ""))
    return {"schema": "enginesmith-auto", "objective": objective, "judged_by": judged,
            "winner": winner.candidate.key, "why": why,
            "settings": {"target": winner.candidate.target, "precision": winner.candidate.precision,
                         "batch": winner.candidate.batch, "runtime": dict(winner.candidate.settings)},
            "candidates": [o.to_dict() for o in outcomes]}


def _cell(v: Any, fmt: str) -> str:
    return "—" if v is None else format(v, fmt)


def render_auto(record: dict[str, Any]) -> str:
    """The report.md section: every candidate, and why the winner won."""
    lines = [f"## --target auto ({record['objective']})", "",
             f"Winner: **{record['winner']}**, {record['why']}. Accuracy judged by {record['judged_by']}.", "",
             "| candidate | status | ms per call (p50) | images/s | metric | drop | cosine to FP32 | why |",
             "|---|---|---|---|---|---|---|---|"]
    for c in record["candidates"]:
        lines.append(f"| {c['candidate']} | {c['status']} | {_cell(c['latency_ms'], '.3g')} | {_cell(c['fps'], '.1f')} | "
                     f"{_cell(c['metric'], '.2f')} | {_cell(c['drop'], '.2f')} | {_cell(c['verify_cosine'], '.5f')} | "
                     f"{c['reason'].replace('|', '/')} |")
    return "\n".join(lines)
