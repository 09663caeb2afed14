"""Simplify stage: onnxsim constant folding and graph clean-up. A failure is an error, not a warning."""

from __future__ import annotations

from pathlib import Path

from enginesmith.errors import EnginesmithError


def simplify_onnx(src: Path, dst: Path) -> dict[str, int]:
    """Simplify `src` into `dst`; return node counts before and after."""
    import onnx
    import onnxsim

    model = onnx.load(str(src))
    before = len(model.graph.node)
    try:
        simplified, ok = onnxsim.simplify(model, check_n=0)
    except Exception as e:  # onnxsim raises RuntimeError/ValueError/etc. from C++
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise EnginesmithError(f"onnxsim could not simplify {src.name}: {first}") from None
    if not ok:
        raise EnginesmithError(f"onnxsim reported the simplified {src.name} as invalid")
    onnx.save(simplified, str(dst))
    return {"nodes_before": before, "nodes_after": len(simplified.graph.node)}
