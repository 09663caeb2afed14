"""Simplify stage: onnxsim constant folding and graph clean-up. A failure is an error, not a warning."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from enginesmith.backends.onnxruntime import Runner
from enginesmith.errors import EnginesmithError
from enginesmith.pipeline.artifacts import Artifact, StageResult
from enginesmith.pipeline.build import run_batches
from enginesmith.pipeline.export import INPUT_NAME
from enginesmith.pipeline.verify import TOLERANCES, check, compare

if TYPE_CHECKING:
    from enginesmith.pipeline.context import BuildContext


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


def simplify_stage(exported: Artifact, ctx: BuildContext) -> Artifact:
    """Stage 2: onnxsim on the exported ONNX, verified against it on ONNX Runtime (ctx.verify_batches)."""
    def produce(tmp: Path) -> StageResult:
        counts = simplify_onnx(exported.file, tmp / "model.onnx")
        with Runner(exported.file) as before, Runner(tmp / "model.onnx") as after:
            cmp = compare(run_batches(before, INPUT_NAME, ctx.verify_batches),
                          run_batches(after, INPUT_NAME, ctx.verify_batches))
        check(cmp, TOLERANCES["simplify"], "onnxsim simplification")
        return StageResult(["model.onnx"], {**counts, "verify": cmp.to_dict()})

    return ctx.record(ctx.cache.run("simplify", [exported], {"tool": "onnxsim"}, produce))
