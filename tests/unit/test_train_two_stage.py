"""R-CNN and Fast R-CNN training (training/rcnn.py, training/fast_rcnn.py) on a tiny offline set (20 images:
14 train, 3 val), 1 epoch, through `enginesmith.training.loop.train` as the CLI calls it.

Checked against independent references: the SVMs copied into model.svm against scikit-learn's own
decision_function on the same fc7 features, the regressors in model.bbox_reg against Ridge.predict, the
SVM / regression / RoI example sets against naive per-box IoU loops, the checkpoint reloaded into a
fresh spec.create() with spec.load_weights, and the recorded val mAP against a re-evaluation of that reloaded
checkpoint through a loop of this file (not training/rcnn.py evaluate_two_stage, runtime/two_stage.py
rcnn_raw / fast_rcnn_raw / detect_from_raw): its own box decoding and torchvision's NMS, then
evaluation/detection_metrics.py (itself checked against the VOC devkit's voc_eval.py)."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("sklearn")
pytest.importorskip("cv2.ximgproc")


def _iou(a, b) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


@pytest.fixture(scope="module")
def tiny(tiny_offline: Path) -> Path:
    """The offline set of tests/unit/conftest.py tiny_offline, with torch on 2 threads."""
    torch.set_num_threads(2)
    return tiny_offline


def _train(name: str, root: Path, out: Path, epochs: int = 1):
    from enginesmith.training.loop import train
    from enginesmith.training.recipes import recipe_for

    recipe = replace(recipe_for(name, "detection"), epochs=epochs)
    return train(name, root, out=out, recipe=recipe, progress=False, threads=2)


def _reload(name: str, path: Path):
    from enginesmith.models import registry

    spec = registry.get(name)
    net = spec.create(num_classes=16)
    spec.load_weights(net, path)
    return spec, net.eval()


# predict.py's evaluation thresholds (EVAL_IOU_THRESHOLD, EVAL_SCORE_THRESHOLD, EVAL_MAX_DETECTIONS), as numbers
EVAL_IOU, EVAL_SCORE, EVAL_MAX = 0.45, 0.005, 200


def _nms(boxes: np.ndarray, scores: np.ndarray):
    """boxes [P, 4] (one per proposal) or [P, C, 4] (class-specific), scores [P, C] -> Predictions, through
    torchvision.ops.nms class by class (not runtime/nms.py): candidates score > EVAL_SCORE, suppression IoU >
    EVAL_IOU, at most EVAL_MAX per class, then the best EVAL_MAX overall."""
    from torchvision.ops import nms

    from enginesmith.evaluation.detection_metrics import Predictions

    scores = np.asarray(scores, np.float32)
    boxes = np.asarray(boxes, np.float32)
    rows = []
    for c in range(scores.shape[1]):
        idx = np.nonzero(scores[:, c] > EVAL_SCORE)[0]
        if not len(idx):
            continue
        b = boxes[idx, c] if boxes.ndim == 3 else boxes[idx]
        kept = idx[nms(torch.from_numpy(b), torch.from_numpy(scores[idx, c]), EVAL_IOU).numpy()[:EVAL_MAX]]
        rows += [(float(scores[i, c]), c, b_i) for i, b_i in zip(kept, (boxes[kept, c] if boxes.ndim == 3
                                                                       else boxes[kept]))]
    rows = sorted(rows, key=lambda r: -r[0])[:EVAL_MAX]
    return Predictions(np.array([r[2] for r in rows], np.float32).reshape(-1, 4),
                       np.array([r[0] for r in rows], np.float32), np.array([r[1] for r in rows], np.int64))


def _decode(proposals: np.ndarray, deltas: np.ndarray, width: int, height: int) -> np.ndarray:
    """R-CNN's box regression (the paper's Appendix C) in float64: proposals [P, 4], deltas [P, C, 4] (tx, ty,
    tw, th) -> boxes [P, C, 4] clipped to the image; tw, th capped at log(1000 / 16) as the engine's host stage."""
    p = np.asarray(proposals, np.float64)[:, None, :]
    d = np.asarray(deltas, np.float64)
    pw, ph = np.maximum(p[..., 2] - p[..., 0], 1e-3), np.maximum(p[..., 3] - p[..., 1], 1e-3)
    cx, cy = p[..., 0] + pw / 2 + pw * d[..., 0], p[..., 1] + ph / 2 + ph * d[..., 1]
    w = pw * np.exp(np.minimum(d[..., 2], math.log(1000 / 16)))
    h = ph * np.exp(np.minimum(d[..., 3], math.log(1000 / 16)))
    out = np.stack([(cx - w / 2).clip(0, width), (cy - h / 2).clip(0, height), (cx + w / 2).clip(0, width),
                    (cy + h / 2).clip(0, height)], axis=-1)
    return out.astype(np.float32)


