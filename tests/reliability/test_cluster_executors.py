"""The executors of enginesmith/cluster on real parts: child processes here, and a real Ray cluster simulated on
this machine (ray.cluster_utils.Cluster: a head and a second node advertising different device kinds).

Shown: jobs run on nodes of their device kind; a kind no node is fails at once in one line; two benchmarks never
run on one node at the same time (while plain jobs do overlap: the check can fail); a job whose process or Ray
worker is SIGKILLed is retried or reported in one line and leaves no process behind; a node leaving with the
only device a job needs fails it in one line instead of leaving it pending; Ctrl-C in the caller stops the job's
processes. The job function is enginesmith/cluster/probe.py (it records its pid, start and end)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from enginesmith.cluster.devices import MEASURE_SLOT, local_kinds, resource_name
from enginesmith.cluster.jobs import Job
from enginesmith.cluster.local import LocalExecutor
from enginesmith.errors import EnginesmithError

PROBE = "enginesmith.cluster.probe:describe"
ray = pytest.importorskip("ray", reason="the cluster extra (Ray) is part of the dev install")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def _wait_lines(marker: Path, n: int, timeout: float = 60.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = marker.read_text().splitlines() if marker.exists() else []
        if len(lines) >= n:
            return lines
        time.sleep(0.05)
    pytest.fail(f"{marker}: fewer than {n} job starts within {timeout} s")


def _parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[1])


def _signal_masks(pid: int) -> dict[str, str]:
    """The SigBlk / SigIgn / SigCgt masks of process pid (/proc/PID/status), or {} when it is gone."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return {}
    return dict(ln.split(":\t", 1) for ln in lines if ln.startswith(("SigBlk", "SigIgn", "SigCgt")))


def _gone(pid: int, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.05)
    return False


# -- local ---------------------------------------------------------------------------------------------------
def test_local_executor_reports_values_errors_and_kills_in_one_line():
    done = list(LocalExecutor().run([Job("ok", PROBE), Job("fails", PROBE, {"fail": "bad input: fix it"}),
                                     Job("killed", PROBE, {"die": True})]))
    assert [d.job.key for d in done] == ["ok", "fails", "killed"]
    assert done[0].ok and done[0].value["pid"] != os.getpid() and done[0].node == "local"
    assert done[1].error == "bad input: fix it"
    assert done[2].error == "its process was killed (signal 9, SIGKILL)"


def test_local_executor_refuses_a_device_this_machine_is_not():
    absent = next(k for k in ("cpu:amx", "cpu:bf16", "cpu:vnni", "gpu") if k not in local_kinds())
    with pytest.raises(EnginesmithError, match=f"row needs device {absent}; this machine is cpu"):
        LocalExecutor().check([Job("ok", PROBE), Job("row", PROBE, device=absent)])
    with pytest.raises(EnginesmithError, match="is not a device kind"):
        Job("row", PROBE, device="tpu:v5")


# The caller stands for a command run from a terminal, where Ctrl-C reaches it. It restores Python's SIGINT handler
# first: a child starts with the dispositions of the process that started it, and a pytest started as a background
# job of a non-interactive shell (`pytest ... &`) has SIGINT and SIGQUIT ignored (SigIgn 0x...006), which made the
# caller deaf to the signal this test sends.
DRIVER = textwrap.dedent("""
    import signal
    import sys
    signal.signal(signal.SIGINT, signal.default_int_handler)
    from enginesmith.cluster.executor import executor_for
    from enginesmith.cluster.jobs import Job
    ex = executor_for(sys.argv[1])
    print("running", flush=True)
    list(ex.run([Job("long", "enginesmith.cluster.probe:describe", {"sleep_s": 120, "marker": sys.argv[2]})]))
""")


