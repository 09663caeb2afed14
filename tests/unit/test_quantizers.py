"""Quantizers on real small CNNs: ORT Q/DQ (both forms), NNCF on OpenVINO, FP16 cast."""

from __future__ import annotations

import logging

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from enginesmith.calibration.fp16 import onnx_to_fp16
from enginesmith.calibration.qdq import calibration_tensors, quantize_qdq
from enginesmith.calibration.sources import calibration_batches, calibration_source
from enginesmith.calibration.statistics import activation_ranges
from enginesmith.runtime.preprocess import PreprocessSpec

torch = pytest.importorskip("torch")
nn = torch.nn
logging.getLogger().setLevel(logging.ERROR)

SPEC = PreprocessSpec((32, 32), mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))


class _Decode(nn.Module):
    def forward(self, x):
        b = x[:, :4].flatten(2).transpose(1, 2)
        s = torch.sigmoid(x[:, 4:].flatten(2).transpose(1, 2))
        return torch.cat([b * 8.0 + 1.0, s], dim=2)


class _Net(nn.Module):
    """4 conv + BN (folded at export) + ReLU, a 1x1 head and a float decode submodule."""

    def __init__(self):
        super().__init__()
        layers, c = [], 3
        for o, s in ((16, 1), (32, 2), (32, 1), (64, 2)):
            layers += [nn.Conv2d(c, o, 3, padding=1, stride=s), nn.BatchNorm2d(o), nn.ReLU()]
            c = o
        self.body = nn.Sequential(*layers)
        self.head = nn.Conv2d(64, 6, 1)
        self.decode = _Decode()
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.data.uniform_(0.5, 1.5)

    def forward(self, x):
        return self.decode(self.head(self.body(x)))


@pytest.fixture(scope="module")
def net_onnx(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("q") / "net.onnx"
    torch.onnx.export(
        _Net().eval(), torch.randn(1, 3, 32, 32), str(path), input_names=["x"], output_names=["out"],
        dynamic_axes={"x": {0: "n"}, "out": {0: "n"}}, opset_version=17, dynamo=False,
    )
    return path


@pytest.fixture(scope="module")
def data():
    calib = calibration_source(None, "photos", 24, seed=0)
    held = np.concatenate(list(calibration_batches(calibration_source(None, "photos", 40, seed=5), SPEC, 40)))[16:]
    return (lambda: calibration_batches(calib, SPEC, 8)), held


def _cosine(a, b):
    a, b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    return np.sum(a * b, 1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def _run(path, x):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("method", ["minmax", "percentile"])
def test_qdq_keeps_accuracy_on_ort(net_onnx, data, tmp_path, symmetric, method, capsys):
    factory, held = data
    ranges = activation_ranges(net_onnx, factory, calibration_tensors(net_onnx, symmetric=symmetric), method)
    out = tmp_path / "q.onnx"
    info = quantize_qdq(net_onnx, out, ranges, symmetric=symmetric)
    assert info["quantized_nodes"] == 5 and info["qdq_pairs"] > 0
    assert not list(tmp_path.glob("*.tmp"))
    q = onnx.load(str(out))
    # decode stays float: no Q/DQ node consumes or produces a decode tensor
    decode_tensors = {o for n in q.graph.node if "/decode/" in n.name or n.name == "out" for o in n.output}
    for n in q.graph.node:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear"):
            assert not set(n.input) & decode_tensors
    if symmetric:  # TensorRT form: every zero point is 0 and int8
        inits = {i.name: onnx.numpy_helper.to_array(i) for i in q.graph.initializer}
        for n in q.graph.node:
            if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 2:
                zp = inits[n.input[2]]
                assert zp.dtype == np.int8 and not zp.any()
    cos = _cosine(_run(out, held), _run(net_onnx, held))
    with capsys.disabled():
        print(f"\n[qdq 4-conv symmetric={symmetric} {method}] cosine mean {cos.mean():.4f} min {cos.min():.4f}")
    assert cos.min() >= 0.99


def test_qdq_resnet18(tmp_path, capsys):
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    path = tmp_path / "r18.onnx"
    torch.onnx.export(
        torchvision.models.resnet18(num_classes=100).eval(), torch.randn(1, 3, 64, 64), str(path),
        input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "n"}}, opset_version=17, dynamo=False,
    )
    spec = SPEC.with_size(64, 64)
    calib = calibration_source(None, "photos", 16, seed=0)
    held = np.concatenate(list(calibration_batches(calibration_source(None, "photos", 28, seed=9), spec, 28)))[16:]
    ranges = activation_ranges(path, lambda: calibration_batches(calib, spec, 8), None, "minmax")
    info = quantize_qdq(path, tmp_path / "r18q.onnx", ranges, symmetric=False)
    assert info["quantized_nodes"] == 21
    cos = _cosine(_run(tmp_path / "r18q.onnx", held), _run(path, held))
    with capsys.disabled():
        print(f"\n[qdq resnet18 u8s8 reduce_range minmax] cosine mean {cos.mean():.4f} min {cos.min():.4f}")
    assert cos.min() >= 0.99


