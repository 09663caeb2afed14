"""benchmarks/plot.py: the x axis names the task's metric, one label per network, and no two labels overlap (their
drawn frames, measured by the renderer after drawing); the re-render entry point reads a results.json only."""

from __future__ import annotations

import hashlib
import json
import shutil
from itertools import combinations
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")

from enginesmith.benchmarks.plot import LABEL_GID, render_fps_figure  # noqa: E402
from enginesmith.benchmarks.results import empty_row, main  # noqa: E402

EDGE = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "edge" / "results.json"


def _row(method: str, target: str, precision: str, batch: int, fps: float, **metric: float) -> dict:
    return {**empty_row(), "method": method, "model": method.lower(), "target": target, "precision": precision,
            "batch": batch, "status": "ok", "fps": fps, **metric}


def _labels(fig) -> list:
    return [t for ax in fig.axes for t in ax.texts if t.get_gid() == LABEL_GID]


def _frames(fig) -> list:
    """The drawn rounded frame of each label, in display pixels (after a draw: their final positions)."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    return [t.get_bbox_patch().get_window_extent(renderer) for t in _labels(fig)]


def _overlaps(boxes: list) -> list[tuple[int, int]]:
    return [(i, j) for (i, a), (j, b) in combinations(enumerate(boxes), 2)
            if a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1]


def _close(fig) -> None:
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_a_classifier_plot_is_labelled_top1_not_map():
    rows = [_row(f"ResNet-{d}", t, p, 1, fps, top1=70.0 + d / 100) for d, fps0 in ((18, 300), (50, 120))
            for t, p, fps in (("torch", "fp32", fps0), ("openvino", "int8", 3 * fps0))]
    fig = render_fps_figure(rows, "classifiers")
    try:
        main_ax = next(ax for ax in fig.axes if ax.get_xlabel())
        assert "top-1" in main_ax.get_xlabel() and "mAP" not in main_ax.get_xlabel()
        assert "top-1" in fig._suptitle.get_text() and "mAP" not in fig._suptitle.get_text()
        assert sorted(t.get_text() for t in _labels(fig)) == ["ResNet-18", "ResNet-50"]
    finally:
        _close(fig)


def test_a_detector_plot_is_labelled_map_and_a_mixed_one_names_both():
    det = [_row("SSD", "openvino", "int8", 1, 100.0, map_voc07=40.0)]
    cls = [_row("LeNet-5", "openvino", "int8", 1, 9000.0, top1=98.0)]
    for rows, want, not_want in ((det, "mAP", "top-1"), (det + cls, "top-1", None)):
        fig = render_fps_figure(rows)
        try:
            xlabel = next(ax for ax in fig.axes if ax.get_xlabel()).get_xlabel()
            assert want in xlabel and (not_want is None or not_want not in xlabel)
            if not_want is None:
                assert "mAP" in xlabel
        finally:
            _close(fig)


def test_the_edge_results_get_one_label_per_network_and_none_overlap():
    rows = json.loads(EDGE.read_text())["rows"]
    fig = render_fps_figure(rows, "edge")
    try:
        labels = _labels(fig)
        assert sorted(t.get_text() for t in labels) == sorted({r["method"] for r in rows if r["status"] == "ok"})
        assert not [t for ax in fig.axes for t in ax.texts if t.get_gid() != LABEL_GID]  # no per-engine text
        assert _overlaps(_frames(fig)) == []
    finally:
        _close(fig)


def test_labels_of_a_crowded_cluster_are_pushed_apart():
    """Eight networks on one spot (the same metric and FPS): all labels start on top of each other."""
    rows = [_row(f"network number {i}", t, "int8", b, 100.0, map_voc07=50.0)
            for i in range(8) for t in ("openvino", "onnxruntime") for b in (1, 8)]
    rows += [_row("no metric A", "openvino", "fp32", 1, 100.0), _row("no metric B", "openvino", "fp32", 1, 101.0)]
    fig = render_fps_figure(rows)
    try:
        assert len(_labels(fig)) == 10
        frames = _frames(fig)
        assert _overlaps(frames) == []
        for label, frame in zip(_labels(fig), frames):  # and each stays within its axes' height
            assert label.axes.bbox.y0 - 1 <= frame.y0 and frame.y1 <= label.axes.bbox.y1 + 1
    finally:
        _close(fig)


def test_the_overlap_check_sees_overlaps():
    """The check above can fail: the same crowded labels without the separation step overlap."""
    from enginesmith.benchmarks import plot

    rows = [_row(f"network number {i}", "openvino", "int8", 1, 100.0, map_voc07=50.0) for i in range(4)]
    original = plot.separate_labels
    plot.separate_labels = lambda fig, labels, **kw: None
    try:
        fig = render_fps_figure(rows)
        assert len(_overlaps(_frames(fig))) == 6
        _close(fig)
    finally:
        plot.separate_labels = original


def test_the_entry_point_renders_from_results_json_and_leaves_it_unchanged(tmp_path, capsys):
    src = tmp_path / "results.json"
    shutil.copyfile(EDGE, src)
    before = hashlib.sha256(src.read_bytes()).hexdigest()
    out = main([str(src)])
    assert out == tmp_path / "fps_vs_map.png" and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert hashlib.sha256(src.read_bytes()).hexdigest() == before
    assert main([str(src), "--out", str(tmp_path / "other.png")]).is_file()
