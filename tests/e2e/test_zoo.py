"""Every registered model goes through the pipeline: export (verified against PyTorch on ONNX Runtime),
simplify (verified), OpenVINO FP32 engine (verified). CI runs each at its `extra["ci_input_size"]`
(models without one run only with `-m slow`); `-m slow` also runs every model at full size.
Models whose input is not an image (extra["pipeline"] is False, e.g. volumetric) are covered by
their own export tests instead."""

from __future__ import annotations

import pytest

from enginesmith.models import registry
from enginesmith.pipeline.run import BuildConfig, build_engine


def _cases():
    for spec in registry.all_specs():
        if spec.extra.get("pipeline", True) is False:
            continue
        ci = spec.extra.get("ci_input_size")
        yield pytest.param(spec.name, tuple(ci or spec.input_size), marks=[] if ci else [pytest.mark.slow],
                           id=f"{spec.name}-{'ci' if ci else 'full'}")
        if ci and tuple(ci) != tuple(spec.input_size):
            yield pytest.param(spec.name, tuple(spec.input_size), marks=[pytest.mark.slow], id=f"{spec.name}-full")


@pytest.mark.parametrize("name,size", list(_cases()))
def test_model_builds_a_verified_openvino_engine(name, size, tmp_path):
    result = build_engine(BuildConfig(name, target="openvino", precision="fp32", input_size=size, calib_size=2,
                                      out=tmp_path / "engine", cache_dir=tmp_path / "cache", latency_budget_s=0.05))
    stages = {a.stage: a for a in result.stages}
    assert set(stages) == {"export", "simplify", "engine"}
    # the tolerances are enforced by the stages themselves; check they were measured
    for stage in stages.values():
        assert stage.metrics["verify"]["cosine"] >= 0.9999, (stage.stage, stage.metrics["verify"])
    assert result.engine.is_file()