def test_nncf_openvino(net_onnx, data, tmp_path, capsys):
    ov = pytest.importorskip("openvino")
    from enginesmith.calibration.nncf_openvino import decode_op_names, fake_quantize_feeding, quantize_openvino

    factory, held = data
    model = ov.convert_model(str(net_onnx))
    ignored = decode_op_names(model, (".*decode.*",))
    assert "out" in ignored  # the decode Concat is named after the graph output
    batches = list(factory())
    q, info = quantize_openvino(model, batches, subset_size=24, method="minmax")
    assert info["fake_quantize"] > 0 and "MINMAX" in info["estimator"]
    assert fake_quantize_feeding(q, ignored) == []
    core = ov.Core()
    ref = core.compile_model(model, "CPU")(held)[0]
    got = core.compile_model(q, "CPU")(held)[0]
    cos = _cosine(got, ref)
    with capsys.disabled():
        print(f"\n[nncf openvino minmax overflow_fix=enable] FQ={info['fake_quantize']} cosine mean {cos.mean():.4f} min {cos.min():.4f}")
    assert cos.min() >= 0.99


def test_fp16(net_onnx, data, tmp_path):
    _, held = data
    out = tmp_path / "h.onnx"
    info = onnx_to_fp16(net_onnx, out)
    assert info["fp16_initializers"] > 0
    m = onnx.load(str(out))
    assert m.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    a, b = _run(net_onnx, held), _run(out, held)
    assert b.dtype == np.float32
    assert np.abs(a - b).max() <= 1e-2 * np.abs(a).max()


class _SSDLike(nn.Module):
    """SSD's head layout: two feature maps, each with a class conv whose output is permuted, reshaped and
    concatenated (layout ops outside `decode`) before the decode's softmax."""

    def __init__(self, classes: int = 4):
        super().__init__()
        self.body1 = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU())
        self.body2 = nn.Sequential(nn.Conv2d(16, 32, 3, padding=1, stride=2), nn.ReLU())
        self.conf1, self.conf2 = nn.Conv2d(16, 2 * classes, 3, padding=1), nn.Conv2d(32, 2 * classes, 3, padding=1)
        self.classes = classes
        self.decode = _SoftmaxDecode()

    def forward(self, x):
        f1 = self.body1(x)
        f2 = self.body2(f1)
        c = [h(f).permute(0, 2, 3, 1).reshape(x.shape[0], -1, self.classes)
             for h, f in ((self.conf1, f1), (self.conf2, f2))]
        return self.decode(torch.cat(c, dim=1))


class _SoftmaxDecode(nn.Module):
    def forward(self, logits):
        return torch.softmax(logits, dim=-1)


@pytest.mark.parametrize("symmetric", [False, True])
def test_head_logits_reach_the_decode_in_float(tmp_path, data, symmetric):
    """The class convs keep int8 inputs and weights, but their raw logits are not put through 8 bits on the way
    to the decode: ORT's quantizer would add Q/DQ on each head conv's output (before Transpose/Reshape/Concat),
    which cost SSD-slim 0.8 mAP points on ONNX Runtime; TensorRT's placement quantizes no output at all."""
    torch.manual_seed(0)
    path = tmp_path / "ssd.onnx"
    torch.onnx.export(_SSDLike().eval(), torch.randn(1, 3, 32, 32), str(path), input_names=["x"],
                      output_names=["out"], opset_version=17, dynamo=False)
    factory, held = data
    ranges = activation_ranges(path, lambda: (b[:1] for b in factory()),
                               calibration_tensors(path, symmetric=symmetric), "minmax")
    info = quantize_qdq(path, tmp_path / "q.onnx", ranges, symmetric=symmetric)
    q = onnx.load(str(tmp_path / "q.onnx")).graph
    producer = {o: n for n in q.node for o in n.output}
    heads = [n for n in q.node if n.op_type == "Conv" and "conf" in n.name]
    body = [n for n in q.node if n.op_type == "Conv" and "body" in n.name]
    assert len(heads) == 2 and len(body) == 2
    for h in heads:  # int8 inputs and weights
        assert producer[h.input[0]].op_type == "DequantizeLinear" and producer[h.input[1]].op_type == "DequantizeLinear"
    quantized_tensors = {n.input[0] for n in q.node if n.op_type == "QuantizeLinear"}
    assert not quantized_tensors & {h.output[0] for h in heads}
    assert info["decode_inputs_kept_float"] >= (0 if symmetric else 2)
    assert quantized_tensors & {b.output[0] for b in body} or quantized_tensors & {
        o for n in q.node if n.op_type == "Relu" for o in n.output}  # the body stays quantized
