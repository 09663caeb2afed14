"""What a checkpoint was trained on, laid over a model's PreprocessSpec: `--channels`, `--mean`, `--std` and the
preprocessing a checkpoint records (torch-free).

Precedence: the option, then what the checkpoint records, then the model's own spec (the default checkpoint
family, see README "Checkpoint families"). Mean and std belong to colours, not positions: switching the channel
order without a new mean/std carries each value with its colour (ssd300's R-123, G-117, B-104 fed as RGB become
B-104, G-117, R-123 under `--channels bgr`). A `--mean`/`--std` lists one value per channel fed, in the order fed
(after `--channels`), in the model's pixel scale (0-255 when its scale is 1, 0-1 when it is 1/255).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Mapping

from enginesmith.errors import EnginesmithError
from enginesmith.runtime.preprocess import PreprocessSpec

CHANNEL_ORDERS = ("RGB", "BGR")


@dataclass(frozen=True)
class PreprocessOverride:
    """The options that override a model's preprocessing; None leaves that part as the model (or checkpoint) has it."""

    channels: str | None = None  # "RGB" | "BGR"
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    @property
    def empty(self) -> bool:
        return self.channels is None and self.mean is None and self.std is None

    def to_dict(self) -> dict[str, Any]:
        return {"channels": self.channels, "mean": None if self.mean is None else list(self.mean),
                "std": None if self.std is None else list(self.std)}


def parse_channels(text: str | None) -> str | None:
    """'rgb' / 'bgr' (any case) -> 'RGB' / 'BGR'; None stays None; anything else is a one-line error."""
    if text is None:
        return None
    order = str(text).strip().upper()
    if order not in CHANNEL_ORDERS:
        raise EnginesmithError(f"--channels {text!r}: choose rgb or bgr (the channel order the checkpoint was "
                               "trained on)")
    return order


def parse_values(text: str | None, option: str) -> tuple[float, ...] | None:
    """'123,117,104' -> (123.0, 117.0, 104.0); None stays None; a non-number or non-finite value is one line."""
    if text is None:
        return None
    try:
        values = tuple(float(v) for v in str(text).split(","))
    except ValueError:
        values = ()
    if not values or not all(math.isfinite(v) for v in values):
        raise EnginesmithError(f"{option} {text!r}: give comma-separated numbers, one per channel fed, e.g. "
                               f"{option} 123,117,104")
    return values


def make_override(channels: str | None = None, mean: tuple[float, ...] | str | None = None,
                  std: tuple[float, ...] | str | None = None) -> PreprocessOverride:
    """A checked PreprocessOverride from option values (strings as typed, or numbers)."""
    def values(v: tuple[float, ...] | str | None, option: str) -> tuple[float, ...] | None:
        return parse_values(v, option) if isinstance(v, str) else (None if v is None else tuple(float(x) for x in v))

    return PreprocessOverride(parse_channels(channels), values(mean, "--mean"), values(std, "--std"))


def _reordered(spec: PreprocessSpec, color: str, model: str, why: str) -> PreprocessSpec:
    """`spec` fed in channel order `color`, each mean/std value moved with its colour."""
    if color == spec.color:
        return spec
    if spec.color == "GRAY" or color == "GRAY":
        raise EnginesmithError(f"{why} {color.lower()}: {model} takes {spec.color} input and its channel order "
                               "cannot be changed; drop it")
    flip = lambda v: tuple(reversed(v)) if len(v) == 3 else tuple(v)  # noqa: E731 (RGB <-> BGR reverses the three)
    return replace(spec, color=color, mean=flip(spec.mean), std=flip(spec.std))  # type: ignore[arg-type]


def _with_values(spec: PreprocessSpec, mean: tuple[float, ...] | None, std: tuple[float, ...] | None, model: str,
                 where: str) -> PreprocessSpec:
    for values, option in ((mean, "mean"), (std, "std")):
        if values is None:
            continue
        if len(values) != spec.channels:
            example = ",".join(f"{v:g}" for v in (spec.mean if option == "mean" else spec.std))
            raise EnginesmithError(f"{where}{option} {','.join(f'{v:g}' for v in values)}: {model} is fed "
                                   f"{spec.channels} channel{'s' if spec.channels > 1 else ''} ({spec.color}); give "
                                   f"{spec.channels} value{'s' if spec.channels > 1 else ''} in that order, e.g. "
                                   f"{where}{option} {example}")
        if not all(math.isfinite(float(v)) for v in values) or (option == "std" and min(values) <= 0):
            raise EnginesmithError(f"{where}{option} {','.join(f'{v:g}' for v in values)}: values must be finite"
                                   + (" and std above 0" if option == "std" else ""))
    return replace(spec, mean=tuple(float(v) for v in mean) if mean is not None else spec.mean,
                   std=tuple(float(v) for v in std) if std is not None else spec.std)


def resolve_preprocess(spec: PreprocessSpec, override: PreprocessOverride | None = None,
                       recorded: Mapping[str, Any] | None = None, model: str = "the model",
                       checkpoint: str = "the checkpoint") -> tuple[PreprocessSpec, list[str]]:
    """The PreprocessSpec a build or an evaluation feeds: `spec` (the model's), then `recorded` (what a checkpoint
    says it was trained on: any of color, scale, mean, std), then `override` (the options). Returns it with the
    one-line warnings to show (an option that contradicts the checkpoint). Bad values are one-line errors."""
    out = spec
    if recorded:
        if "color" in recorded:
            out = _reordered(out, str(recorded["color"]), model, f"checkpoint {checkpoint} records channels")
        if "scale" in recorded:
            out = replace(out, scale=float(recorded["scale"]))
        out = _with_values(out, recorded.get("mean"), recorded.get("std"), model, f"checkpoint {checkpoint}: ")
    warnings: list[str] = []
    if override is None or override.empty:
        return out, warnings
    if override.channels is not None:
        said = recorded.get("color") if recorded else None
        if said is not None and said != override.channels:
            warnings.append(f"--channels {override.channels.lower()} contradicts checkpoint {checkpoint}, which records "
                            f"{said} input; feeding {override.channels} as asked")
        out = _reordered(out, override.channels, model, "--channels")
    return _with_values(out, override.mean, override.std, model, "--"), warnings
