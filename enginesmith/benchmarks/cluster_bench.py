"""`enginesmith bench --cluster ...`: a suite's builds and measurements as executor jobs (enginesmith/cluster).

Phase 1 submits one build job per engine row, placed on a node of the row's device kind (suite `device`); each
builds through that node's own content-addressed stage cache (the --cache-dir path, on that node) into the
--engines path on that node, and sends the engine folder back packed (`send_folder`) unless the caller shares
the path (`--artifacts shared`) or the job ran on the caller's own node. Phase 2 submits one measuring job per
row, pinned to the node that built its engine and holding that node's single measuring slot, so two benchmarks
never share a node (builds may). Paths are passed absolute: each node uses the same paths on its own disk.
Rows say which node (host) and machine measured them; a failed job is that row's one-line error.
"""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path
from typing import Any, Callable, Iterator
from contextlib import nullcontext

from enginesmith.benchmarks.bench import (CHILD_TIMEOUT_S, BenchOutcome, Built, error_text, add_ratios, build_run,
                                          engine_dir_for, make_job, make_row, measure_isolated, measure_job, model_macs,
                                          run_header, torch_accuracy)
from enginesmith.benchmarks.results import write_results
from enginesmith.benchmarks.roofline import Roofline, probe_key, probe_targets, roofline_header
from enginesmith.benchmarks.suite import Run, Suite, plan
from enginesmith.benchmarks.timing import TimingProfile
from enginesmith.backends.targets import TARGETS
from enginesmith.cluster.executor import executor_for
from enginesmith.cluster.jobs import Done, Job
from enginesmith.errors import EnginesmithError
from enginesmith.files import publish_folder
from enginesmith.progress import progress_bar
from enginesmith.runtime.preprocess_override import PreprocessOverride

ARTIFACTS = ("send", "shared")  # engine folders: sent back packed, or left on a path every node shares

MAX_FOLDER_BYTES = 2 * 1024**3  # an engine folder sent back through the object store: refuse absurd sizes


def build_job(run: Run, engines: str, cache_dir: str, quick: bool, calib_size: int, send_folder: bool) -> dict[str, Any]:
    """Runs on a node: build (or reuse) `run`'s engine there. Returns {"built": Built (the node's paths),
    "reference": {key: FP32 PyTorch accuracy}, "folder": the engine folder as tar bytes, or None}."""
    reference: dict[tuple, dict[str, Any]] = {}
    built = build_run(run, Path(engines), Path(cache_dir), quick, calib_size, reference)
    folder = pack_folder(built.engine_dir) if send_folder and built.engine_dir is not None else None
    return {"built": built, "reference": reference, "folder": folder}


def measure_row_job(job: dict[str, Any]) -> dict[str, Any]:
    """Runs on a node (its own process, holding the node's measuring slot): bench.measure_job."""
    return measure_job(job, isolated=True)


def probe_node_job(target: str, precision: str, profile: dict[str, Any], quick: bool) -> dict[str, Any]:
    """Runs on a node (holding its measuring slot): that node's roofline probe of (target, precision), built and
    timed there (roofline.Roofline, its own child process): the probe's entry (gmacs_per_s None if it failed)."""
    timeout = CHILD_TIMEOUT_S["quick" if quick else "full"]
    with Roofline(TimingProfile(**profile), lambda job: measure_isolated(job, timeout)) as roof:
        roof.ceiling(target, precision)
        return roof.probes[probe_key(target, precision)]


def probe_all(executor: Any, rows: list[dict[str, Any]], nodes: dict[str, str], profile: TimingProfile, quick: bool,
              echo: Callable[[str], None]) -> dict[str, dict[str, Any]]:
    """Phase 3 on `executor`: the roofline probe of each (node, target, precision) that measured a CPU row, on that
    node: {f"{node name} {probe_key}": probe entry + "node"}. `nodes`: a row's node name -> its Done.node."""
    wanted = {(r["node"], probe_key(r["target"], r["precision"])): (r["target"], r["precision"]) for r in rows
              if r["status"] == "ok" and r.get("node") and probe_targets(r["target"])}
    jobs = [Job(f"roofline probe {key} on {name}", "enginesmith.benchmarks.cluster_bench:probe_node_job",
                {"target": t, "precision": p, "profile": profile.to_dict(), "quick": quick}, measures=True,
                node=None if nodes[name] == "local" else nodes[name])
            for (name, key), (t, p) in wanted.items()]
    probes: dict[str, dict[str, Any]] = {}
    for done in executor.run(jobs, CHILD_TIMEOUT_S["quick" if quick else "full"]):
        name = node_name(done) or "?"
        t, p = done.job.kwargs["target"], done.job.kwargs["precision"]
        entry = done.value if done.ok else {"target": t, "precision": p, "gmacs_per_s": None, "stacks": [],
                                             "error": done.error}
        probes[f"{name} {probe_key(t, p)}"] = {**entry, "node": name}
        echo(f"roofline probe {probe_key(t, p)} on {name}: " + (f"{entry['gmacs_per_s']:.0f} GMAC/s"
                                                                 if entry.get("gmacs_per_s") else f"FAILED: {entry['error']}"))
    return probes