@pytest.mark.parametrize("cluster", ["local", pytest.param("address", marks=pytest.mark.slow)])
def test_ctrl_c_stops_the_jobs_processes(cluster, tmp_path, request):
    """SIGINT to the caller (as Ctrl-C sends it): the job's process is gone soon after, and the caller exits."""
    address = request.getfixturevalue("sim")["address"] if cluster == "address" else "local"
    marker = tmp_path / "started"
    driver = subprocess.Popen([sys.executable, "-c", DRIVER, address, str(marker)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})
    pid = int(_wait_lines(marker, 1)[0].split()[0])
    masks = _signal_masks(driver.pid)  # a SIGINT blocked or ignored here was inherited from the test process
    driver.send_signal(signal.SIGINT)
    try:
        driver.wait(timeout=60)
    except subprocess.TimeoutExpired:
        driver.kill()
        _, err = driver.communicate()
        pytest.fail(f"the caller did not exit within 60 s of SIGINT; its signal masks before it: {masks}; "
                    f"stderr: {err[-2000:]}")
    assert driver.returncode != 0
    assert _gone(pid), f"the job's process {pid} outlived the caller's Ctrl-C"


# -- a Ray cluster of two nodes on this machine ----------------------------------------------------------------
@pytest.fixture(scope="module")
def sim():
    """A head (2 CPUs: cpu and cpu:avx2, one measuring slot) and node B (1 CPU: cpu and cpu:amx, one measuring
    slot). Kinds are advertised whatever this CPU is: placement reads only what nodes advertise."""
    from ray.cluster_utils import Cluster

    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 2, "resources": {resource_name("cpu"): 1.0, resource_name("cpu:avx2"): 1.0, MEASURE_SLOT: 1.0}})
    node_b = cluster.add_node(num_cpus=1, resources={resource_name("cpu"): 1.0, resource_name("cpu:amx"): 1.0,
                                                    MEASURE_SLOT: 1.0})
    from enginesmith.cluster.ray_cluster import RayExecutor

    ex = RayExecutor(cluster.address)
    ids = {n["NodeID"]: n for n in ray.nodes() if n["Alive"]}
    head = next(i for i, n in ids.items() if "node:__internal_head__" in n["Resources"])
    b = next(i for i in ids if i != head)
    yield {"cluster": cluster, "executor": ex, "head": head, "b": b, "address": cluster.address, "node_b": node_b}
    ex.close()
    ray.shutdown()
    cluster.shutdown()


def test_jobs_run_on_nodes_of_their_device_kind(sim):
    jobs = [Job(f"amx{i}", PROBE, device="cpu:amx") for i in range(3)] + \
           [Job(f"avx2-{i}", PROBE, device="cpu:avx2") for i in range(3)] + [Job("any", PROBE)]
    done = {d.job.key: d for d in sim["executor"].run(jobs)}
    assert all(d.ok for d in done.values()), [d.error for d in done.values()]
    assert {done[f"amx{i}"].node for i in range(3)} == {sim["b"]}
    assert {done[f"avx2-{i}"].node for i in range(3)} == {sim["head"]}
    assert done["any"].machine and done["any"].host


def test_a_device_no_node_is_fails_at_once_in_one_line(sim):
    start = time.monotonic()
    with pytest.raises(EnginesmithError) as e:
        list(sim["executor"].run([Job("ok", PROBE), Job("trt-row", PROBE, device="gpu:H100")]))
    assert time.monotonic() - start < 10
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("trt-row needs device gpu:H100, and no node of the cluster is one")
    assert "cpu:amx" in msg and "enginesmith worker" in msg


def test_benchmarks_never_share_a_node_plain_jobs_do(sim):
    def intervals(measures: bool) -> dict[str, list[tuple[float, float]]]:
        jobs = [Job(f"j{i}", PROBE, {"sleep_s": 1.0}, measures=measures, node=sim["head"]) for i in range(3)]
        done = list(sim["executor"].run(jobs))
        assert all(d.ok and d.node == sim["head"] for d in done), [d.error for d in done]
        return sorted((d.value["start"], d.value["end"]) for d in done)

    def overlaps(spans: list[tuple[float, float]]) -> bool:
        return any(b[0] < a[1] for a, b in zip(spans, spans[1:]))

    assert not overlaps(intervals(measures=True)), "two benchmarks ran on one node at once"
    assert overlaps(intervals(measures=False)), "plain jobs never overlapped: the check above could not fail"


