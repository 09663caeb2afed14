"""`enginesmith worker`: start this machine as a Ray node that advertises what it is.

The node's custom resources are its device kinds (devices.local_kinds: cpu, cpu:avx2, cpu:vnni, cpu:amx,
gpu:H100 ...) and one measuring slot, so suite rows that name a device run here and benchmarks never share it.
The same can be done by hand: `ray start --address HEAD:6379 --resources '<the JSON printed by --print>'`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from enginesmith.cluster.ray_cluster import INSTALL_HINT, local_resources
from enginesmith.errors import EnginesmithError


def ray_start_command(address: str | None, port: int = 6379, num_cpus: int | None = None) -> list[str]:
    """`ray start` joining `address` (HEAD:PORT), or starting a head on `port` when address is None, with this
    machine's resources; no dashboard, no usage statistics."""
    ray = shutil.which("ray") or str(Path(sys.executable).parent / "ray")
    cmd = [ray, "start", "--resources", json.dumps(local_resources(), sort_keys=True), "--disable-usage-stats"]
    cmd += ["--address", address] if address else ["--head", "--port", str(port), "--include-dashboard", "false"]
    if num_cpus:
        cmd += ["--num-cpus", str(num_cpus)]
    return cmd


def start_worker(address: str | None, port: int = 6379, num_cpus: int | None = None) -> int:
    """Run `ray start` (it returns once the node is up; the node runs on in the background). Returns its exit code."""
    cmd = ray_start_command(address, port, num_cpus)
    if not Path(cmd[0]).exists() and shutil.which(cmd[0]) is None:
        raise EnginesmithError(f"enginesmith worker needs Ray: {INSTALL_HINT}")
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    return subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL).returncode
