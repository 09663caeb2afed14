"""Training R-CNN (Girshick, Donahue, Darrell, Malik 2014, Sec. 2.3 and Appendices B, C), scaled down for the
offline set and a 2-core CPU. Three stages, as the paper:

1. CNN training (the paper's fine-tuning; here from scratch, there is no ImageNet model of the slim net and it
   has BatchNorm). Regions = selective-search proposals of the train split (data/proposals.py, cached) plus
   the ground-truth boxes; a region's label is the class of its best-overlapping truth when IoU >= 0.5, else
   background (0). Each step takes `recipe.batch_size` images and REGIONS_PER_IMAGE regions from each, 25%
   foreground (the paper's 32 + 96 of 128 per minibatch; with 4 images x 32 regions it is the same 128),
   filled with background when an image has too few foreground regions. Regions are warped exactly as the
   engine's host stage warps them (runtime/region_warp.py: context padding 16 px at 227, mean-pixel fill;
   runtime/preprocess.py's normalize_channels). Horizontal flip: a region is mirrored with probability 1/2
   only when its label is background or a mirror-symmetric class (MIRROR_SAFE_CLASSES; a mirrored 2 is not a 2, see
   training/augment.py). Softmax cross-entropy on fc8 (model.forward_train), the recipe's optimiser and
   schedule (training/loop.py make_optimizer, lr_at), bfloat16 autocast on CPU (weights stay float32).
2. Per-class linear SVMs on fc7 (eval mode, float32), scikit-learn LinearSVC with the paper's released
   settings (rcnn_train.m): hinge loss, C = 1e-3, positive loss weight 2, bias multiplier 10
   (liblinear's intercept_scaling), features scaled so their mean L2 norm is 20 (the scale is folded into
   the weights copied to model.svm, so the engine takes raw fc7). Positives: the ground-truth boxes of class
   c only; negatives: proposals with IoU < 0.3 to every truth of class c in their image. Hard-negative
   mining (the paper's, Sec. 2.3) runs over a per-image sample of the proposals (SVM_POOL_PER_IMAGE random
   ones plus up to REG_POOL_PER_IMAGE with IoU >= 0.6, all through the CNN once): start from
   SVM_INITIAL_NEGATIVES random negatives, then MINING_ROUNDS times add every negative of the pool whose
   margin is > -1 and refit. (The paper mines over all ~2000 proposals of every image; the pool keeps the
   feature pass to minutes on this CPU.)
3. Class-specific bounding-box regression (Appendix C): per class, scikit-learn Ridge(alpha=1000) from pool5
   features (scaled to mean norm 20 as the SVM features, folded back) of proposals whose best truth is of
   that class with IoU >= 0.6, to region_warp.encode_targets(proposal, truth) (tx, ty, tw, th); copied into
   model.bbox_reg rows c*4 .. c*4+3. A class with fewer than MIN_REG_SAMPLES samples keeps zero regression.

Validation (the checkpoint's metrics): VOC07 / all-point mAP of the trained network on the val split with
its selective-search proposals, through runtime/two_stage.py rcnn_raw + detect_from_raw (the host stages of
the engine) and evaluation/detection_metrics.py, with predict.py's evaluation thresholds.

Longer than 400 lines: the paper's three training stages (CNN, SVMs with hard negatives, box regressors)
share the region pool and its features.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from enginesmith.data.proposals import split_proposals
from enginesmith.errors import EnginesmithError
from enginesmith.evaluation.detection_metrics import Predictions, evaluate_detections
from enginesmith.evaluation.predict import EVAL_IOU_THRESHOLD, EVAL_MAX_DETECTIONS, EVAL_SCORE_THRESHOLD
from enginesmith.runtime.preprocess import normalize_channels
from enginesmith.runtime.region_warp import context_pad, encode_targets, mean_pixel, warp_regions
from enginesmith.runtime.two_stage import detect_from_raw, fast_rcnn_raw, rcnn_raw
from enginesmith.training.common import Bar
from enginesmith.training.two_stage_loop import run_epochs

FG_IOU = 0.5  # fine-tuning: foreground when IoU >= 0.5 with a truth (Sec. 2.3)
REGIONS_PER_IMAGE = 32
FG_FRACTION = 0.25
MIRROR_SAFE_CLASSES = ("circle", "square", "triangle", "star", "cross", "ring")

SVM_C = 1e-3
SVM_POS_WEIGHT = 2.0
SVM_BIAS_MULT = 10.0
FEATURE_NORM = 20.0
SVM_NEG_IOU = 0.3
HARD_MARGIN = -1.0
MINING_ROUNDS = 2
SVM_INITIAL_NEGATIVES = 4000
SVM_MAX_NEGATIVES = 30000
SVM_POOL_PER_IMAGE = 40
REG_POOL_PER_IMAGE = 12

REG_IOU = 0.6
RIDGE_ALPHA = 1000.0
MIN_REG_SAMPLES = 8

FEATURE_CHUNK = 256  # regions per forward pass when extracting features / evaluating


# ------------------------------------------------------------------------------------------- regions


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of boxes a [N, 4] and b [M, 4] (x1y1x2y2, continuous) -> [N, M] float32."""
    a = np.asarray(a, np.float32).reshape(-1, 4)
    b = np.asarray(b, np.float32).reshape(-1, 4)
    if not len(a) or not len(b):
        return np.zeros((len(a), len(b)), np.float32)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area_a = np.prod(np.clip(a[:, 2:] - a[:, :2], 0, None), axis=1)
    area_b = np.prod(np.clip(b[:, 2:] - b[:, :2], 0, None), axis=1)
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


