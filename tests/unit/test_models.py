"""The zoo: registration, shapes, parameter/MAC counts against published or hand-computed numbers,
input-size checks, the YOLOv3 cfg, and ONNX export of YOLOv3 with a dynamic batch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from enginesmith.errors import EnginesmithError
from enginesmith.models import registry
from enginesmith.models.ops import yolo_decode
from enginesmith.models.profile import count_macs, count_parameters
from enginesmith.models.weights.darknet import darknet_layers


@pytest.fixture(scope="module")
def yolov3_80() -> torch.nn.Module:
    return registry.get("yolov3").create()


def test_registered_specs() -> None:
    assert {"lenet5", "resnet50", "yolov3"} <= set(registry.names())
    for name, file in (("lenet5", "lenet.py"), ("resnet50", "resnet.py"), ("yolov3", "yolo.py")):
        spec = registry.get(name)
        assert Path(spec.source_file).name == file
        assert len(spec.class_names) == spec.num_classes
        assert spec.preprocess.input_size == spec.input_size
    lenet = registry.get("lenet5")
    assert lenet.preprocess.color == "GRAY" and lenet.preprocess.resize == "stretch"
    assert lenet.default_calibration == "digits" and lenet.class_names == tuple("0123456789")
    resnet = registry.get("resnet50")
    assert resnet.preprocess.resize == "center_crop" and resnet.class_names[0] == "tench"
    yolo = registry.get("yolov3")
    assert yolo.output_names == ("boxes", "scores") and yolo.preprocess.resize == "letterbox"
    assert yolo.preprocess.pad_value == 114 and yolo.class_names[0] == "person" and len(yolo.class_names) == 80


# ------------------------------------------------------------------------------------------ LeNet-5
def test_lenet5_shape_params_macs() -> None:
    m = registry.get("lenet5").create()
    assert m(torch.rand(3, 1, 32, 32)).shape == (3, 10)
    # C1 156 + C3 2416 + C5 48120 + F6 10164 + out 850
    assert count_parameters(m) == 6 * 26 + 16 * (6 * 25 + 1) + 120 * (16 * 25 + 1) + 84 * 121 + 10 * 85 == 61706
    # MACs: C1 28*28*6*25, C3 10*10*16*6*25, C5 120*16*25, F6 120*84, out 84*10
    assert count_macs(m, (1, 32, 32)) == 117_600 + 240_000 + 48_000 + 10_080 + 840


# ---------------------------------------------------------------------------------------- ResNet-50
def test_resnet50_params_macs_shape() -> None:
    m = registry.get("resnet50").create()
    assert count_parameters(m) == 25_557_032  # He et al. / torchvision
    macs = count_macs(m, (3, 224, 224))
    assert 4.0e9 < macs < 4.2e9  # "3.8 x 10^9 FLOPs" (multiply-adds) in the paper; 4.09 G counted with the fc
    assert m(torch.rand(1, 3, 64, 64)).shape == (1, 1000)
    m5 = registry.get("resnet50").create(num_classes=5, input_size=(64, 96))
    assert m5(torch.rand(2, 3, 64, 96)).shape == (2, 5)


# ------------------------------------------------------------------------------------------ YOLOv3
# yolov3.cfg written out independently: (kind, args) per layer, in cfg order.
def _cfg_layers(num_classes: int) -> list[tuple]:
    def res(f: int, n: int) -> list[tuple]:
        return [("conv", f // 2, 1), ("conv", f, 3), ("shortcut",)] * n

    det = 3 * (num_classes + 5)
    L: list[tuple] = [("conv", 32, 3), ("conv", 64, 3)] + res(64, 1) + [("conv", 128, 3)] + res(128, 2)
    L += [("conv", 256, 3)] + res(256, 8) + [("conv", 512, 3)] + res(512, 8) + [("conv", 1024, 3)] + res(1024, 4)
    assert len(L) == 75
    L += [("conv", 512, 1), ("conv", 1024, 3), ("conv", 512, 1), ("conv", 1024, 3), ("conv", 512, 1), ("conv", 1024, 3)]
    L += [("det", det, 1), ("yolo",), ("route", [79]), ("conv", 256, 1), ("upsample",), ("route", [85, 61])]
    L += [("conv", 256, 1), ("conv", 512, 3), ("conv", 256, 1), ("conv", 512, 3), ("conv", 256, 1), ("conv", 512, 3)]
    L += [("det", det, 1), ("yolo",), ("route", [91]), ("conv", 128, 1), ("upsample",), ("route", [97, 36])]
    L += [("conv", 128, 1), ("conv", 256, 3), ("conv", 128, 1), ("conv", 256, 3), ("conv", 128, 1), ("conv", 256, 3)]
    L += [("det", det, 1), ("yolo",)]
    assert len(L) == 107
    return L


def _cfg_param_count(num_classes: int) -> tuple[int, int, int]:
    """(parameters, darknet floats, number of convs) from the cfg: k*k*cin*cout + 2*cout (BN) or + cout (bias)."""
    ch: list[int] = []
    c, params, floats, convs = 3, 0, 0, 0
    for layer in _cfg_layers(num_classes):
        if layer[0] in ("conv", "det"):
            cout, k = layer[1], layer[2]
            w = k * k * c * cout
            params += w + (2 * cout if layer[0] == "conv" else cout)
            floats += w + (4 * cout if layer[0] == "conv" else cout)
            convs += 1
            c = cout
        elif layer[0] == "route":
            c = sum(ch[j] for j in layer[1])
        ch.append(c)
    return params, floats, convs


def test_yolov3_params_match_cfg(yolov3_80: torch.nn.Module) -> None:
    params, floats, convs = _cfg_param_count(80)
    assert count_parameters(yolov3_80) == params == 61_949_149
    layers = darknet_layers(yolov3_80)
    assert len(layers) == convs == 75
    assert [layer.bn is None for layer in layers].count(True) == 3
    # pjreddie's yolov3.weights is 248,007,048 bytes: 20-byte header + float32 per cfg value
    assert 20 + 4 * sum(layer.num_floats for layer in layers) == 20 + 4 * floats == 248_007_048


def test_yolov3_macs_match_darknet(yolov3_80: torch.nn.Module) -> None:
    # darknet / the YOLOv3 page: 65.86 Bn FLOPs at 416 (2 FLOPs per MAC, convolutions only)
    macs = count_macs(yolov3_80, (3, 416, 416))
    assert round(2 * macs / 1e9, 2) == 65.86


def test_yolov3_416_outputs_finite_and_varied(yolov3_80: torch.nn.Module) -> None:
    torch.manual_seed(0)
    with torch.no_grad():
        boxes, scores = yolov3_80(torch.rand(1, 3, 416, 416))
    assert boxes.shape == (1, 10647, 4) and scores.shape == (1, 10647, 80)
    assert torch.isfinite(boxes).all() and torch.isfinite(scores).all()
    assert (scores >= 0).all() and (scores <= 1).all()
    assert scores.std() > 0.02 and scores.max() - scores.min() > 0.3
    wh = boxes[0, :, 2:] - boxes[0, :, :2]
    assert (wh > 0).all() and wh.std(0).min() > 1.0 and wh.max() < 1e5
    centers = (boxes[0, :, :2] + boxes[0, :, 2:]) / 2
    assert centers.min() > -1 and centers.max() < 417  # inside the cells they belong to


def test_yolov3_small_shapes_and_decode_consistency() -> None:
    spec = registry.get("yolov3")
    m = spec.create(num_classes=10, input_size=(96, 96))
    x = torch.rand(2, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        boxes, scores = m(x)
        raws = m.forward_raw(x)
    a = 3 * (3 * 3 + 6 * 6 + 12 * 12)
    assert boxes.shape == (2, a, 4) and scores.shape == (2, a, 10)
    assert [tuple(r.shape) for r in raws] == [(2, 45, 3, 3), (2, 45, 6, 6), (2, 45, 12, 12)]
    anchors = [[(116, 90), (156, 198), (373, 326)], [(30, 61), (62, 45), (59, 119)], [(10, 13), (16, 30), (33, 23)]]
    ref = [yolo_decode(r, torch.tensor(an, dtype=torch.float32), s) for r, an, s in zip(raws, anchors, (32, 16, 8))]
    torch.testing.assert_close(boxes, torch.cat([b for b, _ in ref], 1))
    torch.testing.assert_close(scores, torch.cat([s for _, s in ref], 1))
    # batch items are independent
    with torch.no_grad():
        b1, s1 = m(x[1:])
    # float32 convolutions accumulate in a batch-size-dependent order: boxes (up to ~400 px) agree to ~1e-4 relative
    torch.testing.assert_close(b1, boxes[1:], rtol=1e-4, atol=1e-3)


def test_yolov3_non_square_input() -> None:
    m = registry.get("yolov3").create(num_classes=3, input_size=(64, 128))
    with torch.no_grad():
        boxes, scores = m(torch.rand(1, 3, 64, 128))
    assert boxes.shape == (1, 3 * (2 * 4 + 4 * 8 + 8 * 16), 4) and scores.shape[-1] == 3


# ------------------------------------------------------------------------------------ input sizes
@pytest.mark.parametrize(
    "name, size, ok",
    [
        ("lenet5", (32, 32), True), ("lenet5", (28, 28), False), ("lenet5", (64, 64), False),
        ("resnet50", (224, 224), True), ("resnet50", (64, 96), True), ("resnet50", (100, 100), False),
        ("resnet50", (16, 16), False), ("yolov3", (416, 416), True), ("yolov3", (320, 608), True),
        ("yolov3", (400, 416), False), ("yolov3", (0, 0), False),
    ],
)
def test_check_input_size(name: str, size: tuple[int, int], ok: bool) -> None:
    spec = registry.get(name)
    if ok:
        spec.check_input_size(size)
    else:
        with pytest.raises(EnginesmithError) as e:
            spec.check_input_size(size)
        assert name in str(e.value) and "\n" not in str(e.value)
        if name == "lenet5":
            assert "lenet5 takes exactly 32x32 input" in str(e.value)
        else:
            assert "multiples of 32" in str(e.value)


def test_create_rejects_bad_size() -> None:
    with pytest.raises(EnginesmithError, match="multiples of 32"):
        registry.get("yolov3").create(input_size=(100, 100))


def test_seeded_creation_is_deterministic() -> None:
    spec = registry.get("lenet5")
    a, b, c = spec.create(seed=3), spec.create(seed=3), spec.create(seed=4)
    assert torch.equal(a.features[0].weight, b.features[0].weight)
    assert not torch.equal(a.features[0].weight, c.features[0].weight)


# ------------------------------------------------------------------------------------------- ONNX
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_yolov3_onnx_export_dynamic_batch(tmp_path: Path) -> None:
    import onnx
    import onnxruntime as ort

    spec = registry.get("yolov3")
    model = spec.create(num_classes=4, input_size=(64, 64))
    f = tmp_path / "yolov3.onnx"
    torch.onnx.export(
        model, (torch.rand(1, 3, 64, 64),), str(f), dynamo=False, opset_version=17,
        input_names=["images"], output_names=list(spec.output_names),
        dynamic_axes={"images": {0: "batch"}, "boxes": {0: "batch"}, "scores": {0: "batch"}},
    )
    graph = onnx.load(str(f), load_external_data=False).graph
    decode_nodes = [n for n in graph.node if "/decode/" in n.name]
    assert any(n.op_type == "Exp" for n in decode_nodes) and any(n.op_type == "Sigmoid" for n in decode_nodes)
    assert not any("/decode/" in n.name for n in graph.node if n.op_type == "Conv")

    x = torch.rand(2, 3, 64, 64)
    sess = ort.InferenceSession(str(f), providers=["CPUExecutionProvider"])
    boxes, scores = sess.run(None, {"images": x.numpy()})
    with torch.no_grad():
        ref_boxes, ref_scores = model(x)
    a = 3 * (2 * 2 + 4 * 4 + 8 * 8)
    assert boxes.shape == (2, a, 4) and scores.shape == (2, a, 4)
    np.testing.assert_allclose(boxes, ref_boxes.numpy(), rtol=1e-3, atol=1e-3 * float(ref_boxes.abs().max()))
    np.testing.assert_allclose(scores, ref_scores.numpy(), rtol=1e-3, atol=1e-4)
