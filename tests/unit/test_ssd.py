"""SSD300 / SSD512 (models/ssd.py) and the ssd.pytorch checkpoint layout (weights/ssd_checkpoint.py).

Independent references: a re-statement of amdegroot/ssd.pytorch's builder functions (vgg, add_extras,
multibox, L2Norm, forward, box_utils.decode), published parameter counts / MACs, torchvision's SSD parts.
"""

from __future__ import annotations


import pytest
import torch
import torch.nn.functional as F
from torch import nn

from enginesmith.errors import EnginesmithError
from enginesmith.models import registry
from enginesmith.models.profile import count_macs, count_parameters
from enginesmith.models.ssd import SSD, num_priors
from enginesmith.models.weights.ssd_checkpoint import load_ssd_checkpoint, save_ssd_checkpoint


# ---- ssd.pytorch (amdegroot/ssd.pytorch ssd.py) re-stated as the reference ----------------------

BASE = [64, 64, "M", 128, 128, "M", 256, 256, 256, "C", 512, 512, 512, "M", 512, 512, 512]
EXTRAS = {"300": [256, "S", 512, 128, "S", 256, 128, 256, 128, 256]}
MBOX = {"300": [4, 6, 6, 6, 4, 4]}


def ref_vgg(cfg, i):
    layers, in_channels = [], i
    for v in cfg:
        if v == "M":
            layers += [nn.MaxPool2d(kernel_size=2, stride=2)]
        elif v == "C":
            layers += [nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=True)]
        else:
            layers += [nn.Conv2d(in_channels, v, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
            in_channels = v
    pool5 = nn.MaxPool2d(kernel_size=3, stride=1, padding=1)
    conv6 = nn.Conv2d(512, 1024, kernel_size=3, padding=6, dilation=6)
    conv7 = nn.Conv2d(1024, 1024, kernel_size=1)
    return layers + [pool5, conv6, nn.ReLU(inplace=True), conv7, nn.ReLU(inplace=True)]


def ref_add_extras(cfg, i):
    layers, in_channels, flag = [], i, False
    for k, v in enumerate(cfg):
        if in_channels != "S":
            if v == "S":
                layers += [nn.Conv2d(in_channels, cfg[k + 1], kernel_size=(1, 3)[flag], stride=2, padding=1)]
            else:
                layers += [nn.Conv2d(in_channels, v, kernel_size=(1, 3)[flag])]
            flag = not flag
        in_channels = v
    return layers


class RefL2Norm(nn.Module):
    def __init__(self, n_channels, scale):
        super().__init__()
        self.weight = nn.Parameter(torch.full((n_channels,), float(scale)))

    def forward(self, x):
        norm = x.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10
        return self.weight.unsqueeze(0).unsqueeze(2).unsqueeze(3).expand_as(x) * torch.div(x, norm)


class RefSSD(nn.Module):
    def __init__(self, num_classes=21):
        super().__init__()
        self.num_classes = num_classes
        self.vgg = nn.ModuleList(ref_vgg(BASE, 3))
        self.L2Norm = RefL2Norm(512, 20)
        self.extras = nn.ModuleList(ref_add_extras(EXTRAS["300"], 1024))
        loc, conf = [], []
        for k, v in enumerate([21, -2]):
            loc += [nn.Conv2d(self.vgg[v].out_channels, MBOX["300"][k] * 4, kernel_size=3, padding=1)]
            conf += [nn.Conv2d(self.vgg[v].out_channels, MBOX["300"][k] * num_classes, kernel_size=3, padding=1)]
        for k, v in enumerate(self.extras[1::2], 2):
            loc += [nn.Conv2d(v.out_channels, MBOX["300"][k] * 4, kernel_size=3, padding=1)]
            conf += [nn.Conv2d(v.out_channels, MBOX["300"][k] * num_classes, kernel_size=3, padding=1)]
        self.loc, self.conf = nn.ModuleList(loc), nn.ModuleList(conf)

    def forward(self, x):
        sources, loc, conf = [], [], []
        for k in range(23):
            x = self.vgg[k](x)
        sources.append(self.L2Norm(x))
        for k in range(23, len(self.vgg)):
            x = self.vgg[k](x)
        sources.append(x)
        for k, v in enumerate(self.extras):
            x = F.relu(v(x), inplace=True)
            if k % 2 == 1:
                sources.append(x)
        for (x, l, c) in zip(sources, self.loc, self.conf):
            loc.append(l(x).permute(0, 2, 3, 1).contiguous())
            conf.append(c(x).permute(0, 2, 3, 1).contiguous())
        loc = torch.cat([o.view(o.size(0), -1) for o in loc], 1)
        conf = torch.cat([o.view(o.size(0), -1) for o in conf], 1)
        return loc.view(loc.size(0), -1, 4), conf.view(conf.size(0), -1, self.num_classes)


def ref_decode(loc, priors, variances=(0.1, 0.2)):
    """ssd.pytorch layers/box_utils.py decode."""
    boxes = torch.cat((priors[:, :2] + loc[:, :2] * variances[0] * priors[:, 2:],
                       priors[:, 2:] * torch.exp(loc[:, 2:] * variances[1])), 1)
    boxes[:, :2] -= boxes[:, 2:] / 2
    boxes[:, 2:] += boxes[:, :2]
    return boxes


@pytest.fixture(scope="module")
def ref_ssd():
    torch.manual_seed(3)
    return RefSSD().eval()


@pytest.fixture(scope="module")
def ssd300():
    return registry.get("ssd300").create(seed=0)


def _image(size, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, 3, size, size, generator=g) * 255 - torch.tensor([104.0, 117.0, 123.0]).reshape(1, 3, 1, 1)


# ---- architecture ----------------------------------------------------------------------------------

def test_ssd300_parameters(ssd300):
    # ssd.pytorch SSD300 VOC (21 classes): 26.3M parameters (26,285,486, the sum over its state dict);
    # torchvision's SSD parts (VGG16 extractor + SSDHead, below) give the same number.
    n = count_parameters(ssd300)
    assert abs(n - 26.3e6) / 26.3e6 < 0.02
    from torchvision.models import vgg16
    from torchvision.models.detection.ssd import SSDHead, _vgg_extractor

    tv = sum(p.numel() for p in _vgg_extractor(vgg16(), False, 5).parameters())
    tv += sum(p.numel() for p in SSDHead([512, 1024, 512, 256, 256, 256], [4, 6, 6, 6, 4, 4], 21).parameters())
    assert n == tv == 26_285_486


@pytest.mark.slow
def test_ssd300_coco_macs_match_mobilenet_table():
    # Howard et al. 2017 (MobileNets, arXiv:1704.04861) Table 13: SSD300 with VGG on COCO, 34,360M Mult-Adds.
    m = registry.get("ssd300").create(num_classes=80)
    assert abs(count_macs(m, (3, 300, 300)) - 34_360e6) / 34_360e6 < 0.02


@pytest.mark.slow
def test_ssd512_parameters_and_priors():
    m = registry.get("ssd512").create()
    # SSD512 VOC: 27.19M (ssd.pytorch-style 512 forks; = torchvision's highres VGG extractor + a 7-source SSDHead)
    from torchvision.models import vgg16
    from torchvision.models.detection.ssd import SSDHead, _vgg_extractor

    tv = sum(p.numel() for p in _vgg_extractor(vgg16(), True, 5).parameters())
    tv += sum(p.numel() for p in SSDHead([512, 1024, 512, 256, 256, 256, 256], [4, 6, 6, 6, 6, 4, 4], 21).parameters())
    assert count_parameters(m) == tv
    with torch.no_grad():
        boxes, scores = m(_image(512))
    assert boxes.shape == (1, 24564, 4) and scores.shape == (1, 24564, 20)  # SSD paper: 24564 default boxes
    assert torch.isfinite(boxes).all() and torch.isfinite(scores).all()


def test_ssd300_structure(ssd300):
    assert len(ssd300.vgg) == 35
    conv6, conv7 = ssd300.vgg[31], ssd300.vgg[33]
    assert conv6.kernel_size == (3, 3) and conv6.dilation == (6, 6) and conv6.out_channels == 1024
    assert conv7.kernel_size == (1, 1) and conv7.out_channels == 1024
    assert torch.all(ssd300.L2Norm.weight == 20)
    assert [c.out_channels // 4 for c in ssd300.loc] == [4, 6, 6, 6, 4, 4]
    assert [c.out_channels // 21 for c in ssd300.conf] == [4, 6, 6, 6, 4, 4]
    assert num_priors(300) == 8732 and num_priors(512) == 24564
    assert ssd300.decode.priors.shape == (8732, 4)


def test_ssd_input_sizes_and_spec():
    s300, s512 = registry.get("ssd300"), registry.get("ssd512")
    s300.check_input_size((300, 300))
    s512.check_input_size((512, 512))
    for spec, bad in ((s300, (512, 512)), (s300, (320, 320)), (s512, (300, 300))):
        with pytest.raises(EnginesmithError, match="native"):
            spec.check_input_size(bad)
    assert s300.ci_input_size == (300, 300) and s512.ci_input_size is None
    p = s300.preprocess
    assert (p.color, p.scale, p.mean, p.std, p.resize) == ("RGB", 1.0, (123.0, 117.0, 104.0), (1.0, 1.0, 1.0), "stretch")
    assert s300.num_classes == 20 and len(s300.class_names) == 20 and s300.output_names == ("boxes", "scores")


@pytest.mark.slow  # tests/e2e/test_zoo.py builds ssd300 through export + OpenVINO in CI
def test_ssd300_exports_and_matches_on_onnxruntime(ssd300, tmp_path):
    import numpy as np
    import onnxruntime as ort

    path = tmp_path / "ssd300.onnx"
    x = _image(300, 2)
    torch.onnx.export(ssd300, (x,), str(path), dynamo=False, opset_version=17, input_names=["images"],
                      output_names=["boxes", "scores"], dynamic_axes={"images": {0: "n"}})
    import onnx

    assert any("/decode/" in n.name for n in onnx.load(str(path)).graph.node)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    boxes, scores = sess.run(None, {"images": x.numpy()})
    with torch.no_grad():
        tb, ts = ssd300(x)
    np.testing.assert_allclose(boxes, tb.numpy(), rtol=1e-3, atol=1e-2)
    np.testing.assert_allclose(scores, ts.numpy(), rtol=1e-3, atol=1e-5)


# ---- checkpoint -----------------------------------------------------------------------------------

def test_checkpoint_round_trip(ssd300, tmp_path):
    path = tmp_path / "ssd300_voc.pth"
    save_ssd_checkpoint(ssd300, path)
    sd = torch.load(path, weights_only=True)
    assert {"vgg.0.weight", "vgg.33.bias", "L2Norm.weight", "extras.7.weight", "loc.5.bias", "conf.0.weight"} <= set(sd)
    other = SSD(300)  # torch's default init under another seed
    assert not torch.equal(other.conf[0].weight, ssd300.conf[0].weight)
    registry.get("ssd300").load_weights(other, path)
    x = _image(300, 3)
    with torch.no_grad():
        ours = ssd300(x)
        for a, b in zip(other.eval()(x), ours):
            assert torch.equal(a, b)
    boxes, scores = ours  # the seeded init is non-degenerate
    assert torch.isfinite(boxes).all() and scores.std() > 1e-3 and boxes.std() > 1.0


def test_ssd300_matches_ssd_pytorch_checkpoint_and_reference(ssd300, ref_ssd, tmp_path):
    """A checkpoint saved by the re-stated ssd.pytorch network loads into ours; every output agrees."""
    path = tmp_path / "ref.pth"
    torch.save(ref_ssd.state_dict(), path)  # as ssd.pytorch's train.py saves it
    model = SSD(300).eval()
    load_ssd_checkpoint(model, path)
    x = _image(300, 1)
    with torch.no_grad():
        loc, conf = ref_ssd(x)
        raw_loc, raw_conf = model.forward_raw(x)
        boxes, scores = model.decode(raw_loc, raw_conf)
    torch.testing.assert_close(raw_loc, loc, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(raw_conf, conf, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(boxes[0], ref_decode(loc[0], model.decode.priors) * 300, rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(scores, torch.softmax(conf, -1)[..., 1:], rtol=1e-5, atol=1e-6)
    # wrapped training checkpoints with DataParallel prefixes load too
    wrapped = tmp_path / "wrapped.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in ssd300.state_dict().items()}}, wrapped)
    load_ssd_checkpoint(model, wrapped)
    assert torch.equal(model.conf[3].weight, ssd300.conf[3].weight)


def test_checkpoint_errors_name_the_key(ssd300, tmp_path):
    model = SSD(300)
    good = tmp_path / "good.pth"
    save_ssd_checkpoint(ssd300, good)
    data = good.read_bytes()
    trunc = tmp_path / "trunc.pth"
    trunc.write_bytes(data[: len(data) // 2])
    with pytest.raises(EnginesmithError, match="trunc.pth"):
        load_ssd_checkpoint(model, trunc)
    before = model.vgg[0].weight.clone()
    sd = ssd300.state_dict()
    bad = dict(sd)
    bad["conf.2.weight"] = torch.zeros(6 * 81, 512, 3, 3)  # a COCO head
    torch.save(bad, tmp_path / "coco.pth")
    with pytest.raises(EnginesmithError, match=r"conf\.2\.weight \(conf head of source 2\).*\(486, 512, 3, 3\)"):
        load_ssd_checkpoint(model, tmp_path / "coco.pth")
    assert torch.equal(model.vgg[0].weight, before)  # unchanged on error
    missing = {k: v for k, v in sd.items() if k != "vgg.21.weight"}
    torch.save(missing, tmp_path / "missing.pth")
    with pytest.raises(EnginesmithError, match=r"vgg\.21\.weight \(conv4_3\)"):
        load_ssd_checkpoint(model, tmp_path / "missing.pth")
    with pytest.raises(EnginesmithError, match=r"SSD512 checkpoint: 8 missing keys, first extras\.8\.weight"):
        load_ssd_checkpoint(SSD(512), good)  # an SSD300 file given to SSD512
    with pytest.raises(EnginesmithError, match="not found"):
        load_ssd_checkpoint(model, tmp_path / "nope.pth")
