"""A row per registered model (name, task, input, parameters, MACs) for `enginesmith models`."""

from __future__ import annotations

from typing import Any

from enginesmith.models import registry
from enginesmith.models.profile import count_macs, count_parameters


def model_rows() -> list[dict[str, Any]]:
    """Build each model once (untrained) and measure it at its default input size."""
    rows = []
    for spec in registry.all_specs():
        model = spec.create()
        shape = (spec.preprocess.channels, *spec.input_size)
        rows.append({
            "name": spec.name,
            "task": spec.task,
            "input_size": list(spec.input_size),
            "channels": spec.preprocess.channels,
            "num_classes": spec.num_classes,
            "outputs": list(spec.output_names),
            "params": count_parameters(model),
            "macs": count_macs(model, shape),
            "paper": spec.paper,
        })
    return rows
