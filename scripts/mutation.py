"""Mutation testing of the core modules with mutmut (slow: tens of minutes; not in CI).

    .venv/bin/pip install mutmut==3.8.1
    nice -n 19 .venv/bin/python scripts/mutation.py              # every group, then the report
    nice -n 19 .venv/bin/python scripts/mutation.py ops metrics  # some groups, then the report
    .venv/bin/python scripts/mutation.py --report                # only rewrite the report from mutants/

mutmut (configured in pyproject.toml, [tool.mutmut]) copies enginesmith/ and tests/ to mutants/, mutates
the files listed there and runs, for each mutant, the fast unit tests that call the mutated function.
Results stay in mutants/ (git-ignored; delete it to start afresh). The report goes to
benchmarks/results/mutation/report.md, the survivors with their diffs to survivors.md there.

Survivors judged equivalent (no input can tell them from the original) are listed, one reason each, in
benchmarks/results/mutation/equivalent.toml; the kill rate is killed / (mutants - equivalent).
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
RUNS = OUT / "runs.json"  # wall time of each group's last run
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
STATUS = {1: "killed", 3: "killed", 0: "survived", 5: "no tests", 33: "no tests", 34: "skipped", 36: "timeout",
          37: "type check", -24: "timeout", 24: "timeout", 152: "timeout", 255: "timeout", None: "not checked",
          -11: "segfault", -9: "segfault"}


def mutmut() -> list[str]:
    return [sys.executable, "-m", "mutmut"]


def open_mutants(mods: list[str], sample: float) -> list[str] | None:
    """Names of the mutants of `mods` still to run: every one that was run and not killed (survived, no tests,
    timeout), plus the not-yet-run ones, or a uniform random share `sample` of those (seed 0). None when
    mutants/ holds no results for them yet (a first run: every mutant is run)."""
    import random

    results = load_results()
    if not all(results[m] for m in mods):
        return None
    ran = sorted(k for m in mods for k, v in results[m].items() if v is not None and v not in (1, 3))
    unrun = sorted(k for m in mods for k, v in results[m].items() if v is None)
    if sample < 1.0:
        unrun = sorted(random.Random(0).sample(unrun, round(sample * len(unrun))))
    return ran + unrun


def run_groups(groups: list[str], children: int, everything: bool, sample: float, together: bool = False) -> None:
    if together and len(groups) > 1:  # one mutmut run (one start-up) for all of them
        name = "+".join(groups)
        GROUPS[name] = [m for g in groups for m in GROUPS[g]]
        try:
            run_groups([name], children, everything, sample)
        finally:
            del GROUPS[name]
        return
    runs = json.loads(RUNS.read_text()) if RUNS.exists() else {}
    # one thread per worker: torch's and OpenMP's thread pools are not fork-safe (a forked mutant can hang
    # and read as a timeout), and the workers already share the cores
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    for g in groups:
        names = None if everything else open_mutants(GROUPS[g], sample)
        if names == []:
            print(f"== {g}: every mutant already killed", flush=True)
            continue
        # a first run names the modules; later runs name only the mutants still alive (mutmut reruns what is named)
        targets = names if names is not None else [m + ".*" for m in GROUPS[g]]
        cmd = [*mutmut(), "run", "--max-children", str(children), *targets]
        print(f"== {g}: mutmut run {len(targets) if names else ' '.join(targets)}"
              f"{' open mutants' if names else ''}", flush=True)
        t0 = time.monotonic()
        # mutmut's progress line is a spinner; keep only its last lines
        proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        print(proc.stdout[-1500:].split("\r")[-1], flush=True)
        if proc.returncode:
            sys.exit(f"mutmut run failed for {g} (exit {proc.returncode}):\n{proc.stdout[-4000:]}")
        runs.setdefault(g, []).append({"seconds": round(time.monotonic() - t0), "mutants": len(names) if names else "all",
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


def load_results() -> dict[str, dict[str, int | None]]:
    """module -> {mutant name: exit code} from mutmut's mutants/**/*.meta."""
    out = {}
    for mods in GROUPS.values():
        for mod in mods:
            meta = ROOT / "mutants" / module_path(mod).with_suffix(".py.meta")
            out[mod] = json.loads(meta.read_text())["exit_code_by_key"] if meta.exists() else {}
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
    runs = json.loads(RUNS.read_text()) if RUNS.exists() else {}
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
        f"- Tool: mutmut {version('mutmut')} (pytest {version('pytest')}); config `[tool.mutmut]` in pyproject.toml.",
        "- Command: `nice -n 19 .venv/bin/python scripts/mutation.py [GROUP...] [--sample F] [--together]` (a "
        "module's first run: `mutmut run --max-children 2 '<module>.*'`; later runs name only the mutants not yet "
        "killed), then this report (`scripts/mutation.py --report`).",
        f"- Date: {_dt.date.today().isoformat()}; machine: {machine()}.",
        f"- Commit: {_sh('git', 'rev-parse', '--short', 'HEAD')}; files measured:",
        *[f"  - {r}" for r in file_versions(mods_all)],
        "- Tests run per mutant: those, among `pytest_add_cli_args_test_selection`, that call the mutated "
        "function (mutmut's per-function coverage), `-x`; engine-building and full-size-network tests are "
        "left out (too slow per mutant).",
        "- Run time (wall, 2 shared cores, `nice -n 19`): "
        + ("; ".join(f"{g}: " + ", ".join(f"{r['seconds'] // 60} min {r['seconds'] % 60} s ({r['mutants']} mutants, "
                                              f"{r['date']})" for r in rs) for g, rs in runs.items())
           or "not recorded"),
        "",
        "Kill rate = (killed + timeout) / (mutants run - equivalent). *run* < *mutants* where only a seeded random "
        "sample of the mutants was run (`--sample`; 2 shared cores did not allow all of them), so the rate there is "
        "an estimate from that sample. *Survived* are live mutants not judged "
        "equivalent; *no tests* are mutants in code no selected test calls. Equivalent mutants (no input can tell "
        "them from the original) are listed with the reason in `survivors.md` and `equivalent.toml`.",
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
    ap.add_argument("--report", action="store_true", help="only write the report from the results in mutants/")
    ap.add_argument("--max-children", type=int, default=2)
    ap.add_argument("--all", action="store_true", help="rerun every mutant of the groups, killed ones too")
    ap.add_argument("--together", action="store_true", help="one mutmut run for all the groups given")
    ap.add_argument("--sample", type=float, default=1.0,
                    help="run only this share (0..1, seeded) of the mutants not run yet; the report counts run ones")
    args = ap.parse_args()
    unknown = [g for g in args.groups if g not in GROUPS]
    if unknown:
        ap.error(f"unknown group(s) {unknown}; choose from {', '.join(GROUPS)}")
    if not args.report:
        run_groups(args.groups or list(GROUPS), args.max_children, args.all, args.sample, args.together)
    report()


if __name__ == "__main__":
    main()
