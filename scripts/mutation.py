"""Mutation testing of the core modules with mutmut (slow: tens of minutes; not in CI).

    .venv/bin/pip install mutmut==3.8.1
    nice -n 19 .venv/bin/python scripts/mutation.py              # every group, then the report
    nice -n 19 .venv/bin/python scripts/mutation.py ops metrics  # some groups, then the report
    .venv/bin/python scripts/mutation.py --report                # only rewrite the report from results.json

mutmut (configured in pyproject.toml, [tool.mutmut]) copies enginesmith/ and tests/ to mutants/, mutates
the files listed there and runs, for each mutant, the fast unit tests that call the mutated function.
All the groups asked for run in ONE mutmut run (one start-up, one mutants/ tree).

Results are kept in benchmarks/results/mutation/results.json (committed), per module: the sha256 of the
source measured and every mutant's exit code (null: not run). After each run the codes mutmut wrote to
mutants/**/*.meta are merged into it; a code is never replaced by "not run", so results survive mutmut
resetting mutants/ (it resets every result when the test selection in pyproject.toml changes) or mutants/
being deleted. A module whose source changed starts afresh. Later runs name only the mutants not killed
yet (plus the sampled ones not run yet): adding tests cannot revive a killed mutant.

SAMPLE: modules too large for 2 shared cores run a seeded (random.Random(0)) share of their mutants, chosen
once from the sorted list of all of them, so every run measures the same sample (`--full` runs them all).

The report goes to benchmarks/results/mutation/report.md, the survivors with their diffs to survivors.md
there. Survivors judged equivalent (no input can tell them from the original) are listed, one reason each,
in benchmarks/results/mutation/equivalent.toml; the kill rate is (killed + timeout) / (run - equivalent).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import json
import os
import platform
import subprocess
import sys
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "results" / "mutation"
RUNS = OUT / "runs.json"  # wall time of each run
RESULTS = OUT / "results.json"  # module -> source sha256 and every mutant's exit code, merged over runs
EQUIVALENT = OUT / "equivalent.toml"

# group -> modules (dotted); a module's mutants are named "<module>.x_<function>__mutmut_<n>".
GROUPS: dict[str, list[str]] = {
    "ops": ["enginesmith.models.ops"],
    "nms": ["enginesmith.runtime.nms", "enginesmith.pipeline.nms"],
    "metrics": ["enginesmith.evaluation.detection_metrics", "enginesmith.evaluation.coco_metrics",
                "enginesmith.evaluation.classification_metrics"],
    "preprocess": ["enginesmith.runtime.preprocess"],
    "verify": ["enginesmith.pipeline.verify"],
    "artifacts": ["enginesmith.pipeline.artifacts"],
    "darknet": ["enginesmith.models.weights.darknet", "enginesmith.models.weights.darknet_cfg"],
}
# modules whose issue scope is a part of them: that part gets its own row (functions by mutmut's mangled name)
PARTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "enginesmith.pipeline.artifacts": ("cache keys: `Cache.key`, `Cache.folder`, `sha256_*`, `tool_versions`, "
                                       "`_own_version`, `_combined_sha256`",
                                       ("xǁCacheǁkey_", "xǁCacheǁfolder_", "x_sha256_", "x_tool_versions_",
                                        "x__own_version_", "x__combined_sha256_")),
}
# modules run on a seeded share of their mutants (the two largest; 2 shared cores do not allow all of them)
SAMPLE: dict[str, float] = {"enginesmith.models.ops": 0.25, "enginesmith.pipeline.nms": 0.25}
STATUS = {1: "killed", 3: "killed", 0: "survived", 5: "no tests", 33: "no tests", 34: "skipped", 36: "timeout",
          37: "type check", -24: "timeout", 24: "timeout", 152: "timeout", 255: "timeout", None: "not checked",
          -11: "segfault", -9: "segfault"}


def mutmut() -> list[str]:
    return [sys.executable, "-m", "mutmut"]


def sampled(mod: str, names: list[str], full: bool) -> set[str]:
    """The mutants of `mod` in its measured sample: all of them, or SAMPLE[mod] of them, seeded, from the sorted
    list of every mutant of the module (the same choice on every run)."""
    share = 1.0 if full else SAMPLE.get(mod, 1.0)
    if share >= 1.0:
        return set(names)
    import random

    names = sorted(names)
    return set(random.Random(0).sample(names, round(share * len(names))))


def open_mutants(mods: list[str], full: bool, everything: bool) -> list[str]:
    """Names of the mutants of `mods` to run: those in the sample not killed yet (never run, survived, no tests,
    timeout is kept as a detection), or every one in the sample (`everything`)."""
    results = load_results()
    out = []
    for m in mods:
        codes = results[m]
        for name in sorted(sampled(m, list(codes), full)):
            if everything or codes[name] is None or STATUS.get(codes[name]) not in ("killed", "timeout"):
                out.append(name)
    return out


def _mutmut_run(targets: list[str], children: int) -> subprocess.CompletedProcess:
    # one thread per worker: torch's and OpenMP's thread pools are not fork-safe (a forked mutant can hang
    # and read as a timeout), and the workers already share the cores
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    cmd = [*mutmut(), "run", "--max-children", str(children), *targets]
    # mutmut's progress line is a spinner; keep only its last lines
    return subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def run_groups(groups: list[str], children: int, everything: bool, full: bool) -> None:
    mods = [m for g in groups for m in GROUPS[g]]
    if any(not (ROOT / "mutants" / module_path(m).with_suffix(".py.meta")).exists() for m in mods):
        # mutants/ has no mutants yet: let mutmut generate them (and collect its test statistics) by naming a
        # mutant that does not exist; it stops with "nothing matches" once they are written
        print("== generating mutants (mutmut run, no mutant named)", flush=True)
        proc = _mutmut_run(["enginesmith.__no_such_module__.*"], children)
        if "nothing matches" not in proc.stdout:
            sys.exit(f"mutmut could not generate the mutants:\n{proc.stdout[-4000:]}")
    sync_results()
    names = open_mutants(mods, full, everything)
    if not names:
        print(f"== {' '.join(groups)}: every sampled mutant already killed", flush=True)
        return
    print(f"== {' '.join(groups)}: mutmut run, {len(names)} mutants", flush=True)
    t0 = time.monotonic()
    proc = _mutmut_run(names, children)
    print(proc.stdout[-1500:].split("\r")[-1], flush=True)
    sync_results()  # whatever mutmut finished, even on a failure
    if proc.returncode:
        sys.exit(f"mutmut run failed (exit {proc.returncode}):\n{proc.stdout[-4000:]}")
    runs = json.loads(RUNS.read_text()) if RUNS.exists() else []
    runs.append({"groups": groups, "seconds": round(time.monotonic() - t0), "mutants": len(names),
                 "commit": _sh("git", "rev-parse", "--short", "HEAD"),
                 "date": _dt.datetime.now().isoformat(timespec="minutes")})
    OUT.mkdir(parents=True, exist_ok=True)
    RUNS.write_text(json.dumps(runs, indent=1) + "\n")


def _sh(*cmd: str) -> str:
    try:
        return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "?"


def machine() -> str:
    model = next((ln.split(":", 1)[1].strip() for ln in _sh("lscpu").splitlines() if ln.startswith("Model name")), "?")
    return f"{model}, {os.cpu_count()} cores ({platform.system()} {platform.release()}, Python {platform.python_version()})"


def module_path(module: str) -> Path:
    return Path(*module.split(".")).with_suffix(".py")


def _source_sha(mod: str) -> str:
    return hashlib.sha256((ROOT / module_path(mod)).read_bytes()).hexdigest()


def sync_results() -> None:
    """Merge the exit codes in mutants/**/*.meta into results.json (see the module docstring)."""
    stored = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    for mods in GROUPS.values():
        for mod in mods:
            meta = ROOT / "mutants" / module_path(mod).with_suffix(".py.meta")
            if not meta.exists():
                continue
            codes = json.loads(meta.read_text())["exit_code_by_key"]
            sha = _source_sha(mod)
            old = stored.get(mod, {})
            kept = old.get("mutants", {}) if old.get("source_sha256") == sha else {}
            merged = {k: (v if v is not None else kept.get(k)) for k, v in sorted(codes.items())}
            stored[mod] = {"source_sha256": sha, "mutants": merged}
    OUT.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(stored, indent=0, sort_keys=True) + "\n")


def load_results() -> dict[str, dict[str, int | None]]:
    """module -> {mutant name: exit code or None} from results.json; {} for a module never run or whose source
    changed since (its results are stale)."""
    stored = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    out = {}
    for mods in GROUPS.values():
        for mod in mods:
            entry = stored.get(mod, {})
            out[mod] = entry.get("mutants", {}) if entry.get("source_sha256") == _source_sha(mod) else {}
    return out


def mutant_diffs(names: list[str]) -> dict[str, str]:
    """mutant -> its changed lines ('-old' / '+new'), read back from mutants/ with mutmut's own code."""
    import libcst as cst
    from mutmut.mutation.diff_apply import read_mutant_function, read_original_function

    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        modules: dict[str, object] = {}
        out = {}
        for name in names:
            mod = max((m for ms in GROUPS.values() for m in ms if name.startswith(m + ".")), key=len)
            path = ROOT / "mutants" / module_path(mod)
            if mod not in modules:
                modules[mod] = cst.parse_module(path.read_text())
            m = modules[mod]
            try:
                a = cst.Module([read_original_function(m, name)]).code.strip().splitlines()
                b = cst.Module([read_mutant_function(m, name)]).code.strip().splitlines()
            except Exception as e:  # noqa: BLE001 - a missing function is reported, not fatal
                out[name] = f"(diff unavailable: {e})"
                continue
            import difflib

            lines = [ln for ln in difflib.unified_diff(a, b, lineterm="", n=0)
                     if ln[:1] in "+-" and not ln.startswith(("+++", "---"))]
            out[name] = "\n".join(ln[0] + " " + ln[1:].strip() for ln in lines)
        return out
    finally:
        os.chdir(cwd)


