"""Networks built from a user's Darknet cfg (models/darknet_net.py) against an independent reference and against the
zoo's own YOLOs.

The reference is a transcription of eriklindernoren/PyTorch-YOLOv3 (tests/unit/reference_pytorchyolo.py, commit
1d621c8): its cfg parser, module builder, YOLOLayer decode and .weights loader. Each case writes the cfg and a
random .weights file (written by the reference's own writer), loads both networks from them and compares the raw head
maps and the decoded boxes and scores.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from enginesmith.errors import EnginesmithError
from enginesmith.models import registry
from enginesmith.models.darknet_net import cfg_spec
from enginesmith.models.darknet_plan import read_cfg_source
from enginesmith.models.weights.darknet import darknet_layers
from enginesmith.models.weights.darknet_cfg import YOLOV2_VOC_CFG, YOLOV3_TINY_CFG
from reference_pytorchyolo import Darknet, boxes_scores, swap_maxpool_padding_to_zero, write_random_weights

TINY_ANCHORS = "10,14,  23,27,  37,58,  81,82,  135,169,  344,319"


def tiny(classes: int = 80, anchors: str = TINY_ANCHORS, masks: tuple[str, str] = ("3,4,5", "0,1,2"),
         width: float = 1.0) -> str:
    """yolov3-tiny.cfg as a user edits it: classes, filters before each [yolo], anchors, masks, channel width."""
    text = YOLOV3_TINY_CFG.replace("mask = 3,4,5", "mask = A").replace("mask = 0,1,2", f"mask = {masks[1]}")
    text = text.replace("mask = A", f"mask = {masks[0]}").replace(TINY_ANCHORS, anchors)
    text = text.replace("classes=80", f"classes={classes}").replace("filters=255", f"filters=X{3 * (classes + 5)}")
    if width != 1.0:
        for f in (1024, 512, 256, 128, 64, 32, 16):
            text = text.replace(f"filters={f}\n", f"filters=X{int(f * width)}\n")
    return text.replace("filters=X", "filters=")


# yolov4-tiny-like blocks: route groups=2 group_id=1, a shortcut, mish/swish/logistic, a stride-1 size-2 maxpool
GROUPS_CFG = """[net]
width=64
height=64
channels=3

[convolutional]
batch_normalize=1
filters=16
size=3
stride=2
pad=1
activation=mish

[convolutional]
batch_normalize=1
filters=16
size=3
stride=1
pad=1
activation=leaky

[route]
layers=-1
groups=2
group_id=1

[convolutional]
batch_normalize=1
filters=8
size=3
stride=1
pad=1
activation=swish

[convolutional]
batch_normalize=1
filters=8
size=1
stride=1
pad=1
activation=leaky

[shortcut]
from=-2
activation=linear

[route]
layers=-1,-5

[maxpool]
size=2
stride=2

[maxpool]
size=2
stride=1

[convolutional]
batch_normalize=1
filters=32
size=3
stride=2
pad=1
activation=logistic

[convolutional]
size=1
stride=1
pad=1
filters=14
activation=linear

[yolo]
mask = 1,0
anchors = 7,9, 12,20, 30,25
classes=2
num=3

[route]
layers = -4

[upsample]
stride=2

[convolutional]
size=1
stride=1
pad=1
filters=7
activation=linear

