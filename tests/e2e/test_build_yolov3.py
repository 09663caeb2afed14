"""YOLOv3 through the whole pipeline at a small input size (64x64: the full 62M-parameter network,
small activations), per backend: the output contract, INT8 agreement, decode kept in float, and
dynamic batch checked against PyTorch itself."""

from __future__ import annotations

import json

import numpy as np
import pytest

from enginesmith.backends import get_backend
from enginesmith.pipeline.build import runner_options
from enginesmith.pipeline.run import BuildConfig, build_engine

SIZE = (64, 64)
ANCHORS = 3 * sum((64 // s) ** 2 for s in (32, 16, 8))  # 252


def _engine_stage(result):
    return next(a for a in result.stages if a.stage == "engine")


@pytest.mark.parametrize("target", ["openvino", "onnxruntime"])
def test_yolov3_int8_contract_agreement_and_float_decode(target, cache_dir, tmp_path):
    out = tmp_path / "engine"
    result = build_engine(BuildConfig("yolov3", target=target, precision="int8", input_size=SIZE, calib_size=8,
                                      out=out, cache_dir=cache_dir, latency_budget_s=0.5))
    verify = _engine_stage(result).metrics["verify"]
    assert verify["cosine"] >= 0.99, verify
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["outputs"] == ["boxes", "scores"] and len(manifest["class_names"]) == 80
    x = np.random.default_rng(0).random((1, 3, *SIZE), dtype=np.float32)
    with get_backend(target).Runner(result.engine, **runner_options(target, "int8")) as r:
        y = r.infer({"images": x})
    assert y["boxes"].shape == (1, ANCHORS, 4) and y["scores"].shape == (1, ANCHORS, 80)
    assert np.all(y["boxes"][..., 2] >= y["boxes"][..., 0]) and np.all(y["boxes"][..., 3] >= y["boxes"][..., 1])
    assert np.all((y["scores"] >= 0) & (y["scores"] <= 1))
    if target == "onnxruntime":
        import onnx

        graph = onnx.load(str(result.engine)).graph
        dq_outputs = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
        decode = [n for n in graph.node if "/decode/" in n.name]
        assert decode, "decode nodes lost their names"
        assert not [n.name for n in decode if set(n.input) & dq_outputs]
        assert sum(n.op_type == "QuantizeLinear" for n in graph.node) >= 75  # every conv's input
    else:
        import openvino as ov

        from enginesmith.calibration.nncf_openvino import decode_op_names, fake_quantize_feeding

        model = ov.Core().read_model(str(result.engine))
        decode = decode_op_names(model, (".*decode.*",))
        assert decode and fake_quantize_feeding(model, decode) == []
        assert sum(op.get_type_name() == "FakeQuantize" for op in model.get_ordered_ops()) >= 75


def test_yolov3_darknet_weights_dynamic_batch_engine_matches_pytorch(cache_dir, tmp_path):
    """Darknet .weights of a differently seeded network -> dynamic-batch engine == that network."""
    torch = pytest.importorskip("torch")
    from enginesmith.models import registry
    from enginesmith.models.weights.darknet import save_darknet_weights

    model = registry.get("yolov3").create(input_size=SIZE, seed=7)
    save_darknet_weights(model, tmp_path / "y.weights")
    result = build_engine(BuildConfig("yolov3", target="openvino", precision="fp32", input_size=SIZE,
                                      weights=tmp_path / "y.weights", dynamic_batch=True, out=tmp_path / "e",
                                      cache_dir=cache_dir, latency_budget_s=0.5))
    assert "cannot be judged" not in result.report and "y.weights" in result.report
    x = np.random.default_rng(1).random((3, 3, *SIZE), dtype=np.float32)
    with torch.inference_mode():
        boxes, scores = (t.numpy() for t in model(torch.from_numpy(x)))
    with get_backend("openvino").Runner(result.engine) as r:
        y = r.infer({"images": x})
    assert np.allclose(y["scores"], scores, atol=1e-4)
    assert np.allclose(y["boxes"], boxes, rtol=1e-4, atol=1e-2)