def file_versions(mods: list[str]) -> list[str]:
    rows = []
    for mod in mods:
        p = module_path(mod)
        data = (ROOT / p).read_bytes()
        head = subprocess.run(["git", "show", f"HEAD:{p}"], cwd=ROOT, capture_output=True).stdout
        state = "as in HEAD" if head == data else "NOT as in HEAD (working-tree version measured)"
        rows.append(f"`{p}` sha256 {hashlib.sha256(data).hexdigest()[:12]}, {state}")
    return rows


def report() -> None:
    results = load_results()
    equivalent = tomllib.loads(EQUIVALENT.read_text()) if EQUIVALENT.exists() else {}
    runs = json.loads(RUNS.read_text()) if RUNS.exists() else []
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mutmut"]
    from importlib.metadata import version

    rows, survivors = [], []
    totals = dict(mutants=0, killed=0, survived=0, equivalent=0, timeout=0, no_tests=0, other=0, not_run=0)
    for group, mods in GROUPS.items():
        for mod in mods:
            codes = results[mod]
            if not codes:
                rows.append(f"| {group} | `{module_path(mod)}` | not run | | | | | | | |")
                continue
            c = dict(mutants=len(codes), killed=0, survived=0, equivalent=0, timeout=0, no_tests=0, other=0, not_run=0)
            for name, code in sorted(codes.items()):
                st = STATUS.get(code, "suspicious")
                if st == "killed":
                    c["killed"] += 1
                elif st == "not checked":
                    c["not_run"] += 1
                elif st == "timeout":  # a mutant that makes the tests hang is detected (mutmut counts it apart)
                    c["timeout"] += 1
                elif name in equivalent.get(mod, {}):
                    c["equivalent"] += 1
                    survivors.append((mod, name, st, equivalent[mod][name]))
                else:
                    c["survived" if st == "survived" else "no_tests" if st == "no tests" else "other"] += 1
                    survivors.append((mod, name, st, None))
            for k in totals:
                totals[k] += c[k]
            rows.append(_row(group, f"`{module_path(mod)}`", c))
            if mod in PARTS:
                label, prefixes = PARTS[mod]
                part = {n: v for n, v in codes.items() if n.split(".")[-1].startswith(prefixes)}
                rows.append(_row(group, f"of which {label}", _count(mod, part, equivalent)))
    rows.append(_row("**all**", "", totals))

    diffs = mutant_diffs([s[1] for s in survivors])
    mods_all = [m for ms in GROUPS.values() for m in ms]
    lines = [
        "# Mutation testing: core modules",
        "",
        "- Tool: mutmut; config `[tool.mutmut]` in pyproject.toml.",
        "- Command: `nice -n 19 .venv/bin/python scripts/mutation.py` (all groups in one `mutmut run --max-children 2 "
        "NAME...`, naming the sampled mutants not killed yet; a first run generates mutants/ by naming none), then "
        "this report (`scripts/mutation.py --report`). Results: `results.json` beside this report, merged over runs.",
        f"- Date: {_dt.date.today().isoformat()}; machine: {machine()}.",
        f"- Versions: mutmut {version('mutmut')}, pytest {version('pytest')}, torch {version('torch')}, "
        f"numpy {version('numpy')}, onnx {version('onnx')}, onnxruntime {version('onnxruntime')}.",
        f"- Commit measured: {', '.join(sorted({r['commit'] for r in runs})) or '?'} (branch of the runs; "
        f"report written at {_sh('git', 'rev-parse', '--short', 'HEAD')}); source files measured (sha256 also "
        "kept per module in results.json, a module whose source changes is measured afresh):",
        *[f"  - {r}" for r in file_versions(mods_all)],
        "- Sampled modules: " + "; ".join(f"`{module_path(m)}` a seeded {100 * f:.0f}% (random.Random(0) over the "
                                          f"sorted names of all its mutants)" for m, f in SAMPLE.items())
        + "; every other module: all of its mutants.",
        "- Tests run per mutant: those, among `pytest_add_cli_args_test_selection`, that call the mutated "
        "function (mutmut's per-function coverage), `-x`; engine-building and full-size-network tests are "
        "left out (too slow per mutant).",
        "- Run time (wall, 2 shared cores, `nice -n 19`): "
        + ("; ".join(f"{r['seconds'] // 60} min {r['seconds'] % 60} s ({r['mutants']} mutants, {r['date']})"
                     for r in runs) or "not recorded")
        + (f"; total {sum(r['seconds'] for r in runs) // 60} min" if runs else "") + ".",
        "",
        "Kill rate = (killed + timeout) / (mutants run - equivalent). *run* < *mutants* where only the seeded "
        "sample was run, so the rate there is an estimate from that sample. *Survived* are live mutants not judged "
        "equivalent; *no tests* are mutants in code no selected test calls (live, counted against the rate). "
        "Equivalent mutants (no input can tell them from the original) are listed with the reason in "
        "`survivors.md` and `equivalent.toml`.",
        "",
        "| group | module | mutants | run | killed | timeout | equivalent | survived | no tests | kill rate |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        *rows,
        "",
    ]
    notes = OUT / "notes.md"  # hand-written: the first pass, live survivors explained
    if notes.exists():
        lines += ["", notes.read_text()]
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "report.md").write_text("\n".join(lines))

    s_lines = ["# Surviving mutants", "",
               "Every mutant the tests did not kill, by module: status, then *equivalent: reason* when it was judged "
               "equivalent, then the changed lines (- original, + mutant). Show one in full with "
               "`.venv/bin/mutmut show NAME` after a run.", ""]
    for mod in mods_all:
        mine = [s for s in survivors if s[0] == mod]
        s_lines.append(f"## `{module_path(mod)}` ({len(mine)})")
        s_lines.append("")
        for _, name, st, why in mine:
            s_lines.append(f"- `{name.split('.')[-1]}` {st}" + (f"; **equivalent**: {why}" if why else ""))
            s_lines.append("  ```")
            s_lines.extend("  " + ln for ln in diffs.get(name, "").splitlines()[:6])
            s_lines.append("  ```")
        s_lines.append("")
    (OUT / "survivors.md").write_text("\n".join(s_lines))
    print((OUT / "report.md").read_text())


