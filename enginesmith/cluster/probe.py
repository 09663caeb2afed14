"""A job function that reports where it ran: what `enginesmith worker --check` submits to see every node answer,
and what the executor tests place and kill."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

from enginesmith.cluster.devices import local_kinds
from enginesmith.cluster.jobs import where
from enginesmith.errors import EnginesmithError


def describe(sleep_s: float = 0.0, fail: str | None = None, marker: str | None = None, die: bool = False
             ) -> dict[str, Any]:
    """{host, machine, pid, kinds, start, end}; after sleeping `sleep_s` (appending "PID START" to `marker` first,
    if given, so a test can see the job started and kill it); raises EnginesmithError(fail) when `fail` is given;
    SIGKILLs itself when `die`."""
    start = time.time()
    if marker:
        with open(marker, "a") as f:
            f.write(f"{os.getpid()} {start}\n")
    if die:
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(sleep_s)
    if fail:
        raise EnginesmithError(fail)
    return {**where(), "pid": os.getpid(), "kinds": local_kinds(), "start": start, "end": time.time()}
