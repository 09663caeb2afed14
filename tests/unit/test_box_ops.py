"""Shared box ops (enginesmith.models.ops) against slow naive Python references over many seeds,
and against torchvision where it has the op."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torchvision
from torchvision.models.detection._utils import BoxCoder
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList

from enginesmith.models import ops

SEEDS = range(25)


# ---- naive references -------------------------------------------------------------------------

def naive_iou(a, b):
    """IoU of two boxes with float32 scalar arithmetic in box_iou's order."""
    f = np.float32
    iw = max(f(0), f(min(f(a[2]), f(b[2]))) - f(max(f(a[0]), f(b[0]))))
    ih = max(f(0), f(min(f(a[3]), f(b[3]))) - f(max(f(a[1]), f(b[1]))))
    inter = f(iw * ih)
    area_a = f(max(f(0), f(a[2]) - f(a[0])) * max(f(0), f(a[3]) - f(a[1])))
    area_b = f(max(f(0), f(b[2]) - f(b[0])) * max(f(0), f(b[3]) - f(b[1])))
    union = f(f(area_a + area_b) - inter)
    return f(inter / max(union, f(1e-12)))


def naive_nms(boxes, scores, thr):
    order = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))
    keep = []
    for i in order:
        if all(naive_iou(boxes[i], boxes[k]) <= thr for k in keep):
            keep.append(i)
    return keep


def random_boxes(n, gen, scale=100.0):
    xy = torch.rand(n, 2, generator=gen) * scale
    wh = torch.rand(n, 2, generator=gen) * scale / 2 + 1
    return torch.cat((xy, xy + wh), 1)


def boxes_on_threshold(n, thr, gen):
    """torchvision TestNMS's construction: the last box has IoU just above `thr` with the first."""
    boxes = random_boxes(n, gen)
    boxes[-1] = boxes[0]
    x0, _, x1, _ = boxes[-1].tolist()
    t = thr + 1e-5
    boxes[-1, 2] += (x1 - x0) * (1 - t) / t
    return boxes, torch.rand(n, generator=gen)


# ---- IoU --------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", SEEDS)
def test_box_iou_matches_naive_and_torchvision(seed):
    g = torch.Generator().manual_seed(seed)
    a, b = random_boxes(7, g), random_boxes(5, g)
    ours = ops.box_iou(a, b)
    ref = torch.tensor([[naive_iou(x.tolist(), y.tolist()) for y in b] for x in a])
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-6)
    torch.testing.assert_close(ours, torchvision.ops.box_iou(a, b), rtol=1e-6, atol=1e-6)


# ---- NMS --------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("thr", [0.2, 0.5, 0.7])
def test_nms_matches_naive_and_torchvision(seed, thr):
    g = torch.Generator().manual_seed(seed)
    boxes, scores = boxes_on_threshold(60, thr, g)
    ours = ops.nms(boxes, scores, thr)
    assert ours.tolist() == naive_nms(boxes.tolist(), scores.tolist(), thr)
    assert ours.tolist() == torchvision.ops.nms(boxes, scores, thr).tolist()


def test_nms_exactly_on_threshold_keeps_and_just_above_suppresses():
    # IoU(a, b) = 100 / 200 = 0.5 exactly in float32 and float64: kept at thr 0.5 (only IoU > thr suppresses).
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 20.0], [0.0, 0.0, 10.0, 40.0]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    assert ops.box_iou(boxes[:1], boxes[1:2]).item() == 0.5
    assert ops.nms(boxes, scores, 0.5).tolist() == [0, 1, 2] == torchvision.ops.nms(boxes, scores, 0.5).tolist()
    # IoU(b, c) = 0.5, IoU(a, c) = 0.25: at thr 0.49 b is dropped by a, c survives (0.25) then.
    assert ops.nms(boxes, scores, 0.49).tolist() == [0, 2] == torchvision.ops.nms(boxes, scores, 0.49).tolist()
    assert ops.nms(boxes, scores, 0.25).tolist() == [0, 2]
    assert ops.nms(boxes, scores, 0.2499).tolist() == [0]


def test_nms_ties_keep_lower_index_and_empty_input():
    boxes = torch.tensor([[0.0, 0, 10, 10], [0.0, 0, 10, 10], [50.0, 50, 60, 60]])
    assert ops.nms(boxes, torch.tensor([0.5, 0.5, 0.5]), 0.5).tolist() == [0, 2]
    assert ops.nms(torch.zeros(0, 4), torch.zeros(0), 0.5).tolist() == []