def _count(mod: str, codes: dict, equivalent: dict) -> dict[str, int]:
    c = dict(mutants=len(codes), killed=0, survived=0, equivalent=0, timeout=0, no_tests=0, other=0, not_run=0)
    for name, code in codes.items():
        st = STATUS.get(code, "suspicious")
        key = ("killed" if st == "killed" else "not_run" if st == "not checked" else "timeout" if st == "timeout"
               else "equivalent" if name in equivalent.get(mod, {}) else "survived" if st == "survived"
               else "no_tests" if st == "no tests" else "other")
        c[key] += 1
    return c


def _row(group: str, mod: str, c: dict[str, int]) -> str:
    live = c["mutants"] - c["equivalent"] - c["not_run"]
    rate = f"{100 * (c['killed'] + c['timeout']) / live:.1f}%" if live else "-"
    run = c["mutants"] - c["not_run"]
    return (f"| {group} | {mod} | {c['mutants']} | {run if c['not_run'] else 'all'} | {c['killed']} | {c['timeout']} | "
            f"{c['equivalent']} | {c['survived'] + c['other']} | {c['no_tests']} | {rate} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("groups", nargs="*", help=f"groups to run (default: all): {', '.join(GROUPS)}")
    ap.add_argument("--report", action="store_true", help="only write the report (results.json, merged with mutants/ if any)")
    ap.add_argument("--max-children", type=int, default=2)
    ap.add_argument("--all", action="store_true", help="rerun every (sampled) mutant of the groups, killed ones too")
    ap.add_argument("--full", action="store_true", help=f"no sampling: run every mutant of {', '.join(SAMPLE)} too")
    args = ap.parse_args()
    unknown = [g for g in args.groups if g not in GROUPS]
    if unknown:
        ap.error(f"unknown group(s) {unknown}; choose from {', '.join(GROUPS)}")
    if not args.report:
        run_groups(args.groups or list(GROUPS), args.max_children, args.all, args.full)
    else:
        sync_results()
    report()


if __name__ == "__main__":
    main()
