"""A Job: one unit of matrix work (build an engine, measure it, evaluate a shard), run wherever an executor
places it; and Done: what came of it.

A job names its function as "package.module:function" (imported where it runs, so an executor never imports
the pipeline) and passes keyword arguments that pickle (paths, numbers, dicts). The function returns a value
that pickles; an EnginesmithError it raises is the job's one-line error."""

from __future__ import annotations

import importlib
import os
import socket
from dataclasses import dataclass, field
from typing import Any

from enginesmith.cluster.devices import check_kind
from enginesmith.errors import EnginesmithError


@dataclass(frozen=True)
class Job:
    """key: names the job in progress lines and errors. device: a device kind the node must be (devices.py),
    None for any. measures: a benchmark (one at a time per node). node: run on this node (the `Done.node` of an
    earlier job, e.g. the build whose engine it measures); None: anywhere the device fits."""

    key: str
    func: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    device: str | None = None
    measures: bool = False
    node: str | None = None

    def __post_init__(self) -> None:
        if self.device is not None:
            check_kind(self.device, f"{self.key}: device")
        if ":" not in self.func:
            raise ValueError(f"Job.func must be 'module:function', got {self.func!r}")


@dataclass
class Done:
    """value: the function's return value (None on error). error: one line (without the job's key), or None.
    node: where it ran (a Ray node id, or "local"); host: that machine's host name; machine: its CPU (and GPU)
    as results files record it."""

    job: Job
    value: Any = None
    error: str | None = None
    node: str = "local"
    host: str = ""
    machine: str = ""

    @property
    def ok(self) -> bool:
        return self.error is None


def call(func: str, kwargs: dict[str, Any]) -> Any:
    """Import "module:function" and call it with kwargs."""
    module, _, name = func.partition(":")
    return getattr(importlib.import_module(module), name)(**kwargs)


def where() -> dict[str, str]:
    """{host, machine} of the process it runs in (machine: CPU model, ISA flags, cores, and GPUs)."""
    from enginesmith.cluster.devices import cpu_description, local_gpus

    gpus = local_gpus()
    machine = f"{cpu_description()}, {os.cpu_count()} cores" + (f"; GPU: {', '.join(gpus)}" if gpus else "")
    return {"host": socket.gethostname(), "machine": machine}


def one_line(e: BaseException) -> str:
    """An exception as one line: an EnginesmithError's own message, anything else its type and first line."""
    if isinstance(e, EnginesmithError):
        return str(e).splitlines()[0] if str(e) else type(e).__name__
    first = (str(e).strip().splitlines() or [""])[0]
    return f"{type(e).__name__}: {first}" if first else type(e).__name__