[yolo]
mask = 2
anchors = 7,9, 12,20, 30,25
classes=2
num=3
"""

CASES = [
    pytest.param(tiny(), 64, id="yolov3-tiny-pjreddie-masks"),
    pytest.param(tiny(masks=("3,4,5", "1,2,3")), 64, id="yolov3-tiny-alexeyab-mask-123"),
    pytest.param(tiny(3, "12,16, 19,36, 40,28, 36,75, 76,55, 72,146", ("4,5,3", "0,1,2"), 0.5), 96,
                 id="custom-3cls-anchors-half-width-96"),
    pytest.param(GROUPS_CFG, 64, id="groups-shortcut-mish-maxpool-s1"),
]


def _load_both(text: str, size: int, tmp_path: Path, seed: int = 0) -> tuple[Darknet, torch.nn.Module]:
    cfg, weights = tmp_path / "user.cfg", tmp_path / "user.weights"
    cfg.write_text(text)
    write_random_weights(str(weights), text, seed)
    ref = Darknet(text).eval()
    ref.load_darknet_weights(str(weights))
    spec = cfg_spec(read_cfg_source(cfg))
    model = spec.create(input_size=(size, size), seed=3)
    spec.load_weights(model, weights)  # the registered loader: the .weights size is checked, then read
    return ref, model


@pytest.mark.parametrize("text, size", CASES)
def test_cfg_network_equals_pytorchyolo_transcription(text: str, size: int, tmp_path: Path) -> None:
    ref, model = _load_both(text, size, tmp_path)
    x = torch.from_numpy(np.random.default_rng(1).random((2, 3, size, size), dtype=np.float32))
    with torch.inference_mode():
        want_boxes, want_scores = boxes_scores(ref(x))
        raws = model.forward_raw(x)
        boxes, scores = (t.double().numpy() for t in model(x))
    assert len(raws) == len(ref.raws)
    for r, w in zip(raws, ref.raws):
        np.testing.assert_allclose(r.numpy(), w.numpy(), rtol=1e-4, atol=1e-4)
    assert boxes.shape == want_boxes.shape and scores.shape == want_scores.shape
    np.testing.assert_allclose(boxes, want_boxes, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(scores, want_scores, rtol=1e-4, atol=1e-6)
    assert want_scores.std() > 1e-3 and np.abs(want_boxes).max() > 1.0  # varied outputs, not a degenerate match


def test_reference_sees_the_maxpool_padding(tmp_path: Path) -> None:
    """With the original's zero padding (not darknet's -FLT_MAX) the stride-1 pool's edge changes the outputs: the
    comparison above would catch a model that padded the wrong way."""
    ref, model = _load_both(tiny(), 64, tmp_path)
    x = torch.from_numpy(np.random.default_rng(1).random((1, 3, 64, 64), dtype=np.float32))
    swap_maxpool_padding_to_zero(ref)
    with torch.inference_mode():
        ref(x)
        raws = model.forward_raw(x)
    assert (raws[0] - ref.raws[0]).abs().max() > 1e-2


def test_cfg_yolov3_tiny_equals_the_builtin_model(tmp_path: Path) -> None:
    """The embedded yolov3-tiny.cfg built as a user's cfg gives the zoo's `yolov3-tiny` outputs for one .weights."""
    cfg, weights = tmp_path / "yolov3-tiny.cfg", tmp_path / "yolov3-tiny.weights"
    cfg.write_text(YOLOV3_TINY_CFG)
    write_random_weights(str(weights), YOLOV3_TINY_CFG, seed=4)
    spec, zoo = cfg_spec(read_cfg_source(cfg)), registry.get("yolov3-tiny")
    assert spec.num_classes == 80 and spec.input_size == (416, 416) and spec.class_names == zoo.class_names
    ours, theirs = spec.create(input_size=(96, 128), seed=1), zoo.create(input_size=(96, 128), seed=2)
    spec.load_weights(ours, weights)
    zoo.load_weights(theirs, weights)
    x = torch.rand(2, 3, 96, 128, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        for a, b in zip(ours(x), theirs(x)):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4)


def test_cfg_yolov2_equals_the_builtin_model(tmp_path: Path) -> None:
    """[region] decode, reorg and route -1,-4 against the zoo's `yolov2`: the same weights, layer by layer."""
    cfg = tmp_path / "yolo-voc.cfg"
    cfg.write_text(YOLOV2_VOC_CFG)
    spec, zoo = cfg_spec(read_cfg_source(cfg)), registry.get("yolov2")
    ours, theirs = spec.create(input_size=(64, 96), seed=1), zoo.create(input_size=(64, 96), seed=2)
    with torch.no_grad():
        for a, b in zip(darknet_layers(ours), darknet_layers(theirs), strict=True):
            for name in ("weight", "bias"):
                if getattr(b.conv, name) is not None:
                    getattr(a.conv, name).copy_(getattr(b.conv, name))
            if b.bn is not None:
                a.bn.load_state_dict(b.bn.state_dict())
                a.bn.running_mean.normal_(0, 0.2)
                b.bn.running_mean.copy_(a.bn.running_mean)
    x = torch.rand(1, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        for a, b in zip(ours(x), theirs(x)):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4)


