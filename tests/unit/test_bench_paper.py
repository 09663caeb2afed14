"""benchmarks/paper.py: ranks and Spearman's rho against scipy, and the paper-order section of a results
table built by hand."""

from __future__ import annotations

import numpy as np
import pytest

from enginesmith.benchmarks.paper import PUBLISHED, comparisons, paper_order_section, ranks, spearman
from enginesmith.benchmarks.results import empty_row, render_markdown

stats = pytest.importorskip("scipy.stats")


@pytest.mark.parametrize("seed", range(20))
def test_ranks_and_spearman_match_scipy(seed):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 6, size=9).astype(float)  # ties on purpose
    b = rng.normal(size=9)
    assert np.allclose(ranks(a), stats.rankdata(-a))
    rho = spearman(list(a), list(b))
    expected = stats.spearmanr(a, b).statistic
    assert (rho is None and np.isnan(expected)) or rho == pytest.approx(expected)


def test_spearman_needs_three_items_and_some_spread():
    assert spearman([1, 2], [2, 1]) is None and spearman([1, 1, 1], [1, 2, 3]) is None
    assert spearman([1, 2, 3], [10, 20, 30]) == pytest.approx(1.0)


def test_published_numbers_are_the_papers():
    # SSD Table 7 (Titan X): FPS and mAP as printed; SSD300 at batch 8 is faster than at batch 1
    assert PUBLISHED[("ssd300", "300x300", 1)].fps == 46 and PUBLISHED[("ssd512", "512x512", 1)].fps == 19
    assert PUBLISHED[("ssd300", "300x300", 8)].fps == 59 and PUBLISHED[("fast-yolo", "448x448", 1)].fps == 155
    assert PUBLISHED[("faster-rcnn-vgg16", "600x600", 1)].map == 73.2
    # the anchor counts (# Boxes) follow from the grids: YOLOv3 3 anchors at strides 32/16/8, YOLOv2 5 at 32
    for size in (320, 416, 608):
        assert PUBLISHED[("yolov3", f"{size}x{size}", 1)].boxes == str(3 * sum((size // s) ** 2 for s in (32, 16, 8)))
    assert PUBLISHED[("yolov2", "416x416", 1)].boxes == str(5 * 13 * 13)


def _row(model, size, fps, target="openvino", precision="fp32", batch=1, macs=None):
    r = empty_row()
    r.update(model=model, input_size=size, fps=fps, target=target, precision=precision, batch=batch, status="ok",
             method=model, macs=macs)
    return r


def test_order_checks_on_a_hand_made_run():
    rows = [_row("fast-yolo", "448x448", 50.0, macs=2e9), _row("faster-rcnn-vgg16", "600x600", 1.0, macs=150e9),
            _row("ssd300", "300x300", 10.0, macs=31e9), _row("ssd512", "512x512", 2.5, macs=90e9),
            _row("yolo-vgg16", "448x448", 3.0),
            _row("ssd300", "300x300", 12.0, batch=8),  # batch 8: not in the batch-1 order
            _row("lenet5", "32x32", 9999.0),  # unpublished: ignored
            _row("fast-yolo", "448x448", 80.0, target="onnxruntime", precision="int8")]  # alone in its group
    comps = comparisons(rows)
    assert len(comps) == 1
    c = comps[0]
    assert (c["target"], c["precision"]) == ("openvino", "fp32")
    # published order (FPS 155, 7, 46, 19, 21) vs measured (50, 1, 10, 2.5, 3): the same order
    assert c["spearman"] == pytest.approx(1.0)
    assert c["checks"] == {"Fast YOLO fastest": True, "Faster R-CNN slowest": True}
    assert c["ssd300_over_ssd512"] == pytest.approx(4.0)
    rows[0]["fps"] = 5.0  # now Fast YOLO is third
    c = comparisons(rows)[0]
    assert c["checks"]["Fast YOLO fastest"] is False
    assert c["spearman"] == pytest.approx(stats.spearmanr([155, 7, 46, 19, 21], [5, 1, 10, 2.5, 3]).statistic)
    text = "\n".join(paper_order_section(rows))
    assert "Fast YOLO fastest: does not hold" in text and "4.00x here, 2.42x published" in text
    assert "| SSD300 | 46 | 2 | 10.0 | 1 | 31.0 |" in text


def test_results_md_has_the_section_only_with_published_methods():
    run = {"suite": "s"}
    assert "## Against the papers" not in render_markdown(run, [_row("lenet5", "32x32", 9.0)], [])
    md = render_markdown(run, [_row("ssd300", "300x300", 10.0), _row("ssd512", "512x512", 4.0)], [])
    assert "## Against the papers" in md and "SSD300 / SSD512 FPS: 2.50x here" in md
