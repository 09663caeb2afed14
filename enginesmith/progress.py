"""A progress bar on stderr for stage work that takes more than a few seconds."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator


@contextmanager
def progress_bar(description: str, total: int, passes: int = 1) -> Iterator[Callable[[int], None]]:
    """Yield `update(seen)` where `seen` counts items within the current pass (it restarts at each
    pass); the bar spans `passes * total` items."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    state = {"pass": 0, "last": 0}
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(description, total=passes * total)

        def update(seen: int) -> None:
            if seen < state["last"]:
                state["pass"] += 1
            state["last"] = seen
            bar.update(task, completed=state["pass"] * total + seen)

        yield update
