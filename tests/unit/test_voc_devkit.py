"""The default VOC metric (`devkit`) against voc_eval.py itself (tests/unit/reference_voc_eval.py, a line-by-line
transcription of darknet's scripts/voc_eval.py), bit for bit, on VOC-format folders read by enginesmith's reader.

Each case writes a VOC folder (Annotations/*.xml with 1-based inclusive integer boxes, images, an image set),
random detections (jittered copies of the ground truth, duplicates, far-off boxes, scores drawn from a few
values so that ties are common, difficult objects, classes without detections or without ground truth), and
the detection files the reference pipelines write (`image_id score x1+1 y1+1 x2+1 y2+1`, full precision).
voc_eval.py reads those files; enginesmith's voc_metrics reads the dataset and the in-memory predictions.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from enginesmith.data.voc import read_voc
from enginesmith.evaluation.detection_metrics import Predictions, voc_metric_label, voc_metrics
import reference_voc_eval

CLASSES = ("cat", "dog", "bird", "boat")


def _xml(image_id: str, width: int, height: int, objects: list[tuple[str, int, tuple[int, int, int, int]]]) -> str:
    parts = [f"<annotation><filename>{image_id}.png</filename><size><width>{width}</width><height>{height}</height>"
             "<depth>3</depth></size>"]
    for name, difficult, (x1, y1, x2, y2) in objects:
        parts.append(f"<object><name>{name}</name><pose>Unspecified</pose><truncated>0</truncated>"
                     f"<difficult>{difficult}</difficult><bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin>"
                     f"<xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>")
    return "".join(parts) + "</annotation>"


def write_case(root: Path, rng: np.random.Generator, n_images: int) -> list[list[tuple[str, int, tuple]]]:
    """A VOC folder under root; returns each image's objects (name, difficult, 1-based inclusive box)."""
    for d in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    # the last class never has ground truth in some cases: no AP, left out of the mean
    present = CLASSES if rng.random() < 0.5 else CLASSES[:-1]
    gts = []
    for i in range(n_images):
        w, h = int(rng.integers(40, 120)), int(rng.integers(40, 120))
        objects = []
        for _ in range(int(rng.integers(0, 6))):
            x1, y1 = int(rng.integers(1, w - 8)), int(rng.integers(1, h - 8))
            x2, y2 = int(rng.integers(x1 + 1, min(w, x1 + 60) + 1)), int(rng.integers(y1 + 1, min(h, y1 + 60) + 1))
            objects.append((str(rng.choice(present)), int(rng.random() < 0.2), (x1, y1, x2, y2)))
        Image.new("RGB", (w, h)).save(root / "JPEGImages" / f"im{i:03d}.png")
        (root / "Annotations" / f"im{i:03d}.xml").write_text(_xml(f"im{i:03d}", w, h, objects))
        gts.append(objects)
    (root / "ImageSets/Main/test.txt").write_text("".join(f"im{i:03d}\n" for i in range(n_images)))
    return gts


def random_predictions(rng: np.random.Generator, gts: list) -> list[Predictions]:
    """Continuous x1y1x2y2 boxes (enginesmith's frame: VOC box - (1, 1, 0, 0)) near the ground truth and elsewhere."""
    levels = rng.choice([3, 5, 1000])  # few score values: many ties
    out = []
    for objects in gts:
        boxes, labels = [], []
        for name, _, (x1, y1, x2, y2) in objects:
            for _ in range(int(rng.choice([0, 1, 1, 2, 3]))):  # missed, found, duplicates
                w, h = x2 - x1 + 1, y2 - y1 + 1
                boxes.append(np.array([x1 - 1, y1 - 1, x2, y2], float) + rng.normal(0, 0.12, 4) * [w, h, w, h])
                labels.append(CLASSES.index(name) if rng.random() > 0.1 else int(rng.integers(0, len(CLASSES))))
        for _ in range(int(rng.integers(0, 4))):
            xy = rng.uniform(0, 80, 2)
            boxes.append(np.concatenate([xy, xy + rng.uniform(2, 50, 2)]))
            labels.append(int(rng.integers(0, len(CLASSES))))
        b = np.asarray(boxes, np.float32).reshape(-1, 4)
        b[:, 2:] = np.maximum(b[:, 2:], b[:, :2] + 0.5)
        if rng.random() < 0.5:
            b = np.round(b)  # integer boxes, as many detectors print them: exact IoU ties with the threshold
        scores = (rng.integers(1, levels + 1, len(b)) / levels).astype(np.float32)
        out.append(Predictions(b, scores, np.asarray(labels, np.int64)))
    return out


def write_detection_files(folder: Path, dataset, predictions: list[Predictions]) -> str:
    """One file per class as py-faster-rcnn / ssd.pytorch / darknet write them (box + 1 on all four), in
    full precision; returns voc_eval.py's detpath pattern."""
    folder.mkdir()
    for c, name in enumerate(CLASSES):
        with open(folder / f"det_test_{name}.txt", "w") as f:
            for s, p in zip(dataset.samples, predictions):
                for box, score in zip(p.boxes[p.labels == c], p.scores[p.labels == c]):
                    x1, y1, x2, y2 = (float(v) + 1.0 for v in box)
                    f.write(f"{s.image_id} {float(score)!r} {x1!r} {y1!r} {x2!r} {y2!r}\n")
    return str(folder / "det_test_{:s}.txt")