@pytest.mark.parametrize("seed", SEEDS)
def test_batched_nms_per_class_and_agnostic(seed):
    g = torch.Generator().manual_seed(seed)
    boxes, scores = boxes_on_threshold(80, 0.5, g)
    classes = torch.randint(0, 4, (80,), generator=g)
    ours = ops.batched_nms(boxes, scores, classes, 0.5)
    # naive: NMS of each class separately, merged by decreasing score
    ref = []
    for c in range(4):
        idx = [i for i in range(80) if int(classes[i]) == c]
        ref += [idx[k] for k in naive_nms(boxes[idx].tolist(), scores[idx].tolist(), 0.5)]
    ref.sort(key=lambda i: (-float(scores[i]), i))
    assert ours.tolist() == ref
    assert ours.tolist() == torchvision.ops.batched_nms(boxes, scores, classes, 0.5).tolist()
    agnostic = ops.batched_nms(boxes, scores, classes, 0.5, class_agnostic=True)
    assert agnostic.tolist() == naive_nms(boxes.tolist(), scores.tolist(), 0.5)
    assert agnostic.tolist() == torchvision.ops.nms(boxes, scores, 0.5).tolist()


# ---- SSD priors ---------------------------------------------------------------------------------

SSD300 = dict(image_size=300, feature_maps=(38, 19, 10, 5, 3, 1), steps=(8, 16, 32, 64, 100, 300),
              min_sizes=(30, 60, 111, 162, 213, 264), max_sizes=(60, 111, 162, 213, 264, 315),
              aspect_ratios=((2,), (2, 3), (2, 3), (2, 3), (2,), (2,)))
SSD512 = dict(image_size=512, feature_maps=(64, 32, 16, 8, 4, 2, 1), steps=(8, 16, 32, 64, 128, 256, 512),
              min_sizes=(35.84, 76.8, 153.6, 230.4, 307.2, 384.0, 460.8),
              max_sizes=(76.8, 153.6, 230.4, 307.2, 384.0, 460.8, 537.6),
              aspect_ratios=((2,), (2, 3), (2, 3), (2, 3), (2, 3), (2,), (2,)))


def naive_priors(image_size, feature_maps, steps, min_sizes, max_sizes, aspect_ratios, clip=True):
    """ssd.pytorch layers/functions/prior_box.py PriorBox.forward, loop for loop."""
    mean = []
    for k, f in enumerate(feature_maps):
        for i in range(f):
            for j in range(f):
                f_k = image_size / steps[k]
                cx, cy = (j + 0.5) / f_k, (i + 0.5) / f_k
                s_k = min_sizes[k] / image_size
                mean += [cx, cy, s_k, s_k]
                s_k_prime = math.sqrt(s_k * (max_sizes[k] / image_size))
                mean += [cx, cy, s_k_prime, s_k_prime]
                for ar in aspect_ratios[k]:
                    mean += [cx, cy, s_k * math.sqrt(ar), s_k / math.sqrt(ar)]
                    mean += [cx, cy, s_k / math.sqrt(ar), s_k * math.sqrt(ar)]
    out = torch.tensor(mean).view(-1, 4)
    return out.clamp(0, 1) if clip else out


@pytest.mark.parametrize("cfg,count", [(SSD300, 8732), (SSD512, 24564)])
@pytest.mark.parametrize("clip", [True, False])
def test_ssd_priors_count_and_values(cfg, count, clip):
    ours = ops.ssd_priors(**cfg, clip=clip)
    assert ours.shape == (count, 4)  # SSD paper: 8732 (SSD300) and 24564 (SSD512) default boxes
    torch.testing.assert_close(ours, naive_priors(**cfg, clip=clip), rtol=0, atol=1e-6)


@pytest.mark.parametrize("seed", range(10))
def test_ssd_priors_random_configs(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 4))
    fm = tuple(int(x) for x in rng.integers(1, 9, n))
    mins = tuple(float(x) for x in rng.uniform(10, 100, n))
    cfg = dict(image_size=int(rng.integers(64, 400)), feature_maps=fm, steps=tuple(int(x) for x in rng.integers(4, 64, n)),
               min_sizes=mins, max_sizes=tuple(m + float(rng.uniform(5, 50)) for m in mins),
               aspect_ratios=tuple((2,) if rng.random() < 0.5 else (2, 3) for _ in range(n)))
    torch.testing.assert_close(ops.ssd_priors(**cfg, clip=False), naive_priors(**cfg, clip=False), rtol=0, atol=1e-6)


