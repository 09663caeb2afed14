"""TensorRT's Q/DQ placement on small real nets (ResNet-, YOLO- and SSD-style), checked node by node against
NVIDIA's recommendations written out here as an independent reference, and run on ONNX Runtime."""

from __future__ import annotations

import logging

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from enginesmith.calibration.qdq import calibration_tensors, quantize_qdq
from enginesmith.calibration.sources import calibration_batches, calibration_source
from enginesmith.calibration.statistics import activation_ranges
from enginesmith.runtime.preprocess import PreprocessSpec

torch = pytest.importorskip("torch")
nn = torch.nn
logging.getLogger().setLevel(logging.ERROR)

SPEC = PreprocessSpec((32, 32), mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))


def _conv(cin: int, cout: int, k: int, stride: int = 1, act: nn.Module | None = None) -> nn.Sequential:
    """Conv + BatchNorm (folded into the Conv at export) + activation, with non-trivial BN statistics."""
    bn = nn.BatchNorm2d(cout)
    bn.running_mean.uniform_(-0.2, 0.2)
    bn.running_var.uniform_(0.5, 2.0)
    bn.weight.data.uniform_(0.5, 1.5)
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), bn, *([act] if act else []))


class _Block(nn.Module):
    """ResNet basic block: conv-relu-conv `branch` + the skip (identity, or a strided 1x1 `downsample`)."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.branch = nn.Sequential(_conv(cin, cout, 3, stride, nn.ReLU()), _conv(cout, cout, 3))
        self.downsample = _conv(cin, cout, 1, stride) if stride != 1 or cin != cout else None
        self.relu = nn.ReLU()

    def forward(self, x):
        skip = x if self.downsample is None else self.downsample(x)
        return self.relu(self.branch(x) + skip)


class _ResNetLike(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(_conv(3, 16, 3, 1, nn.ReLU()), nn.MaxPool2d(3, 2, 1))
        self.layer1, self.layer2 = _Block(16, 16, 1), _Block(16, 32, 2)
        self.pool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(32, 10)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.layer2(self.layer1(self.stem(x)))), 1))


class _Shortcut(nn.Module):
    """Darknet's residual: 1x1 then 3x3 conv, each with LeakyReLU, added to the input."""

    def __init__(self, c: int):
        super().__init__()
        self.a, self.b = _conv(c, c // 2, 1, 1, nn.LeakyReLU(0.1)), _conv(c // 2, c, 3, 1, nn.LeakyReLU(0.1))

    def forward(self, x):
        return x + self.b(self.a(x))


class _YoloDecode(nn.Module):
    def forward(self, p):
        n, _, h, w = p.shape
        p = p.view(n, 3, 7, h * w).permute(0, 1, 3, 2)
        return torch.cat([torch.sigmoid(p[..., :2]), torch.exp(p[..., 2:4]), torch.sigmoid(p[..., 4:])], -1)


class _YoloLike(nn.Module):
    """Backbone with a shortcut, then a route: upsampled deep features concatenated with the shallow ones."""

    def __init__(self):
        super().__init__()
        lrelu = lambda: nn.LeakyReLU(0.1)  # noqa: E731
        self.stem, self.down = _conv(3, 16, 3, 1, lrelu()), _conv(16, 32, 3, 2, lrelu())
        self.res, self.down2, self.lateral = _Shortcut(32), _conv(32, 64, 3, 2, lrelu()), _conv(64, 32, 1, 1, lrelu())
        self.up, self.fuse = nn.Upsample(scale_factor=2, mode="nearest"), _conv(64, 32, 3, 1, lrelu())
        self.head, self.decode = nn.Conv2d(32, 21, 1), _YoloDecode()

    def forward(self, x):
        f1 = self.res(self.down(self.stem(x)))
        route = self.up(self.lateral(self.down2(f1)))
        return self.decode(self.head(self.fuse(torch.cat([route, f1], 1))))


class _L2Norm(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.weight = nn.Parameter(torch.full((1, c, 1, 1), 20.0))

    def forward(self, x):
        return x / (x.pow(2).sum(1, keepdim=True).sqrt() + 1e-10) * self.weight


class _SSDDecode(nn.Module):
    def forward(self, loc, conf):
        return torch.cat([torch.exp(loc[..., 2:]) * loc[..., :2], torch.softmax(conf, -1)], -1)


class _SSDLike(nn.Module):
    """VGG body with MaxPools and an L2Norm on the first source; loc/conf heads permuted, reshaped, concatenated."""

    def __init__(self, classes: int = 4):
        super().__init__()
        relu = nn.ReLU
        self.vgg = nn.Sequential(_conv(3, 16, 3, 1, relu()), nn.MaxPool2d(2, 2), _conv(16, 32, 3, 1, relu()))
        self.norm, self.extra = _L2Norm(32), nn.Sequential(nn.MaxPool2d(2, 2), _conv(32, 32, 3, 1, relu()))
        self.loc = nn.ModuleList(nn.Conv2d(32, 2 * 4, 3, padding=1) for _ in range(2))
        self.conf = nn.ModuleList(nn.Conv2d(32, 2 * classes, 3, padding=1) for _ in range(2))
        self.classes, self.decode = classes, _SSDDecode()

    def forward(self, x):
        f1 = self.vgg(x)
        sources, n = (self.norm(f1), self.extra(f1)), x.shape[0]
        loc = torch.cat([h(s).permute(0, 2, 3, 1).reshape(n, -1, 4) for h, s in zip(self.loc, sources)], 1)
        conf = torch.cat([h(s).permute(0, 2, 3, 1).reshape(n, -1, self.classes) for h, s in zip(self.conf, sources)], 1)
        return self.decode(loc, conf)


NETS = {"resnet": _ResNetLike, "yolo": _YoloLike, "ssd": _SSDLike}


@pytest.fixture(scope="module")
def data():
    calib = calibration_source(None, "photos", 16, seed=0)
    held = np.concatenate(list(calibration_batches(calibration_source(None, "photos", 24, seed=5), SPEC, 24)))[16:]
    return (lambda: calibration_batches(calib, SPEC, 1)), held


@pytest.fixture(scope="module", params=sorted(NETS))
def quantized(request, tmp_path_factory, data):
    """(float path, TensorRT-form Q/DQ path, quantizer info) of one net."""
    torch.manual_seed(0)
    tmp = tmp_path_factory.mktemp(request.param)
    src, dst = tmp / "f32.onnx", tmp / "qdq.onnx"
    torch.onnx.export(NETS[request.param]().eval(), torch.randn(1, 3, 32, 32), str(src), input_names=["x"],
                      output_names=["out"], opset_version=17, dynamo=False)
    ranges = activation_ranges(src, data[0], calibration_tensors(src, symmetric=True), "minmax")
    return src, dst, quantize_qdq(src, dst, ranges, symmetric=True)


def _reference(graph: onnx.GraphProto) -> dict[str, set[int]]:
    """Node -> the input positions TensorRT's placement quantizes, from NVIDIA's recommendations for these nets:
    a Conv's input and weight; the skip input of a residual Add (the Conv `branch` input stays float so TensorRT
    fuses the Add into it) and both inputs of another two-activation Add (Darknet's shortcut); the inputs of
    MaxPool, GlobalAveragePool and Resize; the final Gemm (a GEMV at batch 1) and the decode float; no output.
    Every other node reads a tensor quantized if one of those readers has it quantized (one Q/DQ per tensor)."""
    consts = {i.name for i in graph.initializer} | {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    producer = {o: n for n in graph.node for o in n.output}
    outputs = {o.name for o in graph.output}
    decode = {n.name for n in graph.node if "/decode/" in n.name or set(n.output) & outputs and n.op_type != "Gemm"}
    ref: dict[str, set[int]] = {}
    for n in (n for n in graph.node if n.op_type != "Constant"):
        acts = [k for k, i in enumerate(n.input) if i and i not in consts]
        if n.name in decode or n.op_type == "Gemm":
            ref[n.name] = set()
        elif n.op_type == "Conv":
            ref[n.name] = {0, 1}
        elif n.op_type in ("MaxPool", "GlobalAveragePool", "Resize"):
            ref[n.name] = {0}
        elif n.op_type == "Add" and len(acts) == 2:
            ref[n.name] = {k for k in acts if "/branch/" not in producer[n.input[k]].name}
    quantized = {n.input[k] for n in graph.node for k in ref.get(n.name, ())}
    for n in (n for n in graph.node if n.op_type != "Constant"):
        if n.name not in ref:
            ref[n.name] = {k for k, i in enumerate(n.input) if i in quantized}
    return ref


def _fed_by_dq(graph: onnx.GraphProto) -> dict[str, set[int]]:
    """Node -> the input positions a DequantizeLinear feeds, for every node but the Q/DQ ones."""
    dq_out = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    return {n.name: {k for k, i in enumerate(n.input) if i in dq_out} for n in graph.node
            if n.op_type not in ("QuantizeLinear", "DequantizeLinear", "Constant")}


def test_placement_follows_tensorrts_rules(quantized):
    src, dst, info = quantized
    ref = _reference(onnx.load(str(src)).graph)
    got = _fed_by_dq(onnx.load(str(dst)).graph)
    assert got == ref
    assert info["form"] == "tensorrt-symmetric" and info["quantized_nodes"] > 0


def test_weights_per_channel_and_zero_points_zero(quantized):
    _, dst, _ = quantized
    g = onnx.load(str(dst)).graph
    inits = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    for conv in (n for n in g.node if n.op_type == "Conv"):
        dq = producer[conv.input[1]]
        axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
        assert dq.input[0] in inits and axis == 0
        assert inits[dq.input[1]].shape == (inits[dq.input[0]].shape[0],)  # one scale per output channel
        assert inits[producer[conv.input[0]].input[1]].shape == ()  # activations: one scale per tensor
    for n in g.node:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear"):
            zp = inits[n.input[2]]
            assert zp.dtype == np.int8 and not zp.any()


def _centered_cosine(got: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Per sample, the cosine between got and ref once the float outputs' mean over the samples is taken from
    both: a seeded net's outputs are dominated by what every image shares (biases, sigmoid(0)), which a plain
    cosine would reward."""
    mean = ref.mean(0, keepdims=True)
    a, b = (got - mean).reshape(len(got), -1), (ref - mean).reshape(len(ref), -1)
    a, b = a.astype(np.float64), b.astype(np.float64)
    return np.sum(a * b, 1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_runs_on_onnxruntime_close_to_float(quantized, data, capsys):
    src, dst, _ = quantized
    held = data[1]

    def run(path):
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return np.concatenate([sess.run(None, {"x": held[i:i + 1]})[0] for i in range(len(held))])

    cos = _centered_cosine(run(dst), run(src))
    with capsys.disabled():
        print(f"\n[tensorrt placement {src.parent.name}] centered cosine mean {cos.mean():.4f} min {cos.min():.4f}")
    assert cos.min() >= 0.98


def test_the_pipelines_tensorrt_int8_stages_give_this_placement(quantized, tmp_path):
    """`--target tensorrt --precision int8`'s statistics + quantize-qdq stages: ranges for every tensor the
    placement quantizes (pooling inputs included, which ONNX Runtime's form never calibrates: its own cache
    entry, keyed by the placement), and the Q/DQ of the reference."""
    import json
    import shutil

    from enginesmith.pipeline.artifacts import Cache, StageResult
    from enginesmith.pipeline.quantize import Calibration, precision_artifacts

    src = quantized[0]
    cache = Cache(tmp_path / "cache")

    def copy(tmp):
        shutil.copyfile(src, tmp / "model.onnx")
        return StageResult(["model.onnx"], {})

    simplified = cache.run("simplify", [], {"label": src.parent.name}, copy)
    calibration = Calibration(calibration_source(None, "photos", 8, seed=0), SPEC, "minmax", 1)
    stages: dict[str, list] = {"tensorrt": [], "onnxruntime": []}
    for target, seen in stages.items():
        precision_artifacts(cache, target, "int8", simplified, calibration, seen.append)
    trt = {a.stage: a for a in stages["tensorrt"]}
    ranges = json.loads(trt["statistics"].file.read_text())
    assert set(ranges) == set(calibration_tensors(src, symmetric=True))
    ort_stats = next(a for a in stages["onnxruntime"] if a.stage == "statistics")
    assert ort_stats.manifest["key"] != trt["statistics"].manifest["key"]
    assert set(ranges) - set(json.loads(ort_stats.file.read_text()))  # e.g. a pooling or Resize input
    assert trt["statistics"].manifest["params"]["placement"] == "tensorrt"
    assert _fed_by_dq(onnx.load(str(trt["quantize-qdq"].file)).graph) == _reference(onnx.load(str(src)).graph)