def reference_aps(root: Path, tmp: Path, detpath: str, use_07: bool) -> dict[str, float | None]:
    """voc_eval.py's AP per class; None for a class without detections, where voc_eval.py itself fails
    (`BB[sorted_ind, :]` on an empty array raises IndexError; the reference pipelines always have some)."""
    annopath = str(root / "Annotations" / "{:s}.xml")
    imageset = str(root / "ImageSets/Main/test.txt")
    out: dict[str, float | None] = {}
    for name in CLASSES:
        if not Path(detpath.format(name)).read_text():
            with pytest.raises(IndexError):
                reference_voc_eval.voc_eval(detpath, annopath, imageset, name, str(tmp / "cache"))
            out[name] = None
            continue
        out[name] = float(reference_voc_eval.voc_eval(detpath, annopath, imageset, name, str(tmp / "cache"),
                                                      ovthresh=0.5, use_07_metric=use_07)[2])
    return out


@pytest.mark.parametrize("seed", range(120))
@pytest.mark.filterwarnings("ignore:invalid value encountered in divide:RuntimeWarning")  # voc_eval.py on npos 0
def test_devkit_metric_is_voc_eval_bit_for_bit(tmp_path, seed, capsys):
    rng = np.random.default_rng(seed)
    root = tmp_path / "voc"
    gts = write_case(root, rng, int(rng.integers(1, 10)))
    dataset = read_voc(root, "test")
    predictions = random_predictions(rng, gts)
    detpath = write_detection_files(tmp_path / "dets", dataset, predictions)
    ref07 = reference_aps(root, tmp_path, detpath, use_07=True)
    ref_all = reference_aps(root, tmp_path, detpath, use_07=False)
    capsys.readouterr()  # voc_eval.py prints its progress

    got = voc_metrics(predictions, dataset)
    assert got["voc_convention"] == "devkit"
    evaluated = []
    for name in CLASSES:
        entry = got["per_class"][name]
        if entry["positives"] == 0:  # voc_eval.py gives 0 or nan there; enginesmith reports no AP
            assert entry["voc07"] is None and entry["ap"] is None
            continue
        evaluated.append(name)
        if ref07[name] is None:  # no detections: recall never rises, AP 0
            assert entry["voc07"] == entry["ap"] == 0.0 and entry["detections"] == 0
            ref07[name] = ref_all[name] = 0.0
            continue
        assert entry["voc07"] == ref07[name], (name, entry, ref07[name])
        assert entry["ap"] == ref_all[name], (name, entry, ref_all[name])
    assert got["voc07_map"] == (float(np.mean([ref07[n] for n in evaluated])) if evaluated else 0.0)
    assert got["map"] == (float(np.mean([ref_all[n] for n in evaluated])) if evaluated else 0.0)


def test_recall_of_exactly_three_tenths_misses_the_devkit_point(tmp_path, capsys):
    """10 positives, 3 found first, then 3 false positives, then 3 more found: recall 3/10 and 6/10 exactly.
    voc_eval.py's grid point 0.30000000000000004 is not reached by 0.3, nor 0.6000000000000001 by 0.6."""
    root = tmp_path / "voc"
    for d in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / d).mkdir(parents=True)
    (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    objects = [("cat", 0, (1 + 10 * k, 1, 8 + 10 * k, 8)) for k in range(10)]
    Image.new("RGB", (110, 30)).save(root / "JPEGImages/im000.png")
    (root / "Annotations/im000.xml").write_text(_xml("im000", 110, 30, objects))
    (root / "ImageSets/Main/test.txt").write_text("im000\n")
    dataset = read_voc(root, "test")
    hits = [np.array([10 * k, 0, 8 + 10 * k, 8], np.float32) for k in range(6)]
    misses = [np.array([0, 20, 5, 25], np.float32)] * 3
    boxes = np.stack(hits[:3] + misses + hits[3:])
    pred = [Predictions(boxes, np.linspace(0.9, 0.1, 9).astype(np.float32), np.zeros(9, np.int64))]
    detpath = write_detection_files(tmp_path / "dets", dataset, pred)
    ref07 = reference_aps(root, tmp_path, detpath, use_07=True)["cat"]
    capsys.readouterr()
    devkit = voc_metrics(pred, dataset)["per_class"]["cat"]["voc07"]
    continuous = voc_metrics(pred, dataset, convention="continuous")["per_class"]["cat"]["voc07"]
    # precision 1 up to recall .3, then 6/9 at recall .6: devkit 3 x 1 + 3 x 6/9 = 5/11; exact k/10: 4 x 1 + 3 x 6/9
    assert devkit == ref07 == pytest.approx(5 / 11)
    assert continuous == pytest.approx(6 / 11)


def test_reports_name_the_convention():
    assert "voc_eval.py" in voc_metric_label("devkit")
    assert "continuous" in voc_metric_label("continuous")
    from enginesmith.errors import EnginesmithError

    with pytest.raises(EnginesmithError, match="unknown VOC metric convention 'matlab'; use devkit or continuous"):
        voc_metric_label("matlab")
