"""EfficientNMS_TRT on a detector's raw head, as an ONNX edit made before TensorRT parses the model.

The edit (onnx-graphsurgeon) appends one `EfficientNMS_TRT` node, which TensorRT's ONNX parser turns into
NVIDIA's plugin (plugin/efficientNMSPlugin in the TensorRT repository), and standard ONNX ops that lay its
four outputs out as the detector output contract (DESIGN.md; runtime/nms.py's host form):

- plugin inputs: `boxes [N, A, 4]` (x1, y1, x2, y2: box_coding 0, BoxCorner) and `scores [N, A, C]`
  (probabilities: score_activation 0), no background class (-1);
- plugin outputs: num_detections [N, 1] int32, detection_boxes [N, K, 4], detection_scores [N, K] (the
  inputs' float type), detection_classes [N, K] int32, K = max_output_boxes. The plugin zeroes all four
  before writing, so rows past num_detections are zero, as in the host form;
- graph outputs, in this order: `detections [N, K, 6]` float32 (x1, y1, x2, y2, score, class), made with
  Cast/Reshape/Concat; `num_detections [N]` int32, a Reshape; then the model's own outputs (`boxes`,
  `scores`, ...), so the engine can still be checked against host NMS on its raw head.

Nothing here imports TensorRT: the glue runs on ONNX Runtime once the plugin's outputs are graph inputs
(tests/unit/test_tensorrt_nms.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from enginesmith.errors import EnginesmithError

PLUGIN_OP = "EfficientNMS_TRT"
PREFIX = "efficient_nms/"  # names of the appended nodes and of the plugin's own outputs
PLUGIN_OUTPUTS = ("num_detections", "detection_boxes", "detection_scores", "detection_classes")


@dataclass(frozen=True)
class EfficientNMS:
    """EfficientNMS_TRT on the raw head: boxes [N, A, 4] x1y1x2y2 and scores [N, A, C] (probabilities)."""

    iou: float = 0.45
    score: float = 0.25
    max_detections: int = 100
    class_agnostic: bool = False
    boxes: str = "boxes"
    scores: str = "scores"

    def check(self) -> None:
        if int(self.max_detections) < 1:
            raise EnginesmithError(f"EfficientNMS max_detections must be >= 1, got {self.max_detections}")
        if not (0.0 <= self.iou <= 1.0 and 0.0 <= self.score <= 1.0):
            raise EnginesmithError(f"EfficientNMS thresholds must lie in [0, 1], got iou {self.iou}, score {self.score}")

    def attrs(self) -> dict[str, Any]:
        """The node's attributes, named and typed as the plugin's README and PluginConfig.yaml give them."""
        return {"plugin_version": "1", "background_class": -1, "max_output_boxes": int(self.max_detections),
                "score_threshold": float(self.score), "iou_threshold": float(self.iou), "score_activation": 0,
                "class_agnostic": int(bool(self.class_agnostic)), "box_coding": 0}


def append_efficient_nms(model: Any, nms: EfficientNMS) -> Any:
    """An onnx.ModelProto ending in `boxes`/`scores` -> a new one ending in EfficientNMS_TRT (module docstring)."""
    import onnx
    import onnx_graphsurgeon as gs

    nms.check()
    graph = gs.import_onnx(model)
    raw = {t.name: t for t in graph.outputs}
    if nms.boxes not in raw or nms.scores not in raw:
        raise EnginesmithError(f"EfficientNMS needs the raw head outputs {nms.boxes!r} and {nms.scores!r}, the model has "
                               f"{sorted(raw)}; build with --nms host or export the raw head")
    if {"detections", "num_detections"} & set(raw):
        raise EnginesmithError("EfficientNMS cannot follow the model's own NMS (it already outputs detections); "
                               "export the raw head (--nms host)")
    boxes, scores = raw[nms.boxes], raw[nms.scores]
    n, k = (boxes.shape[0] if boxes.shape else "batch"), int(nms.max_detections)

    def var(name: str, dtype: Any, shape: list[Any]) -> Any:
        return gs.Variable(name, dtype=dtype, shape=shape)

    count, det_boxes, det_scores, det_classes = graph.layer(
        op=PLUGIN_OP, name=PREFIX + PLUGIN_OP, inputs=[boxes, scores], attrs=nms.attrs(),
        outputs=[var(PREFIX + "num_detections", np.int32, [n, 1]), var(PREFIX + "detection_boxes", boxes.dtype, [n, k, 4]),
                 var(PREFIX + "detection_scores", scores.dtype, [n, k]),
                 var(PREFIX + "detection_classes", np.int32, [n, k])])

    def layer(op: str, inputs: list[Any], out: Any, **attrs: Any) -> Any:
        return graph.layer(op=op, name=out.name if out.name.startswith(PREFIX) else PREFIX + out.name,
                           inputs=inputs, outputs=[out], attrs=attrs)[0]

    column = gs.Constant(PREFIX + "column_shape", np.array([0, 0, 1], np.int64))  # [N, K] -> [N, K, 1]
    flat = gs.Constant(PREFIX + "count_shape", np.array([-1], np.int64))  # [N, 1] -> [N]
    f32 = onnx.TensorProto.FLOAT
    xyxy = layer("Cast", [det_boxes], var(PREFIX + "boxes_f32", np.float32, [n, k, 4]), to=f32)
    cols = [layer("Reshape", [layer("Cast", [t], var(PREFIX + f"{name}_f32", np.float32, [n, k]), to=f32), column],
                  var(PREFIX + f"{name}_column", np.float32, [n, k, 1])) for name, t in (("scores", det_scores),
                                                                                   ("classes", det_classes))]
    detections = layer("Concat", [xyxy, *cols], var("detections", np.float32, [n, k, 6]), axis=2)
    num = layer("Reshape", [count, flat], var("num_detections", np.int32, [n]))
    graph.outputs = [detections, num, *graph.outputs]
    graph.cleanup().toposort()
    out = gs.export_onnx(graph)
    out.ir_version = model.ir_version  # gs writes its onnx's newest IR version, which older parsers refuse
    return out


def efficient_nms_onnx(src: Path, dst: Path, nms: EfficientNMS) -> Path:
    """Write `src` with EfficientNMS_TRT appended to `dst` and return `dst` (the build passes a file in its own
    temporary folder, so it is written in place)."""
    import onnx

    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(append_efficient_nms(onnx.load(str(src)), nms), str(dst))
    return dst
