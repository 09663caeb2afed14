"""Whether an engine was built from real weights, and the one warning when it was not (torch-free).

`build-engine MODEL` without `--weights` builds a seeded, untrained network: fast and numerically verified,
but its detections and classes are noise. The engine's manifest records this as `"trained": false` (`true`
when `--weights` was given; absent in engines made before the field existed, which count as unknown).

- The library (`enginesmith.runtime.load`) issues `warnings.warn(..., UntrainedEngineWarning)` (Python shows it once per
  engine folder and calling line), so an app sees it on stderr or in its log by default and can silence it with
  `warnings.filterwarnings("ignore", category=UntrainedEngineWarning)`; the loaded object's `.trained`
  property (True, False or None) says the same in code.
- The CLI (`enginesmith detect`, `classify`, `eval`) prints `untrained_message(...)` as one
  `warning: ...` line on stderr instead.
"""

from __future__ import annotations

import warnings
from typing import Any


class UntrainedEngineWarning(UserWarning):
    """A loaded engine was built without weights (a seeded, untrained network): its outputs are noise."""


def untrained_message(what: str, task: str) -> str:
    """The one line that says `what` (an engine folder or a model) is untrained, and what to do."""
    outputs = {"detection": "detections", "classification": "classes"}.get(task, "outputs")
    return (f"{what} was built without --weights (seeded, untrained): its {outputs} are random and its accuracy "
            "is meaningless; build it with `--weights CHECKPOINT` (e.g. from `enginesmith train`) for real ones")


def is_untrained(info: Any) -> bool:
    """True when an EngineInfo's manifest says the engine was built without weights (`"trained": false`)."""
    return getattr(info, "trained", None) is False


def warn_if_untrained(info: Any, stacklevel: int = 3) -> None:
    """warnings.warn an UntrainedEngineWarning for an EngineInfo of an untrained engine (else nothing)."""
    if is_untrained(info):
        warnings.warn(untrained_message(f"engine {info.folder} ({info.model})", info.task), UntrainedEngineWarning,
                      stacklevel=stacklevel)


__all__ = ["UntrainedEngineWarning", "untrained_message", "is_untrained", "warn_if_untrained"]
