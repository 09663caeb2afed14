"""The classification families of the zoo (AlexNet, VGG A-E + dense, GoogLeNet, ResNet-18..152 and
plain-34, classification+localisation): parameters and MACs against the papers' published figures
(within 2% unless a comment says why not) and torchvision's metadata, layer tables, output shapes,
dense-vs-FC equivalence against a naive sliding-window evaluation, input-size checks, the
localisation loss by hand, and one ONNX export matched on ONNX Runtime."""

from __future__ import annotations

import math
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from enginesmith.errors import EnginesmithError
from enginesmith.models import registry
from enginesmith.models.profile import count_macs, count_parameters

CLASSIFIERS = ["alexnet", "vgg11", "vgg11-lrn", "vgg13", "vgg16-c", "vgg16", "vgg19", "vgg16-dense", "vgg19-dense",
               "googlenet", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "plain34", "classloc"]


def rel(a: float, b: float) -> float:
    return abs(a - b) / abs(b)


def test_specs_registered() -> None:
    assert set(CLASSIFIERS) <= set(registry.names())
    for name in CLASSIFIERS:
        spec = registry.get(name)
        assert spec.task == "classification" and spec.num_classes == 1000
        assert len(spec.class_names) == 1000 and spec.class_names[0] == "tench"
        p = spec.preprocess
        assert (p.color, p.resize, p.scale) == ("RGB", "center_crop", 1.0 / 255.0)
        assert p.mean == (0.485, 0.456, 0.406) and p.std == (0.229, 0.224, 0.225)
        assert p.input_size == spec.input_size
        spec.check_input_size(spec.input_size)
        if spec.ci_input_size is not None:
            spec.check_input_size(spec.ci_input_size)
    assert registry.get("alexnet").input_size == (227, 227)
    assert registry.get("classloc").output_names == ("logits", "box")
    # only one heavy VGG runs in the CI zoo harness
    assert [n for n in CLASSIFIERS if n.startswith("vgg") and registry.get(n).ci_input_size is not None] == ["vgg11"]
    assert registry.get("resnet101").ci_input_size is None and registry.get("resnet152").ci_input_size is None


@pytest.mark.parametrize("name,bad,good", [
    ("alexnet", (224, 224), (227, 227)),
    ("vgg16", (256, 256), (224, 224)),
    ("vgg11-lrn", (192, 192), (224, 224)),
    ("vgg16-dense", (192, 192), (256, 384)),
    ("vgg19-dense", (240, 240), (224, 224)),
    ("googlenet", (100, 100), (96, 128)),
    ("resnet18", (16, 16), (32, 32)),
    ("resnet152", (65, 64), (64, 64)),
    ("plain34", (224, 200), (224, 192)),
    ("classloc", (50, 64), (64, 64)),
])
def test_check_input_size(name: str, bad: tuple[int, int], good: tuple[int, int]) -> None:
    spec = registry.get(name)
    with pytest.raises(EnginesmithError, match=name) as e:
        spec.check_input_size(bad)
    assert "\n" not in str(e.value) and f"{bad[0]}x{bad[1]}" in str(e.value)
    spec.check_input_size(good)
    with pytest.raises(EnginesmithError):
        spec.create(input_size=bad)


# ------------------------------------------------------------------------------------------ ResNet
# He et al. 2016 Table 1 FLOPs (multiply-adds) x 10^9; torchvision's published parameter counts.
RESNETS = {"resnet18": (11_689_512, 1.8), "resnet34": (21_797_672, 3.6), "resnet101": (44_549_160, 7.6),
           "resnet152": (60_192_808, 11.3)}


def _as_v1(model: nn.Module) -> nn.Module:
    """Move each bottleneck's stride from the 3x3 (torchvision v1.5) to the first 1x1 (the paper's v1)."""
    from torchvision.models.resnet import Bottleneck

    for m in model.modules():
        if isinstance(m, Bottleneck) and m.conv2.stride == (2, 2):
            m.conv1.stride, m.conv2.stride = (2, 2), (1, 1)
    return model


