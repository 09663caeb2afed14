"""`executor_for(cluster)`: the executor a `--cluster` value names.

None / "" / "local": local child processes (no Ray needed, nothing to start). "ray": a local Ray started for
the run. "ray://HOST:PORT", "HOST:PORT" or "auto" (with RAY_ADDRESS): an existing Ray cluster. Without
--cluster, RAY_ADDRESS set in the environment does not switch to Ray: the cluster is always asked for."""

from __future__ import annotations

from typing import Iterator, Protocol

from enginesmith.cluster.jobs import Done, Job
from enginesmith.cluster.local import LocalExecutor
from enginesmith.errors import EnginesmithError


class Executor(Protocol):
    name: str

    def check(self, jobs: list[Job]) -> None: ...

    def run(self, jobs: list[Job], timeout_s: float | None = None) -> Iterator[Done]: ...

    def close(self) -> None: ...


def check_cluster(cluster: str) -> None:
    """Refuse, in one line, a --cluster value executor_for does not know (nothing is started)."""
    if cluster in ("", "local", "ray", "auto") or cluster.startswith("ray://"):
        return
    if ":" in cluster and cluster.rsplit(":", 1)[1].isdigit():
        return
    raise EnginesmithError(f"unknown --cluster {cluster!r}: use local, ray (a local Ray for this run), "
                           "ray://HOST:PORT or HOST:PORT (a running cluster), or auto (RAY_ADDRESS)")


def executor_for(cluster: str | None) -> Executor:
    """The executor for a --cluster value (see the module docstring)."""
    if not cluster or cluster == "local":
        return LocalExecutor()
    check_cluster(cluster)
    from enginesmith.cluster.ray_cluster import RayExecutor

    return RayExecutor(None if cluster == "ray" else cluster)
