"""Engine stage: build the backend engine and verify it against the FP32 ONNX on the same images."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from enginesmith.backends.targets import get_target
from enginesmith.calibration.feeds import as_feed
from enginesmith.errors import EnginesmithError
from enginesmith.pipeline.artifacts import Artifact, Cache, StageResult
from enginesmith.pipeline.verify import TOLERANCES, check, compare, nms_parity


def run_batches(runner: Any, input_name: str, batches: list[Any]) -> dict[str, np.ndarray]:
    """Run every batch ((N, C, H, W) array fed to `input_name`, or a feed dict: calibration/feeds.py) through
    `runner`; concatenate each output along the batch axis, or flattened when the batches' outputs differ in
    their other dimensions (Fast R-CNN: one row per proposal)."""
    outs: dict[str, list[np.ndarray]] = {}
    for b in batches:
        for name, value in runner.infer(as_feed(b, [input_name])).items():
            outs.setdefault(name, []).append(np.asarray(value))
    result = {}
    for name, v in outs.items():
        same = all(a.shape[1:] == v[0].shape[1:] for a in v)
        result[name] = np.concatenate(v if same else [a.ravel() for a in v], axis=0)
    return result


def engine_source(source: Path) -> Any:
    """An IR produced by the precision stage is read back as an openvino.Model; ONNX goes as a path."""
    if source.suffix == ".xml":
        import openvino as ov

        return ov.Core().read_model(str(source))
    return source


def engine_artifact(
    cache: Cache,
    target: str,
    precision: str,
    source: Artifact,
    input_name: str,
    verify_batches: Callable[[], list[np.ndarray]],
    reference: Callable[[], dict[str, np.ndarray]],
    judged_by_metric: bool = False,
) -> Artifact:
    """Build (or reuse) the engine for `target` from `source` and check it holds the precision's tolerance.

    judged_by_metric: an INT8 build measured on held-out data (--val) is judged by the task metric, so
    a cosine below tolerance is recorded (metrics["tolerance_exceeded"]) instead of failing the build."""
    t = get_target(target)
    # TensorRT: the device, optimization profile, workspace and timing cache (backends.tensorrt.stage_options)
    build_kwargs, build_params = t.build_options(cache.root)

    def produce(tmp: Path) -> StageResult:
        engine = Path(t.backend.build(engine_source(source.file), tmp, precision, **build_kwargs))
        with t.runner(engine, precision) as runner:
            got = run_batches(runner, input_name, verify_batches())
        cmp = compare(reference(), got)
        extra: dict[str, Any] = {}
        try:
            check(cmp, TOLERANCES[precision], f"the {target} {precision} engine")
        except EnginesmithError as e:
            if not judged_by_metric:
                raise
            extra["tolerance_exceeded"] = str(e)
        if "detections" in got:  # in-engine NMS: must agree with host NMS on the engine's own raw outputs
            extra["nms_parity"] = nms_parity(got)
        if "device" in build_params:  # TensorRT: what the plan is tied to, for manifest["device"]
            extra["device"] = build_params["device"]
        files = sorted(p.name for p in tmp.iterdir() if p.is_file())
        files.remove(engine.name)
        files.insert(0, engine.name)
        size = sum((tmp / f).stat().st_size for f in files)
        return StageResult(files, {"verify": cmp.to_dict(), "engine_bytes": size, "verify_images": int(
            sum(len(b) for b in verify_batches())), **extra})

    return cache.run("engine", [source], {"target": target, "precision": precision, "judged_by_metric": judged_by_metric,
                                          **build_params}, produce)