def add_node_ratios(rows: list[dict[str, Any]], probes: dict[str, dict[str, Any]]) -> None:
    """bench.add_ratios with each row's fraction taken over the probe measured on the row's own node (probe_all's keys)."""
    add_ratios(rows, {k: p.get("gmacs_per_s") for k, p in probes.items()},
               ceiling_key=lambda r: f"{r.get('node')} {probe_key(r['target'], r['precision'])}")


def pack_folder(folder: Path) -> bytes:
    """An engine folder as an uncompressed tar (engines are already dense): regular files only, names relative."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for p in sorted(Path(folder).rglob("*")):
            if p.is_file() and not p.is_symlink():
                tar.add(p, arcname=p.relative_to(folder).as_posix(), recursive=False)
    if buf.tell() > MAX_FOLDER_BYTES:
        raise EnginesmithError(f"{folder} is {buf.tell() / 1e9:.1f} GB: too big to send back; give --artifacts shared "
                               "with an --engines path every node shares")
    return buf.getvalue()


def unpack_folder(data: bytes, dest: Path) -> None:
    """Publish the packed folder at `dest` whole (filled beside it, then swapped in: a kill leaves the old or the
    new folder, never a mix). Only regular files with relative names inside `dest` are accepted."""
    def fill(tmp: Path) -> None:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r") as tar:
            for m in tar.getmembers():
                if not m.isfile() or os.path.isabs(m.name) or ".." in Path(m.name).parts:
                    raise EnginesmithError(f"the engine folder sent back for {dest} holds {m.name!r}, not a plain "
                                           "file inside it; rebuild")
            tar.extractall(tmp, filter="data")

    dest.parent.mkdir(parents=True, exist_ok=True)
    publish_folder(fill, dest)


def localize(built: Built, engines_here: Path, engines_there: Path) -> Built:
    """`built` with its paths moved from the node's --engines folder to the caller's (the same when shared)."""
    if built.engine_dir is None:
        return built
    rel = Path(built.engine_dir).relative_to(engines_there)
    built.engine_dir = engines_here / rel
    if built.engine_file is not None:
        built.engine_file = built.engine_dir / Path(built.engine_file).name
    return built


def node_name(done: Done) -> str | None:
    """"HOST" for a local job, "HOST (NODE_ID[:12])" for a Ray node (several nodes may share a host)."""
    if not done.host:
        return None
    return done.host if done.node in ("", "local") else f"{done.host} ({done.node[:12]})"


def build_jobs(runs: list[Run], engines: Path, cache_dir: Path, quick: bool, calib_size: int, send: bool) -> list[Job]:
    """One build job per engine run, placed by the run's device kind."""
    return [Job(run.key, "enginesmith.benchmarks.cluster_bench:build_job",
                {"run": run, "engines": str(engines), "cache_dir": str(cache_dir), "quick": quick,
                 "calib_size": calib_size, "send_folder": send}, device=run.device) for run in runs]


def build_all(executor: Any, runs: list[Run], engines: Path, cache_dir: Path, quick: bool, calib_size: int,
              artifacts: str, echo: Callable[[str], None], update: Callable[[int], None]
              ) -> tuple[dict[str, Built], dict[tuple, dict[str, Any]], dict[str, Done]]:
    """Phase 1 on `executor`: (Built by run key, with paths on this machine; FP32 PyTorch accuracy by reference
    key; the build's Done by run key, whose node the run's measurement is pinned to). A failed build is a Built
    with its one-line error. Engine folders sent back are published at the same place under `engines` here,
    unless they were built on this very node."""
    here = getattr(executor, "here", "local")
    built: dict[str, Built] = {}
    reference: dict[tuple, dict[str, Any]] = {}
    where: dict[str, Done] = {}
    for i, done in enumerate(executor.run(build_jobs(runs, engines, cache_dir, quick, calib_size, artifacts == "send"))):
        key = done.job.key
        if not done.ok:
            built[key] = Built(error=done.error)
            echo(f"FAILED to build {key} on {done.host or 'the cluster'}: {done.error}")
        else:
            value = done.value
            b: Built = value["built"]
            if value["folder"] is not None and done.node != here:
                run = done.job.kwargs["run"]
                unpack_folder(value["folder"], engine_dir_for(engines, run))
            built[key] = localize(b, engines, engines)
            reference.update(value["reference"])
            where[key] = done
            echo(f"built {key} on {done.host}: " + ("cached" if b.cached else f"{b.build_s:.1f} s"))
        update(i + 1)
    return built, reference, where


def measure_jobs(items: list[tuple[Run, dict[str, Any], Done | None]]) -> list[Job]:
    """One measuring job per (run, bench job, its build's Done): on the build's node (any node of the run's
    device kind for a PyTorch row), holding that node's measuring slot."""
    return [Job(run.key, "enginesmith.benchmarks.cluster_bench:measure_row_job", {"job": job}, device=run.device,
                measures=True, node=None if built_on is None or built_on.node == "local" else built_on.node)
            for run, job, built_on in items]


