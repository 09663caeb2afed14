"""EfficientNMS_TRT as an ONNX edit (backends/tensorrt_nms.py), checked without TensorRT.

(a) the node against the plugin's own specification, transcribed below from NVIDIA/TensorRT
    plugin/efficientNMSPlugin (README.md "Parameters"/"Outputs" and EfficientNMSPlugin_PluginConfig.yaml);
(b) the glue after the plugin: the graph is cut at the plugin's four outputs (they become graph inputs),
    run on ONNX Runtime with hand-made plugin outputs and compared with a numpy layout of the detector
    output contract (runtime/nms.py: detections [N, K, 6] = x1, y1, x2, y2, score, class; num_detections [N]);
(c) a model without the raw head outputs is refused in one line.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from onnx import TensorProto, helper

from enginesmith.backends.onnxruntime import Runner as OrtRunner
from enginesmith.backends.tensorrt_nms import PREFIX, EfficientNMS, append_efficient_nms, efficient_nms_onnx
from enginesmith.errors import EnginesmithError

# EfficientNMSPlugin_PluginConfig.yaml, version "1": inputs, outputs, attribute types and allowed values
SPEC_INPUTS = ["boxes", "scores"]  # (a third, "anchors", only for the fused box decoder: not used)
SPEC_OUTPUTS = ["num_detections", "detection_boxes", "detection_scores", "detection_classes"]
SPEC_TYPES = {"score_threshold": "float32", "iou_threshold": "float32", "max_output_boxes": "int32",
              "background_class": "int32", "score_activation": "int32", "class_agnostic": "int32", "box_coding": "int32"}
SPEC_REQUIRED = {"score_threshold", "iou_threshold", "max_output_boxes", "background_class", "score_activation",
                 "box_coding"}
SPEC_CHOICES = {"score_activation": {0, 1}, "class_agnostic": {0, 1}, "box_coding": {0, 1}}
ONNX_ATTR = {"float32": onnx.AttributeProto.FLOAT, "int32": onnx.AttributeProto.INT}


def _raw_head(anchors: int = 6, classes: int = 3, dtype: int = TensorProto.FLOAT, batch: object = "batch") -> onnx.ModelProto:
    """raw [N, A, 4 + C] -> boxes [N, A, 4] and scores [N, A, C]: a detector's raw head."""
    consts = [helper.make_tensor(n, TensorProto.INT64, [1], [v]) for n, v in (("s", 0), ("m", 4), ("e", 4 + classes), ("a", 2))]
    nodes = [helper.make_node("Slice", ["raw", "s", "m", "a"], ["boxes"]),
             helper.make_node("Slice", ["raw", "m", "e", "a"], ["scores"])]
    graph = helper.make_graph(nodes, "head", [helper.make_tensor_value_info("raw", dtype, [batch, anchors, 4 + classes])],
                              [helper.make_tensor_value_info("boxes", dtype, [batch, anchors, 4]),
                               helper.make_tensor_value_info("scores", dtype, [batch, anchors, classes])], initializer=consts)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _plugin(model: onnx.ModelProto) -> onnx.NodeProto:
    [node] = [n for n in model.graph.node if n.op_type == "EfficientNMS_TRT"]
    return node


# -- (a) the node is the documented plugin ------------------------------------------------------------
@pytest.mark.parametrize("agnostic", [False, True])
def test_node_matches_the_plugin_specification(agnostic):
    nms = EfficientNMS(iou=0.5, score=0.3, max_detections=7, class_agnostic=agnostic)
    model = append_efficient_nms(_raw_head(), nms)
    node = _plugin(model)
    assert node.domain == "" and list(node.input) == SPEC_INPUTS  # the raw head's tensors, in the plugin's order
    assert [o.removeprefix(PREFIX) for o in node.output] == SPEC_OUTPUTS
    attrs = {a.name: a for a in node.attribute}
    assert set(attrs) == set(SPEC_TYPES) | {"plugin_version"} and SPEC_REQUIRED <= set(attrs)
    assert attrs["plugin_version"].type == onnx.AttributeProto.STRING and attrs["plugin_version"].s == b"1"
    for name, kind in SPEC_TYPES.items():
        assert attrs[name].type == ONNX_ATTR[kind], name
    values = {name: helper.get_attribute_value(a) for name, a in attrs.items()}
    for name, choices in SPEC_CHOICES.items():
        assert values[name] in choices, name
    assert values["background_class"] == -1  # "If there is no background class, set it to -1"
    assert values["box_coding"] == 0  # BoxCorner: [x1, y1, x2, y2], our boxes' layout
    assert values["score_activation"] == 0  # our scores are probabilities already
    assert values["class_agnostic"] == int(agnostic) and values["max_output_boxes"] == 7
    assert values["score_threshold"] == pytest.approx(0.3) and values["iou_threshold"] == pytest.approx(0.5)