def _rcnn_predictions(net, spec, val, proposals: list[np.ndarray]) -> list:
    """Every val image: its proposals warped (training/rcnn.py warp_batch, the fine-tuning warp), 100 at a time
    through net.region_features in plain NCHW, SVM margins -> sigmoid and pool5 -> regression by the net's svm /
    bbox_reg layers, _decode, _nms."""
    from enginesmith.training.rcnn import warp_batch

    c = net.num_classes
    preds = []
    for i in range(len(val)):
        img = val.load_image(i)
        props = np.asarray(proposals[i], np.float32).reshape(-1, 4)
        margins, deltas = [np.zeros((0, c), np.float32)], [np.zeros((0, c * 4), np.float32)]
        for s in range(0, len(props), 100):
            x = torch.from_numpy(warp_batch(img, props[s:s + 100], spec.preprocess))
            with torch.no_grad():
                pool5, fc7 = net.region_features(x)
                margins.append(net.svm(fc7).numpy())
                deltas.append(net.bbox_reg(pool5).numpy())
        scores = 1.0 / (1.0 + np.exp(-np.concatenate(margins).astype(np.float64)))
        boxes = _decode(props, np.concatenate(deltas).reshape(len(props), c, 4), img.shape[1], img.shape[0])
        preds.append(_nms(boxes, scores))
    return preds


def _fast_rcnn_predictions(net, spec, val, proposals: list[np.ndarray]) -> list:
    """Every val image: preprocessed once, its proposals scaled to input pixels, one plain NCHW forward with
    all rois, boxes mapped back to the image (clipped), _nms."""
    from enginesmith.runtime.preprocess import preprocess

    preds = []
    for i in range(len(val)):
        img = val.load_image(i)
        x, t = preprocess(img, spec.preprocess)
        rois = t.to_input(np.asarray(proposals[i], np.float32).reshape(-1, 4))
        with torch.no_grad():
            boxes, scores = net(torch.from_numpy(x[None]), torch.from_numpy(rois))
        preds.append(_nms(t.to_original(boxes[0].numpy()), scores[0].numpy()))
    return preds


def _check_recorded_val(recorded: dict, preds: list, val) -> dict:
    """The re-evaluation's metrics equal the recorded ones: VOC07 and all-point mAP, and per class the AP and
    the number of detections. The recorded mAP must be above 0 (two zeros would agree whatever the boxes: a
    corrupted box-regression weight of Fast R-CNN after one epoch, mAP 0, left the detection counts unchanged)
    and the predictions not empty. Returns the re-evaluation's metrics."""
    from enginesmith.evaluation.detection_metrics import evaluate_detections

    assert recorded["voc07_map"] > 0, "the val mAP is 0: comparing it says little, train the test model longer"
    assert sum(len(p.scores) for p in preds) > 0
    mine = evaluate_detections(preds, val)
    assert recorded["images"] == mine["images"] == 3
    assert mine["voc07_map"] == pytest.approx(recorded["voc07_map"], abs=1e-6)
    assert mine["map"] == pytest.approx(recorded["map"], abs=1e-6)
    assert {k: v["detections"] for k, v in mine["per_class"].items()} == \
        {k: v["detections"] for k, v in recorded["per_class"].items()}
    for k, v in mine["per_class"].items():
        r = recorded["per_class"][k]
        assert (v["voc07"] is None) == (r["voc07"] is None), k
        if v["voc07"] is not None:
            assert v["voc07"] == pytest.approx(r["voc07"], abs=1e-6), k
            assert v["ap"] == pytest.approx(r["ap"], abs=1e-6), k
    return mine


