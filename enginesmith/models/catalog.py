"""A row per registered model (name, task, input, parameters, MACs) for `enginesmith models`."""

from __future__ import annotations

from typing import Any

from enginesmith.models import registry
from enginesmith.models.profile import count_parameters, profile_forward


def _measure(spec: registry.ModelSpec, shape: tuple[int, ...]) -> tuple[int, int, Any]:
    """(parameters, MACs, outputs). Shapes only: the model is built and run on torch's meta device
    (no memory, no arithmetic); a model whose ops the meta device lacks is run on the CPU instead."""
    import torch

    try:
        with torch.device("meta"):
            model = spec.create()
        return (count_parameters(model), *profile_forward(model, shape))
    except (NotImplementedError, RuntimeError, TypeError, ValueError):
        model = spec.create()
        return (count_parameters(model), *profile_forward(model, shape))


def model_rows() -> list[dict[str, Any]]:
    """Build each model once (untrained) and measure it at its default input size. Detectors also
    report the number of boxes before NMS (A in boxes [N, A, 4])."""
    rows = []
    for spec in registry.all_specs():
        shape = tuple(spec.extra.get("input_shape") or (spec.preprocess.channels, *spec.input_size))
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
        if spec.task == "detection":
            row["boxes"] = int(outputs[0].shape[1])
        rows.append(row)
    return rows
