"""Dense-prediction families: srresnet, fcn32s/16s/8s, unet, unet3d.

References are independent of the model code: parameter counts by hand from the papers' layer
tables (and the papers' published totals), output sizes from the valid-convolution arithmetic, crop
offsets from receptive-field coordinate algebra, bilinear upsampling from torch's interpolate, and
exported graphs from ONNX Runtime / OpenVINO.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from enginesmith.errors import EnginesmithError
from enginesmith.models import registry
from enginesmith.models.profile import count_parameters


def conv(cin: int, cout: int, k: int, dims: int = 2, bias: bool = True) -> int:
    """Parameters of a (transposed) convolution, by hand."""
    return cin * cout * k**dims + (cout if bias else 0)


def meta_output_shape(model: torch.nn.Module, shape: tuple[int, ...]) -> tuple[int, ...]:
    """Output shape of a forward pass on the meta device (shapes only, no arithmetic)."""
    model = model.to("meta")
    with torch.no_grad():
        return tuple(model(torch.empty(shape, device="meta")).shape)


def onnx_roundtrip(model: torch.nn.Module, x: torch.Tensor, tmp_path, openvino: bool = False):
    """Export (opset 17, the legacy exporter as the pipeline does), run on ONNX Runtime (and OpenVINO)."""
    import onnxruntime as ort

    path = tmp_path / "model.onnx"
    with torch.no_grad():
        ref = model(x).numpy()
        torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=17, input_names=["input"],
                          output_names=["logits"])
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    outs = {"ort": sess.run(None, {"input": x.numpy()})[0]}
    if openvino:
        import openvino as ov

        compiled = ov.Core().compile_model(ov.convert_model(str(path)), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        outs["openvino"] = compiled({0: x.numpy()})[compiled.output(0)]
    return ref, outs


def assert_close(ref: np.ndarray, got: np.ndarray) -> None:
    assert got.shape == ref.shape
    rel = np.abs(got - ref).max() / max(np.abs(ref).max(), 1e-12)
    cos = float((ref * got).sum() / (np.linalg.norm(ref) * np.linalg.norm(got)))
    assert rel < 1e-3 and cos > 0.9999, (rel, cos)


# --------------------------------------------------------------------------------------- srresnet


def test_srresnet_spec_and_hand_count():
    spec = registry.get("srresnet")
    assert spec.task == "dense" and spec.output_names == ("image",)
    assert spec.preprocess.color == "RGB" and spec.preprocess.resize == "stretch"
    assert spec.preprocess.scale == pytest.approx(1 / 255)
    model = spec.create()
    # head conv 3->64, 9 blocks of two 64->64 convs, tail conv 64->3 (all 3x3 with bias)
    assert count_parameters(model) == conv(3, 64, 3) + 9 * 2 * conv(64, 64, 3) + conv(64, 3, 3) == 668_227
    # 20 weight layers of 64 3x3 filters: VDSR's depth and width (VDSR, Kim et al. 2016: 20 layers, 64
    # filters; on 1 channel that is 665,921 parameters): same size within 1%
    assert count_parameters(model) == pytest.approx(665_921, rel=0.01)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 20


def test_srresnet_output_is_input_when_the_residual_branch_is_zeroed():
    model = registry.get("srresnet").create(input_size=(64, 64))
    x = torch.rand(2, 3, 64, 48)
    with torch.no_grad():
        y = model(x)
        assert y.shape == x.shape and torch.isfinite(y).all()
        assert (y - x).abs().max() > 1e-4  # a random residual branch changes the image
        model.tail.weight.zero_()
        model.tail.bias.zero_()
        assert torch.equal(model(x), x)  # only the skip is left: exactly the (interpolated) input


def test_srresnet_receptive_field_is_41_pixels():
    # 20 stacked 3x3 convs see 41x41 (radius 20): a change to one pixel reaches exactly that far
    model = registry.get("srresnet").create(input_size=(64, 64))
    x = torch.rand(1, 3, 64, 64)
    x2 = x.clone()
    x2[0, :, 32, 32] += 1.0
    with torch.no_grad():
        diff = (model(x2) - model(x)).abs().sum(dim=(0, 1))
    rows = torch.nonzero(diff.sum(1) > 0).flatten()
    cols = torch.nonzero(diff.sum(0) > 0).flatten()
    assert (rows.min().item(), rows.max().item()) == (12, 52)
    assert (cols.min().item(), cols.max().item()) == (12, 52)


def test_srresnet_takes_bicubic_upscaled_input_of_any_size():
    from enginesmith.models.srresnet import upscale_bicubic

    spec = registry.get("srresnet")
    spec.check_input_size((37, 90))
    with pytest.raises(EnginesmithError, match=">= 8"):
        spec.check_input_size((4, 64))
    low = torch.rand(1, 3, 16, 20)
    x = upscale_bicubic(low, 4)
    assert x.shape == (1, 3, 64, 80) and 0 <= x.min() and x.max() <= 1
    with torch.no_grad():
        assert spec.create(input_size=(64, 80))(x).shape == x.shape


# -------------------------------------------------------------------------------------------- fcn

VGG16_CONVS = [(3, 64), (64, 64), (64, 128), (128, 128), (128, 256), (256, 256), (256, 256),
               (256, 512), (512, 512), (512, 512), (512, 512), (512, 512), (512, 512)]


def fcn_hand_count(variant: str, c: int = 21) -> int:
    n = sum(conv(a, b, 3) for a, b in VGG16_CONVS)
    assert n == 14_714_688  # VGG16's conv layers (torchvision's vgg16.features agrees, checked below)
    n += conv(512, 4096, 7) + conv(4096, 4096, 1) + conv(4096, c, 1)  # fc6, fc7, score_fr
    if variant == "fcn32s":
        return n + conv(c, c, 64, bias=False)
    n += conv(c, c, 4, bias=False) + conv(512, c, 1)  # upscore2, score_pool4
    if variant == "fcn16s":
        return n + conv(c, c, 32, bias=False)
    return n + conv(c, c, 4, bias=False) + conv(256, c, 1) + conv(c, c, 16, bias=False)


def test_vgg16_conv_count_matches_torchvision():
    from torchvision.models import vgg16

    with torch.device("meta"):
        assert count_parameters(vgg16(weights=None).features) == 14_714_688


@pytest.mark.parametrize("variant", ["fcn32s", "fcn16s", "fcn8s"])
def test_fcn_params_and_forward_shape(variant):
    spec = registry.get(variant)
    assert spec.task == "dense" and spec.num_classes == 21 and len(spec.class_names) == 21
    assert spec.ci_input_size is None  # ~134M parameters: full-size e2e only under -m slow
    model = spec.create(input_size=(64, 64))
    n = count_parameters(model)
    assert n == fcn_hand_count(variant)
    # Long et al. 2015, Table 1: FCN-VGG16 has 134M parameters
    assert n == pytest.approx(134e6, rel=0.02)
    x = torch.randn(1, 3, 64, 50) * 50  # Caffe-scale input (BGR minus mean)
    with torch.no_grad():
        y = model(x)
    assert y.shape == (1, 21, 64, 50) and torch.isfinite(y).all() and y.std() > 1e-3


def _input_coord(layers, x: float) -> float:
    """Map a coordinate of the last layer back to the input (receptive-field centre), layer by layer.

    conv/pool (k, s, p): x_in = s * x + (k - 1) / 2 - p; deconv: x_in = (x - (k - 1) / 2 + p) / s."""
    for kind, k, s, p in reversed(layers):
        x = s * x + (k - 1) / 2 - p if kind == "conv" else (x - (k - 1) / 2 + p) / s
    return x


def _vgg_trunk(upto_pool: int):
    layers = [("conv", 3, 1, 100)]  # conv1_1, padded by 100
    for b, n in enumerate((2, 2, 3, 3, 3)[:upto_pool], start=1):
        layers += [("conv", 3, 1, 1)] * (n - 1 if b == 1 else n) + [("conv", 2, 2, 0)]
    return layers


@pytest.mark.parametrize("variant,k,s", [("fcn32s", 64, 32), ("fcn16s", 32, 16), ("fcn8s", 16, 8)])
def test_fcn_crop_offsets_align_output_with_input(variant, k, s):
    """The crop offset is where output pixel 0 sees input pixel 0 (Caffe's Crop layer arithmetic)."""
    from enginesmith.models.fcn import CROPS

    score = _vgg_trunk(5) + [("conv", 7, 1, 0)]  # fc6 7x7 (fc7, score_fr are 1x1)
    up2 = score + [("deconv", 4, 2, 0)]
    up4 = up2 + [("deconv", 4, 2, 0)]
    final = {"fcn32s": score, "fcn16s": up2, "fcn8s": up4}[variant] + [("deconv", k, s, 0)]
    p4, p3, out = CROPS[variant]
    assert _input_coord(final, out) == 0
    # the skips: score_pool4 (1x1 on pool4) cropped by p4 lines up with upscore2, pool3 with upscore_pool4
    if p4 is not None:
        assert _input_coord(_vgg_trunk(4), p4) == _input_coord(up2, 0)
    if p3 is not None:
        assert _input_coord(_vgg_trunk(3), p3) == _input_coord(up4, 0)


def test_fcn_takes_every_size():
    from enginesmith.models.fcn import _crops_fit

    for variant in ("fcn32s", "fcn16s", "fcn8s"):
        assert all(_crops_fit(side, variant) for side in range(1, 2049))
        registry.get(variant).check_input_size((1, 1000))
        with pytest.raises(EnginesmithError, match="500x500"):
            registry.get(variant).check_input_size((0, 64))


def test_fcn_upsampling_is_bilinear_interpolation():
    from enginesmith.models.fcn import bilinear_kernel

    x = torch.randn(1, 3, 9, 11)
    for s in (2, 8, 16, 32):
        y = F.conv_transpose2d(x, bilinear_kernel(3, 2 * s), stride=s)[:, :, s // 2 : s // 2 + 9 * s, s // 2 : s // 2 + 11 * s]
        ref = F.interpolate(x, scale_factor=s, mode="bilinear", align_corners=False)
        # equal away from the borders (interpolate clamps at the edge, the deconv fades to zero)
        assert torch.allclose(y[..., s:-s, s:-s], ref[..., s:-s, s:-s], atol=1e-5)
    # classes never mix
    w = bilinear_kernel(21, 4)
    assert torch.count_nonzero(w.sum(dim=(2, 3)) - torch.diag(w.sum(dim=(2, 3)).diagonal())) == 0


@pytest.mark.slow
def test_fcn8s_exports_and_matches_onnxruntime(tmp_path):
    model = registry.get("fcn8s").create(input_size=(64, 64))
    ref, outs = onnx_roundtrip(model, torch.randn(1, 3, 64, 64) * 50, tmp_path)
    assert ref.shape == (1, 21, 64, 64)
    assert_close(ref, outs["ort"])


# ------------------------------------------------------------------------------------------- unet

UNET_WIDTHS = (64, 128, 256, 512, 1024)


def unet_hand_count(classes: int = 2) -> int:
    n, cin = 0, 1
    for w in UNET_WIDTHS:  # contracting path: two 3x3 convs per level
        n += conv(cin, w, 3) + conv(w, w, 3)
        cin = w
    for w in reversed(UNET_WIDTHS[:-1]):  # expansive: up-conv 2x2 halving, two 3x3 convs on the concat
        n += conv(cin, w, 2) + conv(2 * w, w, 3) + conv(w, w, 3)
        cin = w
    return n + conv(64, classes, 1)


def test_unet_params_by_hand_and_the_widely_reported_count():
    spec = registry.get("unet")
    assert spec.task == "dense" and spec.output_names == ("logits",) and spec.num_classes == 2
    assert spec.preprocess.color == "GRAY" and spec.preprocess.resize == "stretch"
    with torch.device("meta"):
        model = spec.builder(num_classes=2, input_size=(572, 572))
    n = count_parameters(model)
    assert n == unet_hand_count(2) == 31_030_658
    # The widely quoted 31,031,685 is the Keras re-implementation (zhixuhao/unet), whose head is
    # conv 3x3 64->2 then conv 1x1 2->1 instead of the paper's conv 1x1 64->2: exactly the difference.
    assert n - conv(64, 2, 1) + conv(64, 2, 3) + conv(2, 1, 1) == 31_031_685
    assert n == pytest.approx(31_031_685, rel=0.02)


def _valid_unet_sides(pools: int, lo: int, hi: int) -> list[int]:
    """Naive simulation: two valid 3x3 convs (-4) and an even 2x2 pool per level, then back up."""
    ok = []
    for s in range(lo, hi):
        x, good = s, True
        for _ in range(pools):
            x -= 4
            if x <= 0 or x % 2:
                good = False
                break
            x //= 2
        x -= 4
        for _ in range(pools):
            x = 2 * x - 4 if x > 0 else x
        if good and x >= 1:
            ok.append(s)
    return ok


def _accepted(check, lo: int, hi: int) -> list[int]:
    out = []
    for s in range(lo, hi):
        try:
            check((s, s))
            out.append(s)
        except EnginesmithError:
            pass
    return out


def test_unet_valid_sizes_and_output_size():
    from enginesmith.models.unet import output_side

    spec = registry.get("unet")
    valid = _valid_unet_sides(4, 1, 800)
    assert _accepted(spec.check_input_size, 1, 800) == valid
    assert valid[0] == spec.ci_input_size[0] == 188 and 572 in valid
    assert output_side(572, 4) == 388 and output_side(188, 4) == 4
    with pytest.raises(EnginesmithError, match="556 or 572"):
        spec.check_input_size((570, 572))
    with torch.device("meta"):
        model = spec.builder(num_classes=2, input_size=(572, 572))
    assert meta_output_shape(model, (1, 1, 572, 572)) == (1, 2, 388, 388)  # the paper's Fig. 1
    assert meta_output_shape(model, (1, 1, 572, 508)) == (1, 2, 388, 324)


def test_unet_forward_at_ci_size():
    model = registry.get("unet").create(input_size=(188, 188))
    with torch.no_grad():
        y = model(torch.rand(1, 1, 188, 204))
    assert y.shape == (1, 2, 4, 20) and torch.isfinite(y).all() and y.std() > 1e-3


# ----------------------------------------------------------------------------------------- unet3d


def unet3d_hand_count(classes: int = 3) -> int:
    """Fig. 1 of Çiçek et al. 2016, with BN statistics only and bias-free up-convs (see unet.py)."""
    c = lambda a, b: conv(a, b, 3, dims=3)  # noqa: E731
    n = c(3, 32) + c(32, 64) + c(64, 64) + c(64, 128) + c(128, 128) + c(128, 256) + c(256, 256) + c(256, 512)
    n += conv(512, 512, 2, 3, bias=False) + c(512 + 256, 256) + c(256, 256)
    n += conv(256, 256, 2, 3, bias=False) + c(256 + 128, 128) + c(128, 128)
    n += conv(128, 128, 2, 3, bias=False) + c(128 + 64, 64) + c(64, 64)
    return n + conv(64, classes, 1, 3)


def test_unet3d_params_match_the_paper():
    spec = registry.get("unet3d")
    assert spec.task == "dense" and not spec.image_model and spec.num_classes == 3
    assert spec.input_size == (132, 132) and spec.details["depth"] == 116
    with torch.device("meta"):
        model = spec.builder(num_classes=3, input_size=(132, 132))
    # Çiçek et al. 2016, Sec. 2: "The architecture has 19069955 parameters in total."
    assert count_parameters(model) == unet3d_hand_count() == 19_069_955
    assert sum(isinstance(m, torch.nn.BatchNorm3d) for m in model.modules()) == 14  # BN before every ReLU


def test_unet3d_valid_sizes_and_paper_output_shape():
    spec = registry.get("unet3d")
    valid = _valid_unet_sides(3, 1, 400)
    assert _accepted(spec.check_input_size, 1, 400) == valid
    assert valid[0] == 92 and 116 in valid and 132 in valid
    with pytest.raises(EnginesmithError, match="132 or 140"):
        spec.check_input_size((133, 133))
    with torch.device("meta"):
        model = spec.builder(num_classes=3, input_size=(132, 132))
    # paper: a 132 x 132 x 116 (x, y, z) tile gives 44 x 44 x 28; PyTorch order (D, H, W)
    assert meta_output_shape(model, (1, *spec.input_shape)) == (1, 3, 28, 44, 44)


def test_unet3d_exports_at_the_smallest_size_and_matches_onnxruntime_and_openvino(tmp_path):
    model = registry.get("unet3d").create()
    x = torch.rand(1, 3, 92, 92, 92)
    ref, outs = onnx_roundtrip(model, x, tmp_path, openvino=True)
    assert ref.shape == (1, 3, 4, 4, 4) and np.isfinite(ref).all() and ref.std() > 1e-3
    assert_close(ref, outs["ort"])
    assert_close(ref, outs["openvino"])


@pytest.mark.slow
def test_unet3d_full_size_forward():
    model = registry.get("unet3d").create()
    with torch.no_grad():
        y = model(torch.rand(1, *registry.get("unet3d").input_shape))
    assert y.shape == (1, 3, 28, 44, 44) and torch.isfinite(y).all()


@pytest.mark.slow
def test_unet_full_size_forward():
    model = registry.get("unet").create()
    with torch.no_grad():
        y = model(torch.rand(1, 1, 572, 572))
    assert y.shape == (1, 2, 388, 388) and torch.isfinite(y).all()


def test_dense_models_load_their_state_dicts_by_path(tmp_path):
    for name, size in (("srresnet", (64, 64)), ("unet3d", (92, 92))):
        spec = registry.get(name)
        src, dst = spec.create(input_size=size, seed=1), spec.create(input_size=size, seed=2)
        torch.save(src.state_dict(), tmp_path / f"{name}.pt")
        spec.load_weights(dst, tmp_path / f"{name}.pt")
        assert all(torch.equal(a, b) for a, b in zip(src.state_dict().values(), dst.state_dict().values()))
        with pytest.raises(EnginesmithError):
            spec.load_weights(dst, tmp_path / "missing.pt")
