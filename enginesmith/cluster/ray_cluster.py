"""The same jobs as Ray tasks: `--cluster ray` (a local Ray started for the run) or `--cluster ray://HOST:PORT` /
`--cluster auto` with RAY_ADDRESS (an existing cluster).

Placement: a job that needs a device kind asks for a share of the node resource `devices.resource_name(kind)`
(nodes advertise their kinds: `enginesmith worker`); a GPU job also asks for one GPU; a measuring job asks for
the node's single MEASURE_SLOT, so two benchmarks never share a node (builds may); a job with `node` set is
pinned to that node (a benchmark runs where its engine was built). Before anything is submitted, every job's
device kind must be on some live node, else one line: Ray would leave the task pending for ever.
Each task runs the job's function in a fresh child process on its node (local.run_in_child), as locally. A
task whose worker or node dies is retried by Ray (max_retries) elsewhere when a node fits, else it is a failed
job in one line. Ctrl-C cancels every submitted task (force: their processes are killed) and re-raises.
Ray is an optional extra: `pip install 'enginesmith[cluster]'`."""

from __future__ import annotations

import os
from typing import Any, Iterator

from enginesmith.cluster.devices import MEASURE_SLOT, local_kinds, resource_name
from enginesmith.cluster.jobs import Done, Job, one_line
from enginesmith.errors import EnginesmithError

INSTALL_HINT = "pip install 'enginesmith[cluster]' (Ray)"
DEVICE_SHARE = 0.001  # of a node's device resource (it advertises 1): any number of jobs may use a device kind
RETRIES = 2  # Ray's retries of a task whose worker or node died
WATCH_S = 5.0  # how often a wait with nothing finished re-checks that every pending job can still be placed


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise EnginesmithError(f"--cluster ray needs Ray: {INSTALL_HINT}") from None
    return ray


def local_resources() -> dict[str, float]:
    """What a node started by enginesmith on this machine advertises: its device kinds and one measuring slot."""
    return {**{resource_name(k): 1.0 for k in local_kinds()}, MEASURE_SLOT: 1.0}


def _task(job: Job, timeout_s: float | None) -> tuple[Any, str | None, str, dict[str, str]]:
    """Runs on a Ray worker: the job in a child process there; (value, error, node id, where)."""
    import ray

    from enginesmith.cluster.jobs import where
    from enginesmith.cluster.local import run_in_child

    value, error = run_in_child(job, timeout_s)
    return value, error, ray.get_runtime_context().get_node_id(), where()


