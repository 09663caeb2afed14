"""A job function that reports where it ran: what `enginesmith worker --check` submits to see every node answer,
and what the executor tests place and kill."""

from __future__ import annotations

import os
import time
from typing import Any

from enginesmith.cluster.devices import local_kinds
from enginesmith.cluster.jobs import where
from enginesmith.errors import EnginesmithError


def describe(sleep_s: float = 0.0, fail: str | None = None, marker: str | None = None) -> dict[str, Any]:
    """{host, machine, pid, kinds}; after sleeping `sleep_s` (touching `marker` first, if given, so a test can
    see the job started); raises EnginesmithError(fail) when `fail` is given."""
    if marker:
        with open(marker, "a") as f:
            f.write(f"{os.getpid()}\n")
    time.sleep(sleep_s)
    if fail:
        raise EnginesmithError(fail)
    return {**where(), "pid": os.getpid(), "kinds": local_kinds()}
