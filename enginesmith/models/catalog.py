"""A row per registered model (name, task, input, parameters, MACs) for `enginesmith models`."""

from __future__ import annotations

from typing import Any

from enginesmith.models import registry
from enginesmith.models.profile import count_parameters, profile_forward


def model_rows() -> list[dict[str, Any]]:
    """Build each model once (untrained) and measure it at its default input size. Detectors also
    report the number of boxes before NMS (A in boxes [N, A, 4])."""
    rows = []
    for spec in registry.all_specs():
        model = spec.create()
        shape = tuple(spec.extra.get("input_shape") or (spec.preprocess.channels, *spec.input_size))
        macs, outputs = profile_forward(model, shape)
        row = {
            "name": spec.name,
            "task": spec.task,
            "input_size": list(spec.input_size),
            "channels": spec.preprocess.channels,
            "num_classes": spec.num_classes,
            "outputs": list(spec.output_names),
            "params": count_parameters(model),
            "macs": macs,
            "paper": spec.paper,
        }
        if spec.task == "detection":
            row["boxes"] = int(outputs[0].shape[1])
        rows.append(row)
    return rows