@dataclass(frozen=True)
class LabelledRegions:
    """One image's training regions: boxes [R, 4] x1y1x2y2 original px (the truths first, then the proposals),
    labels [R] int64 (0 background, class + 1), iou [R] float32 (max IoU with any truth), truth [R] int64 (index
    of that truth, -1 when the image has none), is_truth [R] bool."""

    boxes: np.ndarray
    labels: np.ndarray
    iou: np.ndarray
    truth: np.ndarray
    is_truth: np.ndarray


def label_regions(proposals: np.ndarray, truths: np.ndarray, truth_labels: np.ndarray,
                  fg_iou: float = FG_IOU) -> LabelledRegions:
    """Proposals [P, 4] and truths [K, 4] (labels [K], class ids) -> LabelledRegions over truths + proposals."""
    truths = np.asarray(truths, np.float32).reshape(-1, 4)
    boxes = np.concatenate([truths, np.asarray(proposals, np.float32).reshape(-1, 4)])
    iou = box_iou(boxes, truths)
    if len(truths):
        best = iou.argmax(axis=1)
        best_iou = iou[np.arange(len(boxes)), best]
        labels = np.where(best_iou >= fg_iou, np.asarray(truth_labels, np.int64)[best] + 1, 0)
    else:
        best = np.full(len(boxes), -1, np.int64)
        best_iou = np.zeros(len(boxes), np.float32)
        labels = np.zeros(len(boxes), np.int64)
    is_truth = np.zeros(len(boxes), bool)
    is_truth[:len(truths)] = True
    return LabelledRegions(boxes, labels.astype(np.int64), best_iou.astype(np.float32), best.astype(np.int64),
                           is_truth)


def mirror_safe(class_names: Sequence[str]) -> np.ndarray:
    """[C + 1] bool over (background, classes): which labels may be mirrored."""
    return np.array([True] + [n in MIRROR_SAFE_CLASSES for n in class_names], bool)


def warp_batch(image: np.ndarray, boxes: np.ndarray, spec, flips: np.ndarray | None = None) -> np.ndarray:
    """HxWx3 uint8 RGB image, boxes [N, 4] original px -> normalised regions [N, 3, S, S] float32, exactly the
    engine's host-stage warp (runtime/two_stage.py rcnn_raw); rows with flips[i] mirrored left-right."""
    size = int(spec.input_size[0])
    crops = warp_regions(image, boxes, size, context_pad(size), mean_pixel(spec))
    if flips is not None and flips.any():
        crops[flips] = crops[flips][:, :, ::-1]
    return normalize_channels(crops, spec)


