"""Saving rewritten ONNX graphs: topologically sorted (the ONNX spec requires it; ORT's tools do not
always emit it) and atomically (temp file, then rename)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from enginesmith.errors import EnginesmithError


def topological_sort(model) -> None:  # type: ignore[no-untyped-def]
    """Reorder model.graph.node in place so every node comes after the producers of its inputs."""
    graph = model.graph
    available = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending = list(graph.node)
    ordered = []
    while pending:
        still = []
        for node in pending:
            if all(name in available for name in node.input):
                ordered.append(node)
                available.update(node.output)
            else:
                still.append(node)
        if len(still) == len(pending):
            missing = sorted({n for node in still for n in node.input if n not in available})[:3]
            raise EnginesmithError(f"ONNX graph has a cycle or undefined inputs ({', '.join(missing)})")
        pending = still
    del graph.node[:]
    graph.node.extend(ordered)


def save_onnx_atomic(model, path: Path) -> None:  # type: ignore[no-untyped-def]
    """Sort `model` topologically and write it to `path` via a temporary file in the same folder."""
    import onnx

    path = Path(path)
    if model.ByteSize() > 1_900_000_000:
        raise EnginesmithError(f"model for {path} exceeds 2 GB; external-data models are not supported here")
    topological_sort(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".onnx.tmp", prefix=path.name + ".", dir=path.parent)
    os.close(fd)
    try:
        onnx.save(model, tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
