"""Sharded evaluation (benchmarks/sharded_eval.py, `enginesmith eval ENGINE --cluster ...`) on real engines, real
child processes and a real Ray: the metrics equal the single-process ones exactly (every field but timing), for a
detector (mAP, COCO AP, per-class AP) and a classifier (top-1/top-5), with uneven shards and more shards than
images; a failed shard is one line and a non-zero exit; a worker that cannot read the engine path says it must be
shared; on a simulated two-node Ray cluster the shards run on both nodes (slow)."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
ray = pytest.importorskip("ray")

from enginesmith.benchmarks.evaluate import engine_predictor, evaluate  # noqa: E402
from enginesmith.benchmarks.sharded_eval import SHARD_FUNC, evaluate_on_cluster, shard_ranges  # noqa: E402
from enginesmith.cluster.jobs import Job  # noqa: E402
from enginesmith.cluster.local import LocalExecutor  # noqa: E402
from enginesmith.errors import EnginesmithError  # noqa: E402
from enginesmith.pipeline.run import BuildConfig, build_engine  # noqa: E402

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

CLASSES = ("circle", "square", "triangle", "star")
SIZE = (64, 64)
N_IMAGES = 7  # not a multiple of the shard counts below


def _metrics(m: dict) -> dict:
    """Every field of a result but how long it took and where it ran: the metrics, per-class AP and counts,
    pycocotools' summary (less the seconds it prints), the model, dataset, split, VOC convention, post-processing
    and warnings."""
    out = {k: v for k, v in m.items() if k not in ("timing", "cluster")}
    if "coco_summary" in out:
        out["coco_summary"] = re.sub(r"\(t=[0-9.]+s\)", "(t=...)", out["coco_summary"])
    return out


def _images(root: Path, n: int, rng: np.random.Generator) -> list[np.ndarray]:
    from PIL import Image

    out = []
    for i in range(n):
        h, w = int(rng.integers(60, 130)), int(rng.integers(60, 130))
        img = rng.integers(0, 60, (h, w, 3)).astype(np.uint8)
        for _ in range(2):
            bw, bh = int(rng.integers(12, w // 2)), int(rng.integers(12, h // 2))
            x, y = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
            img[y : y + bh, x : x + bw] = rng.integers(80, 256, 3)
        Image.fromarray(img).save(root / "JPEGImages" / f"{i:03d}.png")
        out.append(img)
    return out


def _pseudo_labelled_voc(root: Path, engine: Path, n: int = N_IMAGES, seed: int = 0) -> None:
    """A VOC folder of n noisy PNGs (60-130 px a side) whose ground truth is the engine's own 3 best detections of
    each image moved by up to 2 px, plus one box of a random class nothing was aimed at: an untrained engine then
    scores mAPs well inside (0, 1) that change when an image's predictions are lost, doubled or swapped."""
    rng = np.random.default_rng(seed)
    for d in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("".join(f"{c}\n" for c in CLASSES))
    images = _images(root, n, rng)
    with engine_predictor(engine) as p:
        preds = p(images)
    for i, (img, pred) in enumerate(zip(images, preds)):
        h, w = img.shape[:2]
        objs = []
        for k in np.argsort(-pred.scores, kind="stable")[:3]:
            objs.append((int(pred.labels[k]), pred.boxes[k] + rng.integers(-2, 3, 4)))
        x, y = int(rng.integers(0, w - 20)), int(rng.integers(0, h - 20))
        objs.append((int(rng.integers(0, len(CLASSES))), np.array([x, y, x + 19, y + 19], np.float64)))
        xml = [f"<annotation><filename>{i:03d}.png</filename><size><width>{w}</width><height>{h}</height>"
               "<depth>3</depth></size>"]
        for cls, box in objs:
            x1, y1 = int(np.clip(np.floor(box[0]), 0, w - 3)), int(np.clip(np.floor(box[1]), 0, h - 3))
            x2, y2 = int(np.clip(np.ceil(box[2]), x1 + 2, w)), int(np.clip(np.ceil(box[3]), y1 + 2, h))
            xml.append(f"<object><name>{CLASSES[cls]}</name><difficult>0</difficult><bndbox><xmin>{x1 + 1}</xmin>"
                       f"<ymin>{y1 + 1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>")
        (root / "Annotations" / f"{i:03d}.xml").write_text("".join(xml) + "</annotation>\n")
    (root / "ImageSets" / "Main" / "test.txt").write_text("".join(f"{i:03d}\n" for i in range(n)))


