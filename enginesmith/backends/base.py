"""What every backend shares: the Runner contract (modelled on Polygraphy's runner) and its helpers.

A Runner is a context manager: entering it loads the engine, leaving it releases it, and in between
`infer({name: array}) -> {name: array}` runs one batch. Subclasses implement `_load`, `_infer` and
`_release`; this base class checks the feed so every backend fails the same, readable way.
"""

from __future__ import annotations

import abc
from pathlib import Path
from typing import Any

import numpy as np

from enginesmith.errors import EnginesmithError

ENGINE_PRECISIONS = ("fp32", "fp16", "bf16", "int8")  # what an engine is built at (targets.PRECISIONS maps mixed to int8)


def check_precision(precision: str, target: str) -> None:
    """An engine backend builds fp32, fp16, bf16 or int8 ("mixed" reaches it as int8: backends/targets.py)."""
    if precision not in ENGINE_PRECISIONS:
        raise EnginesmithError(
            f"unknown precision {precision!r} for target {target}; choose one of: {', '.join(ENGINE_PRECISIONS)}"
        )


def check_engine_file(path: str | Path, what: str) -> Path:
    """The engine file must exist; otherwise say how to get one."""
    p = Path(path)
    if not p.is_file():
        raise EnginesmithError(f"engine not found: {p} ({what}); build it first with `enginesmith build`")
    return p


def first_line(exc: BaseException) -> str:
    """A library exception as one short line (native errors are often many lines)."""
    text = str(exc).strip() or type(exc).__name__
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    line = lines[0] if lines else type(exc).__name__
    return line if len(line) <= 300 else line[:297] + "..."


class Runner(abc.ABC):
    """Loads an engine on `__enter__`, runs `infer` on numpy feeds, releases on `__exit__`."""

    name = "runner"

    def __init__(self) -> None:
        self.input_names: list[str] = []
        self.output_names: list[str] = []
        self.is_active = False

    # -- lifecycle -------------------------------------------------------------------------
    def activate(self) -> "Runner":
        if not self.is_active:
            self._load()
            self.is_active = True
        return self

    def deactivate(self) -> None:
        if self.is_active:
            try:
                self._release()
            finally:
                self.is_active = False

    def __enter__(self) -> "Runner":
        return self.activate()

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.deactivate()

    # -- inference -------------------------------------------------------------------------
    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one batch: {input name: array} -> {output name: array} (numpy, owned by the caller)."""
        if not self.is_active:
            raise EnginesmithError(
                f"{self.name} runner is not loaded; use it as `with runner:` (or call activate()) before infer"
            )
        missing = [n for n in self.input_names if n not in feed]
        unknown = [n for n in feed if n not in self.input_names]
        if missing or unknown:
            raise EnginesmithError(
                f"{self.name} runner got inputs {sorted(feed)} but the engine takes {self.input_names}; "
                "feed exactly the engine's input names"
            )
        return self._infer({k: np.ascontiguousarray(v) for k, v in feed.items()})

    @abc.abstractmethod
    def _load(self) -> None:
        """Load the engine and fill input_names / output_names."""

    @abc.abstractmethod
    def _infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one batch (feed already checked and contiguous)."""

    @abc.abstractmethod
    def _release(self) -> None:
        """Free what _load took."""

    def __repr__(self) -> str:
        state = "loaded" if self.is_active else "not loaded"
        return f"<{type(self).__name__} {self.name} ({state})>"
