"""Edge-scale detectors (models/edge.py): parameter counts from hand-written layer lists, output shapes,
the output contract, input-size checks, checkpoint round trip; the anchor k-means."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from enginesmith.errors import EnginesmithError
from enginesmith.models import registry
from enginesmith.models.classes import OFFLINE_NAMES


def conv_params(cin: int, cout: int, k: int, bn: bool = True) -> int:
    """A conv without bias + BatchNorm (scale and shift), or a conv with a bias."""
    return cin * cout * k * k + (2 * cout if bn else cout)


def test_yolov3_tiny_256_parameters_by_hand() -> None:
    # darknet yolov3-tiny.cfg, 16 classes: detection convs have 3 * (5 + 16) = 63 filters
    layers = [(3, 16, 3), (16, 32, 3), (32, 64, 3), (64, 128, 3), (128, 256, 3), (256, 512, 3), (512, 1024, 3),
              (1024, 256, 1), (256, 512, 3), (256, 128, 1), (384, 256, 3)]
    expected = sum(conv_params(*x) for x in layers) + conv_params(512, 63, 1, bn=False) + conv_params(256, 63, 1, bn=False)
    net = registry.get("yolov3-tiny-256").create()
    assert sum(p.numel() for p in net.parameters()) == expected == 8_704_526


def test_yolov3_tiny_3l_256_parameters_by_hand() -> None:
    # yolov3-tiny_3l.cfg adds, after yolov3-tiny: 1x1 256->128, 3x3 (128 + 128)->128, detection 1x1 128->63
    tiny = 8_704_526
    expected = tiny + conv_params(256, 128, 1) + conv_params(256, 128, 3) + conv_params(128, 63, 1, bn=False)
    net = registry.get("yolov3-tiny-3l-256").create()
    assert sum(p.numel() for p in net.parameters()) == expected
    assert [tuple(s.anchors.shape) for s in net.decode.scales] == [(3, 2)] * 3
    assert [s.stride for s in net.decode.scales] == [32.0, 16.0, 8.0]


def test_ssd_slim_256_parameters_by_hand() -> None:
    base = [(3, 16), (16, 16), (16, 32), (32, 32), (32, 64), (64, 64), (64, 64), (64, 128), (128, 128), (128, 128),
            (128, 128), (128, 128), (128, 128)]
    n = sum(conv_params(i, o, 3) for i, o in base)
    n += conv_params(128, 256, 3) + conv_params(256, 256, 1)  # conv6 (dilated), conv7
    extras = [(256, 64, 1), (64, 128, 3), (128, 32, 1), (32, 64, 3), (64, 32, 1), (32, 64, 3), (64, 32, 1), (32, 64, 3)]
    n += sum(conv_params(*e) for e in extras)
    sources = [(128, 4), (256, 6), (128, 6), (64, 6), (64, 4), (64, 4)]
    n += sum(conv_params(c, m * 4, 3, bn=False) + conv_params(c, m * 17, 3, bn=False) for c, m in sources)
    net = registry.get("ssd-slim-256").create()
    assert sum(p.numel() for p in net.parameters()) == n


@pytest.mark.parametrize("name,size,anchors", [
    ("yolov3-tiny-256", (256, 256), 3 * (8 * 8 + 16 * 16)),
    ("yolov3-tiny-256", (64, 64), 3 * (2 * 2 + 4 * 4)),
    ("yolov3-tiny-3l-256", (256, 256), 3 * (8 * 8 + 16 * 16 + 32 * 32)),
    ("ssd-slim-256", (256, 256), 32 * 32 * 4 + 16 * 16 * 6 + 8 * 8 * 6 + 4 * 4 * 6 + 2 * 2 * 4 + 1 * 4),
    ("ssd-slim-256", (128, 128), 16 * 16 * 4 + 8 * 8 * 6 + 4 * 4 * 6 + 2 * 2 * 6 + 1 * 4 + 1 * 4),
])
def test_output_contract(name, size, anchors) -> None:
    spec = registry.get(name)
    assert spec.num_classes == 16 and spec.class_names == OFFLINE_NAMES and spec.task == "detection"
    assert spec.preprocess.input_size == spec.input_size == (256, 256)
    net = spec.create(input_size=size)
    assert hasattr(net, "decode") and hasattr(net, "forward_raw")
    x = torch.rand(2, 3, *size)
    with torch.no_grad():
        boxes, scores = net(x)
    assert boxes.shape == (2, anchors, 4) and scores.shape == (2, anchors, 16)
    assert torch.isfinite(boxes).all() and (scores >= 0).all() and (scores <= 1).all()
    assert (boxes[..., 2] >= boxes[..., 0]).all() and (boxes[..., 3] >= boxes[..., 1]).all()


def test_ssd_slim_priors_and_decode_match_the_paper_coding() -> None:
    net = registry.get("ssd-slim-256").create()
    pri = net.decode.priors
    assert pri.shape == (6132, 4)
    # first source: 32x32 cells of 8 px, first box a square of side 0.06 * 256 centred on the cell
    np.testing.assert_allclose(pri[0].numpy(), [4 / 256, 4 / 256, 0.06, 0.06], rtol=1e-6)
    x = torch.rand(1, 3, 256, 256)
    with torch.no_grad():
        boxes, scores = net(x)
        loc, conf = net.forward_raw(x)
    cx = pri[:, 0] + loc[0, :, 0] * 0.1 * pri[:, 2]
    w = pri[:, 2] * torch.exp(loc[0, :, 2] * 0.2)
    np.testing.assert_allclose(boxes[0, :, 0].numpy(), ((cx - w / 2) * 256).numpy(), rtol=1e-4, atol=1e-3)
    e = torch.exp(conf[0].double())
    np.testing.assert_allclose(scores[0].numpy(), (e / e.sum(-1, keepdim=True))[:, 1:].numpy(), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name,bad", [("yolov3-tiny-256", (250, 256)), ("yolov3-tiny-256", (16, 16)),
                                      ("yolov3-tiny-3l-256", (256, 200)),
                                      ("ssd-slim-256", (256, 320)), ("ssd-slim-256", (32, 32)),
                                      ("ssd-slim-256", (300, 300))])
def test_bad_input_sizes_are_refused(name, bad) -> None:
    with pytest.raises(EnginesmithError, match=name):
        registry.get(name).check_input_size(bad)


@pytest.mark.parametrize("name", ["yolov3-tiny-256", "ssd-slim-256"])
def test_training_checkpoint_loads_with_the_specs_loader(name, tmp_path) -> None:
    spec = registry.get(name)
    src = spec.create(seed=1)
    with torch.no_grad():
        for p in src.parameters():
            p.add_(0.01 * torch.randn_like(p))
    path = tmp_path / "ck.pt"
    torch.save({"model": name, "state_dict": src.state_dict(), "num_classes": 16}, path)
    dst = spec.create(seed=2)
    spec.load_weights(dst, path)
    x = torch.rand(1, 3, 64 if name.startswith("yolo") else 128, 64 if name.startswith("yolo") else 128)
    src_s, dst_s = spec.create(seed=1, input_size=x.shape[2:]), spec.create(seed=2, input_size=x.shape[2:])
    src_s.load_state_dict(src.state_dict())
    spec.load_weights(dst_s, path)
    with torch.no_grad():
        a, b = src_s(x), dst_s(x)
    torch.testing.assert_close(a[0], b[0])
    torch.testing.assert_close(a[1], b[1])
    with pytest.raises(EnginesmithError):
        spec.load_weights(registry.get("yolov3-tiny-256" if name == "ssd-slim-256" else "ssd-slim-256").create(), path)


def test_kmeans_anchors_find_planted_clusters() -> None:
    from enginesmith.training.anchors import kmeans_anchors, mean_best_iou

    rng = np.random.default_rng(0)
    centres = np.array([[8.0, 12.0], [30.0, 30.0], [60.0, 100.0]])
    wh = np.concatenate([c * np.exp(rng.normal(0, 0.05, (200, 2))) for c in centres])
    got = kmeans_anchors(wh, 3, seed=0)
    np.testing.assert_allclose(got, centres, rtol=0.05)
    assert mean_best_iou(wh, got) > 0.85
    np.testing.assert_array_equal(got, kmeans_anchors(wh, 3, seed=0))