def sample_regions(reg: LabelledRegions, rng: np.random.Generator, count: int = REGIONS_PER_IMAGE,
                   fg_fraction: float = FG_FRACTION) -> np.ndarray:
    """Indices into reg: up to round(count * fg_fraction) foreground regions, the rest background (sampled with
    replacement only when the image has fewer than needed)."""
    fg = np.nonzero(reg.labels > 0)[0]
    bg = np.nonzero(reg.labels == 0)[0]
    n_fg = min(len(fg), int(round(count * fg_fraction)))
    n_bg = count - n_fg
    take_fg = rng.choice(fg, n_fg, replace=False) if n_fg else np.zeros(0, np.int64)
    if len(bg):
        take_bg = rng.choice(bg, n_bg, replace=len(bg) < n_bg)
    else:
        take_bg = rng.choice(fg, n_bg, replace=len(fg) < n_bg) if len(fg) else np.zeros(0, np.int64)
    return np.concatenate([take_fg, take_bg]).astype(np.int64)


# ------------------------------------------------------------------------------------------- stage 1: CNN


def finetune(net, dataset, regions: list[LabelledRegions], spec_pre, recipe, seed: int,
             time_budget_s: float | None, progress) -> list[dict[str, Any]]:
    """Stage 1: softmax cross-entropy on fc8 over sampled warped regions; updates net in place; the per-epoch
    history (seconds, regions/s, loss, fg accuracy)."""
    import torch

    safe = mirror_safe(dataset.class_names)
    with torch.no_grad():  # the (C + 1)-way classifier starts as the paper's: Gaussian std 0.01, zero bias
        torch.nn.init.normal_(net.fc8.weight, std=0.01, generator=torch.Generator().manual_seed(seed))
        net.fc8.bias.zero_()

    def make_batch(batches: list[np.ndarray], epoch: int) -> Callable[[int], Any]:
        def make(j: int):
            xs, ys = [], []
            for idx in batches[j]:
                i = int(idx)
                rng = np.random.default_rng([seed, epoch, i])
                reg = regions[i]
                take = sample_regions(reg, rng)
                labels = reg.labels[take]
                flips = safe[labels] & (rng.random(len(take)) < 0.5)
                xs.append(warp_batch(dataset.load_image(i), reg.boxes[take], spec_pre, flips))
                ys.append(labels)
            x = torch.from_numpy(np.concatenate(xs)).contiguous(memory_format=torch.channels_last)
            return x, torch.from_numpy(np.concatenate(ys)), 0
        return make

    def step_losses(x, y) -> dict[str, Any]:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = net.forward_train(x)
        fg = y > 0
        return {"loss": torch.nn.functional.cross_entropy(logits.float(), y),
                "correct_fg": (logits.detach().argmax(1)[fg] == y[fg]).sum(), "count_fg": fg.sum()}

    def history_row(sums: dict[str, float], seen: int, seconds: float, steps: int) -> dict[str, Any]:
        return {"seconds": round(seconds, 2), "regions_s": round(seen / seconds, 1),
                "loss": round(sums["loss"] / steps, 5),
                "fg_accuracy": round(sums["correct_fg"] / max(1, sums["count_fg"]), 4)}

    run = run_epochs(net, recipe, len(dataset), seed, make_batch, step_losses, what="R-CNN", title="train R-CNN CNN",
                     time_budget_s=time_budget_s, progress=progress, history_row=history_row)
    net.eval()
    return run.history


# ------------------------------------------------------------------------------------------- features


def region_features(net, image: np.ndarray, boxes: np.ndarray, spec, chunk: int = FEATURE_CHUNK) \
        -> tuple[np.ndarray, np.ndarray]:
    """(pool5 [N, P5], fc7 [N, D]) float32 of the warped boxes [N, 4] (original px), net in eval mode, float32."""
    import torch

    p5, f7 = [], []
    for s in range(0, len(boxes), chunk):
        x = torch.from_numpy(warp_batch(image, boxes[s:s + chunk], spec)).contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            a, b = net.region_features(x)
        p5.append(a.float().numpy())
        f7.append(b.float().numpy())
    if not p5:
        return np.zeros((0, 0), np.float32), np.zeros((0, 0), np.float32)
    return np.concatenate(p5), np.concatenate(f7)