# ---- RPN anchors --------------------------------------------------------------------------------

def naive_rpn_anchors(fh, fw, stride, scales, ratios, base_size):
    out = []
    for y in range(fh):
        for x in range(fw):
            for r in ratios:
                for s in scales:
                    size = s * base_size
                    w, h = size / math.sqrt(r), size * math.sqrt(r)
                    out.append([x * stride + round_half_even(-w / 2), y * stride + round_half_even(-h / 2),
                                x * stride + round_half_even(w / 2), y * stride + round_half_even(h / 2)])
    return torch.tensor(out, dtype=torch.float32)


def round_half_even(v):
    return float(torch.tensor(v, dtype=torch.float32).round())


@pytest.mark.parametrize("fh,fw,stride", [(3, 4, 16), (5, 5, 16), (2, 7, 32), (1, 1, 8)])
def test_rpn_anchors_naive_and_torchvision(fh, fw, stride):
    ours = ops.rpn_anchors(fh, fw, stride)
    assert ours.shape == (fh * fw * 9, 4)  # Faster R-CNN: 3 scales x 3 ratios = 9 anchors per location
    torch.testing.assert_close(ours, naive_rpn_anchors(fh, fw, stride, (8, 16, 32), (0.5, 1.0, 2.0), 16), rtol=0, atol=0)
    gen = AnchorGenerator(sizes=((128, 256, 512),), aspect_ratios=((0.5, 1.0, 2.0),))
    images = ImageList(torch.zeros(1, 3, fh * stride, fw * stride), [(fh * stride, fw * stride)])
    tv = gen(images, [torch.zeros(1, 8, fh, fw)])[0]
    torch.testing.assert_close(ours, tv, rtol=0, atol=0)


def test_rpn_anchor_areas_are_the_papers():
    a = ops.rpn_anchors(1, 1)
    areas = ((a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])).reshape(3, 3)  # ratio x scale
    for row in areas:
        torch.testing.assert_close(row, torch.tensor([128.0**2, 256.0**2, 512.0**2]), rtol=0.01, atol=0)


# ---- box coding ---------------------------------------------------------------------------------

def naive_ssd_encode(box, prior, v):
    cx, cy, w, h = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2, box[2] - box[0], box[3] - box[1]
    return [(cx - prior[0]) / (v[0] * prior[2]), (cy - prior[1]) / (v[0] * prior[3]),
            math.log(w / prior[2]) / v[1], math.log(h / prior[3]) / v[1]]


def naive_ssd_decode(loc, prior, v):
    cx, cy = prior[0] + loc[0] * v[0] * prior[2], prior[1] + loc[1] * v[0] * prior[3]
    w, h = prior[2] * math.exp(loc[2] * v[1]), prior[3] * math.exp(loc[3] * v[1])
    return [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]


