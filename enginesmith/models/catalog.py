"""A row per registered model (name, task, input, parameters, MACs) for `enginesmith models`."""

from __future__ import annotations

from typing import Any

from enginesmith.models import registry
from enginesmith.models.profile import count_parameters, profile_forward


# R-CNN / Fast R-CNN are profiled per image at this many selective-search proposals (the papers' ~2,000)
PROFILE_PROPOSALS = 2000


def proposal_grid(n: int, height: int, width: int) -> Any:
    """n boxes [n, 4] (x1, y1, x2, y2) spread over the image: the rois a Fast R-CNN is profiled with."""
    import numpy as np

    i = np.arange(n, dtype=np.float32)
    x1, y1 = (i * 7.0) % (width / 2), (i * 13.0) % (height / 2)
    return np.stack([x1, y1, x1 + width / 4 + i % 17, y1 + height / 4 + i % 11], axis=1).astype(np.float32)


def _measure_on_meta(spec: registry.ModelSpec, shape: tuple[int, ...]) -> tuple[int, int, Any] | None:
    """(parameters, MACs, outputs) with the model built and run on torch's meta device (shapes only: no memory,
    no arithmetic), or None when one of its ops has no meta kernel."""
    import torch

    try:
        with torch.device("meta"):
            model = spec.create()
        return (count_parameters(model), *profile_forward(model, shape))
    except (NotImplementedError, RuntimeError, TypeError, ValueError):
        return None


def _measure(spec: registry.ModelSpec, shape: tuple[int, ...]) -> tuple[int, int, Any]:
    """(parameters, MACs, outputs), on the meta device where it can (_measure_on_meta), else on the CPU.
    Fast R-CNN runs with PROFILE_PROPOSALS rois; R-CNN's MACs are one region's times PROFILE_PROPOSALS."""
    kind = spec.two_stage
    extra = (proposal_grid(PROFILE_PROPOSALS, *spec.input_size),) if kind == "fast-rcnn" else ()
    per_image = PROFILE_PROPOSALS if kind == "rcnn" else 1
    measured = None if extra else _measure_on_meta(spec, shape)  # roi_pool has no meta kernel
    if measured is None:
        model = spec.create()
        measured = (count_parameters(model), *profile_forward(model, shape, extra))
    params, macs, outputs = measured
    return params, macs * per_image, outputs


def cfg_row(path: Any) -> dict[str, Any]:
    """The row of the network a Darknet cfg defines (model `darknet`, named by the cfg's file name)."""
    from enginesmith.models.darknet_net import cfg_spec
    from enginesmith.models.darknet_plan import read_cfg_source

    spec = cfg_spec(read_cfg_source(path))
    row = model_rows([spec])[0]
    return {**row, "name": f"darknet:{spec.definition['file']}", "cfg_sha256": spec.definition["sha256"]}


def model_rows(specs: list[registry.ModelSpec] | None = None) -> list[dict[str, Any]]:
    """Build each model once (untrained) and measure it at its default input size (default: every registered
    model). Detectors also report the number of boxes before NMS (A in boxes [N, A, 4])."""
    rows = []
    for spec in registry.all_specs() if specs is None else specs:
        shape = tuple(spec.input_shape or (spec.preprocess.channels, *spec.input_size))
        params, macs, outputs = _measure(spec, shape)
        row = {
            "name": spec.name,
            "task": spec.task,
            "input_size": list(spec.input_size),
            "input_shape": [1, *shape],
            "channels": spec.preprocess.channels,
            "num_classes": spec.num_classes,
            "outputs": list(spec.output_names),
            "params": params,
            "macs": macs,
            "paper": spec.paper,
        }
        if spec.two_stage:
            row["boxes"] = PROFILE_PROPOSALS  # proposals per image (selective search, up to 2,000)
        elif spec.task == "detection":
            row["boxes"] = int(outputs[0].shape[1])
        rows.append(row)
    return rows