@dataclass
class FeaturePool:
    """Regions of the train split through the CNN once: pool5 [N, P5], fc7 [N, D] float32; image [N] int64;
    is_truth [N] bool; label [N] int64 (class id of a truth, -1 for proposals); class_iou [N, C] float32 (max
    IoU with the image's truths of each class); best_class [N] int64 and best_iou [N] (the best truth's class
    and IoU, -1 / 0 when none); target_box [N, 4] (that truth's box)."""

    pool5: np.ndarray
    fc7: np.ndarray
    image: np.ndarray
    is_truth: np.ndarray
    label: np.ndarray
    class_iou: np.ndarray
    best_class: np.ndarray
    best_iou: np.ndarray
    boxes: np.ndarray
    target_box: np.ndarray


def build_feature_pool(net, dataset, proposals: list[np.ndarray], spec, seed: int,
                       per_image: int = SVM_POOL_PER_IMAGE, reg_per_image: int = REG_POOL_PER_IMAGE,
                       progress: Callable[[int], None] = lambda i: None) -> FeaturePool:
    """Every truth of every image plus `per_image` random proposals and up to `reg_per_image` proposals with
    IoU >= REG_IOU, through the CNN (eval mode, float32)."""
    c = len(dataset.class_names)
    parts: dict[str, list[np.ndarray]] = {k: [] for k in FeaturePool.__dataclass_fields__}
    for i, s in enumerate(dataset.samples):
        rng = np.random.default_rng([seed, 10_000, i])
        props = np.asarray(proposals[i], np.float32).reshape(-1, 4)
        iou = box_iou(props, s.boxes)
        best_iou = iou.max(axis=1) if iou.shape[1] else np.zeros(len(props), np.float32)
        rand = rng.choice(len(props), min(per_image, len(props)), replace=False) if len(props) else np.zeros(0, int)
        good = np.setdiff1d(np.nonzero(best_iou >= REG_IOU)[0], rand)
        good = rng.choice(good, min(reg_per_image, len(good)), replace=False) if len(good) else good
        take = np.concatenate([rand, good]).astype(np.int64)
        boxes = np.concatenate([np.asarray(s.boxes, np.float32).reshape(-1, 4), props[take]])
        k = len(s.boxes)
        all_iou = box_iou(boxes, s.boxes)
        class_iou = np.zeros((len(boxes), c), np.float32)
        for j in range(c):
            m = s.labels == j
            if m.any():
                class_iou[:, j] = all_iou[:, m].max(axis=1)
        if k:
            bi = all_iou.argmax(axis=1)
            parts["best_class"].append(np.asarray(s.labels, np.int64)[bi])
            parts["best_iou"].append(all_iou[np.arange(len(boxes)), bi])
            parts["target_box"].append(np.asarray(s.boxes, np.float32)[bi])
        else:
            parts["best_class"].append(np.full(len(boxes), -1, np.int64))
            parts["best_iou"].append(np.zeros(len(boxes), np.float32))
            parts["target_box"].append(boxes.copy())
        p5, f7 = region_features(net, dataset.load_image(i), boxes, spec)
        parts["pool5"].append(p5)
        parts["fc7"].append(f7)
        parts["image"].append(np.full(len(boxes), i, np.int64))
        parts["is_truth"].append(np.arange(len(boxes)) < k)
        parts["label"].append(np.concatenate([np.asarray(s.labels, np.int64), np.full(len(take), -1, np.int64)]))
        parts["class_iou"].append(class_iou)
        parts["boxes"].append(boxes)
        progress(i + 1)
    return FeaturePool(**{k: np.concatenate(v) for k, v in parts.items()})


def norm_scale(features: np.ndarray, target: float = FEATURE_NORM) -> float:
    """The factor that makes the mean L2 norm of the rows `target` (the paper's feature scaling)."""
    mean = float(np.linalg.norm(features, axis=1).mean()) if len(features) else 0.0
    return target / mean if mean > 1e-12 else 1.0


# ------------------------------------------------------------------------------------------- stage 2: SVMs