@pytest.mark.parametrize("seed", SEEDS)
def test_ssd_box_coding_naive_and_round_trip(seed):
    g = torch.Generator().manual_seed(seed)
    boxes = random_boxes(20, g, 1.0)
    priors = ops.xyxy_to_cxcywh(random_boxes(20, g, 1.0))
    enc = ops.encode_boxes(boxes, priors, form="ssd")
    ref = torch.tensor([naive_ssd_encode(b.tolist(), p.tolist(), (0.1, 0.2)) for b, p in zip(boxes, priors)])
    torch.testing.assert_close(enc, ref, rtol=1e-5, atol=1e-5)
    loc = torch.randn(20, 4, generator=g)
    dec = ops.decode_boxes(loc, priors, form="ssd")
    ref = torch.tensor([naive_ssd_decode(l.tolist(), p.tolist(), (0.1, 0.2)) for l, p in zip(loc, priors)])
    torch.testing.assert_close(dec, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ops.decode_boxes(enc, priors, form="ssd"), boxes, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("weights", [(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)])
def test_rcnn_box_coding_matches_torchvision_boxcoder(seed, weights):
    g = torch.Generator().manual_seed(seed)
    boxes, anchors = random_boxes(30, g), random_boxes(30, g)
    coder = BoxCoder(weights)
    enc = ops.encode_boxes(boxes, anchors, form="rcnn", weights=weights)
    torch.testing.assert_close(enc, coder.encode_single(boxes, anchors), rtol=1e-5, atol=1e-5)
    deltas = torch.randn(30, 4, generator=g) * 3  # large enough to hit the log(1000/16) clamp sometimes
    torch.testing.assert_close(ops.decode_boxes(deltas, anchors, form="rcnn", weights=weights),
                               coder.decode_single(deltas, anchors), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(ops.decode_boxes(enc, anchors, form="rcnn", weights=weights), boxes, rtol=1e-5, atol=1e-4)


def test_box_coding_rejects_unknown_form():
    with pytest.raises(ValueError):
        ops.encode_boxes(torch.ones(1, 4), torch.ones(1, 4), form="yolo")


# ---- focal loss ---------------------------------------------------------------------------------

def naive_focal(x, t, alpha, gamma):
    p = 1 / (1 + math.exp(-x))
    p_t = p if t == 1 else 1 - p
    a_t = 1.0 if alpha < 0 else (alpha if t == 1 else 1 - alpha)
    return -a_t * (1 - p_t) ** gamma * math.log(p_t)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("alpha,gamma", [(0.25, 2.0), (0.5, 0.0), (-1.0, 1.0)])
def test_sigmoid_focal_loss(seed, alpha, gamma):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(6, 5, generator=g, dtype=torch.float64) * 3
    t = (torch.rand(6, 5, generator=g) < 0.3).double()
    ours = ops.sigmoid_focal_loss(x, t, alpha, gamma)
    ref = torch.tensor([[naive_focal(a, b, alpha, gamma) for a, b in zip(r, s)] for r, s in zip(x.tolist(), t.tolist())],
                       dtype=torch.float64)
    torch.testing.assert_close(ours, ref, rtol=1e-9, atol=1e-12)
    for red in ("none", "mean", "sum"):
        torch.testing.assert_close(ops.sigmoid_focal_loss(x, t, alpha, gamma, red),
                                   torchvision.ops.sigmoid_focal_loss(x, t, alpha, gamma, red))
    with pytest.raises(ValueError):
        ops.sigmoid_focal_loss(x, t, reduction="max")


# ---- RoI pooling --------------------------------------------------------------------------------

def naive_roi_pool(feat, rois, ph, pw, scale):
    def rnd(v):
        return math.floor(v + 0.5) if v >= 0 else -math.floor(-v + 0.5)

    n, c, h, w = feat.shape
    out = torch.zeros(len(rois), c, ph, pw, dtype=feat.dtype)
    for r, roi in enumerate(rois.tolist()):
        b = int(roi[0])
        x1, y1, x2, y2 = (rnd(v * scale) for v in roi[1:])
        rw, rh = max(x2 - x1 + 1, 1), max(y2 - y1 + 1, 1)
        bw, bh = rw / pw, rh / ph
        for i in range(ph):
            for j in range(pw):
                hs = min(max(math.floor(i * bh) + y1, 0), h)
                he = min(max(math.ceil((i + 1) * bh) + y1, 0), h)
                ws = min(max(math.floor(j * bw) + x1, 0), w)
                we = min(max(math.ceil((j + 1) * bw) + x1, 0), w)
                if he > hs and we > ws:
                    for ch in range(c):
                        out[r, ch, i, j] = max(feat[b, ch, y, x] for y in range(hs, he) for x in range(ws, we))
    return out


@pytest.mark.parametrize("seed", range(12))
def test_roi_pool_naive_and_torchvision(seed):
    g = torch.Generator().manual_seed(seed)
    feat = torch.randn(2, 3, 9, 11, generator=g, dtype=torch.float64)
    scale = [1.0, 0.5, 1 / 16][seed % 3]
    k = 5
    xy = (torch.rand(k, 2, generator=g, dtype=torch.float64) * 1.3 - 0.15) * torch.tensor([11.0, 9.0]) / scale
    wh = torch.rand(k, 2, generator=g, dtype=torch.float64) * torch.tensor([11.0, 9.0]) / scale
    rois = torch.cat((torch.randint(0, 2, (k, 1), generator=g).double(), xy, xy + wh), 1)
    size = [(2, 2), (3, 4), (7, 7)][seed % 3]
    ours = ops.roi_pool(feat, rois, size, scale)
    torch.testing.assert_close(ours, naive_roi_pool(feat, rois, *size, scale), rtol=0, atol=0)
    torch.testing.assert_close(ours, torchvision.ops.roi_pool(feat, rois, size, scale), rtol=0, atol=0)
