"""evaluate(): a built engine and the same PyTorch model agree on a tiny VOC folder written here, box
mapping back to the original image is exact enough for mAP 1 with an oracle detector, and bad input
gives one-line errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from enginesmith.evaluation.classification_metrics import classification_metrics  # noqa: E402
from enginesmith.benchmarks.evaluate import (  # noqa: E402
    EVAL_MAX_DETECTIONS,
    EVAL_SCORE_THRESHOLD,
    engine_predictor,
    evaluate,
    evaluate_classifier,
    evaluate_detector,
    model_predictor,
    predictor_for,
    render_metrics,
    torch_predictor,
)
from enginesmith.errors import EnginesmithError  # noqa: E402
from enginesmith.pipeline.run import BuildConfig, build_engine  # noqa: E402
from enginesmith.runtime.preprocess import PreprocessSpec  # noqa: E402

CLASSES = ("circle", "square", "triangle", "star")
SIZE = (64, 64)


def _write_voc(root: Path, n: int = 8, seed: int = 0) -> list[list[tuple[int, int, int, int, int]]]:
    """A VOC folder (classes.txt, PNG images of varied sizes, xml with 1-based inclusive boxes, test split):
    one red filled rectangle of class 0 and one blue one of class k in 1..3 (green 60k) per image, apart,
    on a dark noisy background. Returns per image the (class, x1, y1, x2, y2) continuous boxes."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for d in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("".join(f"{c}\n" for c in CLASSES))
    truth = []
    for i in range(n):
        h, w = int(rng.integers(70, 130)), int(rng.integers(70, 130))
        img = rng.integers(0, 40, (h, w, 3)).astype(np.uint8)
        objs = []
        blue = int(rng.integers(1, 4))
        for cls, colour in ((0, (255, 0, 0)), (blue, (0, 60 * blue, 255))):
            while True:  # the two rectangles do not touch, so each stays whole
                bw, bh = int(rng.integers(15, w // 2)), int(rng.integers(15, h // 2))
                x1, y1 = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
                if not objs or (x1 > objs[0][3] or x1 + bw < objs[0][1] or y1 > objs[0][4] or y1 + bh < objs[0][2]):
                    break
            img[y1 : y1 + bh, x1 : x1 + bw] = colour
            objs.append((cls, x1, y1, x1 + bw, y1 + bh))
        Image.fromarray(img).save(root / "JPEGImages" / f"{i:03d}.png")
        xml = [f"<annotation><filename>{i:03d}.png</filename><size><width>{w}</width><height>{h}</height>"
               "<depth>3</depth></size>"]
        for cls, x1, y1, x2, y2 in objs:
            xml.append(f"<object><name>{CLASSES[cls]}</name><difficult>0</difficult><bndbox><xmin>{x1 + 1}</xmin>"
                       f"<ymin>{y1 + 1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>")
        (root / "Annotations" / f"{i:03d}.xml").write_text("".join(xml) + "</annotation>\n")
        truth.append(objs)
    (root / "ImageSets" / "Main" / "test.txt").write_text("".join(f"{i:03d}\n" for i in range(n)))
    return truth


@pytest.fixture(scope="module")
def voc(tmp_path_factory) -> tuple[Path, list]:
    root = tmp_path_factory.mktemp("voc")
    truth = _write_voc(root)
    yield root, truth
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def yolo(tmp_path_factory, cache_dir) -> tuple[Path, Path]:
    """An untrained yolov3-tiny (4 classes, 64x64) saved as a training checkpoint, and its ONNX Runtime engine."""
    from enginesmith.models import registry

    tmp = tmp_path_factory.mktemp("yolo")
    spec = registry.get("yolov3-tiny")
    model = spec.create(num_classes=len(CLASSES), input_size=SIZE, seed=3)
    ckpt = tmp / "yolo.pt"
    torch.save({"model": "yolov3-tiny", "state_dict": model.state_dict(), "num_classes": len(CLASSES),
                "input_size": list(SIZE), "class_names": list(CLASSES)}, ckpt)
    out = tmp / "engine"
    build_engine(BuildConfig(model="yolov3-tiny", target="onnxruntime", precision="fp32", weights=ckpt,
                             input_size=SIZE, num_classes=len(CLASSES), cache_dir=cache_dir, out=out,
                             latency_budget_s=0.3))
    yield ckpt, out
    shutil.rmtree(tmp, ignore_errors=True)


def _match_fraction(a, b) -> float:
    """Fraction of a's detections that b has too (same class, box within 0.05 px, score within 1e-4)."""
    hit = total = 0
    for pa, pb in zip(a, b):
        for box, score, label in zip(pa.boxes, pa.scores, pa.labels):
            total += 1
            same = (pb.labels == label) & (np.abs(pb.scores - score) < 1e-4) & np.all(np.abs(pb.boxes - box) < 0.05, axis=1)
            hit += bool(same.any())
    return hit / max(total, 1)


def test_engine_and_pytorch_agree_on_a_voc_folder(voc, yolo):
    root, _ = voc
    ckpt, engine = yolo
    by_engine = evaluate(engine, root, "test", progress=False)
    by_name = evaluate("yolov3-tiny", root, "test", weights=ckpt, progress=False)  # classes/size from the checkpoint
    by_ckpt = evaluate(ckpt, root, "test", progress=False)  # the checkpoint names its model
    for key in ("voc07_map", "map", "coco_ap", "coco_ap50", "coco_ap75"):
        assert by_engine[key] == pytest.approx(by_name[key], abs=2e-3), key
        assert by_ckpt[key] == by_name[key], key
    assert by_engine["timing"]["images"] == 8 and by_engine["timing"]["images_per_s"] > 0
    assert by_engine["timing"]["batch"] == 1  # the static batch of the engine
    json.dumps(by_engine)  # the CLI can write it as JSON
    text = render_metrics(by_engine)
    assert f"{100 * by_engine['voc07_map']:6.2f}" in text and "circle" in text
    assert by_engine["voc_convention"] == "devkit" and "VOC metric: VOC07 mAP@0.5 (VOC devkit voc_eval.py" in text
    # Prediction by prediction (untrained: near-zero mAP, but thousands of low-score boxes to compare).
    from enginesmith.data.datasets import open_dataset

    ds = open_dataset(root, "test")
    images = [ds.load_image(i) for i in range(len(ds))]
    with predictor_for(engine) as pe, model_predictor("yolov3-tiny", ckpt, batch_size=3) as pt:
        a, b = pe(images), pt(images)
    assert sum(len(p.scores) for p in a) > 8 * 20
    assert _match_fraction(a, b) > 0.97 and _match_fraction(b, a) > 0.97
    for p, im in zip(a, images):  # boxes are in original-image pixels, inside the image
        h, w = im.shape[:2]
        assert p.boxes[:, [0, 2]].max() <= w and p.boxes[:, [1, 3]].max() <= h and p.boxes.min() >= 0
        assert p.scores.min() > EVAL_SCORE_THRESHOLD and len(p.scores) <= EVAL_MAX_DETECTIONS


class Oracle(torch.nn.Module):
    """Finds the red rectangle (class 0) and the blue one (class = its green level / 60) in an input in
    [0, 1]: boxes [N, 2, 4] input pixels from the extent of red / blue pixels, scores [N, 2, 4]."""

    def _extent(self, mask: torch.Tensor) -> torch.Tensor:
        n, h, w = mask.shape
        xs = torch.arange(w, dtype=torch.float32).view(1, 1, w).expand(n, h, w)
        ys = torch.arange(h, dtype=torch.float32).view(1, h, 1).expand(n, h, w)
        big = torch.full_like(xs, 1e9)
        x1 = torch.where(mask, xs, big).amin(dim=(1, 2))
        y1 = torch.where(mask, ys, big).amin(dim=(1, 2))
        x2 = torch.where(mask, xs + 1, -big).amax(dim=(1, 2))
        y2 = torch.where(mask, ys + 1, -big).amax(dim=(1, 2))
        return torch.stack([x1, y1, x2, y2], dim=1)

    def forward(self, x: torch.Tensor):
        r, g, b = x[:, 0], x[:, 1], x[:, 2]
        blue_mask = (b > 0.5) & (r < 0.5)
        boxes = torch.stack([self._extent((r > 0.5) & (b < 0.5)), self._extent(blue_mask)], dim=1)
        n = x.shape[0]
        green = torch.where(blue_mask, g, torch.zeros_like(g)).amax(dim=(1, 2))  # the interior's exact level
        cls = torch.round(green * 255 / 60).long().clamp(1, 3)
        scores = torch.zeros(n, 2, 4)
        scores[:, 0, 0] = 0.9
        scores[torch.arange(n), 1, cls] = 0.8
        return boxes, scores


def test_oracle_detector_scores_map_one_through_letterbox_and_back(voc):
    from enginesmith.data.datasets import open_dataset

    root, truth = voc
    ds = open_dataset(root, "test")
    oracle = Oracle()
    spec = PreprocessSpec(input_size=(160, 160), resize="letterbox", pad_value=0)
    with torch_predictor(oracle, "detection", spec, CLASSES, ("boxes", "scores"), batch_size=3) as p:
        m = evaluate_detector(p, ds, progress=False)
    # Letterboxing to 160 resamples each image by up to 2.3x: edges land within a pixel, IoU >> 0.5.
    assert m["map"] == pytest.approx(1.0) and m["voc07_map"] == pytest.approx(1.0)
    assert m["coco_ap50"] == pytest.approx(1.0)
    assert m["coco_ap"] > 0.9  # the oracle's boxes are nearly pixel-exact
    present = {CLASSES[0]} | {CLASSES[o[1][0]] for o in truth}
    assert m["classes_evaluated"] == len(present)
    with torch_predictor(oracle, "detection", spec, CLASSES, ("boxes", "scores"), batch_size=3) as p:
        c = evaluate_detector(p, ds, progress=False, voc_metric="continuous")
    assert c["voc_convention"] == "continuous" and c["map"] == pytest.approx(1.0)
    assert "VOC metric: VOC07 mAP@0.5 (continuous boxes" in render_metrics({**c, "timing": m["timing"]})


@pytest.fixture(scope="module")
def lenet(tmp_path_factory, cache_dir) -> Path:
    out = tmp_path_factory.mktemp("lenet") / "engine"
    build_engine(BuildConfig(model="lenet5", target="onnxruntime", precision="fp32", batch=4, cache_dir=cache_dir,
                             out=out, latency_budget_s=0.3))
    yield out
    shutil.rmtree(out.parent, ignore_errors=True)


def test_classifier_engine_and_pytorch_agree_with_a_naive_top1(lenet):
    from enginesmith.data.digits import load_digits_32
    from enginesmith.models import registry
    from enginesmith.runtime.preprocess import preprocess_batch

    d = load_digits_32()
    images, labels = d.test_images[:198], d.test_labels[:198]  # 198 = 49 batches of 4 + a padded one
    with engine_predictor(lenet) as pe:
        assert pe.batch == 4
        m_engine = evaluate_classifier(pe, images, labels, d.class_names, progress=False)
    with model_predictor("lenet5", batch_size=16) as pt:
        m_torch = evaluate_classifier(pt, list(images), labels, d.class_names, progress=False)
    spec = registry.get("lenet5")
    model = spec.create(seed=0)
    with torch.inference_mode():
        logits = model(torch.from_numpy(preprocess_batch(list(images), spec.preprocess))).numpy()
    naive_top1 = float(np.mean(np.argmax(logits, 1) == labels))
    assert m_torch["top1"] == pytest.approx(naive_top1)
    assert m_engine["top1"] == pytest.approx(naive_top1, abs=1 / 198)
    assert m_engine["top5"] == pytest.approx(classification_metrics(logits, labels)["top5"], abs=1 / 198)
    assert m_engine["images"] == 198 and m_engine["timing"]["images_per_s"] > 0
    # The same through evaluate() and the built-in "digits" source (data/classification.py), first 100.
    by_engine = evaluate(lenet, "digits", "test", limit=100, progress=False)
    by_torch = evaluate("lenet5", "digits", "test", limit=100, progress=False)
    assert by_engine["images"] == by_torch["images"] == 100
    assert by_engine["top1"] == pytest.approx(float(np.mean(np.argmax(logits[:100], 1) == labels[:100])), abs=0.01)
    assert by_torch["top1"] == pytest.approx(float(np.mean(np.argmax(logits[:100], 1) == labels[:100])))


def test_class_mapping_by_name():
    from enginesmith.benchmarks.evaluate import class_mapping

    assert class_mapping(["a", "b"], ["a", "b"], "m", "d") == (None, [])
    assert class_mapping(["0", "1"], ["a", "b"], "m", "d") == (None, [])  # generic names: counts only
    mapping, notes = class_mapping(["__background__", "b", "N/A", "a"], ["a", "b"], "m", "d")
    assert mapping.tolist() == [-1, 1, -1, 0] and notes
    _, notes = class_mapping(["tvmonitor", "b"], ["tv", "b"], "m", "d")
    assert "tvmonitor/tv" in notes[0]
    with pytest.raises(EnginesmithError, match="different order"):
        class_mapping(["b", "a"], ["a", "b"], "m", "d")
    with pytest.raises(EnginesmithError, match="predicts 3 classes but d has 2"):
        class_mapping(["0", "1", "2"], ["a", "b"], "m", "d")


def test_clear_errors(tmp_path, voc, yolo, lenet, monkeypatch):
    root, _ = voc
    ckpt, engine = yolo
    with pytest.raises(EnginesmithError, match="no manifest.json"):
        predictor_for(tmp_path)
    with pytest.raises(EnginesmithError, match="unknown VOC metric convention 'matlab'; use devkit or continuous"):
        evaluate(engine, root, "test", progress=False, voc_metric="matlab")
    manifest = json.loads((engine / "manifest.json").read_text())
    bad = tmp_path / "dense"
    bad.mkdir()
    (bad / "manifest.json").write_text(json.dumps({**manifest, "task": "dense", "model": "unet"}))
    shutil.copy(engine / manifest["engine"], bad / manifest["engine"])  # a whole engine folder, of a task eval lacks
    with pytest.raises(EnginesmithError, match="dense engine"):
        predictor_for(bad)
    with pytest.raises(EnginesmithError, match="80 classes but dataset .* has 4"):
        evaluate("yolov3-tiny", root, "test", input_size=SIZE, progress=False)  # COCO's 80 vs the folder's 4
    with pytest.raises(EnginesmithError, match="10 classes but .* has 4"):
        with predictor_for(lenet) as p:
            evaluate_classifier(p, [np.zeros((32, 32, 3), np.uint8)] * 4, [0, 1, 2, 3], CLASSES, progress=False)
    from enginesmith.backends.targets import TARGETS

    monkeypatch.setattr(TARGETS["onnxruntime"].backend, "available", lambda: (False, "onnxruntime cannot be imported"))
    with pytest.raises(EnginesmithError, match="onnxruntime engine but onnxruntime is not usable"):
        predictor_for(engine)
    monkeypatch.undo()
    with pytest.raises(EnginesmithError, match="not found"):
        predictor_for("no/such/engine")
    with pytest.raises(EnginesmithError, match="unknown model"):
        predictor_for("yolov3-tinyy")
    plain = tmp_path / "plain.pt"
    torch.save({"state_dict": {}}, plain)
    with pytest.raises(EnginesmithError, match="does not say which model"):
        predictor_for(plain)
