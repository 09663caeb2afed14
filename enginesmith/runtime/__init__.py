"""What an edge app embeds: preprocessing, engine loading, decoding, NMS. numpy only: never imports torch.

    from enginesmith.runtime import load
    detector = load("build/yolov3-tiny/openvino-int8")   # a Detector, Classifier or Segmenter
    detections = detector("street.jpg")                  # [Detection(box, score, class_id, class_name)]

Importing this package is cheap: `load` and the result types are imported on first use (PEP 562), so
modules that only need `runtime.preprocess` or `runtime.nms` pull in nothing else.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from enginesmith.runtime.engine import Classifier, Detector, Segmenter, load
    from enginesmith.runtime.types import Classification, Detection, DetectorConfig, Segmentation

__all__ = ["load", "Detector", "Classifier", "Segmenter", "Detection", "Classification", "Segmentation",
           "DetectorConfig"]


def __getattr__(name: str) -> Any:
    if name in ("load", "Detector", "Classifier", "Segmenter"):
        from enginesmith.runtime import engine

        return getattr(engine, name)
    if name in __all__:
        from enginesmith.runtime import types

        return getattr(types, name)
    raise AttributeError(f"module 'enginesmith.runtime' has no attribute {name!r}")