def test_weights_of_the_wrong_size_are_refused_before_reading(tmp_path: Path) -> None:
    cfg, weights = tmp_path / "user.cfg", tmp_path / "user.weights"
    cfg.write_text(GROUPS_CFG)
    write_random_weights(str(weights), GROUPS_CFG.replace("filters=32", "filters=24"), seed=0)  # 8*32*9 floats fewer
    spec = cfg_spec(read_cfg_source(cfg))
    with pytest.raises(EnginesmithError, match=r"truncated darknet weights .*user.weights: expected 45000 bytes, found 37512"):
        spec.load_weights(spec.create(input_size=(64, 64)), weights)


def darknet_maxpool(x: np.ndarray, size: int, stride: int, padding: int) -> np.ndarray:
    """pjreddie/darknet src/maxpool_layer.c forward_maxpool_layer, loop for loop: out = (w + pad - size)/stride + 1,
    w_offset = h_offset = -pad/2, taps outside the map are -FLT_MAX."""
    n, c, h, w = x.shape
    out_h, out_w = (h + padding - size) // stride + 1, (w + padding - size) // stride + 1
    off = -(padding // 2)
    y = np.empty((n, c, out_h, out_w), dtype=x.dtype)
    for i in range(out_h):
        for j in range(out_w):
            best = np.full((n, c), -np.finfo(np.float32).max, dtype=x.dtype)
            for dn in range(size):
                for dm in range(size):
                    cur_h, cur_w = off + i * stride + dn, off + j * stride + dm
                    if 0 <= cur_h < h and 0 <= cur_w < w:
                        best = np.maximum(best, x[:, :, cur_h, cur_w])
            y[:, :, i, j] = best
    return y


@pytest.mark.parametrize("side, size, stride, padding", [
    (13, 2, 2, None), (13, 2, 1, None), (8, 3, 2, None), (7, 3, 1, 2), (9, 3, 3, 0), (6, 1, 2, None), (10, 5, 2, 3),
])
def test_maxpool_follows_darknet(side: int, size: int, stride: int, padding: int | None) -> None:
    """[maxpool] against maxpool_layer.c on negative-heavy inputs (where zero padding would show)."""
    text = (f"[net]\nwidth={side}\nheight={side}\n[maxpool]\nsize={size}\nstride={stride}\n"
            + (f"padding={padding}\n" if padding is not None else "")
            + "[convolutional]\nfilters=6\nsize=1\nactivation=linear\n[yolo]\nmask=0\nanchors=4,4\nclasses=1\nnum=1\n")
    cfg = cfg_spec_from_text(text)
    model = cfg.create()
    x = torch.from_numpy(np.random.default_rng(0).normal(-1.0, 1.0, (2, 3, side, side)).astype(np.float32))
    with torch.inference_mode():
        got = model.layers[0](x).numpy()
    want = darknet_maxpool(x.numpy(), size, stride, size - 1 if padding is None else padding)
    assert got.shape == want.shape
    np.testing.assert_array_equal(got, want)


def cfg_spec_from_text(text: str):  # noqa: ANN201 - a ModelSpec
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "pool.cfg"
        path.write_text(text)
        return cfg_spec(read_cfg_source(path))