def test_plugin_outputs_have_the_documented_types_and_shapes():
    """README "Outputs": num_detections [N, 1] int32, detection_boxes [N, K, 4] and detection_scores [N, K] in the
    inputs' float type, detection_classes [N, K] int32."""
    for dtype in (TensorProto.FLOAT, TensorProto.FLOAT16):
        graph = gs.import_onnx(append_efficient_nms(_raw_head(dtype=dtype), EfficientNMS(max_detections=5)))
        got = {t.name.removeprefix(PREFIX): (t.dtype, t.shape) for t in graph.nodes[2].outputs}
        f = np.float16 if dtype == TensorProto.FLOAT16 else np.float32
        assert got == {"num_detections": (np.int32, ["batch", 1]), "detection_boxes": (f, ["batch", 5, 4]),
                       "detection_scores": (f, ["batch", 5]), "detection_classes": (np.int32, ["batch", 5])}


def test_graph_outputs_are_detections_first_then_the_raw_head():
    model = append_efficient_nms(_raw_head(batch=2), EfficientNMS(max_detections=5))
    outs = [(o.name, o.type.tensor_type.elem_type, [d.dim_value or d.dim_param for d in o.type.tensor_type.shape.dim])
            for o in model.graph.output]
    assert outs == [("detections", TensorProto.FLOAT, [2, 5, 6]), ("num_detections", TensorProto.INT32, [2]),
                    ("boxes", TensorProto.FLOAT, [2, 6, 4]), ("scores", TensorProto.FLOAT, [2, 6, 3])]
    ops = [n.op_type for n in model.graph.node]
    assert set(ops) == {"Slice", "EfficientNMS_TRT", "Cast", "Reshape", "Concat"}  # standard ops after the plugin
    assert model.ir_version == 8  # kept, so parsers that read the source model read this one


# -- (b) the glue after the plugin, run on ONNX Runtime -----------------------------------------------
def _cut_at_plugin_outputs(model: onnx.ModelProto) -> onnx.ModelProto:
    """The edited graph from the plugin's four outputs (now graph inputs) and `raw` to every graph output."""
    graph = gs.import_onnx(model)
    tensors = graph.tensors()
    graph.inputs = [tensors["raw"], *(tensors[PREFIX + name] for name in SPEC_OUTPUTS)]
    for t in graph.inputs[1:]:
        t.inputs.clear()  # the plugin no longer produces them
    graph.cleanup()
    assert "EfficientNMS_TRT" not in [n.op for n in graph.nodes]
    cut = gs.export_onnx(graph)
    cut.ir_version = model.ir_version
    return cut


def _plugin_outputs(rng: np.random.Generator, n: int, k: int, classes: int, dtype: type) -> dict[str, np.ndarray]:
    """What the plugin returns: counts, then K rows per image of which the first `count` are valid, the rest
    zero (the plugin clears its outputs before writing: efficientNMSInference.cu, EfficientNMSDispatch)."""
    count = rng.integers(0, k + 1, size=(n, 1)).astype(np.int32)
    count[0, 0] = k  # one image full, to see every row
    valid = np.arange(k)[None, :] < count  # [N, K]
    xy = rng.uniform(0, 300, (n, k, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(1, 50, (n, k, 2))], axis=2) * valid[..., None]
    scores = np.sort(rng.uniform(0.25, 1.0, (n, k)), axis=1)[:, ::-1] * valid
    labels = rng.integers(0, classes, (n, k)) * valid
    return {PREFIX + "num_detections": count, PREFIX + "detection_boxes": boxes.astype(dtype),
            PREFIX + "detection_scores": scores.astype(dtype), PREFIX + "detection_classes": labels.astype(np.int32)}


