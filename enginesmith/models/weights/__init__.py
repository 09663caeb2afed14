"""Real checkpoint formats: Darknet `.weights` (darknet.py) and PyTorch state dicts (state_dict.py).

`load_weights(model, path, darknet_ok)` picks the reader from the file suffix.
"""

from __future__ import annotations

from pathlib import Path

from enginesmith.errors import EnginesmithError

DARKNET_SUFFIX = ".weights"


def load_weights(model: object, path: str | Path, darknet_ok: bool = False) -> None:
    """Load `path` into `model` in place: `.weights` -> Darknet (only if darknet_ok), else a state dict."""
    p = Path(path)
    if not p.exists():
        raise EnginesmithError(f"weights file not found: {p}")
    if not p.is_file():
        raise EnginesmithError(f"weights path {p} is not a file; give a .pt/.pth state dict or a .weights file")
    if p.suffix.lower() == DARKNET_SUFFIX:
        if not darknet_ok:
            raise EnginesmithError(
                f"{p} is a Darknet .weights file, but {type(model).__name__} is not a Darknet model; "
                "give a PyTorch state dict (.pt/.pth)"
            )
        from enginesmith.models.weights.darknet import load_darknet_weights

        load_darknet_weights(model, p)  # type: ignore[arg-type]
        return
    from enginesmith.models.weights.state_dict import load_state_dict_file

    load_state_dict_file(model, p)  # type: ignore[arg-type]


__all__ = ["load_weights", "DARKNET_SUFFIX"]
