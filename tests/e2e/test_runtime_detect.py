"""The torch-free runtime on real engines built by the pipeline and real photos (skimage's, of several
sizes and aspect ratios): detections equal the pipeline's own prediction path exactly, PyTorch's through
the same NMS (IoU-matched), and in-engine NMS equals host NMS; every image form gives the same answer;
the classifier and the segmenter against PyTorch and a naive per-pixel loop."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from enginesmith.backends.targets import TARGETS
from enginesmith.evaluation.predict import predict_detections
from enginesmith.data.offline_photos import base_photos
from enginesmith.errors import EnginesmithError
from enginesmith.pipeline.run import BuildConfig, build_engine
from enginesmith.runtime import Classifier, Detector, DetectorConfig, Segmenter, load
from enginesmith.runtime.nms import greedy_nms, nms_detections
from enginesmith.runtime.preprocess import preprocess

SIZE = (64, 64)


def _build(tmp_path_factory, cache_dir, name: str, **kw) -> Path:
    out = tmp_path_factory.mktemp(name) / "engine"
    build_engine(BuildConfig(cache_dir=cache_dir, out=out, latency_budget_s=0.2, calib_size=4, **kw))
    return out


@pytest.fixture(scope="module")
def yolo_ort(tmp_path_factory, cache_dir):
    """ONNX Runtime, host NMS, static batch 2 (so one image is padded)."""
    out = _build(tmp_path_factory, cache_dir, "yolo-ort", model="yolov3-tiny", target="onnxruntime",
                 precision="fp32", input_size=SIZE, batch=2)
    yield out
    shutil.rmtree(out.parent, ignore_errors=True)


@pytest.fixture(scope="module")
def yolo_ov_nms(tmp_path_factory, cache_dir):
    """OpenVINO, NMS in the engine (raw boxes/scores kept as outputs), batch 1."""
    out = _build(tmp_path_factory, cache_dir, "yolo-ov", model="yolov3-tiny", target="openvino", precision="fp32",
                 input_size=SIZE, nms="engine")
    yield out
    shutil.rmtree(out.parent, ignore_errors=True)


@pytest.fixture(scope="module")
def photos() -> list[np.ndarray]:
    return list(base_photos())  # 15 real photos, 512x512 to 1536x1539-ish, gray ones replicated


def _pytorch_detections(photos, spec_pre, score: float) -> list[np.ndarray]:
    """FP32 PyTorch (the seeded network the engines were built from) -> host NMS -> original pixels:
    rows (x1, y1, x2, y2, score, class)."""
    from enginesmith.backends.torch import TorchRunner
    from enginesmith.models import registry

    model = registry.get("yolov3-tiny").create(num_classes=80, input_size=SIZE, seed=0)
    out = []
    with TorchRunner(model, "images", ["boxes", "scores"]) as r:
        for im in photos:
            x, t = preprocess(im, spec_pre)
            raw = r.infer({"images": x[None]})
            dets, num = nms_detections(raw["boxes"], raw["scores"], 0.45, score, 100)
            d = dets[0, : num[0]]
            out.append(np.concatenate([t.to_original(d[:, :4]), d[:, 4:]], axis=1))
    return out


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else float(np.allclose(a, b))


def _assert_iou_matched(got, ref: np.ndarray, score_tol: float = 1e-4, margin: float = 1e-3, thr: float = 0.25):
    """Every detection of each side has a partner of the same class on the other (IoU > 0.99, score within
    score_tol); a detection within `margin` of the score threshold may lack one (it can flip either way)."""
    g = np.array([[*d.box, d.score, d.class_id] for d in got], dtype=np.float64).reshape(-1, 6)
    for a, b in ((g, ref), (ref, g)):
        used = np.zeros(len(b), dtype=bool)
        for row in a:
            cand = [j for j in range(len(b)) if not used[j] and int(b[j, 5]) == int(row[5])
                    and abs(b[j, 4] - row[4]) < score_tol and _iou(row[:4], b[j, :4]) > 0.99]
            if cand:
                used[cand[0]] = True
            else:
                assert row[4] - thr < margin, f"unmatched detection {row} (no partner among {len(b)})"


@pytest.mark.parametrize("engine", ["yolo_ort", "yolo_ov_nms"])
def test_detector_equals_pipeline_prediction_and_pytorch(engine, photos, request):
    folder = request.getfixturevalue(engine)
    det = load(folder)
    assert isinstance(det, Detector) and det.info.target == ("onnxruntime" if engine == "yolo_ort" else "openvino")
    got = det.batch(photos)
    assert len(got) == len(photos) and sum(map(len, got)) > 50  # untrained, but plenty of boxes above 0.25

    # 1. the pipeline's own prediction path (evaluation/predict.py, used by eval and the build's accuracy stage)
    #    with the backend's Runner: identical raw outputs, so identical detections
    with TARGETS[det.info.target].runner(det.info.engine_file, "fp32") as r:
        ref = predict_detections(lambda x: r.infer({"images": x}), photos, det.info.preprocess, det.info.batch,
                                 score_threshold=0.25, iou_threshold=0.45, max_detections=100)
    for dets, p, im in zip(got, ref, photos):
        assert [d.class_id for d in dets] == p.labels.tolist()
        assert np.allclose([d.score for d in dets], p.scores, rtol=0, atol=1e-6)
        assert np.allclose(np.array([d.box for d in dets]).reshape(-1, 4), p.boxes, atol=1e-3)
        h, w = im.shape[:2]
        assert all(0 <= d.box[0] <= d.box[2] <= w and 0 <= d.box[1] <= d.box[3] <= h for d in dets)
        assert all(d.class_name == det.class_names[d.class_id] for d in dets)

    # 2. FP32 PyTorch through the same NMS, IoU-matched
    torch_dets = _pytorch_detections(photos, det.info.preprocess, 0.25)
    for dets, ref_rows in zip(got, torch_dets):
        _assert_iou_matched(dets, ref_rows)
    det.close()


def test_engine_nms_equals_host_nms_and_thresholds(yolo_ov_nms, photos):
    det = load(yolo_ov_nms)
    assert det.info.nms == "engine" and det.uses_engine_nms()
    engine_side = det.batch(photos)
    host_side = det.configure(engine_nms=False).batch(photos)
    assert not det.uses_engine_nms()
    for a, b in zip(engine_side, host_side):  # exact ties may be ordered differently: compare as sets
        key = lambda d: (d.class_id, round(d.score, 6), tuple(round(v, 3) for v in d.box))  # noqa: E731
        assert sorted(map(key, a)) == sorted(map(key, b))
    # a stricter config is still served by the engine's NMS, and equals filtering the default result
    det.configure(engine_nms=True, score_threshold=0.33, max_detections=7)
    assert det.uses_engine_nms()
    strict = det.batch(photos)
    for s, full in zip(strict, engine_side):
        assert s == [d for d in full if d.score > 0.33][:7]
    # a config the engine cannot give (another IoU) falls back to host NMS on the raw head
    det.configure(iou_threshold=0.3, score_threshold=0.25, max_detections=100)
    assert not det.uses_engine_nms()
    x = det.raw([photos[0]])[0]
    dets, num = nms_detections(x["boxes"], x["scores"], 0.3, 0.25, 100)
    assert len(det(photos[0])) == int(num[0])
    # only some classes: NMS of that class's column alone (greedy_nms, the reference), best first, at most K
    det.configure(iou_threshold=0.45, classes=(49,), max_detections=100)
    assert not det.uses_engine_nms()
    got = det(photos[0])
    s, b = x["scores"][0, :, 49], x["boxes"][0]
    idx = np.nonzero(s > 0.25)[0]
    kept = idx[greedy_nms(b[idx], s[idx], 0.45, 100)]
    assert got and len(got) == len(kept) and all(d.class_id == 49 for d in got)
    assert np.allclose([d.score for d in got], s[kept], atol=0)
    det.close()


def test_every_image_form_gives_the_same_detections(yolo_ort, photos, tmp_path):
    det = load(yolo_ort, config=DetectorConfig(score_threshold=0.3))
    rgb = photos[1]  # 300x451
    ref = det(rgb)
    assert ref
    path = tmp_path / "photo.png"
    Image.fromarray(rgb).save(path)
    assert det(path) == ref and det(str(path)) == ref and det(Image.fromarray(rgb)) == ref
    assert det(np.ascontiguousarray(rgb[:, :, ::-1]), channels="BGR") == ref
    alpha = np.full(rgb.shape[:2] + (1,), 77, np.uint8)
    assert det(np.concatenate([rgb, alpha], axis=2)) == ref  # alpha dropped
    assert det(rgb.astype(np.uint16) * 257) == ref  # 16-bit: v / 257
    gray = rgb[:, :, 1]
    assert det(gray) == det(np.repeat(gray[:, :, None], 3, axis=2))  # gray replicated
    with pytest.raises(EnginesmithError, match="dtype float32"):
        det(rgb.astype(np.float32))
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not an image at all")
    with pytest.raises(EnginesmithError, match="cannot decode image"):
        det(bad)
    det.close()


def test_batching_padding_and_stream_keep_order(yolo_ort, yolo_ov_nms, photos):
    for folder in (yolo_ort, yolo_ov_nms):
        with load(folder) as det:
            one_by_one = [det(im) for im in photos[:5]]  # batch-2 engine: each call pads
            assert det.batch(photos[:5]) == one_by_one
            assert list(det.stream(photos[:5])) == one_by_one  # OpenVINO: the async queue, in order
            assert list(det.stream(iter(photos[:5]), requests=2)) == one_by_one


@pytest.fixture(scope="module")
def lenet(tmp_path_factory, cache_dir):
    out = _build(tmp_path_factory, cache_dir, "lenet", model="lenet5", target="onnxruntime", precision="fp32")
    yield out
    shutil.rmtree(out.parent, ignore_errors=True)


def test_classifier_matches_pytorch_softmax(lenet):
    from enginesmith.backends.torch import TorchRunner
    from enginesmith.data.digits import load_digits_32
    from enginesmith.models import registry

    images = list(load_digits_32().test_images[:20])
    clf = load(lenet, top_k=3)
    assert isinstance(clf, Classifier)
    got = clf.batch(images)
    model = registry.get("lenet5").create(num_classes=10, seed=0)
    with TorchRunner(model, "images", ["logits"]) as r:
        for im, res in zip(images, got):
            logits = r.infer({"images": preprocess(im, clf.info.preprocess)[0][None]})["logits"][0].astype(np.float64)
            p = np.exp(logits - logits.max())
            p /= p.sum()
            top = np.argsort(-p)[:3]
            assert [c.class_id for c in res] == top.tolist()
            assert np.allclose([c.score for c in res], p[top], atol=1e-5)
            assert [c.class_name for c in res] == [str(i) for i in top]
    clf.close()


def test_segmenter_label_map_against_pytorch_and_a_naive_loop(tmp_path_factory, cache_dir, photos):
    """U-Net at 188x188 (valid convolutions: a centred 4x4 label map), gray input, stretch resize."""
    from enginesmith.backends.torch import TorchRunner
    from enginesmith.models import registry

    folder = _build(tmp_path_factory, cache_dir, "unet", model="unet", target="onnxruntime", precision="fp32",
                    input_size=(188, 188))
    seg = load(folder)
    assert isinstance(seg, Segmenter)
    im = photos[1][:60, :90]  # small: the naive loop below visits every pixel
    res = seg(im)
    assert res.labels.shape == im.shape[:2] and res.scores.shape == im.shape[:2]
    x, t = preprocess(im, seg.info.preprocess)
    with TorchRunner(registry.get("unet").create(num_classes=2, input_size=(188, 188), seed=0), "images",
                     ["logits"]) as r:
        logits = r.infer({"images": x[None]})["logits"][0]
    oh, ow = logits.shape[1:]
    top, left = (188 - oh) // 2, (188 - ow) // 2
    labels = logits.argmax(axis=0)
    for y in range(im.shape[0]):
        for xx in range(im.shape[1]):
            iy, ix = int(np.floor((y + 0.5) * t.ratio_y + t.pad_y)) - top, int(np.floor((xx + 0.5) * t.ratio_x + t.pad_x)) - left
            want = labels[iy, ix] if 0 <= iy < oh and 0 <= ix < ow else -1
            assert res.labels[y, xx] == want, (y, xx)
    assert (res.labels >= 0).any() and (res.labels == -1).any()
    seg.close()
    shutil.rmtree(folder.parent, ignore_errors=True)