def measure_all(executor: Any, items: list[tuple[Run, dict[str, Any], Done | None]], timeout_s: float) -> Iterator[Done]:
    """Phase 2 on `executor`: Done (value: measure_job's dict) for each item, as they finish."""
    yield from executor.run(measure_jobs(items), timeout_s)


def run_on_cluster(suite: Suite, out: Path, cluster: str, artifacts: str = "send", *,
                   weights: dict[str, Path] | None = None,
                   dataset: Path | str | None = None, preprocess: dict[str, PreprocessOverride] | None = None,
                   profile: TimingProfile | None = None, quick: bool = False, cache_dir: Path | None = None,
                   engines: Path | None = None, command: str = "", throughput: bool = True,
                   ov_streams: int | None = None, progress: bool = True,
                   echo: Callable[[str], None] = lambda s: None) -> BenchOutcome:
    """bench.run_bench with its two phases as jobs of `cluster`'s executor (executor_for): the same rows, each
    saying which node (host) and machine measured it; results files written after every row, in suite order."""
    if artifacts not in ARTIFACTS:
        raise EnginesmithError(f"unknown --artifacts {artifacts!r}; choose send or shared")
    profile = profile or (TimingProfile.quick() if quick else TimingProfile())
    runs, skipped = plan(suite, weights, dataset, preprocess=preprocess)
    cache_dir = Path(cache_dir or os.environ.get("ENGINESMITH_CACHE", "build/.cache")).resolve()
    engines = Path(engines or Path("build") / "bench-engines").resolve()
    bar = (lambda what, n: progress_bar(what, n)) if progress else (lambda what, n: nullcontext(lambda k: None))
    skipped_d = [{"key": s.key, "reason": s.reason} for s in skipped]
    engine_runs = [r for r in runs if r.target in TARGETS]
    header = {**run_header(suite, command, profile, True, quick), "cluster": cluster, "artifacts": artifacts}
    rows: list[dict[str, Any]] = []
    paths: dict[str, Path] = {}
    nodes: dict[str, str] = {}  # node name in rows -> Done.node
    probes: dict[str, dict[str, Any]] = {}
    with executor_for(cluster) as executor:
        # every row placeable before anything runs: a device kind no node is fails now, in one line
        executor.check(build_jobs(engine_runs, engines, cache_dir, quick, suite.calib_size, False)
                       + measure_jobs([(r, {}, None) for r in runs]))
        with bar(f"building {len(engine_runs)} engines", max(1, len(engine_runs))) as update:
            built, reference, where = build_all(executor, engine_runs, engines, cache_dir, quick, suite.calib_size,
                                                   artifacts, echo, update)
        macs = {(r.model, r.input_size, r.num_classes): None for r in runs}
        for mk in macs:
            macs[mk] = model_macs(*mk)
        order = {r.key: i for i, r in enumerate(runs)}
        items, accuracy, failed = [], {}, {}
        for run in runs:
            b = built.get(run.key)
            if b is not None and b.error:
                failed[run.key] = b.error
                continue
            try:
                accuracy[run.key] = b.accuracy if b is not None else torch_accuracy(run, reference)
            except Exception as e:  # the PyTorch reference's accuracy failed: that row fails
                failed[run.key] = error_text(e)
                continue
            items.append((run, make_job(run, b, profile, throughput, ov_streams), where.get(run.key)))
        by_key = {r.key: r for r in runs}
        position: dict[int, int] = {}  # id(row) -> its run's place in the suite
        for key, error in failed.items():
            run = by_key[key]
            rows.append(make_row(run, built.get(key), None, None, macs[(run.model, run.input_size, run.num_classes)], error))
            position[id(rows[-1])] = order[key]
        try:
            with bar(f"measuring {len(items)} runs", max(1, len(items))) as update:
                for i, done in enumerate(measure_all(executor, items, CHILD_TIMEOUT_S["quick" if quick else "full"])):
                    run = by_key[done.job.key]
                    row = make_row(run, built.get(run.key), done.value if done.ok else None, accuracy.get(run.key),
                                   macs[(run.model, run.input_size, run.num_classes)], None if done.ok else done.error)
                    row.update(node=node_name(done), machine=done.machine or None)
                    nodes[row["node"] or ""] = done.node
                    rows.append(row)
                    position[id(row)] = order[run.key]
                    echo(f"FAILED {run.key} on {done.host or 'the cluster'}: {done.error}" if not done.ok else
                         f"{run.key} on {done.host}: {row['fps']:.1f} FPS, end to end {row['fps_e2e']:.1f}")
                    rows.sort(key=lambda r: position[id(r)])
                    add_node_ratios(rows, probes)
                    paths = write_results(out, header, rows, skipped_d, plot=False)
                    update(i + 1)
            # the ceiling of each node's rows, measured on that node after its rows (one benchmark at a time)
            probes.update(probe_all(executor, rows, nodes, profile, quick, echo))
            header["roofline"] = roofline_header(probes, quick)
        finally:
            if rows:
                rows.sort(key=lambda r: position[id(r)])
                add_node_ratios(rows, probes)
                paths = write_results(out, header, rows, skipped_d, plot=True)
    return BenchOutcome(rows, skipped, paths, header)

