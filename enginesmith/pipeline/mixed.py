"""The mixed-precision search: keep the most sensitive layers in float until the accuracy budget holds.

Step 0 builds the plain INT8 engine and measures the task metric on the validation split. If the
drop against FP32 PyTorch exceeds the budget (or the engine fails its cosine check), the layers are
ranked by the quantization noise each adds (calibration/sensitivity.py, measured on the step-0
quantized model run by its own backend), and the top 1, 2, 4, 8, ... are kept in float, rebuilding
and re-measuring each time, until the budget holds. Every step is recorded for the report.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

from enginesmith.calibration.sensitivity import LayerSensitivity
from enginesmith.errors import AccuracyBudgetError
from enginesmith.pipeline.artifacts import Artifact


@dataclass
class Attempt:
    """One build of the search: which nodes stayed float, and what it measured."""

    keep_float: tuple[str, ...]
    metric: float | None  # None when the engine failed its own verification
    drop: float | None
    error: str = ""
    engine: Artifact | None = None
    quantized: Artifact | None = None

    @property
    def ok(self) -> bool:
        return not self.error

    def to_dict(self) -> dict[str, object]:
        return {"kept_float": len(self.keep_float), "nodes": list(self.keep_float),
                "metric": self.metric, "drop": self.drop, "error": self.error}


@dataclass
class SearchResult:
    attempts: list[Attempt] = field(default_factory=list)
    ranking: list[LayerSensitivity] = field(default_factory=list)

    @property
    def final(self) -> Attempt:
        return self.attempts[-1]

    def to_dict(self) -> dict[str, object]:
        return {"steps": [a.to_dict() for a in self.attempts],
                "ranking": [r.to_dict() for r in self.ranking[:20]]}


def schedule(n: int) -> list[int]:
    """How many layers to keep in float at each step after the first: 1, 2, 4, ... then all n."""
    ks, k = [], 1
    while k < n:
        ks.append(k)
        k *= 2
    return ks + [n] if n else []


def search(
    attempt: Callable[[tuple[str, ...]], Attempt],
    rank: Callable[[Attempt], list[LayerSensitivity]],
    within_budget: Callable[[Attempt], bool],
    on_step: Callable[[int, int, Attempt], None] = lambda i, n, a: None,
    attempt_all: Callable[[list[tuple[str, ...]]], Iterable[Attempt]] | None = None,
) -> SearchResult:
    """Run the search. `attempt(keep_float)` builds and measures; `rank(first_attempt)` orders the
    layers; `within_budget(a)` judges. Raises AccuracyBudgetError when even all layers in float fail.

    attempt_all(keep_floats): the steps after the first built at once (speculatively, e.g. as executor jobs),
    their attempts yielded in order; the search takes them as it would take attempt()'s, so the result (the
    smallest passing step) is the same."""
    result = SearchResult()
    first = attempt(())
    result.attempts.append(first)
    on_step(0, 0, first)
    if within_budget(first):
        return result
    result.ranking = rank(first)
    names = [r.name for r in result.ranking]
    steps = schedule(len(names))
    keeps = [tuple(names[:k]) for k in steps]
    attempts = attempt_all(keeps) if attempt_all is not None else (attempt(keep) for keep in keeps)
    for i, a in enumerate(attempts, start=1):
        result.attempts.append(a)
        on_step(i, len(steps), a)
        if within_budget(a):
            return result
    raise AccuracyBudgetError(
        f"the accuracy budget does not hold even with all {len(names)} quantizable layers in float "
        f"(last drop {_fmt(result.final.drop)}); the loss is not from INT8: check the validation data and "
        "--accuracy-budget, or build fp16/fp32"
    )


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f} points"


def kept_summary(names: Sequence[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" (+{len(names) - limit} more)" if len(names) > limit else "")
