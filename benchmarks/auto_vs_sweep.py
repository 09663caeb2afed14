"""`--target auto` against the exhaustive sweep of its candidates and the committed single-configuration results.

For each model: run `build_auto` as `build-engine MODEL --target auto` does (runtime settings measured on the
fastest passing candidate of each target), timing the whole run; then run it again with `settings="all"` (every
passing candidate under every runtime setting: the exhaustive sweep; the builds are cached by then, so this
re-measures). Reported per model:
- auto's winner and its speed (as auto measured it), and the wall time of the auto run;
- the sweep's best configuration and speed, and auto's winner as the sweep measured it (same run: the ratio of
  the two is what pruning cost);
- the best batch-1 configuration of the committed results files given (seed-table / edge; measured on the
  machine their header names), re-measured in the sweep on this machine, against auto's winner;
- then those contenders re-measured interleaved over --rounds rounds (default 5: every one once per round, the
  order rotated), their medians and ranges: single measurements here differ by more than the 5% judged.
Speed: images per second of one synchronous call at a time (objective latency), or throughput mode.

usage:
  python benchmarks/auto_vs_sweep.py --work DIR --json OUT.json --md OUT.md [--objective latency]
      [--dataset DATA --split test --calib-size 300] [--committed RESULTS.json ...] [--rounds 5]
      MODEL[@HxW][=CHECKPOINT.pt] [...]
A model with a checkpoint is judged on --dataset (its task metric within the default budget) and calibrated on
it; one without is a seeded, untrained network judged by the verification tolerance.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from enginesmith.backends.targets import TARGETS
from enginesmith.benchmarks.auto_target import Outcome, build_auto, remeasure, speed
from enginesmith.benchmarks.machine import run_header
from enginesmith.files import write_json_atomic, write_text_atomic
from enginesmith.pipeline.run import BuildConfig


def parse_model(text: str) -> tuple[str, tuple[int, int] | None, Path | None]:
    """MODEL[@HxW][=CHECKPOINT] -> (model, input size or None, checkpoint or None)."""
    name, _, ckpt = text.partition("=")
    name, _, size = name.partition("@")
    hw = tuple(int(v) for v in size.split("x")) if size else None
    return name, hw, Path(ckpt) if ckpt else None  # type: ignore[return-value]


def committed_best(paths: list[Path], model: str, size: str) -> dict[str, Any] | None:
    """The fastest batch-1 engine row (not PyTorch) for model at size `HxW` across the committed results files."""
    best: dict[str, Any] | None = None
    for p in paths:
        data = json.loads(p.read_text())
        for r in data["rows"]:
            if (r["model"], r["input_size"], r["batch"], r["status"]) != (model, size, 1, "ok") or r["target"] not in TARGETS:
                continue
            if best is None or (r["fps"] or 0) > (best["fps"] or 0):
                best = {**r, "file": str(p), "measured_on": data["run"].get("machine")}
    return best


def by_key(outcomes: list[Outcome]) -> dict[str, Outcome]:
    return {o.candidate.key: o for o in outcomes}


def one_model(spec: str, args: argparse.Namespace) -> dict[str, Any]:
    model, size, ckpt = parse_model(spec)
    work = Path(args.work) / spec.split("=")[0].replace("@", "-")
    config = BuildConfig(model=model, target="openvino", precision="int8", weights=ckpt, input_size=size,
                         calib=args.dataset if ckpt else None, calib_size=args.calib_size,
                         val=args.dataset if ckpt else None, val_split=args.split, cache_dir=Path(args.cache_dir),
                         out=work / "auto", force=True)
    echo = lambda line: print(f"  [{model}] {line}", file=sys.stderr, flush=True)  # noqa: E731
    start = time.perf_counter()
    _, auto = build_auto(config, args.objective, settings="fastest", echo=echo)
    auto_s = time.perf_counter() - start
    start = time.perf_counter()
    config.out = work / "sweep"
    _, sweep = build_auto(config, args.objective, settings="all", echo=echo)
    sweep_s = time.perf_counter() - start
    winner = next(o for o in auto if o.status == "winner")
    best = next(o for o in sweep if o.status == "winner")
    in_sweep = by_key(sweep)
    manifest = json.loads((work / "auto" / "manifest.json").read_text())
    hw = manifest["input"]["shape"][-2:]
    ref = committed_best([Path(p) for p in args.committed], model, f"{hw[0]}x{hw[1]}")
    ref_key = f"{ref['target']}/{ref['precision']}/b1" if ref else None
    ref_here = in_sweep.get(ref_key) if ref_key else None
    v = lambda o: speed(o, args.objective) if o is not None else None  # noqa: E731
    row = {"model": model, "input_size": f"{hw[0]}x{hw[1]}", "weights": str(ckpt) if ckpt else "untrained (seed 0)",
           "judged_by": "task metric on --dataset" if ckpt else "verification tolerance",
           "auto_wall_s": round(auto_s, 1), "sweep_wall_s": round(sweep_s, 1),
           "auto_winner": winner.candidate.key, "auto_speed": v(winner),
           "sweep_best": best.candidate.key, "sweep_best_speed": v(best),
           "auto_winner_in_sweep": v(in_sweep.get(winner.candidate.key)),
           "committed_best": ref_key, "committed_best_fps": ref["fps"] if ref else None,
           "committed_measured_on": ref["measured_on"] if ref else None,
           "committed_best_here": v(ref_here) if ref_here is not None and ref_here.status in ("winner", "passed") else None,
           "committed_best_status_here": ref_here.status if ref_here is not None else None,
           "candidates_auto": [o.to_dict() for o in auto], "candidates_sweep": [o.to_dict() for o in sweep]}
    row["winner_over_sweep_best"] = _ratio(row["auto_winner_in_sweep"], row["sweep_best_speed"])
    row["auto_over_committed_here"] = _ratio(row["auto_speed"], row["committed_best_here"])
    # the contenders again, interleaved over rounds: single measurements differ by more than the 5% asked about
    contenders = list({o.candidate.key: o.candidate for o in (winner, best, ref_here) if o is not None}.values())
    if args.rounds > 0:
        speeds = remeasure(contenders, config, args.objective, args.rounds, echo=echo)
        row["rounds"] = {k: {"median": statistics.median(v), "min": min(v), "max": max(v), "all": v}
                         for k, v in speeds.items()}
        med = lambda key: row["rounds"][key]["median"] if key in row["rounds"] else None  # noqa: E731
        ref_key_here = ref_here.candidate.key if ref_here is not None else None
        row["rounds_winner_over_sweep_best"] = _ratio(med(winner.candidate.key), med(best.candidate.key))
        row["rounds_winner_over_committed_here"] = _ratio(med(winner.candidate.key), med(ref_key_here)) if ref_key_here else None
    return row


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def _f(v: Any, fmt: str) -> str:
    return "—" if v is None else format(v, fmt)


def render(header: dict[str, Any], rows: list[dict[str, Any]], objective: str) -> str:
    unit = "images/s" if objective == "throughput" else "calls/s at batch 1 (1000 / median ms)"
    lines = [f"# `--target auto` against the exhaustive sweep and the committed best ({objective})", "",
             f"- command: `{header['command']}`", f"- date: {header['date']}", f"- machine: {header['machine']}",
             f"- load average at start: {header['loadavg_start']}; at end: {header['loadavg_end']}",
             f"- versions: {header['versions']}", f"- commit: {header['commit']}", f"- speed: {unit}", "",
             "| model | judged by | auto winner | auto speed | auto wall | sweep best | sweep speed | auto winner in sweep | "
             "winner / sweep best | committed best (other machine: fps) | committed best here | auto / committed here |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['model']} {r['input_size']} | {r['judged_by']} | {r['auto_winner']} | {_f(r['auto_speed'], '.1f')} | "
            f"{r['auto_wall_s'] / 60:.1f} min | {r['sweep_best']} | {_f(r['sweep_best_speed'], '.1f')} | "
            f"{_f(r['auto_winner_in_sweep'], '.1f')} | {_f(r['winner_over_sweep_best'], '.2f')} | "
            f"{r['committed_best'] or '—'} ({_f(r['committed_best_fps'], '.1f')}) | {_f(r['committed_best_here'], '.1f')}"
            f"{'' if r['committed_best_status_here'] in (None, 'winner', 'passed') else ' (' + r['committed_best_status_here'] + ')'} | "
            f"{_f(r['auto_over_committed_here'], '.2f')} |")
    rounds = [r for r in rows if r.get("rounds")]
    if rounds:
        lines += ["", "The contenders (auto's winner, the sweep's best, the committed best) re-measured interleaved: "
                  "each round measures every one once, the order rotated; median and range over the rounds.", "",
                  "| model | configuration | median | min - max | rounds |", "|---|---|---|---|---|"]
        for r in rounds:
            for key, v in r["rounds"].items():
                lines.append(f"| {r['model']} | {key} | {v['median']:.1f} | {v['min']:.1f} - {v['max']:.1f} | {len(v['all'])} |")
        lines += ["", "| model | auto winner / sweep best (medians) | auto winner / committed best here (medians) |",
                  "|---|---|---|"]
        for r in rounds:
            lines.append(f"| {r['model']} | {_f(r['rounds_winner_over_sweep_best'], '.3f')} | "
                         f"{_f(r['rounds_winner_over_committed_here'], '.3f')} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="+")
    p.add_argument("--work", required=True, help="folder for the auto and sweep engine folders")
    p.add_argument("--cache-dir", default="build/.cache")
    p.add_argument("--objective", default="latency", choices=("latency", "throughput"))
    p.add_argument("--dataset", type=Path)
    p.add_argument("--split", default="test")
    p.add_argument("--calib-size", type=int, default=300)
    p.add_argument("--committed", nargs="*", default=[])
    p.add_argument("--json", type=Path, required=True)
    p.add_argument("--md", type=Path, required=True)
    p.add_argument("--rounds", type=int, default=5, help="interleaved re-measurements of the contenders (0: none)")
    args = p.parse_args(argv)
    for out in (args.json, args.md):  # before the long run: its results must have somewhere to go
        out.parent.mkdir(parents=True, exist_ok=True)
    header = {"command": "python benchmarks/auto_vs_sweep.py " + shlex.join(argv if argv is not None else sys.argv[1:]),
              **run_header(), "loadavg_start": Path("/proc/loadavg").read_text().split()[:3]}
    rows = []
    for spec in args.models:
        rows.append(one_model(spec, args))
        header["loadavg_end"] = Path("/proc/loadavg").read_text().split()[:3]
        write_json_atomic(args.json, {"run": header, "rows": rows})
        write_text_atomic(args.md, render(header, rows, args.objective))
        print(render(header, rows, args.objective).splitlines()[-1])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
