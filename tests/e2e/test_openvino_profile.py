"""`python -m enginesmith.benchmarks.openvino_profile` on a real OpenVINO INT8 engine built by the pipeline: the MACs
it reads off the executable graph equal the project's MAC counter on the PyTorch model (models/profile.py, forward
hooks: independent of OpenVINO), every convolution ran an int8 kernel, and the written tables add up."""

from __future__ import annotations

from pathlib import Path

import pytest

from enginesmith.benchmarks.bench import model_macs
from enginesmith.benchmarks.openvino_profile import main
from enginesmith.pipeline.run import BuildConfig, build_engine


def test_profile_of_an_int8_yolov3_tiny_counts_its_macs_and_int8_kernels(tmp_path, cache_dir):
    out = tmp_path / "engine"
    build_engine(BuildConfig(model="yolov3-tiny", target="openvino", precision="int8", input_size=(64, 64),
                             calib_size=4, out=out, cache_dir=cache_dir, latency_budget_s=0.1))
    md = tmp_path / "profile.md"
    (p,) = main([str(out), "--calls", "2", "--rounds", "2", "--top", "5", "--out", str(md)])
    convs = [la for la in p.layers if la.layer_type == "Convolution"]
    assert len(convs) == 13  # yolov3-tiny.cfg: 13 convolutional sections
    assert p.macs == sum(la.macs for la in convs) == model_macs("yolov3-tiny", (64, 64), None)
    assert {la.kernel_precision for la in convs} == {"int8"}  # NNCF quantized every convolution
    assert p.calls == 4 and len(p.wall_ms) == 4 and len(p.round_medians) == 2
    assert p.counted_ms > 0 and p.executed >= len(convs)
    text = md.read_text()
    assert "- command: `python -m enginesmith.benchmarks.openvino_profile " in text and "load average" in text
    assert "| int8 | 13 |" in text and "The 5 slowest layers:" in text
    assert p.precision == "int8" and Path(p.engine) == out


def test_profile_refuses_an_engine_of_another_target(tmp_path):
    from enginesmith.errors import EnginesmithError

    (tmp_path / "manifest.json").write_text('{"target": "onnxruntime", "precision": "fp32"}')
    with pytest.raises(EnginesmithError, match="onnxruntime engine; this profiles OpenVINO engines"):
        main([str(tmp_path), "--calls", "1"])
