"""The engine folder a build publishes at `--out`: the engine files copied (checked) from the cache,
manifest.json (what the runtime reads: runtime/manifest.py) and report.md, swapped in atomically
(outdir.py)."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from enginesmith.errors import EnginesmithError
from enginesmith.files import write_json_atomic, write_text_atomic
from enginesmith.pipeline.artifacts import Artifact, sha256_file
from enginesmith.pipeline.export import INPUT_NAME
from enginesmith.pipeline.outdir import OutState, publish_engine_folder
from enginesmith.runtime.manifest import ENGINE_SCHEMA, SCHEMA_VERSION
from enginesmith.runtime.proposals import DEFAULT_MAX_PROPOSALS

if TYPE_CHECKING:
    from enginesmith.pipeline.context import BuildContext


def publish(ctx: BuildContext, out: Path, state: OutState, engine: Artifact, stages: list[Artifact],
            with_nms: Artifact | None, latency: Artifact, accuracy: dict[str, Any] | None, report: str) -> None:
    """Fill a temporary folder beside `out` with the engine, its manifest and the report, then swap it in
    (only if `out` is still as `state` saw it)."""

    def fill(tmp: Path) -> None:
        for name in engine.manifest["files"]:
            _copy_checked(engine, name, tmp / name)
        manifest = engine_manifest(ctx, engine, stages, with_nms, latency, accuracy)
        write_json_atomic(tmp / "manifest.json", manifest)
        write_text_atomic(tmp / "report.md", report)

    publish_engine_folder(fill, out, state)


def engine_manifest(ctx: BuildContext, engine: Artifact, stages: list[Artifact], with_nms: Artifact | None,
                    latency: Artifact, accuracy: dict[str, Any] | None) -> dict[str, Any]:
    """manifest.json of the engine folder (schema ENGINE_SCHEMA, version SCHEMA_VERSION; a fresh build_id)."""
    c = ctx.config
    manifest = {
        "schema": ENGINE_SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "build_id": uuid.uuid4().hex,
        "model": ctx.spec.name,
        "task": ctx.spec.task,
        "target": c.target,
        "precision": c.precision,
        "engine": engine.manifest["files"][0],
        "input": {"name": INPUT_NAME, "shape": ["batch" if c.dynamic_batch else c.batch,
                                                ctx.preprocess.channels, *ctx.size]},
        "outputs": (["detections", "num_detections"] if with_nms else []) + list(ctx.spec.output_names),
        "nms": c.nms if ctx.spec.task == "detection" else None,
        "preprocess": ctx.preprocess.to_dict(),
        "class_names": ctx.class_names,
        "weights": ctx.weights_id,
        "trained": ctx.trained,
        "sha256": engine.sha256,
        # every stage the build ran or reused (statistics, accuracy, latency, search attempts too), in order
        "stages": [{"stage": a.stage, "key": a.manifest["key"], "sha256": a.sha256, "params": a.manifest["params"],
                    "metrics": a.metrics, "wall_time_s": a.wall_time_s, "cached": a.cached, "tools": a.manifest["tools"]}
                   for a in stages],
        "latency": latency.metrics,
        "accuracy": accuracy,
    }
    if ctx.spec.definition:  # the file the network was built from: {"format", "file", "sha256"}
        manifest["definition"] = dict(ctx.spec.definition)
    two_stage = ctx.spec.two_stage
    if two_stage:  # host stages around the engine (runtime/two_stage.py)
        manifest["inputs"] = [manifest["input"], *({"name": k, "shape": [ax[0], 4]} for k, ax in ctx.extra_axes.items()
                                                   if k in ctx.extra_inputs)]
        manifest["two_stage"] = {"kind": two_stage, "proposals": {"method": "selective-search", "mode": "fast",
                                                                  "max_proposals": DEFAULT_MAX_PROPOSALS}}
    if engine.metrics.get("device"):  # TensorRT: {"tensorrt", "gpu", "compute_capability"} the plan is tied to
        manifest["device"] = engine.metrics["device"]
    return manifest


def _copy_checked(artifact: Artifact, name: str, dest: Path) -> None:
    """Copy one file of a cache entry, checking the copy has the bytes the entry recorded (sha256)."""
    shutil.copyfile(artifact.folder / name, dest)
    if sha256_file(dest) != artifact.manifest["content"][name]["sha256"]:
        raise EnginesmithError(f"{artifact.folder / name} changed while it was copied to the engine folder; "
                               "run the build again")