class RayExecutor:
    """Runs jobs as Ray tasks; results come back as they finish."""

    name = "ray"

    def __init__(self, address: str | None = None, num_cpus: int | None = None) -> None:
        """address: None starts a local Ray for this run (this machine's device kinds, one measuring slot);
        "auto", "HOST:PORT" or "ray://HOST:PORT" connects to a running cluster."""
        ray = _ray()
        self._ray = ray
        self._started = not ray.is_initialized()
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        if self._started:
            try:
                if address is None:
                    ray.init(num_cpus=num_cpus or os.cpu_count(), resources=local_resources(),
                             include_dashboard=False, logging_level="ERROR", log_to_driver=False)
                else:
                    ray.init(address=address, logging_level="ERROR", log_to_driver=False)
            except Exception as e:  # noqa: BLE001 - connection errors come in many types
                raise EnginesmithError(f"cannot {'start a local Ray' if address is None else 'connect to Ray at ' + address}: "
                                       f"{one_line(e)}") from None
        self._remote = ray.remote(_task)
        self.here = ray.get_runtime_context().get_node_id()  # the caller's node: what it builds there is here already

    # -- placement --------------------------------------------------------------------------------------------
    def nodes(self) -> list[dict[str, Any]]:
        """The live nodes: [{"id", "resources"}]."""
        return [{"id": n["NodeID"], "resources": n.get("Resources", {})} for n in self._ray.nodes() if n.get("Alive")]

    def check(self, jobs: list[Job]) -> None:
        """One line, before anything is submitted, for a job no live node can run."""
        nodes = self.nodes()
        have = sorted({k[len("enginesmith-device:"):] for n in nodes for k in n["resources"] if k.startswith("enginesmith-device:")})
        ids = {n["id"] for n in nodes}
        for job in jobs:
            if job.device is not None and not any(n["resources"].get(resource_name(job.device), 0) > 0 for n in nodes):
                raise EnginesmithError(f"{job.key} needs device {job.device}, and no node of the cluster is one (they are "
                                       f"{', '.join(have) or 'none advertised'}); start a worker there with "
                                       f"`enginesmith worker --address HEAD:6379`")
            if job.measures and not any(n["resources"].get(MEASURE_SLOT, 0) >= 1 for n in nodes):
                raise EnginesmithError(f"{job.key} is a benchmark and no node offers {MEASURE_SLOT}; start workers with "
                                       "`enginesmith worker`")
            if job.node is not None and job.node not in ids:
                raise EnginesmithError(f"{job.key} must run on node {job.node[:12]}, which has left the cluster")

    def _unservable(self, job: Job) -> str | None:
        """Why no live node can run `job` now (its node left, or the last node of its device kind), or None."""
        nodes = self.nodes()
        if job.node is not None and job.node not in {n["id"] for n in nodes}:
            return f"its node ({job.node[:12]}) left the cluster"
        if job.device is not None and not any(n["resources"].get(resource_name(job.device), 0) > 0 for n in nodes):
            return f"no live node of the cluster is {job.device} any more (its node left)"
        return None

    def _options(self, job: Job) -> dict[str, Any]:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        resources: dict[str, float] = {}
        if job.device is not None:
            resources[resource_name(job.device)] = DEVICE_SHARE
        if job.measures:
            resources[MEASURE_SLOT] = 1.0
        opts: dict[str, Any] = {"resources": resources, "max_retries": RETRIES, "retry_exceptions": False,
                                "num_cpus": 1, "num_gpus": 1 if job.device and job.device.startswith("gpu") else 0}
        if job.node is not None:
            opts["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node_id=job.node, soft=False)
        return opts

    # -- running ----------------------------------------------------------------------------------------------
    def run(self, jobs: list[Job], timeout_s: float | None = None) -> Iterator[Done]:
        """Submit every job (after `check`), then yield Done for each as it finishes."""
        self.check(jobs)
        ray = self._ray
        refs = {self._remote.options(**self._options(job)).remote(job, timeout_s): job for job in jobs}
        pending = list(refs)
        try:
            while pending:
                ready, pending = ray.wait(pending, num_returns=1, timeout=WATCH_S)
                if not ready:  # nothing finished for a while: a task no live node can run any more never will
                    for ref in list(pending):
                        why = self._unservable(refs[ref])
                        if why:
                            ray.cancel(ref, force=True)
                            pending.remove(ref)
                            yield Done(refs[ref], None, why, node="")
                    continue
                job = refs[ready[0]]
                try:
                    value, error, node, where = ray.get(ready[0])
                    yield Done(job, value, error, node=node, **where)
                except Exception as e:  # noqa: BLE001 - a died worker/node after the retries, a cancelled task
                    yield Done(job, None, _ray_error(e), node="")
        except BaseException:  # Ctrl-C, or the caller stopped early: nothing keeps running on the cluster
            for ref in pending:
                try:
                    ray.cancel(ref, force=True)
                except Exception:  # noqa: BLE001 - already finished
                    pass
            raise

    def close(self) -> None:
        if self._started and self._ray.is_initialized():
            self._ray.shutdown()

    def __enter__(self) -> "RayExecutor":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _ray_error(e: BaseException) -> str:
    """A Ray exception as one line saying what happened."""
    name = type(e).__name__
    if "WorkerCrashed" in name or "NodeDied" in name or "ActorDied" in name or "OwnerDied" in name:
        return f"the Ray worker running it died ({name}) and the retries ran out"
    if "TaskCancelled" in name:
        return "cancelled"
    return one_line(e)
