"""`detector.batch()` and `stream()` with host work overlapped (runtime/overlap.py; OpenVINO: its async queue) on
real engines built by the pipeline (OpenVINO and ONNX Runtime, static batch 1 and 3) and real photos: the results
equal, image by image, the plain synchronous path (`detector(image)`, one image per call), in order, for a count
that is not a multiple of the batch; an empty input gives []; an undecodable image in the middle is the sequential
path's one-line EnginesmithError, and no worker thread is left after it, nor after a stream stopped early. The
bench's end-to-end column runs the same loops."""

from __future__ import annotations

import shutil
import threading

import numpy as np
import pytest

from enginesmith.data.offline_photos import base_photos
from enginesmith.errors import EnginesmithError
from enginesmith.pipeline.run import BuildConfig, build_engine
from enginesmith.runtime import load
from enginesmith.runtime.overlap import WORKER_NAME

ENGINES = [("onnxruntime", 1), ("onnxruntime", 3), ("openvino", 1), ("openvino", 3)]


@pytest.fixture(scope="module")
def engines(tmp_path_factory, cache_dir):
    base = tmp_path_factory.mktemp("batch-engines")
    out = {}
    for target, batch in ENGINES:
        folder = base / f"{target}-b{batch}"
        build_engine(BuildConfig(model="yolov3-tiny", target=target, precision="fp32", input_size=(64, 64), batch=batch,
                                 cache_dir=cache_dir, out=folder, latency_budget_s=0.1, calib_size=4))
        out[(target, batch)] = folder
    yield out
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def photos() -> list[np.ndarray]:
    return list(base_photos())[:7]  # 7 real photos of several sizes: 7 groups of 1, or 3 + 3 + 1


def _workers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(WORKER_NAME)]


@pytest.mark.parametrize("target,batch", ENGINES)
def test_batch_and_stream_equal_one_image_per_call(engines, photos, target, batch):
    with load(engines[(target, batch)]) as det:
        assert det.batch_size == batch
        one_by_one = [det(im) for im in photos]  # the synchronous path, an independent reference
        assert sum(map(len, one_by_one)) > 0  # an untrained 64x64 network still finds boxes above 0.25
        assert det.batch(photos[:batch]) == one_by_one[:batch]  # one group: the synchronous path too
        assert det._async is None  # OpenVINO: no throughput model compiled for it
        got = det.batch(photos)
        assert got == one_by_one  # Detection dataclasses: same boxes, scores and classes, in order
        throughput_model = det._async
        assert (throughput_model is not None) == (target == "openvino")  # batch() runs stream()'s async queue
        assert det.batch(iter(photos)) == one_by_one  # any iterable
        assert list(det.stream(photos)) == one_by_one
        assert det._async is throughput_model  # one throughput model for both
        assert det.batch(photos[::-1]) == one_by_one[::-1]  # order follows the input
        assert det.batch([]) == [] and list(det.stream([])) == []
    assert not _workers()


@pytest.mark.parametrize("target,batch", ENGINES)
def test_a_bad_image_in_the_middle_is_one_error_and_leaves_no_thread(engines, photos, target, batch):
    before = {t.ident for t in threading.enumerate()}
    images = [*photos[:4], np.zeros((8, 8, 3), dtype=np.float32), *photos[4:]]  # floats are refused (images.py)
    with load(engines[(target, batch)]) as det:
        with pytest.raises(EnginesmithError) as sequential:
            det(images[4])
        with pytest.raises(EnginesmithError) as overlapped:
            det.batch(images)
        assert str(overlapped.value) == str(sequential.value) and "\n" not in str(overlapped.value)
        assert not _workers()
        assert det.batch(photos[:2]) == [det(photos[0]), det(photos[1])]  # the engine still works
    assert not _workers() and {t.ident for t in threading.enumerate()} <= before


@pytest.mark.parametrize("target", ["onnxruntime", "openvino"])
def test_a_stream_stopped_early_leaves_no_thread(engines, photos, target):
    with load(engines[(target, 1)]) as det:
        stream = det.stream(photos)
        first = next(stream)
        assert first == det(photos[0])
        assert _workers()  # the overlap is running
        stream.close()
        assert not _workers()


@pytest.mark.parametrize("target", ["onnxruntime", "openvino"])
def test_the_bench_end_to_end_column_runs_the_loop_batch_runs(engines, target):
    """bench.end_to_end times the parts apart in a sequential loop; end_to_end_pipelined runs as many batches through
    batch()'s loop: runtime/overlap.py around the runner (inference in this thread), or OpenVINO's async queue."""
    from enginesmith.backends.targets import TARGETS
    from enginesmith.benchmarks.bench import end_to_end, end_to_end_pipelined, load_images, pipeline_for
    from enginesmith.benchmarks.timing import TimingProfile
    from enginesmith.runtime.manifest import engine_info
    from enginesmith.runtime.openvino_async import AsyncEngine

    info = engine_info(engines[(target, 3)])
    infer_threads: list[str] = []
    images = load_images({"kind": "photos", "seed": 0}, 5)
    with TARGETS[info.target].runner(info.engine_file, info.precision) as runner:
        real_infer = runner.infer

        def infer(feed):
            infer_threads.append(threading.current_thread().name)
            return real_infer(feed)

        runner.infer = infer
        e2e = end_to_end(runner, info.input_name, images, info.preprocess, "detection", 3, TimingProfile.quick())
        calls = e2e["e2e_calls"]
        assert calls >= 3 and len(infer_threads) == 1 + calls  # one warm-up call, then the timed ones
        async_engine = AsyncEngine(info.engine_file) if target == "openvino" else None
        fps = end_to_end_pipelined(pipeline_for(runner, info.input_name, async_engine), images, info.preprocess,
                                   "detection", 3, calls)
    assert fps > 0 and not _workers()
    # overlapped: the runner, called from this thread (one warm-up batch, then `calls`); OpenVINO: its own queue
    assert infer_threads == [threading.current_thread().name] * (1 + calls + (0 if async_engine else 1 + calls))
    parts = e2e["preprocess_ms"] + e2e["inference_ms"] + e2e["postprocess_ms"]
    assert e2e["fps_e2e_sequential"] == pytest.approx(1000.0 / parts)
    assert min(e2e["preprocess_ms"], e2e["inference_ms"], e2e["postprocess_ms"]) > 0
