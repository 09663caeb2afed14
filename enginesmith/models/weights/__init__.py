"""Real checkpoint formats: Darknet `.weights` (darknet.py) and PyTorch state dicts (state_dict.py).

`load_weights(model, path, darknet_ok)` picks the reader from the file suffix.
"""

from __future__ import annotations

from pathlib import Path

from enginesmith.errors import EnginesmithError

DARKNET_SUFFIX = ".weights"


def load_weights(model: object, path: str | Path, darknet_ok: bool = False) -> None:
    """Load `path` into `model` in place: `.weights` -> Darknet (only if darknet_ok), else a state dict."""
    p = _checked_path(path, model, darknet_ok)
    if p.suffix.lower() == DARKNET_SUFFIX:
        from enginesmith.models.weights.darknet import load_darknet_weights

        load_darknet_weights(model, p)  # type: ignore[arg-type]
        return
    from enginesmith.models.weights.state_dict import load_state_dict_file

    load_state_dict_file(model, p)  # type: ignore[arg-type]


def _checked_path(path: str | Path, model: object, darknet_ok: bool) -> Path:
    """`path` as a Path if it is an existing file that this model can take by its suffix; else one line."""
    p = Path(path)
    if not p.exists():
        raise EnginesmithError(f"weights file not found: {p}")
    if not p.is_file():
        raise EnginesmithError(f"weights path {p} is not a file; give a .pt/.pth state dict or a .weights file")
    if p.suffix.lower() == DARKNET_SUFFIX and not darknet_ok:
        raise EnginesmithError(f"{p} is a Darknet .weights file, but {type(model).__name__} is not a Darknet model; "
                               "give a PyTorch state dict (.pt/.pth)")
    return p


def darknet_allowed(loader: object) -> bool:
    """Whether a spec's `load_weights` reads Darknet `.weights` (a partial of load_weights with darknet_ok=True);
    the family-specific loaders (SSD, dense VGG, ...) all take PyTorch state dicts only."""
    from functools import partial

    return isinstance(loader, partial) and loader.func is load_weights and bool(loader.keywords.get("darknet_ok"))


def check_weights_file(model: object, path: str | Path, loader: object) -> None:
    """Everything about a weights file that can be known without loading it, checked before any heavy work.

    `model` is the network it will be loaded into (on the meta device is enough), `loader` the spec's
    `load_weights`. A `.weights` file: the model must take Darknet weights and the file's size must be what its
    layers hold (os.stat and the header only, models/weights/darknet.py). Anything else: a checkpoint torch
    opens without running pickled code (a zip file is memory-mapped, not read) and, for the plain state-dict
    loader, whose keys and shapes match the model. One-line EnginesmithError naming the file otherwise."""
    p = _checked_path(path, model, darknet_allowed(loader))
    if p.suffix.lower() == DARKNET_SUFFIX:
        from enginesmith.models.weights.darknet import check_darknet_file

        check_darknet_file(model, p)  # type: ignore[arg-type]
        return
    from enginesmith.models.weights.state_dict import check_state_dict_matches, read_state_dict

    sd = read_state_dict(p, mmap=True)
    from functools import partial

    if isinstance(loader, partial) and loader.func is load_weights:  # keys are the model's own: check them now
        check_state_dict_matches(model, sd, p)  # type: ignore[arg-type]


__all__ = ["load_weights", "check_weights_file", "darknet_allowed", "DARKNET_SUFFIX"]
