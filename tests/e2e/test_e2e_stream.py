"""benchmarks/e2e_stream.py on real tiny detector engines: its loops run, batch() and streamed detections equal
the sequential loop's, and the end-to-end FPS cannot exceed the inference-only FPS by more than timing noise
when the engine runs one request at a time (sequential loop: inference is a part of it)."""

from __future__ import annotations

import json

import pytest

from enginesmith.benchmarks.e2e_stream import main
from enginesmith.pipeline.run import BuildConfig, build_engine


@pytest.mark.parametrize("target", ["openvino", "onnxruntime"])
def test_e2e_stream_on_yolov3_tiny(tmp_path, cache_dir, target):
    engine = tmp_path / f"tiny-{target}"
    build_engine(BuildConfig(model="yolov3-tiny", target=target, precision="fp32", input_size=(64, 64),
                             cache_dir=cache_dir, out=engine, latency_budget_s=0.2, calib_size=4))
    assert main([str(engine), "--images", "6", "--min-time", "0.2", "--rounds", "3", "--out", str(tmp_path / "o")]) == 0
    files = list((tmp_path / "o").glob("e2e-yolov3-tiny-*.json"))
    assert len(files) == 1 and files[0].with_suffix(".md").is_file()
    r = json.loads(files[0].read_text())["result"]
    assert r["streamed_equals_sequential"] is True and r["batch_equals_sequential"] is True and r["images"] == 6
    assert 0 < r["e2e_fps_sequential"] < 1.5 * r["inference_fps"]
    for loop in ("sequential", "batch", "streamed"):
        assert r[f"ratio_{loop}_over_inference"] == pytest.approx(r[f"e2e_fps_{loop}"] / r["inference_fps"])
    # three interleaved rounds of every loop; the reported FPS is the middle one
    assert {k: len(v) for k, v in r["fps_rounds"].items()} == {"inference": 3, "sequential": 3, "batch": 3, "streamed": 3}
    assert r["inference_fps"] == sorted(r["fps_rounds"]["inference"])[1]
    assert r["e2e_fps_batch"] == sorted(r["fps_rounds"]["batch"])[1]
    assert "`detector.batch` on all images" in files[0].with_suffix(".md").read_text()
    # CPU time counts the engine's threads too: no loop keeps more cores busy than the process may use (10% for
    # the warm-up calls the CPU time includes and the FPS does not), and host work costs CPU
    assert set(r["cores_busy"]) == {"inference", "sequential", "batch", "streamed"}
    assert all(0 < b <= 1.1 * r["cores"] for b in r["cores_busy"].values()), r["cores_busy"]
    assert r["cpu_ms_per_image"]["sequential"] > r["cpu_ms_per_image"]["inference"] > 0, r["cpu_ms_per_image"]
    # host work alone is a part of the sequential loop's work; the bound is cores over inference + host CPU-ms
    host = r["host_cpu_ms_per_image"]
    assert set(host) == {"preprocess", "postprocess"} and all(v > 0 for v in host.values()), host
    assert r["cpu_ms_per_image"]["sequential"] > host["preprocess"] + host["postprocess"], (r["cpu_ms_per_image"], host)
    assert r["cpu_bound_fps"] == pytest.approx(r["cores"] * 1e3 / (r["cpu_ms_per_image"]["inference"] + sum(host.values())))
    assert "CPU bound of any end-to-end loop" in files[0].with_suffix(".md").read_text()
    assert (r.get("inference_fps_throughput") is not None) == (target == "openvino")
    assert main([str(tmp_path / "nope"), "--out", str(tmp_path / "o2")]) == 2