@pytest.fixture(scope="module")
def detector(tmp_path_factory, cache_dir) -> tuple[Path, Path, dict]:
    """A seeded yolov3-tiny (4 classes, 64x64) ONNX Runtime engine (static batch 1), its pseudo-labelled VOC folder
    and the single-process evaluation of it."""
    tmp = tmp_path_factory.mktemp("sharded-yolo")
    engine = tmp / "engine"
    build_engine(BuildConfig(model="yolov3-tiny", target="onnxruntime", precision="fp32", input_size=SIZE,
                             num_classes=len(CLASSES), cache_dir=cache_dir, out=engine, latency_budget_s=0.3))
    voc = tmp / "voc"
    _pseudo_labelled_voc(voc, engine)
    single = evaluate(engine, voc, "test", progress=False)
    assert 0.2 < single["voc07_map"] < 0.95 and 0 < single["coco_ap"] < 0.95, single  # a metric worth comparing
    assert single["classes_evaluated"] >= 2 and single["images"] == N_IMAGES
    yield engine, voc, single
    shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def classifier(tmp_path_factory, cache_dir) -> Path:
    """A trained LeNet-5 (~0.97 top-1 on the digits' test split) as an ONNX Runtime engine with static batch 4."""
    import torch

    from enginesmith.data.digits import load_digits_32
    from enginesmith.training.digits import train_lenet5

    tmp = tmp_path_factory.mktemp("sharded-lenet")
    model, _ = train_lenet5(load_digits_32())
    torch.save(model.state_dict(), tmp / "lenet5.pt")
    build_engine(BuildConfig(model="lenet5", target="onnxruntime", precision="fp32", weights=tmp / "lenet5.pt",
                             batch=4, cache_dir=cache_dir, out=tmp / "engine", latency_budget_s=0.3))
    yield tmp / "engine"
    shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray for the module (~5-7 s to start), as `--cluster ray` starts it."""
    from enginesmith.cluster.ray_cluster import RayExecutor

    executor = RayExecutor(None, num_cpus=2)
    yield executor
    executor.close()


def test_shard_ranges_are_contiguous_aligned_and_even():
    assert shard_ranges(7, 3) == [(0, 2), (2, 4), (4, 7)]
    assert shard_ranges(3, 5) == [(0, 1), (1, 2), (2, 3)]  # more shards than images: one image each
    assert shard_ranges(198, 4, align=4) == [(0, 48), (48, 100), (100, 148), (148, 198)]  # cut at whole batches
    assert shard_ranges(5, 4, align=4) == [(0, 4), (4, 5)]
    for n in range(0, 40):
        for k in range(1, 9):
            for align in (1, 3, 8):
                r = shard_ranges(n, k, align)
                assert [a for a, _ in r[1:]] == [b for _, b in r[:-1]] and (not r or (r[0][0], r[-1][1]) == (0, n))
                assert all(a < b and a % align == 0 for a, b in r) and len(r) == min(k, -(-n // align))


def test_cli_cluster_local_equals_single_process_and_reports_each_shard(detector, run_cli, tmp_path):
    engine, voc, single = detector
    r = run_cli("eval", str(engine), "--dataset", str(voc), "--cluster", "local", "--shards", "3", "--json", "m.json")
    assert r.returncode == 0, r.stderr
    sharded = json.loads((tmp_path / "m.json").read_text())
    assert _metrics(sharded) == _metrics(json.loads(json.dumps(single)))  # per-class AP too; JSON as the CLI writes
    assert [s["images"] for s in sharded["cluster"]["shards"]] == [[0, 2], [2, 4], [4, 7]]  # uneven: 2, 2, 3
    assert sharded["timing"]["shards"] == 3 and sharded["timing"]["images"] == N_IMAGES
    progress = [ln for ln in r.stderr.splitlines() if ln.startswith("shard ")]
    assert [ln.split(":")[0] for ln in progress] == ["shard 1/3", "shard 2/3", "shard 3/3"], r.stderr
    assert f"{100 * single['voc07_map']:6.2f}" in r.stdout and "3 shards on local" in r.stdout


def test_ray_shards_equal_single_process_uneven_and_more_shards_than_images(detector, local_ray):
    engine, voc, single = detector
    sharded = evaluate_on_cluster(engine, voc, local_ray, shards=4, progress=False)
    assert _metrics(sharded) == _metrics(single)
    assert [s["images"] for s in sharded["cluster"]["shards"]] == [[0, 1], [1, 3], [3, 5], [5, 7]]
    assert all(s["node"] not in ("", "local") for s in sharded["cluster"]["shards"])  # Ray nodes ran them
    few = evaluate(engine, voc, "test", limit=3, progress=False)
    many = evaluate_on_cluster(engine, voc, local_ray, shards=5, limit=3, progress=False)
    assert _metrics(many) == _metrics(few) and len(many["cluster"]["shards"]) == 3  # one image each
    assert few["voc07_map"] != single["voc07_map"]  # the limit changed the metric: the comparison has teeth


def test_classifier_top1_sharded_equals_single_process(classifier, local_ray):
    single = evaluate(classifier, "digits", "test", limit=198, progress=False)  # 49.5 batches of 4
    assert single["top1"] > 0.9
    on_ray = evaluate_on_cluster(classifier, "digits", local_ray, shards=4, limit=198, progress=False)
    assert _metrics(on_ray) == _metrics(single)
    assert [s["images"] for s in on_ray["cluster"]["shards"]] == [[0, 48], [48, 100], [100, 148], [148, 198]]
    local = evaluate(classifier, "digits", "test", limit=198, progress=False, cluster="local", shards=2)
    assert _metrics(local) == _metrics(single) and local["cluster"]["executor"] == "local"


def test_a_failed_shard_fails_the_eval_in_one_line(detector, run_cli, tmp_path):
    engine, voc, _ = detector
    broken = tmp_path / "voc"
    shutil.copytree(voc, broken)
    image = broken / "JPEGImages" / "003.png"
    data = image.read_bytes()
    image.write_bytes(data[: len(data) // 2])  # the header (read when the dataset opens) is whole; the pixels are not
    r = run_cli("eval", str(engine), "--dataset", str(broken), "--cluster", "local", "--shards", "3", "--json", "m.json")
    assert r.returncode == 2 and "Traceback" not in r.stderr + r.stdout, r.stderr
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: shard 2/3 (images 2-3) failed on "), r.stderr
    assert "003.png" in errors[0] and "no metric" in errors[0]
    assert "mAP" not in r.stdout and not (tmp_path / "m.json").exists()  # no partial metric


def test_a_worker_that_cannot_read_the_paths_says_they_must_be_shared(detector, tmp_path):
    engine, voc, _ = detector
    from enginesmith.cluster.shards import manifest_file_sha256 as _manifest_sha256

    base = {"split": "test", "task": "detection", "start": 0, "stop": 1, "expect": ["000"], "batch_size": 1,
            "manifest_sha256": _manifest_sha256(engine)}
    jobs = [Job("no engine", SHARD_FUNC, {**base, "engine": str(tmp_path / "gone" / "engine"), "dataset": str(voc)}),
            Job("no dataset", SHARD_FUNC, {**base, "engine": str(engine), "dataset": str(tmp_path / "gone" / "voc")})]
    done = {d.job.key: d for d in LocalExecutor().run(jobs)}
    assert done["no engine"].error == (f"engine folder {tmp_path / 'gone' / 'engine'} does not exist on worker "
                                       f"{done['no engine'].host}: the engine folder path must be readable on every "
                                       "worker (a shared path)")
    assert done["no dataset"].error.endswith("the dataset path must be readable on every worker (a shared path)")


def test_refused_in_one_line_before_any_job(detector):
    engine, voc, _ = detector
    with pytest.raises(EnginesmithError, match="--cluster evaluates engine folders only; yolov3-tiny is"):
        evaluate("yolov3-tiny", voc, "test", cluster="local")
    with pytest.raises(EnginesmithError, match="--shards needs --cluster"):
        evaluate(engine, voc, "test", shards=2)
    with pytest.raises(EnginesmithError, match="--shards must be at least 1"):
        evaluate(engine, voc, "test", cluster="local", shards=0)
    with pytest.raises(EnginesmithError, match="unknown --cluster 'rey'"):
        evaluate(engine, voc, "test", cluster="rey")


@pytest.mark.slow
def test_two_node_ray_cluster_runs_shards_on_both_nodes(detector):
    """Last in the module: a driver joins one Ray at a time, so the module's local Ray is shut down first."""
    from ray.cluster_utils import Cluster

    from enginesmith.cluster.ray_cluster import RayExecutor, local_resources

    engine, voc, single = detector
    if ray.is_initialized():
        ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "resources": local_resources()})
    try:
        cluster.add_node(num_cpus=1, resources=local_resources())
        cluster.wait_for_nodes()
        executor = RayExecutor(cluster.address)
        try:
            nodes = {n["id"] for n in executor.nodes()}
            assert len(nodes) == 2
            sharded = evaluate_on_cluster(engine, voc, executor, progress=False)  # default: 2 per node
        finally:
            executor.close()
    finally:
        cluster.shutdown()
    ran_on = [s["node"] for s in sharded["cluster"]["shards"]]
    assert len(ran_on) == 4 and set(ran_on) == nodes, ran_on
    assert _metrics(sharded) == _metrics(single)