def _reference_layout(plugin: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The contract written out per row in numpy: [x1, y1, x2, y2, score, float(class)], count per image."""
    count = plugin[PREFIX + "num_detections"]
    boxes, scores, labels = (plugin[PREFIX + n] for n in SPEC_OUTPUTS[1:])
    n, k = scores.shape
    det = np.zeros((n, k, 6), np.float32)
    for i in range(n):
        for j in range(k):
            det[i, j] = [*boxes[i, j].astype(np.float32), np.float32(scores[i, j]), float(labels[i, j])]
    return det, np.array([c[0] for c in count], np.int32)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("batch", [1, 3])
def test_glue_lays_the_plugin_outputs_out_as_the_detector_contract(tmp_path, dtype, batch):
    classes, anchors, k = 4, 9, 6
    onnx_dtype = TensorProto.FLOAT16 if dtype == np.float16 else TensorProto.FLOAT
    model = append_efficient_nms(_raw_head(anchors, classes, onnx_dtype), EfficientNMS(max_detections=k))
    path = tmp_path / "cut.onnx"
    onnx.save(_cut_at_plugin_outputs(model), str(path))
    rng = np.random.default_rng(batch)
    plugin = _plugin_outputs(rng, batch, k, classes, dtype)
    raw = rng.standard_normal((batch, anchors, 4 + classes)).astype(dtype)
    with OrtRunner(path) as runner:
        assert runner.output_names == ["detections", "num_detections", "boxes", "scores"]
        out = runner.infer({"raw": raw, **plugin})
    det, count = _reference_layout(plugin)
    assert out["detections"].dtype == np.float32 and out["num_detections"].dtype == np.int32
    np.testing.assert_array_equal(out["detections"], det)
    np.testing.assert_array_equal(out["num_detections"], count)
    for i, c in enumerate(count):
        assert not out["detections"][i, c:].any()  # zero rows past num_detections, as the host form's
    np.testing.assert_array_equal(out["boxes"], raw[..., :4])  # the raw head passes through untouched
    np.testing.assert_array_equal(out["scores"], raw[..., 4:])


def test_efficient_nms_onnx_writes_the_edited_model(tmp_path):
    src = tmp_path / "head.onnx"
    onnx.save(_raw_head(), str(src))
    dst = efficient_nms_onnx(src, tmp_path / "nms" / "head.onnx", EfficientNMS(max_detections=3))
    written = onnx.load(str(dst))
    assert [o.name for o in written.graph.output][:2] == ["detections", "num_detections"]
    assert _plugin(written).op_type == "EfficientNMS_TRT"


# -- (c) refusals -------------------------------------------------------------------------------------
def test_a_model_without_the_raw_head_is_refused_in_one_line():
    model = _raw_head()
    model.graph.output[1].name = "logits"
    with pytest.raises(EnginesmithError) as info:
        append_efficient_nms(model, EfficientNMS())
    msg = str(info.value)
    assert "\n" not in msg and "'boxes' and 'scores'" in msg and "['boxes', 'logits']" in msg and "--nms host" in msg
    with pytest.raises(EnginesmithError, match="raw head outputs 'b' and 'scores'"):
        append_efficient_nms(_raw_head(), EfficientNMS(boxes="b"))


def test_a_model_that_already_ends_in_nms_is_refused():
    model = _raw_head()
    model.graph.output.append(helper.make_tensor_value_info("detections", TensorProto.FLOAT, ["batch", 5, 6]))
    with pytest.raises(EnginesmithError, match="cannot follow the model's own NMS"):
        append_efficient_nms(model, EfficientNMS())


@pytest.mark.parametrize("bad,match", [(dict(max_detections=0), "max_detections must be >= 1"),
                                       (dict(iou=1.5), "thresholds must lie in \\[0, 1\\]"),
                                       (dict(score=-0.1), "thresholds must lie in \\[0, 1\\]")])
def test_bad_nms_options_are_refused(bad, match):
    with pytest.raises(EnginesmithError, match=match):
        append_efficient_nms(_raw_head(), EfficientNMS(**bad))