def fit_class_svm(features: np.ndarray, positives: np.ndarray, negatives: np.ndarray, scale: float, seed: int,
                  log: dict[str, Any] | None = None):
    """One class's LinearSVC with hard-negative mining. features [N, D] (raw fc7); positives / negatives: indices
    into it. Returns the fitted sklearn LinearSVC (on features * scale)."""
    import warnings

    from sklearn.svm import LinearSVC

    rng = np.random.default_rng([seed, 20_000, len(positives), len(negatives)])
    active = rng.choice(negatives, min(SVM_INITIAL_NEGATIVES, len(negatives)), replace=False)
    svm = None
    for rnd in range(MINING_ROUNDS + 1):
        x = np.concatenate([features[positives], features[active]]) * np.float32(scale)
        y = np.concatenate([np.ones(len(positives)), -np.ones(len(active))])
        svm = LinearSVC(C=SVM_C, loss="hinge", dual=True, class_weight={1: SVM_POS_WEIGHT, -1: 1.0},
                        intercept_scaling=SVM_BIAS_MULT, max_iter=20000, random_state=seed)
        with warnings.catch_warnings():  # liblinear's ConvergenceWarning at max_iter; the fit is still used
            warnings.simplefilter("ignore")
            svm.fit(x, y)
        if rnd == MINING_ROUNDS:
            break
        rest = np.setdiff1d(negatives, active)
        if not len(rest):
            break
        margins = svm.decision_function(features[rest] * np.float32(scale))
        hard = rest[margins > HARD_MARGIN]
        if log is not None:
            log.setdefault("hard_negatives", []).append(int(len(hard)))
        if not len(hard) or len(active) >= SVM_MAX_NEGATIVES:
            break
        hard = hard[np.argsort(-margins[margins > HARD_MARGIN], kind="stable")][:SVM_MAX_NEGATIVES - len(active)]
        active = np.concatenate([active, hard])
    if log is not None:
        log["negatives"] = int(len(active))
        log["positives"] = int(len(positives))
        log["iterations"] = int(np.max(svm.n_iter_))  # 20000 = liblinear stopped at max_iter
    return svm


def svm_examples(pool: FeaturePool, c: int) -> tuple[np.ndarray, np.ndarray]:
    """(positives, negatives) indices of class c: its truths; proposals with IoU < SVM_NEG_IOU to all its truths."""
    pos = np.nonzero(pool.is_truth & (pool.label == c))[0]
    neg = np.nonzero(~pool.is_truth & (pool.class_iou[:, c] < SVM_NEG_IOU))[0]
    return pos, neg


def fit_svms(net, pool: FeaturePool, num_classes: int, seed: int) -> tuple[list[Any], float, list[dict[str, Any]]]:
    """Stage 2: per-class SVMs on fc7, copied into net.svm (weight[c] = coef * scale, bias[c] = intercept).
    Returns (sklearn models, None where a class had no positives; the feature scale; per-class logs)."""
    import torch

    scale = norm_scale(pool.fc7)
    models, logs = [], []
    w = np.zeros((num_classes, pool.fc7.shape[1]), np.float32)
    b = np.full(num_classes, -10.0, np.float32)  # a class never seen scores sigmoid(-10)
    for c in range(num_classes):
        pos, neg = svm_examples(pool, c)
        log: dict[str, Any] = {"class": c}
        if not len(pos) or not len(neg):
            models.append(None)
            logs.append(log)
            continue
        svm = fit_class_svm(pool.fc7, pos, neg, scale, seed, log)
        w[c] = svm.coef_[0] * scale
        b[c] = svm.intercept_[0]
        models.append(svm)
        logs.append(log)
    with torch.no_grad():
        net.svm.weight.copy_(torch.from_numpy(w))
        net.svm.bias.copy_(torch.from_numpy(b))
    return models, scale, logs


# ------------------------------------------------------------------------------------------- stage 3: boxes


def regression_examples(pool: FeaturePool, c: int) -> np.ndarray:
    """Indices of proposals whose best truth is of class c with IoU >= REG_IOU."""
    return np.nonzero(~pool.is_truth & (pool.best_class == c) & (pool.best_iou >= REG_IOU))[0]


