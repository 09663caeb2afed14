"""YOLOv3-tiny (and the edge detectors built on its cfg) against an independent darknet transcription.

The reference here shares no code with enginesmith's models: it parses the published cfg text (pjreddie/darknet
`cfg/yolov3-tiny.cfg`, AlexeyAB/darknet `cfg/yolov3-tiny_3l.cfg`, copied below), reads a `.weights` file written by
this test's own writer, and runs the network layer by layer as darknet's C does:

- `load_weights_upto` / `load_convolutional_weights` (src/parser.c): header major, minor, revision (int32), `seen`
  (size_t when major*10+minor >= 2); per convolutional layer in cfg order: biases[n], then with batch_normalize
  scales[n], rolling_mean[n], rolling_variance[n], then weights[n*c*size*size];
- `forward_convolutional_layer` + `forward_batchnorm_layer` (src/convolutional_layer.c, src/batchnorm_layer.c):
  padding = size/2 when pad=1; `normalize_cpu` x = (x - mean) / (sqrt(var) + .000001f), then scale, then bias;
  `leaky_activate` x > 0 ? x : .1*x (src/activations.h);
- `forward_maxpool_layer` (src/maxpool_layer.c): padding defaults to size-1 (`parse_maxpool`), out = (w + pad -
  size)/stride + 1, window offset -pad/2, cells outside the input are -FLT_MAX: the stride-1 maxpool of layer 11
  keeps 13x13 at 416 by padding right/bottom only;
- `upsample_cpu` (src/blas.c), `parse_route` (negative layer indices relative to the route);
- `forward_yolo_layer` (logistic on x, y, objectness and classes), `get_yolo_box` and `get_yolo_detections`
  (src/yolo_layer.c): b.x = (col + x) / l.w, b.w = exp(tw) * biases[2*mask[n]] / net.w, prob = objectness * class,
  entries ordered anchor n, then row, then column.

The model under test loads the same `.weights` file through its registered loader, so the check covers the layer
table, the weight order, the maxpool padding, both scales' anchors and masks and the decode at once.
"""

from __future__ import annotations

import math
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from enginesmith.models import registry
from reference_helpers import cfg_sections

# pjreddie/darknet cfg/yolov3-tiny.cfg at f6afaabcdf85f77e7aff2ec55c020c0e297c77f9 (file last changed in f86901f6,
# 2018-08-15); training options of [net] left out, every layer section verbatim.
YOLOV3_TINY_CFG = """
[net]
width=416
height=416
channels=3

[convolutional]
batch_normalize=1
filters=16
size=3
stride=1
pad=1
activation=leaky

[maxpool]
size=2
stride=2

[convolutional]
batch_normalize=1
filters=32
size=3
stride=1
pad=1
activation=leaky

[maxpool]
size=2
stride=2

[convolutional]
batch_normalize=1
filters=64
size=3
stride=1
pad=1
activation=leaky

[maxpool]
size=2
stride=2

[convolutional]
batch_normalize=1
filters=128
size=3
stride=1
pad=1
activation=leaky

[maxpool]
size=2
stride=2

[convolutional]
batch_normalize=1
filters=256
size=3
stride=1
pad=1
activation=leaky

[maxpool]
size=2
stride=2

[convolutional]
batch_normalize=1
filters=512
size=3
stride=1
pad=1
activation=leaky

[maxpool]
size=2
stride=1

[convolutional]
batch_normalize=1
filters=1024
size=3
stride=1
pad=1
activation=leaky

###########

[convolutional]
batch_normalize=1
filters=256
size=1
stride=1
pad=1
activation=leaky

[convolutional]
batch_normalize=1
filters=512
size=3
stride=1
pad=1
activation=leaky

[convolutional]
size=1
stride=1
pad=1
filters=255
activation=linear

[yolo]
mask = 3,4,5
anchors = 10,14,  23,27,  37,58,  81,82,  135,169,  344,319
classes=80
num=6
jitter=.3
ignore_thresh = .7
truth_thresh = 1
random=1

[route]
layers = -4

[convolutional]
batch_normalize=1
filters=128
size=1
stride=1
pad=1
activation=leaky

[upsample]
stride=2

[route]
layers = -1, 8

[convolutional]
batch_normalize=1
filters=256
size=3
stride=1
pad=1
activation=leaky

[convolutional]
size=1
stride=1
pad=1
filters=255
activation=linear

[yolo]
mask = 0,1,2
anchors = 10,14,  23,27,  37,58,  81,82,  135,169,  344,319
classes=80
num=6
jitter=.3
ignore_thresh = .7
truth_thresh = 1
random=1
"""

