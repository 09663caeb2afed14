"""The default executor: each job in its own child process on this machine, one after another.

A job that needs a device kind this machine is not fails at once, before anything runs, in one line. A child
killed by a signal is the job's one-line error; Ctrl-C stops the running child and re-raises."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
from pathlib import Path
from typing import Iterator

from enginesmith.cluster.devices import local_kinds
from enginesmith.cluster.jobs import Done, Job, where
from enginesmith.errors import EnginesmithError
from enginesmith.files import scratch_dir


def run_in_child(job: Job, timeout_s: float | None = None) -> tuple[object, str | None]:
    """(value, None) or (None, one-line error): job's function run by `python -m enginesmith.cluster.child`."""
    with scratch_dir("es-job") as tmp:
        job_path, out_path = Path(tmp) / "job.pkl", Path(tmp) / "out.pkl"
        job_path.write_bytes(pickle.dumps({"func": job.func, "kwargs": job.kwargs}))
        proc = subprocess.Popen([sys.executable, "-m", "enginesmith.cluster.child", str(job_path), str(out_path),
                                 str(os.getpid())], stdin=subprocess.DEVNULL)
        try:
            rc = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            return None, f"took over {timeout_s:.0f} s; stopped"
        except BaseException:  # Ctrl-C (or anything) in the caller: the child does not outlive it
            proc.kill()
            proc.wait()
            raise
        if out_path.is_file():
            result = pickle.loads(out_path.read_bytes())
            return result.get("value"), result.get("error")
        if rc < 0:
            try:
                name = signal.Signals(-rc).name
            except ValueError:
                name = "unknown signal"
            return None, f"its process was killed (signal {-rc}, {name})"
        return None, f"its process exited with code {rc} and no result"


class LocalExecutor:
    """Runs jobs in child processes here, in the order given."""

    name = "local"
    here = "local"  # the node jobs run on: this one

    def __init__(self) -> None:
        self._kinds = local_kinds()
        self._where = where()

    def check(self, jobs: list[Job]) -> None:
        """Refuse, in one line, jobs that need a device kind this machine is not."""
        for job in jobs:
            if job.device is not None and job.device not in self._kinds:
                raise EnginesmithError(f"{job.key} needs device {job.device}; this machine is "
                                       f"{', '.join(self._kinds)}: run it with --cluster on a cluster that has one")

    def run(self, jobs: list[Job], timeout_s: float | None = None) -> Iterator[Done]:
        """Done for each job, in order (each runs only when the previous one is done)."""
        self.check(jobs)
        for job in jobs:
            value, error = run_in_child(job, timeout_s)
            yield Done(job, value, error, node="local", **self._where)

    def close(self) -> None:
        pass

    def __enter__(self) -> "LocalExecutor":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