def fit_box_regressors(net, pool: FeaturePool, num_classes: int) -> tuple[list[Any], float, list[int]]:
    """Stage 3: per-class Ridge(alpha=RIDGE_ALPHA) on pool5 * scale -> encode_targets; copied into net.bbox_reg
    (rows c*4..c*4+3: coef * scale, intercept). Returns (sklearn models or None, scale, samples per class)."""
    import torch
    from sklearn.linear_model import Ridge

    scale = norm_scale(pool.pool5)
    d = pool.pool5.shape[1]
    w = np.zeros((num_classes * 4, d), np.float32)
    b = np.zeros(num_classes * 4, np.float32)
    models, counts = [], []
    for c in range(num_classes):
        idx = regression_examples(pool, c)
        counts.append(int(len(idx)))
        if len(idx) < MIN_REG_SAMPLES:
            models.append(None)
            continue
        t = encode_targets(pool.boxes[idx], pool.target_box[idx])
        ridge = Ridge(alpha=RIDGE_ALPHA).fit(pool.pool5[idx] * np.float32(scale), t)
        w[c * 4:c * 4 + 4] = ridge.coef_ * scale
        b[c * 4:c * 4 + 4] = ridge.intercept_
        models.append(ridge)
    with torch.no_grad():
        net.bbox_reg.weight.copy_(torch.from_numpy(w))
        net.bbox_reg.bias.copy_(torch.from_numpy(b))
    return models, scale, counts


# ------------------------------------------------------------------------------------------- evaluation