# AlexeyAB/darknet cfg/yolov3-tiny_3l.cfg at 59596d7880f6504768df41d6daa586f5cb2b932f (file last changed in
# 29f509e2, 2019-01-01): the yolov3-tiny layers 0-23 above (its filters=21 / classes=2 are its own dataset's),
# then this third scale, verbatim.
TINY_3L_TAIL = """
[route]
layers = -3

[convolutional]
batch_normalize=1
filters=128
size=1
stride=1
pad=1
activation=leaky

[upsample]
stride=2

[route]
layers = -1, 6

[convolutional]
batch_normalize=1
filters=128
size=3
stride=1
pad=1
activation=leaky

[convolutional]
size=1
stride=1
pad=1
filters=255
activation=linear

[yolo]
mask = 0,1,2
anchors = 10,14,  23,27,  37,58,  81,82,  135,169,  344,319
classes=80
num=6
"""
AB_3L_ANCHORS = "4,7, 7,15, 13,25,   25,42, 41,67, 75,94,   91,162, 158,205, 250,332"  # as published (classes=2)
AB_3L_MASKS = ("6,7,8", "3,4,5", "0,1,2")


def tiny_3l_cfg(anchors: str) -> str:
    """yolov3-tiny_3l.cfg: yolov3-tiny's 24 layers with the three masks 6,7,8 / 3,4,5 / 0,1,2 over 9 anchors."""
    text = YOLOV3_TINY_CFG.replace("mask = 3,4,5", f"mask = {AB_3L_MASKS[0]}", 1)
    text = text.replace("mask = 0,1,2", f"mask = {AB_3L_MASKS[1]}", 1) + TINY_3L_TAIL
    return text.replace("num=6", "num=9").replace("10,14,  23,27,  37,58,  81,82,  135,169,  344,319", anchors)


# The edge detectors' anchors are k-means fits to the offline set (models/edge.py), not published values; they are
# written here as plain data (w, h in input pixels at 256), smallest area first, so the reference places them by the
# published masks, not by enginesmith's tables.
EDGE_TINY_ANCHORS = "6,11, 11,18, 23,24, 17,36, 32,51, 55,81"
EDGE_3L_ANCHORS = "5,11, 11,11, 8,17, 13,27, 20,20, 20,43, 33,35, 37,64, 67,86"


# ------------------------------------------------------------------------------ the darknet transcription
def with_classes(text: str, classes: int) -> str:
    """The cfg for `classes` classes, as a user edits it: classes=C in each [yolo], filters=3*(C+5) before it."""
    return text.replace("classes=80", f"classes={classes}").replace("filters=255", f"filters={3 * (classes + 5)}")


def write_weights(path: Path, sections: list[tuple[str, dict[str, str]]], seed: int) -> None:
    """A darknet .weights file for `sections` with random but well-scaled values, in the order of darknet's
    load_convolutional_weights."""
    rng = np.random.default_rng(seed)
    chunks = [struct.pack("<3iq", 0, 2, 0, 12345)]  # major 0, minor 2: seen is 64-bit
    c = int(sections[0][1].get("channels", 3))
    channels: list[int] = []
    for i, (kind, o) in enumerate(sections[1:]):
        if kind == "convolutional":
            n, size = int(o["filters"]), int(o["size"])
            bn = int(o.get("batch_normalize", 0))
            chunks.append(rng.normal(0, 0.1, n).astype("<f4").tobytes())  # biases
            if bn:
                chunks.append(rng.uniform(0.6, 1.4, n).astype("<f4").tobytes())  # scales
                chunks.append(rng.normal(0, 0.2, n).astype("<f4").tobytes())  # rolling_mean
                chunks.append(rng.uniform(0.5, 1.5, n).astype("<f4").tobytes())  # rolling_variance
            std = (1.0 if bn else 0.5) * math.sqrt(2.0 / (c * size * size))
            chunks.append(rng.normal(0, std, n * c * size * size).astype("<f4").tobytes())
            c = n
        elif kind == "route":
            c = sum(channels[j if j >= 0 else i + j] for j in (int(t) for t in o["layers"].split(",")))
        channels.append(c)
    path.write_bytes(b"".join(chunks))