def test_rcnn_trains_svms_and_regressors(tiny, tmp_path: Path) -> None:
    from enginesmith.data.datasets import open_dataset
    from enginesmith.runtime.region_warp import encode_targets
    from enginesmith.training.checkpoints import read_checkpoint
    from enginesmith.training.rcnn import (REG_IOU, SVM_NEG_IOU, build_feature_pool, fit_box_regressors, fit_svms,
                                           regression_examples, split_proposal_list, svm_examples)

    root = tiny
    res = _train("rcnn-vgg16-slim", root, tmp_path / "rcnn.pt")
    m = res.metrics
    assert m["epochs_run"] == 1 and math.isfinite(m["history"][0]["loss"])
    assert read_checkpoint(res.checkpoint)["model"] == "rcnn-vgg16-slim"

    spec, net = _reload("rcnn-vgg16-slim", res.checkpoint)
    saved = torch.load(res.checkpoint, map_location="cpu", weights_only=False)["state_dict"]
    for k, v in net.state_dict().items():
        assert torch.equal(v, saved[k]), k
    # the recorded val mAP is the reloaded checkpoint's, re-evaluated through this file's own loop
    val = open_dataset(root, "val")
    _check_recorded_val(m["val"], _rcnn_predictions(net, spec, val, split_proposal_list(val)), val)
    svm_w, reg_w = net.svm.weight.detach().clone(), net.bbox_reg.weight.detach().clone()
    assert svm_w.abs().sum() > 0 and reg_w.abs().sum() > 0

    # the same pool through the reloaded CNN refits the same SVMs and regressors (deterministic), and the
    # weights in the model reproduce scikit-learn on the same features
    train_set = open_dataset(root, "train")
    props = split_proposal_list(train_set)
    pool = build_feature_pool(net, train_set, props, spec.preprocess, seed=0)
    svms, svm_scale, _ = fit_svms(net, pool, 16, seed=0)
    regs, reg_scale, _ = fit_box_regressors(net, pool, 16)
    torch.testing.assert_close(net.svm.weight, svm_w, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(net.bbox_reg.weight, reg_w, rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        margins = net.svm(torch.from_numpy(pool.fc7)).numpy()
        deltas = net.bbox_reg(torch.from_numpy(pool.pool5)).numpy()
    fitted = [c for c, s in enumerate(svms) if s is not None]
    assert len(fitted) >= 8
    for c in fitted:
        ref = svms[c].decision_function(pool.fc7 * np.float32(svm_scale))
        np.testing.assert_allclose(margins[:, c], ref, rtol=1e-3, atol=1e-3)
    assert any(r is not None for r in regs)
    for c, r in enumerate(regs):
        if r is not None:
            np.testing.assert_allclose(deltas[:, c * 4:c * 4 + 4], r.predict(pool.pool5 * np.float32(reg_scale)),
                                       rtol=1e-3, atol=1e-4)
        else:
            assert not deltas[:, c * 4:c * 4 + 4].any()

    # example sets against naive loops: positives = truths of c; negatives = proposals with IoU < 0.3 to every
    # truth of c in their image; regression = proposals whose best truth is of c with IoU >= 0.6
    for c in (fitted[0], fitted[-1]):
        pos, neg = svm_examples(pool, c)
        want_pos, want_neg, want_reg = [], [], []
        for i in range(len(pool.boxes)):
            s = train_set.samples[int(pool.image[i])]
            if pool.is_truth[i]:
                if pool.label[i] == c:
                    want_pos.append(i)
                continue
            ious = [_iou(pool.boxes[i], g) for g in s.boxes]
            if all(u < SVM_NEG_IOU for u, lab in zip(ious, s.labels) if lab == c):
                want_neg.append(i)
            if ious and max(ious) >= REG_IOU and s.labels[int(np.argmax(ious))] == c:
                want_reg.append(i)
        assert pos.tolist() == want_pos and neg.tolist() == want_neg
        assert regression_examples(pool, c).tolist() == want_reg
        if want_reg:
            j = want_reg[0]
            s = train_set.samples[int(pool.image[j])]
            g = s.boxes[int(np.argmax([_iou(pool.boxes[j], b) for b in s.boxes]))]
            pw, ph = pool.boxes[j][2] - pool.boxes[j][0], pool.boxes[j][3] - pool.boxes[j][1]
            t = [((g[0] + g[2]) - (pool.boxes[j][0] + pool.boxes[j][2])) / 2 / pw,
                 ((g[1] + g[3]) - (pool.boxes[j][1] + pool.boxes[j][3])) / 2 / ph,
                 math.log((g[2] - g[0]) / pw), math.log((g[3] - g[1]) / ph)]
            np.testing.assert_allclose(encode_targets(pool.boxes[j:j + 1], pool.target_box[j:j + 1])[0], t,
                                       rtol=1e-4, atol=1e-5)


def test_rcnn_region_sampling() -> None:
    from enginesmith.training.rcnn import label_regions, sample_regions

    truths = np.array([[10, 10, 50, 50], [100, 100, 140, 160]], np.float32)
    props = np.array([[12, 12, 52, 52], [0, 0, 20, 20], [100, 100, 140, 150], [200, 200, 220, 220]], np.float32)
    reg = label_regions(props, truths, np.array([3, 7]))
    # truths first (their own class), then proposals: IoU 0.83 -> class 3, 0.06 -> bg, 0.83 -> class 7, 0 -> bg
    assert reg.labels.tolist() == [4, 8, 4, 0, 8, 0]
    take = sample_regions(reg, np.random.default_rng(0), count=8, fg_fraction=0.25)
    assert len(take) == 8 and (reg.labels[take] > 0).sum() == 2


def test_fast_rcnn_trains(tiny, tmp_path: Path) -> None:
    from enginesmith.data.datasets import open_dataset
    from enginesmith.training.fast_rcnn import BG_IOU_LOW, select_proposals, training_sample
    from enginesmith.training.rcnn import split_proposal_list

    root = tiny
    # 2 epochs: after 1 the val mAP is 0 (nothing for _check_recorded_val to compare), after 2 it is ~0.012
    res = _train("fast-rcnn-vgg16-slim", root, tmp_path / "fast.pt", epochs=2)
    h = res.metrics["history"][0]
    assert all(math.isfinite(h[k]) for k in ("loss", "loss_classifier", "loss_box_reg"))
    spec, net = _reload("fast-rcnn-vgg16-slim", res.checkpoint)
    saved = torch.load(res.checkpoint, map_location="cpu", weights_only=False)["state_dict"]
    for k, v in net.state_dict().items():
        assert torch.equal(v, saved[k]), k
    # the recorded val mAP is the reloaded checkpoint's, re-evaluated through this file's own loop
    val = open_dataset(root, "val")
    _check_recorded_val(res.metrics["val"], _fast_rcnn_predictions(net, spec, val, split_proposal_list(val)), val)

    # RoI candidates: IoU >= 0.1 with a truth when enough background lies in [0.1, 0.5), else all
    rng = np.random.default_rng(1)
    xy = rng.random((300, 2)) * 300
    props = np.concatenate([xy, xy + 10 + rng.random((300, 2)) * 80], 1).astype(np.float32)
    truths = np.array([[50, 50, 120, 130], [200, 40, 260, 90]], np.float32)
    kept = select_proposals(props, truths)
    want = [p for p in props if max(_iou(p, g) for g in truths) >= BG_IOU_LOW]
    n_bg = sum(1 for p in props if BG_IOU_LOW <= max(_iou(p, g) for g in truths) < 0.5)
    np.testing.assert_array_equal(kept, np.array(want) if n_bg >= 48 else props)
    # a flip mirrors truths and proposals with the image: the region under a flipped box is the mirrored region
    image = rng.integers(0, 255, (240, 320, 3), dtype=np.uint8)
    from enginesmith.runtime.preprocess import PreprocessSpec

    spec = PreprocessSpec(input_size=(240, 320), resize="stretch", color="RGB", scale=1.0, mean=(0, 0, 0),
                          std=(1, 1, 1))
    x0, _, g0, lab = training_sample(image, props[:3], truths, np.array([1, 2]), spec, False)
    x1, _, g1, _ = training_sample(image, props[:3], truths, np.array([1, 2]), spec, True)
    assert lab.tolist() == [2, 3]
    np.testing.assert_allclose(x1, x0[:, :, ::-1], atol=1e-5)
    np.testing.assert_allclose(g1[:, [2, 1, 0, 3]] * [-1, 1, -1, 1] + [320, 0, 320, 0], g0, atol=1e-4)
