"""The training losses against naive per-box Python references, and their invariants."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from enginesmith.models.ops import ssd_priors
from enginesmith.training.losses import (YoloLossWeights, classification_loss, focal_loss, hard_negative_mask,
                                         multibox_loss, yolo_loss)

# ------------------------------------------------------------------------------------------ helpers


def iou_py(a, b) -> float:
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(0.0, iw) * max(0.0, ih)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def giou_py(a, b) -> float:
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(0.0, iw) * max(0.0, ih)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    hull = (max(a[2], b[2]) - min(a[0], b[0])) * (max(a[3], b[3]) - min(a[1], b[1]))
    return inter / union - (hull - union) / hull


def sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def bce(x: float, t: float) -> float:
    p = sig(x)
    return -(t * math.log(p) + (1 - t) * math.log(1 - p))


def random_targets(rng: np.random.Generator, n_images: int, size: float, num_classes: int, kmin=1, kmax=4):
    out = []
    for _ in range(n_images):
        k = int(rng.integers(kmin, kmax + 1))
        rows = []
        for _ in range(k):
            w, h = rng.uniform(4, size * 0.6, 2)
            cx, cy = rng.uniform(w / 2, size - w / 2), rng.uniform(h / 2, size - h / 2)
            rows.append([int(rng.integers(num_classes)), cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])
        out.append(torch.tensor(rows, dtype=torch.float32).reshape(-1, 5))
    return out


# ------------------------------------------------------------------------------------------ YOLOv3

ANCHORS = [torch.tensor([[30.0, 28.0], [40.0, 50.0], [60.0, 44.0]]), torch.tensor([[6.0, 8.0], [12.0, 10.0], [14.0, 22.0]])]
STRIDES = [32.0, 16.0]
GRIDS = [(2, 2), (4, 4)]  # a 64x64 input


def yolo_naive(raws, targets, anchors, strides, num_classes, ignore_iou=0.5):
    """Per-truth assignment and per-prediction loss terms, in plain Python floats."""
    n = raws[0].shape[0]
    flat = [(s, a) for s in range(len(anchors)) for a in range(len(anchors[s]))]
    assigned = {}
    for b, t in enumerate(targets):
        for row in t.tolist():
            c, x1, y1, x2, y2 = row
            w, h = x2 - x1, y2 - y1
            best, best_iou = None, -1.0
            for s, a in flat:
                aw, ah = anchors[s][a].tolist()
                inter = min(w, aw) * min(h, ah)
                iou = inter / (w * h + aw * ah - inter)
                if iou > best_iou:
                    best, best_iou = (s, a), iou
            s, a = best
            gh, gw = raws[s].shape[2], raws[s].shape[3]
            i = min(gw - 1, max(0, int(math.floor((x1 + x2) / 2 / strides[s]))))
            j = min(gh - 1, max(0, int(math.floor((y1 + y2) / 2 / strides[s]))))
            assigned[(b, s, a, j, i)] = row  # a later truth overwrites
    box = obj = noobj = cls = 0.0
    ignored = 0
    for s, raw in enumerate(raws):
        na = len(anchors[s])
        gh, gw = raw.shape[2], raw.shape[3]
        p = raw.reshape(n, na, 5 + num_classes, gh, gw)
        for b in range(n):
            gts = targets[b].tolist()
            for a in range(na):
                aw, ah = anchors[s][a].tolist()
                for j in range(gh):
                    for i in range(gw):
                        v = p[b, a, :, j, i].tolist()
                        cx, cy = (sig(v[0]) + i) * strides[s], (sig(v[1]) + j) * strides[s]
                        w, h = math.exp(v[2]) * aw, math.exp(v[3]) * ah
                        pb = (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
                        key = (b, s, a, j, i)
                        if key in assigned:
                            row = assigned[key]
                            box += 1 - giou_py(pb, row[1:])
                            obj += bce(v[4], 1.0)
                            cls += sum(bce(v[5 + k], 1.0 if k == int(row[0]) else 0.0) for k in range(num_classes))
                        else:
                            best = max((iou_py(pb, g[1:]) for g in gts), default=0.0)
                            if best > ignore_iou:
                                ignored += 1
                            else:
                                noobj += bce(v[4], 0.0)
    return {"box": box / n, "obj": obj / n, "noobj": noobj / n, "cls": cls / n, "ignored": ignored,
            "num_pos": len(assigned)}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_yolo_loss_matches_naive_reference(seed) -> None:
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    c = 3
    raws = [torch.randn(2, 3 * (5 + c), gh, gw) * 0.7 for gh, gw in GRIDS]
    targets = random_targets(rng, 2, 64.0, c)
    # two truths of one image on the same anchor and cell: the later one must win
    first = targets[0][0].clone()
    second = first.clone()
    second[0] = (first[0] + 1) % c
    second[1:] += 0.5
    targets[0] = torch.cat((targets[0], first[None], second[None]))
    ref = yolo_naive(raws, targets, ANCHORS, STRIDES, c)
    got = yolo_loss(raws, targets, ANCHORS, STRIDES, c, YoloLossWeights(box=1, obj=1, noobj=1, cls=1))
    for k in ("box", "obj", "noobj", "cls"):
        assert float(got[k]) == pytest.approx(ref[k], rel=1e-4, abs=1e-5), k
    assert float(got["loss"]) == pytest.approx(ref["box"] + ref["obj"] + ref["noobj"] + ref["cls"], rel=1e-4)
    assert int(got["num_pos"]) == ref["num_pos"]


def test_yolo_naive_case_exercises_the_ignore_rule() -> None:
    """Predictions placed on the truths (but not assigned to them) must be ignored, not pushed to 0."""
    c = 2
    raws = [torch.zeros(1, 3 * (5 + c), gh, gw) for gh, gw in GRIDS]
    # truth 30x28 centred in stride-32 cell (0, 0): anchor 0 of scale 0 is assigned; anchor 2 of the same
    # cell decodes to 60x44 at the same centre (IoU 0.32, not ignored); scale-1 anchors are smaller.
    t = [torch.tensor([[1.0, 1.0, 2.0, 31.0, 30.0]])]
    # make anchor 1 of cell (0, 0) predict exactly the truth box too -> IoU 1 > 0.5 -> ignored
    raws[0][0, 1 * (5 + c) + 2, 0, 0] = math.log(30.0 / 40.0)
    raws[0][0, 1 * (5 + c) + 3, 0, 0] = math.log(28.0 / 50.0)
    raws[0][0, 1 * (5 + c) + 4, 0, 0] = 3.0  # a confident objectness that the loss must leave alone
    ref = yolo_naive(raws, t, ANCHORS, STRIDES, c)
    assert ref["ignored"] == 1
    got = yolo_loss(raws, t, ANCHORS, STRIDES, c)
    assert float(got["noobj"]) == pytest.approx(ref["noobj"], rel=1e-5)
    # without the ignore rule the confident prediction would add bce(3, 0) ~ 3.05
    no_ignore = yolo_loss(raws, t, ANCHORS, STRIDES, c, YoloLossWeights(ignore_iou=1.01))
    assert float(no_ignore["noobj"]) - float(got["noobj"]) == pytest.approx(bce(3.0, 0.0), rel=1e-4)


def test_yolo_perfect_predictions_give_zero_box_loss() -> None:
    rng = np.random.default_rng(5)
    c = 4
    targets = random_targets(rng, 3, 64.0, c, 1, 3)
    raws = [torch.randn(3, 3 * (5 + c), gh, gw) for gh, gw in GRIDS]
    before = yolo_loss(raws, targets, ANCHORS, STRIDES, c)
    # write the exact inverse of the decoding of each truth at its best anchor / cell
    flat = [(s, a) for s in range(2) for a in range(3)]
    for b, t in enumerate(targets):
        for c_, x1, y1, x2, y2 in t.tolist():
            w, h = x2 - x1, y2 - y1
            ious = []
            for s, a in flat:
                aw, ah = ANCHORS[s][a].tolist()
                inter = min(w, aw) * min(h, ah)
                ious.append(inter / (w * h + aw * ah - inter))
            s, a = flat[int(np.argmax(ious))]
            st = STRIDES[s]
            fx, fy = (x1 + x2) / 2 / st, (y1 + y2) / 2 / st
            i, j = int(fx), int(fy)
            base = a * (5 + c)
            raws[s][b, base + 0, j, i] = math.log((fx - i) / (1 - (fx - i)))
            raws[s][b, base + 1, j, i] = math.log((fy - j) / (1 - (fy - j)))
            raws[s][b, base + 2, j, i] = math.log(w / ANCHORS[s][a, 0].item())
            raws[s][b, base + 3, j, i] = math.log(h / ANCHORS[s][a, 1].item())
    after = yolo_loss(raws, targets, ANCHORS, STRIDES, c)
    assert float(before["box"]) > 0.1
    assert float(after["box"]) < 1e-4


def test_yolo_no_targets_only_noobj() -> None:
    raws = [torch.randn(2, 3 * 7, gh, gw) for gh, gw in GRIDS]
    out = yolo_loss(raws, [torch.zeros(0, 5), torch.zeros(0, 5)], ANCHORS, STRIDES, 2)
    assert float(out["box"]) == 0 and float(out["cls"]) == 0 and float(out["obj"]) == 0
    expected = sum(bce(float(v), 0.0) for r in raws for v in r.reshape(2, 3, 7, *r.shape[2:])[:, :, 4].flatten()) / 2
    assert float(out["noobj"]) == pytest.approx(expected, rel=1e-5)


# ------------------------------------------------------------------------------------------ SSD


def small_priors() -> torch.Tensor:
    return ssd_priors(64, (4, 2), (16, 32), (16.0, 32.0), (32.0, 48.0), ((2,), (2,)), clip=True)  # [96, 4]


def multibox_naive(loc, conf, targets, priors, size, threshold=0.5, ratio=3, variances=(0.1, 0.2)):
    n, p, _ = loc.shape
    pri = priors.tolist()
    pri_xyxy = [(cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2) for cx, cy, w, h in pri]
    loc_sum = conf_sum = 0.0
    total_pos = 0
    negs = []
    for b in range(n):
        gts = [[r[0]] + [v / size for v in r[1:]] for r in targets[b].tolist()]
        match = [None] * p
        over = [0.0] * p
        for k in range(p):
            best, bi = -1.0, None
            for g, row in enumerate(gts):
                iou = iou_py(pri_xyxy[k], row[1:])
                if iou > best:
                    best, bi = iou, g
            over[k], match[k] = best, bi
        for g, row in enumerate(gts):
            ious = [iou_py(pri_xyxy[k], row[1:]) for k in range(p)]
            k = int(np.argmax(ious))
            over[k], match[k] = 2.0, g
        labels = [0] * p
        ce = []
        for k in range(p):
            logits = conf[b, k].tolist()
            lse = math.log(sum(math.exp(v) for v in logits))
            if gts and over[k] > threshold:
                row = gts[match[k]]
                labels[k] = int(row[0]) + 1
                x1, y1, x2, y2 = row[1:]
                cx, cy, w, h = pri[k]
                t = [((x1 + x2) / 2 - cx) / (variances[0] * w), ((y1 + y2) / 2 - cy) / (variances[0] * h),
                     math.log((x2 - x1) / w) / variances[1], math.log((y2 - y1) / h) / variances[1]]
                for d, tv in zip(loc[b, k].tolist(), t):
                    e = abs(d - tv)
                    loc_sum += 0.5 * e * e if e < 1 else e - 0.5
            ce.append(lse - logits[labels[k]])
        pos = [k for k in range(p) if labels[k] > 0]
        neg = sorted((k for k in range(p) if labels[k] == 0), key=lambda k: -ce[k])
        take = min(ratio * len(pos), len(neg))
        conf_sum += sum(ce[k] for k in pos) + sum(ce[k] for k in neg[:take])
        total_pos += len(pos)
        negs.append(take)
    d = max(1, total_pos)
    return {"loc": loc_sum / d, "conf": conf_sum / d, "num_pos": total_pos, "num_neg": sum(negs)}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_multibox_loss_matches_naive_reference(seed) -> None:
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    priors = small_priors()
    p = priors.shape[0]
    c = 3
    targets = random_targets(rng, 3, 64.0, c, 1, 3)
    targets[2] = torch.zeros(0, 5)  # an image without objects: no positives, no negatives taken
    loc, conf = torch.randn(3, p, 4), torch.randn(3, p, c + 1) * 2
    ref = multibox_naive(loc, conf, targets, priors, 64.0)
    got = multibox_loss(loc, conf, targets, priors, (64, 64))
    assert int(got["num_pos"]) == ref["num_pos"] > 0
    assert int(got["num_neg"]) == ref["num_neg"]
    assert float(got["loc"]) == pytest.approx(ref["loc"], rel=1e-4)
    assert float(got["conf"]) == pytest.approx(ref["conf"], rel=1e-4)
    assert float(got["loss"]) == pytest.approx(ref["loc"] + ref["conf"], rel=1e-4)


def test_multibox_perfect_offsets_give_zero_loc_loss() -> None:
    from enginesmith.models.ops import encode_boxes
    from enginesmith.training.losses import ssd_match

    priors = small_priors()
    targets = random_targets(np.random.default_rng(3), 2, 64.0, 2, 2, 3)
    loc = torch.randn(2, priors.shape[0], 4)
    conf = torch.randn(2, priors.shape[0], 3)
    assert float(multibox_loss(loc, conf, targets, priors, (64, 64))["loc"]) > 0.1
    for b, t in enumerate(targets):
        idx, pos = ssd_match(t[:, 1:] / 64.0, priors)
        enc = encode_boxes(t[idx, 1:] / 64.0, priors, form="ssd")
        loc[b, pos] = enc[pos]
    assert float(multibox_loss(loc, conf, targets, priors, (64, 64))["loc"]) < 1e-6


def test_hard_negative_count_is_three_per_positive_capped() -> None:
    torch.manual_seed(0)
    loss = torch.rand(3, 20)
    positive = torch.zeros(3, 20, dtype=torch.bool)
    positive[0, [1, 4]] = True  # 2 positives -> 6 negatives
    positive[1, :7] = True  # 7 positives -> 21 wanted, only 13 negatives exist
    # image 2: no positives -> no negatives
    mask = hard_negative_mask(loss, positive, 3.0)
    assert mask.sum(1).tolist() == [6, 13, 0]
    assert not (mask & positive).any()
    # the kept negatives are the highest-loss ones
    neg0 = sorted([k for k in range(20) if k not in (1, 4)], key=lambda k: -float(loss[0, k]))[:6]
    assert sorted(torch.nonzero(mask[0]).flatten().tolist()) == sorted(neg0)


# ------------------------------------------------------------------------------------------ focal


def focal_naive(cls_logits, reg, targets, anchors, fg=0.5, bg=0.4, alpha=0.25, gamma=2.0):
    n, a, c = cls_logits.shape
    anc = anchors.tolist()
    cls_total = box_total = 0.0
    for b in range(n):
        gts = targets[b].tolist()
        match, state = [None] * a, ["neg"] * a
        for k in range(a):
            ious = [iou_py(anc[k], g[1:]) for g in gts]
            best = max(ious, default=0.0)
            if best >= fg:
                match[k], state[k] = int(np.argmax(ious)), "pos"
            elif best >= bg:
                state[k] = "ignore"
        for g, row in enumerate(gts):
            k = int(np.argmax([iou_py(anc[kk], row[1:]) for kk in range(a)]))
            match[k], state[k] = g, "pos"
        npos = sum(s == "pos" for s in state)
        cls_sum = box_sum = 0.0
        for k in range(a):
            if state[k] == "ignore":
                continue
            for j in range(c):
                x = float(cls_logits[b, k, j])
                p = sig(x)
                t = 1.0 if state[k] == "pos" and int(gts[match[k]][0]) == j else 0.0
                if t:
                    cls_sum += -alpha * (1 - p) ** gamma * math.log(p)
                else:
                    cls_sum += -(1 - alpha) * p ** gamma * math.log(1 - p)
            if state[k] == "pos":
                x1, y1, x2, y2 = gts[match[k]][1:]
                ax1, ay1, ax2, ay2 = anc[k]
                aw, ah = ax2 - ax1, ay2 - ay1
                t = [((x1 + x2) / 2 - (ax1 + ax2) / 2) / aw, ((y1 + y2) / 2 - (ay1 + ay2) / 2) / ah,
                     math.log((x2 - x1) / aw), math.log((y2 - y1) / ah)]
                box_sum += sum(abs(float(d) - tv) for d, tv in zip(reg[b, k], t))
        cls_total += cls_sum / max(1, npos)
        box_total += box_sum / max(1, npos)
    return {"cls": cls_total / n, "box": box_total / n}


@pytest.mark.parametrize("seed", [0, 1])
def test_focal_loss_matches_naive_reference(seed) -> None:
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    # anchors on a 4x4 grid of 16 px, three sizes each
    anchors = []
    for j in range(4):
        for i in range(4):
            cx, cy = 8 + 16 * i, 8 + 16 * j
            for s in (12.0, 24.0, 40.0):
                anchors.append([cx - s / 2, cy - s / 2, cx + s / 2, cy + s / 2])
    anchors = torch.tensor(anchors)
    targets = random_targets(rng, 2, 64.0, 3, 1, 3)
    cls_logits = torch.randn(2, len(anchors), 3) - 2
    reg = torch.randn(2, len(anchors), 4) * 0.3
    ref = focal_naive(cls_logits, reg, targets, anchors)
    got = focal_loss(cls_logits, reg, targets, anchors)
    assert float(got["cls"]) == pytest.approx(ref["cls"], rel=1e-4)
    assert float(got["box"]) == pytest.approx(ref["box"], rel=1e-4)


def test_retinanet_trains_a_few_steps_with_focal_loss() -> None:
    from enginesmith.models import registry
    from enginesmith.training.criteria import detection_loss, family_of

    torch.manual_seed(0)
    net = registry.get("retinanet-r50-fpn").create(num_classes=3, input_size=(128, 128)).train()
    assert family_of(net) == "retinanet"
    x = torch.randn(2, 3, 128, 128)
    targets = [torch.tensor([[0.0, 16, 16, 80, 80]]), torch.tensor([[2.0, 40, 20, 120, 100], [1.0, 4, 60, 60, 124]])]
    net.backbone.eval()  # frozen BatchNorm statistics (batch of 2), as detection fine-tuning does
    opt = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=1e-4)
    losses = []
    for _ in range(4):
        out = detection_loss(net, x, targets)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(float(out["loss"].detach()))
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0]


# ------------------------------------------------------------------------------------------ classifier


def test_classification_loss_matches_log_softmax_by_hand() -> None:
    torch.manual_seed(0)
    logits = torch.randn(5, 4) * 3
    labels = torch.tensor([0, 3, 1, 1, 2])
    ref = 0.0
    for row, y in zip(logits.tolist(), labels.tolist()):
        ref += -(row[y] - math.log(sum(math.exp(v) for v in row)))
    assert float(classification_loss(logits, labels)["loss"]) == pytest.approx(ref / 5, rel=1e-5)