@pytest.mark.parametrize("name", list(RESNETS))
def test_resnet_params_macs(name: str) -> None:
    import torchvision.models as tvm

    params, gflops = RESNETS[name]
    m = registry.get(name).create()
    assert count_parameters(m) == params
    meta = tvm.get_model_weights(name).IMAGENET1K_V1.meta
    assert meta["num_params"] == params
    macs = count_macs(m, (3, 224, 224))
    assert rel(macs / 1e9, meta["_ops"]) < 0.02  # torchvision's GFLOPS (= GMACs) metadata for its v1.5
    if name in ("resnet101", "resnet152"):
        macs = count_macs(_as_v1(m), (3, 224, 224))  # the paper's stride placement
    assert rel(macs / 1e9, gflops) < 0.02, macs
    assert m(torch.rand(2, 3, 64, 96)).shape == (2, 1000)


def test_resnet_small_num_classes_shape() -> None:
    m = registry.get("resnet18").create(num_classes=7, input_size=(64, 64))
    assert m(torch.rand(3, 3, 64, 64)).shape == (3, 7)


def test_plain34_is_resnet34_without_shortcuts() -> None:
    from torchvision.models import resnet34
    from torchvision.models.resnet import BasicBlock

    plain = registry.get("plain34").create()
    rn = resnet34(weights=None).eval()
    # ResNet-34 minus its three 1x1 projection shortcuts (conv + BN weight/bias) at widths 128, 256, 512
    proj = sum(c_in * c_out + 2 * c_out for c_in, c_out in ((64, 128), (128, 256), (256, 512)))
    assert count_parameters(plain) == count_parameters(rn) - proj == 21_797_672 - 173_824
    assert not any("downsample" in n for n, _ in plain.named_modules())
    assert rel(count_macs(plain, (3, 224, 224)) / 1e9, 3.6) < 0.02  # He et al. Table 1: plain-34 3.6 x 10^9
    # same weights as ResNet-34 with the shortcut additions taken out of every block -> same outputs
    with torch.no_grad():
        for p in rn.parameters():
            p.add_(0.01 * torch.randn_like(p))
        for mod in rn.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.1, 0.1)
                mod.running_var.uniform_(0.5, 1.5)

    def no_shortcut(self, x):
        return self.relu(self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x))))))

    for mod in rn.modules():
        if isinstance(mod, BasicBlock):
            mod.forward = types.MethodType(no_shortcut, mod)
    plain.load_state_dict({k: v for k, v in rn.state_dict().items() if "downsample" not in k})
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(plain(x), rn(x), rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------------------------ AlexNet
def _paper_lrn(a: torch.Tensor, n: int = 5, k: float = 2.0, alpha: float = 1e-4, beta: float = 0.75) -> torch.Tensor:
    """Krizhevsky et al. Sec. 3.3, literally: b_i = a_i / (k + alpha * sum_{j=max(0,i-n/2)}^{min(N-1,i+n/2)} a_j^2)^beta."""
    out = torch.empty_like(a)
    C = a.shape[1]
    for i in range(C):
        lo, hi = max(0, i - n // 2), min(C - 1, i + n // 2)
        out[:, i] = a[:, i] / (k + alpha * (a[:, lo:hi + 1] ** 2).sum(1)) ** beta
    return out


def test_alexnet_lrn_is_the_papers() -> None:
    from enginesmith.models.alexnet import paper_lrn

    torch.manual_seed(1)
    a = torch.randn(2, 11, 4, 5) * 30  # large enough that the alpha term matters
    torch.testing.assert_close(paper_lrn()(a), _paper_lrn(a), rtol=1e-5, atol=1e-6)


def test_alexnet_params_macs_shape() -> None:
    from enginesmith.models.alexnet import AlexNet

    m = registry.get("alexnet").create()
    assert m(torch.rand(2, 3, 227, 227)).shape == (2, 1000)
    # single tower, by hand: conv1..conv5, fc6..fc8 (weights + biases)
    convs = [(3, 96, 11), (96, 256, 5), (256, 384, 3), (384, 384, 3), (384, 256, 3)]
    fcs = [(9216, 4096), (4096, 4096), (4096, 1000)]
    hand = sum(ci * co * k * k + co for ci, co, k in convs) + sum(i * o + o for i, o in fcs)
    assert count_parameters(m) == hand == 62_378_344
    maps = [55, 27, 13, 13, 13]  # output sides of conv1..conv5 at 227
    hand_macs = sum(s * s * co * ci * k * k for (ci, co, k), s in zip(convs, maps)) + sum(i * o for i, o in fcs)
    assert count_macs(m, (3, 227, 227)) == hand_macs
    # the paper's two-GPU network (conv2/4/5 see only their tower's half): "60 million parameters"
    # (Krizhevsky et al. abstract) and the usually quoted 0.72 G multiply-adds at 227
    two = AlexNet(towers=2)
    assert rel(count_parameters(two), 60e6) < 0.02
    assert rel(count_macs(two, (3, 227, 227)), 0.72e9) < 0.02
    kinds = [type(x).__name__ for x in m.features]
    assert kinds.count("LocalResponseNorm") == 2 and kinds.count("MaxPool2d") == 3
    assert all(p.kernel_size == 3 and p.stride == 2 for p in m.features if isinstance(p, nn.MaxPool2d))  # overlapping
    assert [d.p for d in m.classifier if isinstance(d, nn.Dropout)] == [0.5, 0.5]


# ---------------------------------------------------------------------------------------------- VGG
# Simonyan & Zisserman Table 2 (millions) and torchvision's exact counts; Table 1 weight layers.
VGG_TABLE = {"vgg11": (133, 132_863_336, 11), "vgg11-lrn": (133, 132_863_336, 11), "vgg13": (133, 133_047_848, 13),
             "vgg16-c": (134, None, 16), "vgg16": (138, 138_357_544, 16), "vgg19": (144, 143_667_240, 19)}


@pytest.mark.parametrize("name", list(VGG_TABLE))
def test_vgg_params_and_layers(name: str) -> None:
    paper_m, exact, depth = VGG_TABLE[name]
    m = registry.get(name).create()
    n = count_parameters(m)
    assert rel(n / 1e6, paper_m) < 0.02
    if exact is not None:
        assert n == exact
    convs = [c for c in m.features if isinstance(c, nn.Conv2d)]
    assert len(convs) + 3 == depth
    assert not any(isinstance(b, nn.BatchNorm2d) for b in m.modules())
    # no adaptive pool: a no-op at 224 whose ONNX export fails after A-LRN's LRN (shapes lost)
    assert isinstance(m.avgpool, nn.Identity)
    assert [c.kernel_size[0] for c in convs].count(1) == (3 if name == "vgg16-c" else 0)
    lrn = [i for i, x in enumerate(m.features) if isinstance(x, nn.LocalResponseNorm)]
    assert lrn == ([2] if name == "vgg11-lrn" else [])  # A-LRN: after the first conv + ReLU
    if name == "vgg16-c":  # D with three 3x3 convs made 1x1: 3 * 8 * (256^2 or 512^2) fewer weights
        assert n == 138_357_544 - 8 * (256 * 256 + 512 * 512 + 512 * 512)


def test_vgg_macs_vs_torchvision_metadata() -> None:
    import torchvision.models as tvm

    m = registry.get("vgg16").create()
    # torchvision VGG16_Weights metadata: 15.47 GFLOPS (multiply-adds) at 224
    assert rel(count_macs(m, (3, 224, 224)) / 1e9, tvm.VGG16_Weights.IMAGENET1K_V1.meta["_ops"]) < 0.02
    assert m(torch.rand(1, 3, 224, 224)).shape == (1, 1000)


@pytest.fixture(scope="module")
def vgg11_pair():
    from enginesmith.models.vgg import to_dense

    torch.manual_seed(0)
    fc = registry.get("vgg11").create(num_classes=10)
    with torch.no_grad():  # give the classifier O(1) outputs so the comparison is not trivially ~0
        for lin in fc.classifier:
            if isinstance(lin, nn.Linear):
                lin.weight.mul_(5)
                lin.bias.uniform_(-0.1, 0.1)
    return fc, to_dense(fc)


def test_vgg_dense_equals_fc_at_224(vgg11_pair) -> None:
    fc, dense = vgg11_pair
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        a, b = fc(x), dense(x)
    assert a.shape == b.shape == (2, 10) and a.abs().max() > 0.1
    torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)


def test_vgg_dense_larger_input_is_the_average_of_sliding_fc(vgg11_pair) -> None:
    """At 256x288 the features are 8x9; the dense net must equal the FC classifier applied to every 7x7
    window of them (2x3 windows), averaged: the paper's dense evaluation, computed the slow way."""
    fc, dense = vgg11_pair
    x = torch.randn(1, 3, 256, 288)
    with torch.no_grad():
        f = fc.features(x)
        assert f.shape[-2:] == (8, 9)
        windows = [fc.classifier(torch.flatten(f[:, :, i:i + 7, j:j + 7], 1)) for i in range(2) for j in range(3)]
        naive = torch.stack(windows).mean(0)
        torch.testing.assert_close(dense(x), naive, rtol=1e-4, atol=1e-5)


def test_vgg_dense_specs() -> None:
    from enginesmith.models.vgg import VGGDense

    m = registry.get("vgg16-dense").create()
    assert isinstance(m, VGGDense) and count_parameters(m) == 138_357_544  # same weights as vgg16, reshaped
    heads = [c for c in m.classifier if isinstance(c, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in heads] == [
        (512, 4096, (7, 7)), (4096, 4096, (1, 1)), (4096, 1000, (1, 1))]
    assert count_parameters(registry.get("vgg19-dense").create()) == 143_667_240


@pytest.mark.slow
def test_vgg_dense_loads_a_torchvision_fc_checkpoint(tmp_path: Path) -> None:
    spec = registry.get("vgg16-dense")
    fc = registry.get("vgg16").create(seed=3)
    path = tmp_path / "vgg16.pth"
    torch.save(fc.state_dict(), path)
    dense = spec.create()
    spec.load_weights(dense, path)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(dense(x), fc(x), rtol=1e-4, atol=1e-5)
    bad = tmp_path / "r18.pth"
    torch.save(registry.get("resnet18").create().state_dict(), bad)
    with pytest.raises(EnginesmithError, match="does not match"):
        spec.load_weights(dense, bad)


# ------------------------------------------------------------------------------------------ GoogLeNet
# Szegedy et al. Table 1, rows (name, params K, ops M). Its params column is in K = 1024 weights
# (conv 3x3 row: 64*64 + 64*9*192 = 114,688 = 112 K; 3a: 163,328 = 159.5 K) without biases, and
# ops = weights * output positions (conv 3x3 row: 114,688 * 56 * 56 = 360 M).
GOOGLENET_TABLE1 = [("3a", 159, 128), ("3b", 380, 304), ("4a", 364, 73), ("4b", 437, 88), ("4c", 463, 100),
                    ("4d", 580, 119), ("4e", 840, 170), ("5a", 1072, 54), ("5b", 1388, 71)]


def test_googlenet_table1() -> None:
    from enginesmith.models.googlenet import Inception

    m = registry.get("googlenet").create()
    assert not any(isinstance(b, nn.BatchNorm2d) for b in m.modules())
    blocks = [b for b in m.modules() if isinstance(b, Inception)]
    assert len(blocks) == 9
    sides = {"3": 28, "4": 14, "5": 7}
    # The table's params column contradicts its own ops column on two rows: 4c (463 K, but 100 M ops
    # / 196 positions = 498 K, which is what its widths give); and 5a's 1072 K / 54 M agree with each
    # other but not with its widths (4e's, on an 832-channel input: 1018 K, 51.1 M). Those two rows
    # get 8%; the ops column 1 M, except 5a (54 vs 51.1 M).
    loose = {"4c": 0.08, "5a": 0.08}
    for block, (name, params_k, ops_m) in zip(blocks, GOOGLENET_TABLE1):
        weights = sum(c.weight.numel() for c in block.modules() if isinstance(c, nn.Conv2d))
        assert rel(weights / 1024, params_k) <= loose.get(name, 0.02), (name, weights / 1024)
        ops = weights * sides[name[0]] ** 2 / 1e6
        assert abs(ops - ops_m) <= (3.0 if name == "5a" else 1.0), (name, ops)
    assert [b.out_channels for b in blocks] == [256, 480, 512, 512, 512, 528, 832, 832, 1024]
    five = [c for b in blocks for c in b.modules() if isinstance(c, nn.Conv2d) and c.kernel_size == (5, 5)]
    assert len(five) == 9  # the paper's 5x5 branch (torchvision has 3x3 there)
    assert m.dropout.p == 0.4 and m.fc.in_features == 1024
    assert not any("aux" in n for n, _ in m.named_modules())  # auxiliary classifiers are training-only
    # Totals: Table 1's params column sums to 6,797.7 K (the "6.8 M" of the brief) and its ops column
    # to 1,502 M ("1.5 billion multiply-adds", Sec. 5). Its conv 7x7 row (2.7 K, 34 M) does not match a
    # 7x7x3x64 conv (9,408 weights, 118 M MACs at 112x112), so the totals are compared with that row
    # replaced by the real conv: within 2% then (biases included in ours).
    n = count_parameters(m)
    conv1 = 7 * 7 * 3 * 64
    assert rel(n, (6797.7 - 2.7) * 1024 + conv1) < 0.02 and rel(n, 6.8e6) < 0.03
    macs = count_macs(m, (3, 224, 224))
    assert rel(macs, (1502 - 34) * 1e6 + conv1 * 112 * 112) < 0.02
    assert rel(macs, 1.5e9) < 0.06  # the paper's rounded "1.5 billion" (with its conv1 row's 34 M)


def test_googlenet_shapes_finite() -> None:
    m = registry.get("googlenet").create(num_classes=5, input_size=(64, 96))
    with torch.no_grad():
        y = m(torch.randn(2, 3, 64, 96))
    assert y.shape == (2, 5) and torch.isfinite(y).all() and y.std() > 1e-3


# ------------------------------------------------------------------------------------------ classloc
def test_classloc_outputs() -> None:
    m = registry.get("classloc").create(num_classes=20, input_size=(64, 64))
    with torch.no_grad():
        logits, box = m(torch.randn(3, 3, 64, 64))
    assert logits.shape == (3, 20) and box.shape == (3, 4)
    assert (box > 0).all() and (box < 1).all()
    assert count_parameters(m) == 11_689_512 - 513_000 + 512 * 20 + 20 + 512 * 4 + 4  # resnet18 trunk + heads


def test_classloc_loss_by_hand() -> None:
    from enginesmith.models.classloc import classloc_loss

    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 1.0]])
    labels = torch.tensor([0, 2])
    box = torch.tensor([[0.5, 0.5, 0.2, 0.4], [0.1, 0.9, 0.3, 0.3]])
    target = torch.tensor([[0.6, 0.5, 0.2, 0.2], [0.1, 0.7, 0.5, 0.3]])
    # CE: -log softmax: image 0: log(e^2 + 1 + e^-1) - 2; image 1: log(2 e^0.5 + e^1) - 1
    ce = ((math.log(math.e ** 2 + 1 + math.e ** -1) - 2) + (math.log(2 * math.e ** 0.5 + math.e) - 1)) / 2
    # L2 per image: 0.01 + 0 + 0 + 0.04 = 0.05 ; 0 + 0.04 + 0.04 + 0 = 0.08 ; mean 0.065
    l2 = (0.05 + 0.08) / 2
    assert ce == pytest.approx((0.1698 + 0.7944) / 2, abs=1e-3)
    for w in (0.0, 1.0, 10.0):
        assert classloc_loss(logits, box, labels, target, weight=w).item() == pytest.approx(ce + w * l2, rel=1e-6)


# ------------------------------------------------------------------------------------------ ONNX
@pytest.mark.parametrize("name", ["resnet18", "classloc"])
def test_onnx_export_matches_onnxruntime(name: str, tmp_path: Path) -> None:
    import onnxruntime as ort

    from enginesmith.pipeline.export import INPUT_NAME, export_onnx

    spec = registry.get(name)
    m = spec.create(input_size=(64, 64))
    path = tmp_path / f"{name}.onnx"
    export_onnx(m, path, (2, 3, 64, 64), spec.output_names, dynamic_batch=True)
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        ref = m(x)
    ref = ref if isinstance(ref, tuple) else (ref,)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [o.name for o in sess.get_outputs()] == list(spec.output_names)
    outs = sess.run(None, {INPUT_NAME: x.numpy()})
    for r, o in zip(ref, outs):
        np.testing.assert_allclose(o, r.numpy(), rtol=1e-4, atol=1e-5)
