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

from enginesmith.benchmarks.bench import Built, build_run, engine_dir_for, measure_job
from enginesmith.benchmarks.suite import Run
from enginesmith.cluster.jobs import Done, Job
from enginesmith.errors import EnginesmithError
from enginesmith.files import publish_folder

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
