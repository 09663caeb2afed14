"""`python -m enginesmith.cluster.child JOB.pkl OUT.pkl PARENT_PID`: run one job's function in this fresh process
and write {"value": ...} or {"error": "one line"} to OUT.pkl (atomically: a killed child leaves none). It dies with
its parent (PARENT_PID: the executor or Ray worker that started it).

Both files are written by enginesmith itself (the local executor, or a Ray task on its own node) into a
private temporary folder; nothing else is unpickled here."""

from __future__ import annotations

import ctypes
import os
import pickle
import signal
import sys
from pathlib import Path

from enginesmith.cluster.jobs import call, one_line


PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int) -> None:
    """SIGKILL this process when its parent dies (Linux prctl), and exit now if it already has: a job's process
    must not outlive the executor or Ray worker that started it (a killed worker, a cancelled task)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: the job runs on; the executor still reports it
        return
    if os.getppid() != parent:
        os._exit(1)


def run_pickled(job_path: Path, out_path: Path) -> int:
    job = pickle.loads(job_path.read_bytes())
    try:
        result = {"value": call(job["func"], job["kwargs"])}
    except KeyboardInterrupt:
        raise
    except BaseException as e:  # noqa: BLE001 - every failure of the job becomes its one-line error
        result = {"error": one_line(e)}
    tmp = out_path.with_name(out_path.name + ".tmp")
    with open(tmp, "wb") as f:
        pickle.dump(result, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, out_path)
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.stderr.write("usage: python -m enginesmith.cluster.child JOB.pkl OUT.pkl PARENT_PID (used by enginesmith's "
                         "executors)\n")
        sys.exit(2)
    die_with_parent(int(sys.argv[3]))
    sys.exit(run_pickled(Path(sys.argv[1]), Path(sys.argv[2])))