def darknet_forward(sections: list[tuple[str, dict[str, str]]], weights: Path, x: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Run the cfg on x [N, 3, H, W] (float64) with the .weights file; return darknet's detections of every [yolo]
    layer in cfg order as boxes [N, A, 4] (x1, y1, x2, y2 input pixels) and scores [N, A, C] (objectness * class)."""
    data = weights.read_bytes()
    major, minor, _ = struct.unpack("<3i", data[:12])
    offset = 12 + (8 if (major * 10 + minor) >= 2 and major < 1000 and minor < 1000 else 4)
    floats = np.frombuffer(data[offset:], dtype="<f4").astype(np.float64)
    pos = 0

    def take(n: int) -> np.ndarray:
        nonlocal pos
        pos += n
        return floats[pos - n : pos]

    net_h, net_w = x.shape[2], x.shape[3]
    outputs: list[np.ndarray] = []
    boxes_out: list[np.ndarray] = []
    scores_out: list[np.ndarray] = []
    for i, (kind, o) in enumerate(sections[1:]):
        if kind == "convolutional":
            n, size, stride = int(o["filters"]), int(o["size"]), int(o.get("stride", 1))
            pad = size // 2 if int(o.get("pad", 0)) else int(o.get("padding", 0))
            c = x.shape[1]
            biases = take(n)
            bn = int(o.get("batch_normalize", 0))
            if bn:
                scales, mean, var = take(n), take(n), take(n)
            w = take(n * c * size * size).reshape(n, c, size, size)
            y = F.conv2d(torch.from_numpy(x), torch.from_numpy(w), stride=stride, padding=pad).numpy()
            if bn:
                y = (y - mean[None, :, None, None]) / (np.sqrt(var)[None, :, None, None] + 0.000001)
                y = y * scales[None, :, None, None]
            y = y + biases[None, :, None, None]
            if o["activation"] == "leaky":
                y = np.where(y > 0, y, 0.1 * y)
            x = y
        elif kind == "maxpool":
            stride = int(o.get("stride", 1))
            size = int(o.get("size", stride))
            pad = int(o.get("padding", size - 1))
            h, w = x.shape[2], x.shape[3]
            out_h, out_w = (h + pad - size) // stride + 1, (w + pad - size) // stride + 1
            off = -(pad // 2)  # C's -l.pad/2 truncates toward zero
            y = np.full((x.shape[0], x.shape[1], out_h, out_w), -np.finfo(np.float32).max)
            for n_ in range(size):
                for m_ in range(size):
                    rows = off + np.arange(out_h) * stride + n_
                    cols = off + np.arange(out_w) * stride + m_
                    valid = ((rows >= 0) & (rows < h))[:, None] & ((cols >= 0) & (cols < w))[None, :]
                    vals = x[:, :, np.clip(rows, 0, h - 1)][:, :, :, np.clip(cols, 0, w - 1)]
                    y = np.maximum(y, np.where(valid, vals, -np.finfo(np.float32).max))
            x = y
        elif kind == "upsample":
            s = int(o["stride"])
            h, w = x.shape[2], x.shape[3]
            jj, ii = np.arange(h * s) // s, np.arange(w * s) // s  # in_index = (j/stride)*w + i/stride
            x = x[:, :, jj][:, :, :, ii]
        elif kind == "route":
            idx = [int(t) for t in o["layers"].split(",")]
            x = np.concatenate([outputs[j if j >= 0 else i + j] for j in idx], axis=1)
        elif kind == "yolo":
            mask = [int(t) for t in o["mask"].split(",")]
            biases = [float(t) for t in o["anchors"].split(",")]
            classes = int(o["classes"])
            nb, _, lh, lw = x.shape
            logistic = lambda v: 1.0 / (1.0 + np.exp(-v))  # noqa: E731
            boxes = np.zeros((nb, len(mask) * lh * lw, 4))
            scores = np.zeros((nb, len(mask) * lh * lw, classes))
            for b in range(nb):
                for n_ in range(len(mask)):
                    e = x[b, n_ * (4 + 1 + classes) : (n_ + 1) * (4 + 1 + classes)]  # entry_index: n*w*h*(4+C+1)
                    for row in range(lh):
                        for col in range(lw):
                            bx = (col + logistic(e[0, row, col])) / lw
                            by = (row + logistic(e[1, row, col])) / lh
                            bw = math.exp(e[2, row, col]) * biases[2 * mask[n_]] / net_w
                            bh = math.exp(e[3, row, col]) * biases[2 * mask[n_] + 1] / net_h
                            k = n_ * lh * lw + row * lw + col
                            cx, cy, ww, hh = bx * net_w, by * net_h, bw * net_w, bh * net_h
                            boxes[b, k] = (cx - ww / 2, cy - hh / 2, cx + ww / 2, cy + hh / 2)
                            scores[b, k] = logistic(e[4, row, col]) * logistic(e[5:, row, col])
            boxes_out.append(boxes)
            scores_out.append(scores)
        else:  # pragma: no cover - the cfgs above use nothing else
            raise AssertionError(f"unexpected layer {kind}")
        outputs.append(x)
    assert pos == len(floats), f"{len(floats) - pos} floats of the .weights file were not used"
    return np.concatenate(boxes_out, axis=1), np.concatenate(scores_out, axis=1)


# ------------------------------------------------------------------------------ the checks
CASES = [
    # model, cfg text, classes, input (H, W)
    pytest.param("yolov3-tiny", YOLOV3_TINY_CFG, 80, (64, 64), id="yolov3-tiny-80cls-64"),
    pytest.param("yolov3-tiny", YOLOV3_TINY_CFG, 3, (96, 160), id="yolov3-tiny-3cls-96x160"),
    pytest.param("yolov3-tiny-256", YOLOV3_TINY_CFG.replace(
        "10,14,  23,27,  37,58,  81,82,  135,169,  344,319", EDGE_TINY_ANCHORS), 16, (128, 96), id="yolov3-tiny-256"),
    pytest.param("yolov3-tiny-3l-256", tiny_3l_cfg(EDGE_3L_ANCHORS), 16, (96, 128), id="yolov3-tiny-3l-256"),
]


@pytest.mark.parametrize("name, cfg, classes, size", CASES)
def test_model_equals_darknet_transcription(name: str, cfg: str, classes: int, size: tuple[int, int],
                                            tmp_path: Path) -> None:
    sections = cfg_sections(with_classes(cfg, classes))
    weights = tmp_path / "random.weights"
    write_weights(weights, sections, seed=sum(size) + classes)
    spec = registry.get(name)
    model = spec.create(num_classes=classes, input_size=size, seed=5)
    spec.load_weights(model, weights)  # the registered loader, as `build-engine --weights x.weights` uses it

    x = np.random.default_rng(7).random((2, 3, *size))
    want_boxes, want_scores = darknet_forward(sections, weights, x)
    with torch.inference_mode():
        boxes, scores = (t.double().numpy() for t in model(torch.from_numpy(x).float()))
    assert boxes.shape == want_boxes.shape and scores.shape == want_scores.shape
    # float32 through 13-16 conv layers vs float64, and darknet's BN epsilon (sqrt(var) + 1e-6) vs torch's
    # (sqrt(var + 1e-5)): relative differences of ~1e-5 per layer
    np.testing.assert_allclose(scores, want_scores, rtol=2e-3, atol=2e-5)
    np.testing.assert_allclose(boxes, want_boxes, rtol=2e-3, atol=2e-3 * float(np.abs(want_boxes).max()))
    # the check can tell the scales apart: the two (three) scales give clearly different boxes
    assert np.abs(boxes).max() > 1.0 and want_scores.std() > 1e-3


def test_transcription_sees_a_swapped_scale(tmp_path: Path) -> None:
    """The reference is sensitive to what the model must get right: with the two masks swapped (large anchors on
    the fine scale) its boxes move by tens of pixels, far beyond the tolerance above."""
    sections = cfg_sections(YOLOV3_TINY_CFG)
    weights = tmp_path / "w.weights"
    write_weights(weights, sections, seed=1)
    x = np.random.default_rng(2).random((1, 3, 64, 64))
    boxes, _ = darknet_forward(sections, weights, x)
    swapped = cfg_sections(YOLOV3_TINY_CFG.replace("mask = 3,4,5", "mask = X").replace("mask = 0,1,2", "mask = 3,4,5")
                             .replace("mask = X", "mask = 0,1,2"))
    boxes_swapped, _ = darknet_forward(swapped, weights, x)
    assert np.abs(boxes_swapped - boxes).max() > 10.0


def test_published_cfg_has_the_layer_count_darknet_prints() -> None:
    """darknet numbers yolov3-tiny's layers 0..23 (yolo at 16 and 23; route 20 reads layer 8); tiny_3l's 0..30."""
    secs = cfg_sections(YOLOV3_TINY_CFG)[1:]
    assert len(secs) == 24 and [i for i, (k, _) in enumerate(secs) if k == "yolo"] == [16, 23]
    assert secs[20] == ("route", {"layers": "-1, 8"}) and secs[8][1]["filters"] == "256"
    secs3 = cfg_sections(tiny_3l_cfg(AB_3L_ANCHORS))[1:]
    assert len(secs3) == 31 and [i for i, (k, _) in enumerate(secs3) if k == "yolo"] == [16, 23, 30]
    assert secs3[27] == ("route", {"layers": "-1, 6"}) and secs3[6][1]["filters"] == "128"