def torch_rcnn_infer(net) -> Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]:
    """A runtime/two_stage.py Infer over a torch RCNN in eval mode (float32)."""
    import torch

    def infer(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = torch.from_numpy(next(iter(feeds.values()))).contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            scores, deltas = net(x)
        return {"scores": scores.numpy(), "deltas": deltas.numpy()}

    return infer


def torch_fast_rcnn_infer(net) -> Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]:
    """A runtime/two_stage.py Infer over a torch FastRCNN in eval mode (float32): {"images", "rois"} ->
    {"boxes", "scores"}."""
    import torch

    def infer(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = torch.from_numpy(feeds["images"]).contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            boxes, scores = net(x, torch.from_numpy(np.ascontiguousarray(feeds["rois"], np.float32)))
        return {"boxes": boxes.numpy(), "scores": scores.numpy()}

    return infer


def evaluate_two_stage(kind: str, net, spec, dataset, proposals: list[np.ndarray],
                       progress: bool | Callable[[dict[str, Any]], None] = False,
                       limit: int | None = None) -> dict[str, Any]:
    """mAP of a torch R-CNN ("rcnn") or Fast R-CNN ("fast-rcnn") on a DetectionDataset with its proposals
    (one [P, 4] array per sample, original px), through runtime/two_stage.py and detection_metrics.py.
    limit: evaluate only the first `limit` images (the metrics then cover those)."""
    from dataclasses import replace as dc_replace

    net.eval()
    if limit is not None and limit < len(dataset):
        dataset = dc_replace(dataset, samples=list(dataset.samples[:limit]))
        proposals = proposals[:limit]
    if kind == "rcnn":
        infer = torch_rcnn_infer(net)
    else:
        infer = torch_fast_rcnn_infer(net)
    c = len(dataset.class_names)
    bar = Bar(progress, f"evaluating {kind} on {dataset.split}", len(dataset))
    times: dict[str, float] = {}
    preds = []
    try:
        for i in range(len(dataset)):
            image = dataset.load_image(i)
            if kind == "rcnn":
                boxes, scores = rcnn_raw(infer, image, proposals[i], spec.preprocess, c, FEATURE_CHUNK, times=times)
            else:
                boxes, scores = fast_rcnn_raw(infer, image, proposals[i], spec.preprocess, None, times,
                                              num_classes=c)
            det = detect_from_raw(boxes, scores, EVAL_IOU_THRESHOLD, EVAL_SCORE_THRESHOLD, EVAL_MAX_DETECTIONS)
            preds.append(Predictions(det[:, :4], det[:, 4], det[:, 5].astype(np.int64)))
            bar.update({"step": i + 1, "total": len(dataset), "text": f"{i + 1} images"})
    finally:
        bar.close()
    m = evaluate_detections(preds, dataset)
    m["stage_seconds"] = {k: round(v, 1) for k, v in times.items()}
    return m


def split_proposal_list(dataset) -> list[np.ndarray]:
    """The cached selective-search proposals of every sample of `dataset` (data/proposals.py, mode fast,
    2000 max), in sample order."""
    table = split_proposals(dataset)
    missing = [s.image_id for s in dataset.samples if s.image_id not in table]
    if missing:
        raise EnginesmithError(f"the proposal cache of {dataset.root} ({dataset.split}) lacks {len(missing)} images "
                               f"(first {missing[0]}); delete it under $ENGINESMITH_CACHE/proposals and rerun")
    return [np.asarray(table[s.image_id], np.float32).reshape(-1, 4) for s in dataset.samples]


def val_metrics(m: dict[str, Any]) -> dict[str, Any]:
    out = {k: m[k] for k in ("voc07_map", "map", "coco_ap", "coco_ap50", "coco_ap75", "images") if k in m}
    out["per_class"] = m.get("per_class")
    out["stage_seconds"] = m.get("stage_seconds")
    return out


def validate_two_stage(kind: str, net, spec, val_set, progress, metrics: dict[str, Any],
                       phases: dict[str, float]) -> None:
    """A trainer's last step: with a non-empty val_set, its mAP (evaluate_two_stage on the cached proposals) into
    metrics["val"] (val_metrics) and metrics["val_seconds"], and phases["val"]; then metrics["phase_seconds"]."""
    if val_set is not None and len(val_set):
        t0 = time.perf_counter()
        m = evaluate_two_stage(kind, net, spec, val_set, split_proposal_list(val_set), progress=progress)
        metrics["val"] = val_metrics(m)
        phases["val"] = time.perf_counter() - t0
        metrics["val_seconds"] = round(phases["val"], 1)
    metrics["phase_seconds"] = {k: round(v, 1) for k, v in phases.items()}


# ------------------------------------------------------------------------------------------- entry point


def train_rcnn(spec, train_set, val_set, recipe, seed: int, time_budget_s: float | None,
               progress) -> tuple[Any, dict[str, Any]]:
    """The three stages on train_set, then val mAP; returns (RCNN in eval mode, metrics)."""
    import torch

    c = len(train_set.class_names)
    net = spec.create(num_classes=c, seed=seed).to(memory_format=torch.channels_last)
    phases: dict[str, float] = {}
    t0 = time.perf_counter()
    props = split_proposal_list(train_set)
    regions = [label_regions(p, s.boxes, s.labels) for p, s in zip(props, train_set.samples)]
    phases["regions"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    history = finetune(net, train_set, regions, spec.preprocess, recipe, seed, time_budget_s, progress)
    phases["finetune"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    bar = Bar(progress, "R-CNN features (SVM/regression pool)", len(train_set))
    try:
        pool = build_feature_pool(net, train_set, props, spec.preprocess, seed,
                                  progress=lambda i: bar.update({"step": i, "total": len(train_set),
                                                                 "text": f"{i} images"}))
    finally:
        bar.close()
    phases["features"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    _, svm_scale, svm_logs = fit_svms(net, pool, c, seed)
    phases["svm"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    _, reg_scale, reg_counts = fit_box_regressors(net, pool, c)
    phases["ridge"] = time.perf_counter() - t0
    net.eval()
    metrics: dict[str, Any] = {
        "train_seconds": round(sum(phases.values()), 1), "epochs_run": len(history), "train_images": len(train_set),
        "history": history, "threads": torch.get_num_threads(),
        "svm": {"C": SVM_C, "pos_weight": SVM_POS_WEIGHT, "bias_mult": SVM_BIAS_MULT, "feature_scale": svm_scale,
                "pool_regions": int(len(pool.fc7)), "per_class": svm_logs},
        "box_regression": {"alpha": RIDGE_ALPHA, "feature_scale": reg_scale, "samples_per_class": reg_counts},
    }
    validate_two_stage("rcnn", net, spec, val_set, progress, metrics, phases)
    return net, metrics


__all__ = ["train_rcnn", "label_regions", "sample_regions", "warp_batch", "build_feature_pool", "fit_svms",
           "fit_box_regressors", "evaluate_two_stage", "validate_two_stage", "split_proposal_list", "FeaturePool",
           "LabelledRegions", "torch_fast_rcnn_infer"]
