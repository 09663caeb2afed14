"""Full-size builds (minutes on 2 cores): run by hand with `pytest -m slow`, not in CI."""

from __future__ import annotations

import pytest

from enginesmith.pipeline.run import BuildConfig, build_engine

pytestmark = pytest.mark.slow


def test_default_yolov3_build_then_fully_cached(run_cli, tmp_path):
    first = run_cli("build", "yolov3")
    assert first.returncode == 0, first.stderr[-3000:]
    report = (tmp_path / "build" / "yolov3" / "openvino-int8" / "report.md").read_text()
    assert "| quantize-nncf | built |" in report and "Engine speed-up over PyTorch eager" in report
    second = run_cli("build", "yolov3")
    assert second.returncode == 0, second.stderr[-3000:]
    for stage in ("export", "simplify", "quantize-nncf", "engine", "latency"):
        assert f"✓ {stage:<14} cached" in second.stderr, second.stderr


@pytest.mark.parametrize("target", ["openvino", "onnxruntime"])
@pytest.mark.parametrize("model", ["yolov3", "resnet50"])
def test_int8_agrees_with_fp32_at_full_size(model, target, cache_dir, tmp_path):
    result = build_engine(BuildConfig(model, target=target, precision="int8", out=tmp_path / "e",
                                      cache_dir=cache_dir, latency_budget_s=1))
    verify = next(a for a in result.stages if a.stage == "engine").metrics["verify"]
    assert verify["cosine"] >= 0.99, verify