@pytest.mark.slow  # ~20 s: waits for Ray's retry
def test_a_killed_ray_worker_is_retried_and_leaves_no_process(sim, tmp_path):
    marker = tmp_path / "started"
    runs = sim["executor"].run([Job("retry-me", PROBE, {"sleep_s": 3, "marker": str(marker)}, device="cpu:avx2")])
    import threading

    got: list = []
    t = threading.Thread(target=lambda: got.extend(runs))
    t.start()
    pid = int(_wait_lines(marker, 1)[0].split()[0])
    worker = _parent(pid)
    os.kill(worker, signal.SIGKILL)  # the Ray worker running the task; its job process must die with it
    assert _gone(pid), "the job's process outlived its killed Ray worker"
    t.join(timeout=120)
    assert len(got) == 1 and got[0].ok, got and got[0].error
    assert len(marker.read_text().splitlines()) == 2, "the job was not run again"


@pytest.mark.slow  # ~25 s: a node joins and leaves
def test_a_node_leaving_with_the_only_device_fails_the_job_in_one_line(sim, tmp_path):
    """Node C is the only cpu:avx512 node; it leaves while running that kind's job: Ray would retry the task and
    leave it pending for ever (no node fits), the executor fails it in one line instead."""
    import threading

    cluster = sim["cluster"]
    node_c = cluster.add_node(num_cpus=1, resources={resource_name("cpu:avx512"): 1.0})
    cluster.wait_for_nodes()
    marker = tmp_path / "started"
    got: list = []
    runs = sim["executor"].run([Job("avx512-row", PROBE, {"sleep_s": 300, "marker": str(marker)}, device="cpu:avx512")])
    t = threading.Thread(target=lambda: got.extend(runs))
    t.start()
    pid = int(_wait_lines(marker, 1)[0].split()[0])
    cluster.remove_node(node_c)
    t.join(timeout=120)
    assert len(got) == 1 and not got[0].ok
    assert got[0].error in ("no live node of the cluster is cpu:avx512 any more (its node left)",
                            "the Ray worker running it died (NodeDiedError) and the retries ran out"), got[0].error
    assert _gone(pid)


# -- enginesmith worker ---------------------------------------------------------------------------------------
def test_worker_print_shows_ray_start_with_this_machines_kinds(run_cli):
    proc = run_cli("worker", "--address", "10.1.2.3:6379", "--print")
    assert proc.returncode == 0, proc.stderr
    line = proc.stdout.strip()
    assert "ray start --resources" in line and "--address 10.1.2.3:6379" in line
    for kind in local_kinds():
        assert f'"{resource_name(kind)}": 1.0' in line
    assert f'"{MEASURE_SLOT}": 1.0' in line


@pytest.mark.slow  # starts and stops a real Ray head with `ray start` (and `ray stop` ends every Ray on the machine)
def test_worker_starts_a_head_that_places_jobs_by_kind(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    start = subprocess.run([sys.executable, "-m", "enginesmith.cli", "worker", "--port", str(port)], env=env,
                           capture_output=True, text=True, timeout=180)
    try:
        assert start.returncode == 0, start.stdout + start.stderr
        probe = textwrap.dedent(f"""
            from enginesmith.cluster.executor import executor_for
            from enginesmith.cluster.jobs import Job
            ex = executor_for("127.0.0.1:{port}")
            [d] = ex.run([Job("row", "enginesmith.cluster.probe:describe", device="{local_kinds()[-1]}", measures=True)])
            print(d.ok, d.error, d.value and d.value["kinds"])
        """)
        got = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=180)
        assert got.stdout.startswith("True None"), got.stdout + got.stderr
    finally:
        subprocess.run([str(Path(sys.executable).parent / "ray"), "stop", "--force"], env=env, capture_output=True,
                       timeout=120)
