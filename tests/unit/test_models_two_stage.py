"""R-CNN / Fast R-CNN networks (issue 8): engine outputs against a hand computation from the layers, input
size checks, and `enginesmith models` arithmetic against MACs counted layer by layer."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from enginesmith.errors import EnginesmithError
from enginesmith.models import registry


def test_rcnn_outputs_are_the_svm_and_the_ridge_regressor_on_its_features() -> None:
    spec = registry.get("rcnn-vgg16-slim")
    model = spec.create()
    x = torch.randn(5, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        scores, deltas = model(x)
        pool5, fc7 = model.region_features(x)
        margins = fc7 @ model.svm.weight.T + model.svm.bias
        reg = pool5 @ model.bbox_reg.weight.T + model.bbox_reg.bias
    assert pool5.shape == (5, 512) and fc7.shape == (5, 1024)
    torch.testing.assert_close(scores, 1 / (1 + torch.exp(-margins)))
    torch.testing.assert_close(deltas, reg.reshape(5, 16, 4))  # row c * 4 + k = class c, coordinate k
    assert model.forward_train(x).shape == (5, 17)


def test_fast_rcnn_takes_any_number_of_rois_and_refuses_batches() -> None:
    spec = registry.get("fast-rcnn-vgg16-slim")
    model = spec.create(input_size=(128, 128))
    x = torch.zeros(1, 3, 128, 128)
    for r in (1, 7, 300):
        rois = torch.tensor([[0.0, 0.0, 40.0, 50.0]]).repeat(r, 1)
        with torch.no_grad():
            boxes, scores = model(x, rois)
        assert boxes.shape == (1, r, 4) and scores.shape == (1, r, 16)
    with pytest.raises(EnginesmithError, match="one image per call"):
        model(torch.zeros(2, 3, 128, 128), rois)


@pytest.mark.parametrize("name,size", [("rcnn-alexnet", (224, 224)), ("rcnn-vgg16-slim", (128, 128)),
                                       ("fast-rcnn-vgg16-slim", (32, 32))])
def test_input_size_checks(name: str, size: tuple[int, int]) -> None:
    with pytest.raises(EnginesmithError, match=name):
        registry.get(name).check_input_size(size)


def _slim_conv_macs(size: int) -> int:
    """MACs of the slim VGG16 convolutions (3x3, 'same') at size x size, counted by hand from its table."""
    conv, cin = 0, 3
    for v in (16, 16, "M", 32, 32, "M", 64, 64, 64, "M", 128, 128, 128, "M", 128, 128, 128):
        if v == "M":
            size //= 2
        else:
            conv += size * size * cin * int(v) * 9
            cin = int(v)
    return conv


def test_catalog_macs_are_per_image_at_2000_proposals() -> None:
    from enginesmith.models.catalog import PROFILE_PROPOSALS, _measure

    # R-CNN: one region's MACs (counted by hand from the layer shapes) x 2000 regions
    spec = registry.get("rcnn-vgg16-slim")
    _, macs, _ = _measure(spec, (3, 64, 64))
    conv = _slim_conv_macs(64)
    fc = 512 * 1024 + 1024 * 1024 + 1024 * 16 + 512 * 64  # fc6, fc7, svm, bbox_reg (fc8 trains only)
    assert macs == PROFILE_PROPOSALS * (conv + fc)
    # Fast R-CNN: the backbone once + the heads once per roi
    spec = registry.get("fast-rcnn-vgg16-slim")
    _, macs, outputs = _measure(spec, (3, 320, 320))
    heads = 128 * 49 * 1024 + 1024 * 1024 + 1024 * 17 + 1024 * 68
    conv = _slim_conv_macs(320)
    assert macs == conv + PROFILE_PROPOSALS * heads
    assert outputs[0].shape == (1, PROFILE_PROPOSALS, 4)


def test_enginesmith_bench_points_two_stage_models_to_the_arc_benchmark() -> None:
    from enginesmith.benchmarks.suite import plan, suite_from_args

    with pytest.raises(EnginesmithError, match="proposal_arc"):
        plan(suite_from_args(["fast-rcnn-vgg16-slim"]))


def test_a_tensorrt_profile_bounds_the_rcnn_chunk() -> None:
    from enginesmith.runtime.two_stage import engine_profile_max

    raw = {"stages": [{"stage": "export", "params": {}}, {"stage": "engine", "params": {"profile": [1, 4, 8]}}]}
    assert engine_profile_max(raw) == 8
    assert engine_profile_max({"stages": [{"stage": "engine", "params": {}}]}) is None
