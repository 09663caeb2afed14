"""Faster R-CNN training (training/faster_rcnn.py) around the static-shape faster-rcnn-vgg16-slim.

Checked against independent references: torchvision's own RegionProposalNetwork (eval mode, the engine's
test settings) against the engine's ProposalDecode on the same features; a few steps on one synthetic
image must teach the ENGINE's module (its own forward, not torchvision's) to find the object; the CLI path
(`loop.train`) on a tiny offline set writes a checkpoint whose reloaded weights, run through a per-image
loop + runtime NMS + detection_metrics, give the val mAP the trainer recorded."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

NAME = "faster-rcnn-vgg16-slim"


def _iou(a, b) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _sorted_rows(b: np.ndarray) -> np.ndarray:
    b = np.round(np.asarray(b, np.float64), 3)
    return b[np.lexsort(b.T[::-1])]


def test_training_heads_share_the_engine_modules_and_its_proposals() -> None:
    from torchvision.models.detection.image_list import ImageList

    from enginesmith.models import registry
    from enginesmith.training.faster_rcnn import make_training_heads

    torch.set_num_threads(1)
    spec = registry.get(NAME)
    assert spec.trainer == "faster-rcnn" and spec.two_stage is None
    net = spec.create(input_size=(128, 128)).eval()
    rpn, heads = make_training_heads(net)
    assert rpn.head is net.rpn.head and rpn.anchor_generator is net.rpn.anchor_generator
    assert heads.box_roi_pool is net.roi_heads.box_roi_pool and heads.box_head is net.roi_heads.box_head
    assert heads.box_predictor is net.roi_heads.box_predictor
    x = torch.randn(1, 3, 128, 128, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        feats = {"0": net.backbone(x)}
        images = ImageList(x, [(128, 128)])
        tv_anchors = net.rpn.anchor_generator(images, list(feats.values()))[0]
        assert torch.equal(tv_anchors, net.decode.rpn.anchors)  # training anchors == the engine's baked ones
        rpn.eval()
        tv_props = rpn(images, feats)[0][0].numpy()
        ours = net.forward_parts(x)
    mine = ours["proposals"][ours["valid"] > 0].numpy()
    assert len(mine) == len(tv_props) == 300
    np.testing.assert_allclose(_sorted_rows(mine), _sorted_rows(tv_props), atol=2e-3)


def _synthetic(size: int = 128) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A uint8 noise image with a bright 40x60 rectangle (class 11, 'square') at a fixed place."""
    rng = np.random.default_rng(0)
    img = rng.integers(0, 80, (size, size, 3), dtype=np.uint8)
    box = np.array([[30.0, 40.0, 70.0, 100.0]], np.float32)
    img[40:100, 30:70] = (230, 210, 40)
    return img, box, np.array([11])


def test_a_few_steps_teach_the_engine_module_to_find_an_object() -> None:
    from enginesmith.models import registry
    from enginesmith.runtime.preprocess import PreprocessSpec
    from enginesmith.training.faster_rcnn import (faster_rcnn_losses, init_for_training, make_training_heads,
                                                  training_sample)

    torch.set_num_threads(1)
    torch.manual_seed(0)
    spec = registry.get(NAME)
    net = spec.create(input_size=(128, 128))
    init_for_training(net)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    rpn, heads = make_training_heads(net)
    pre = PreprocessSpec(input_size=(128, 128), resize="stretch", color="RGB", scale=spec.preprocess.scale,
                         mean=spec.preprocess.mean, std=spec.preprocess.std)
    img, box, lab = _synthetic()
    x0, b0, l0 = training_sample(img, box, lab, pre, flip=False)
    x1, b1, l1 = training_sample(img, box, lab, pre, flip=True)
    assert l0.tolist() == [12] and np.allclose(b1[0], [128 - 70, 40, 128 - 30, 100])
    x = torch.from_numpy(np.stack([x0, x0]))
    targets = [{"boxes": torch.from_numpy(b0), "labels": torch.from_numpy(l0)}] * 2
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    net.train()
    first = last = None
    for _ in range(40):
        losses = faster_rcnn_losses(net, rpn, heads, x, targets)
        opt.zero_grad()
        losses["loss"].backward()
        opt.step()
        last = float(losses["loss"].detach())
        first = first if first is not None else last
    assert last < 0.5 * first
    after = net.state_dict()
    for k in ("rpn.head.cls_logits.weight", "roi_heads.box_predictor.cls_score.weight", "backbone.0.0.weight"):
        assert not torch.equal(before[k], after[k]), k
    net.eval()
    with torch.no_grad():
        boxes, scores = net(x[:1])  # the static-shape engine forward
    best = int(scores[0].max(dim=1).values.argmax())
    assert int(scores[0, best].argmax()) == 11 and float(scores[0, best].max()) > 0.5
    assert _iou(boxes[0, best].tolist(), box[0].tolist()) > 0.5


def test_train_writes_a_checkpoint_whose_weights_give_the_recorded_val_map(tiny_offline, tmp_path: Path) -> None:
    from enginesmith.evaluation.detection_metrics import Predictions, evaluate_detections
    from enginesmith.data.datasets import open_dataset
    from enginesmith.models import registry
    from enginesmith.runtime.nms import nms_detections
    from enginesmith.runtime.preprocess import preprocess
    from enginesmith.training.checkpoints import read_checkpoint
    from enginesmith.training.loop import train
    from enginesmith.training.recipes import recipe_for

    recipe = replace(recipe_for(NAME, "detection"), epochs=1)
    res = train(NAME, tiny_offline, out=tmp_path / "frcnn.pt", recipe=recipe, progress=False, threads=1)
    m = res.metrics
    assert m["epochs_run"] == 1 and np.isfinite(m["history"][0]["loss"]) and m["steps"] == 7
    assert {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg"} <= set(m["history"][0])
    assert m["val"]["images"] == 3
    meta = read_checkpoint(res.checkpoint)
    assert meta["model"] == NAME and meta["num_classes"] == 16

    # independent re-evaluation of the checkpoint: one image per forward, runtime NMS, the metric code
    spec = registry.get(NAME)
    net = spec.create(num_classes=16)
    spec.load_weights(net, res.checkpoint)
    net.eval()
    val = open_dataset(tiny_offline, "val")
    preds = []
    for i in range(len(val)):
        img = val.load_image(i)
        x, t = preprocess(img, spec.preprocess)
        with torch.no_grad():
            boxes, scores = net(torch.from_numpy(x[None]))
        dets, num = nms_detections(boxes.numpy(), scores.numpy(), 0.45, 0.005, 200)
        d = dets[0, : int(num[0])]
        b = t.to_original(d[:, :4]).astype(np.float32)
        b[:, 0::2] = b[:, 0::2].clip(0, img.shape[1])
        b[:, 1::2] = b[:, 1::2].clip(0, img.shape[0])
        preds.append(Predictions(b, d[:, 4].astype(np.float32), d[:, 5].astype(np.int64)))
    assert evaluate_detections(preds, val)["voc07_map"] == pytest.approx(m["val"]["voc07_map"], abs=1e-6)
    again = train(NAME, tiny_offline, out=tmp_path / "frcnn.pt", recipe=recipe, progress=False, threads=1)
    assert again.reused and again.metrics["val"]["voc07_map"] == m["val"]["voc07_map"]
