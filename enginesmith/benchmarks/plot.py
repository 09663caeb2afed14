"""fps_vs_map.png: FPS (log) against the task metric, one marker per engine, one label per network (torch-free).

The x axis is VOC07 mAP for detectors and top-1 for classifiers (`accuracy`); rows without it go on a strip at the
left. A marker's colour is its target, its shape its precision, its fill its batch (filled: the smallest batch,
hollow: larger ones), each with a legend section beside the plot. The networks' names are the only text on the
axes: one label per network, right of its rightmost marker, moved apart vertically until no two labels' boxes
overlap (`separate_labels`, measured with the renderer). The Pareto front is dashed and ringed.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

from enginesmith.benchmarks.results import pareto_front
from enginesmith.errors import EnginesmithError

PRECISION_MARKERS = {"fp32": "o", "fp16": "s", "bf16": "P", "int8": "^", "mixed": "D"}
TARGET_COLORS = {"torch": "#7f7f7f", "torch-cuda": "#000000", "torch-compile": "#8c564b", "onnxruntime": "#1f77b4",
                 "openvino": "#9467bd", "tensorrt": "#2ca02c"}
METRIC_LABELS = {"map_voc07": "mAP (VOC07 11-point AP@0.5, %)", "top1": "top-1 accuracy (%)"}
LABEL_GID = "network-label"  # the gid of each network's label (tests find them by it)


def accuracy(row: dict[str, Any]) -> tuple[str, float] | None:
    """(metric key, value in points) of a row: VOC07 mAP for a detector, top-1 for a classifier; None if neither."""
    for key in METRIC_LABELS:
        if row.get(key) is not None:
            return key, float(row[key])
    return None


def axis_label(keys: set[str]) -> str:
    """The x axis: the one metric the plotted rows share, or both named."""
    if len(keys) == 1:
        return METRIC_LABELS[next(iter(keys))]
    return "accuracy (%): VOC07 mAP@0.5 for detectors, top-1 for classifiers"


def short_metric(keys: set[str]) -> str:
    return {frozenset({"top1"}): "top-1"}.get(frozenset(keys), "mAP" if keys <= {"map_voc07"} else "accuracy")


def render_fps_figure(rows: list[dict[str, Any]], title: str = "") -> Any:
    """The matplotlib Figure (Agg) of `rows` (results.json rows); `title`: the suite's name."""
    try:
        import matplotlib
    except ImportError:
        raise EnginesmithError("plotting needs matplotlib (results.json/csv/md are written); "
                               "pip install 'enginesmith[data]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if r["status"] == "ok" and r["fps"]]
    scored = [(r, accuracy(r)) for r in ok]
    with_acc = [(r, a[1]) for r, a in scored if a is not None]
    without = [r for r, a in scored if a is None]
    keys = {a[0] for _, a in scored if a is not None} or {"map_voc07"}
    if without:
        fig, (strip, ax) = plt.subplots(1, 2, figsize=(12, 6.5), sharey=True, gridspec_kw={"width_ratios": [1, 5]})
    else:
        fig, ax = plt.subplots(figsize=(11, 6.5))
        strip = None
    small_batch = min((int(r["batch"]) for r in ok), default=1)
    for r, x in with_acc:
        _mark(ax, x, r, small_batch)
    if with_acc:
        front = [with_acc[i] for i in pareto_front([(x, float(r["fps"])) for r, x in with_acc])]
        ax.plot([x for _, x in front], [r["fps"] for r, _ in front], "k--", lw=1, drawstyle="steps-pre", zorder=2)
        ax.scatter([x for _, x in front], [r["fps"] for r, _ in front], s=150, facecolors="none", edgecolors="k",
                   linewidths=0.8, zorder=2)  # ringed: visible even when the front is one engine
        ax.margins(x=0.12, y=0.1)
    else:
        ax.text(0.5, 0.5, f"no {short_metric(keys)} measured\n(give --weights and --dataset)", ha="center",
                va="center", transform=ax.transAxes, color="#555555")
    strip_points = []
    if strip is not None:
        methods = list(dict.fromkeys(r["method"] for r in without))
        for r in without:  # one column per network
            x = (methods.index(r["method"]) + 0.5) / len(methods)
            _mark(strip, x, r, small_batch)
            strip_points.append((r, x))
        strip.set_xlim(0, 1.5)
        strip.set_xticks([])
        strip.set_title(f"{short_metric(keys)} not measured", fontsize=9)
        strip.set_ylabel("FPS (inference only, images/s)")
    else:
        ax.set_ylabel("FPS (inference only, images/s)")
    ax.set_xlabel(axis_label(keys))
    if ok:
        ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    labels = _network_labels(ax, with_acc) + (_network_labels(strip, strip_points) if strip is not None else [])
    _legend(ax, ok, small_batch, bool(with_acc))
    fig.suptitle(f"{title or 'enginesmith bench'}: FPS vs {short_metric(keys)} (one marker per engine)", fontsize=11)
    fig.tight_layout()
    main_labels = [a for a in labels if a.axes is ax]
    widen_to_fit(fig, ax, main_labels)
    separate_labels(fig, labels)
    return fig


def _mark(axis: Any, x: float, r: dict[str, Any], small_batch: int) -> None:
    """One engine: colour = target, shape = precision, filled = the smallest batch, hollow = larger batches."""
    color = TARGET_COLORS.get(r["target"], "#d62728")
    filled = int(r["batch"]) == small_batch
    axis.scatter([x], [r["fps"]], marker=PRECISION_MARKERS.get(r["precision"], "o"), s=46, zorder=3,
                 facecolors=color if filled else "white", edgecolors="white" if filled else color,
                 linewidths=0.5 if filled else 1.4)


def _network_labels(axis: Any, points: list[tuple[dict[str, Any], float]]) -> list[Any]:
    """One annotation per network (its `method`), 8 points right of its rightmost marker, at the geometric middle of
    its FPS range, joined to that marker by a thin line."""
    import math

    groups: dict[str, list[tuple[float, float]]] = {}
    for r, x in points:
        groups.setdefault(str(r["method"]), []).append((x, float(r["fps"])))
    labels = []
    for method, pts in groups.items():
        right = max(pts)
        fps = [y for _, y in pts]
        middle = math.sqrt(min(fps) * max(fps))
        ann = axis.annotate(method, xy=right, xytext=(8, 0), textcoords="offset points", ha="left", va="center",
                            fontsize=8.5, zorder=5, annotation_clip=False,
                            bbox={"boxstyle": "round,pad=0.2", "fc": "white", "ec": "#bbbbbb", "lw": 0.5, "alpha": 0.9},
                            arrowprops={"arrowstyle": "-", "color": "#888888", "lw": 0.6, "shrinkA": 0, "shrinkB": 3})
        ann.set_gid(LABEL_GID)
        # start at the middle of the network's FPS range: the offset from its rightmost marker, in points
        y0 = axis.transData.transform(right)[1]
        y1 = axis.transData.transform((right[0], middle))[1]
        ann.xyann = (8, (y1 - y0) * 72.0 / axis.figure.dpi)
        labels.append(ann)
    return labels


def _text_box(annotation: Any, renderer: Any) -> Any:
    """The display box of an annotation's text alone (not its leader line), at its current offset."""
    from matplotlib.text import Text

    annotation.update_positions(renderer)
    return Text.get_window_extent(annotation, renderer)


def widen_to_fit(fig: Any, ax: Any, labels: list[Any], pad_px: float = 8.0) -> None:
    """Raise the x axis' upper limit until every label (anchored at data points, offset in points) ends inside the
    axes: a label past the right edge would run into the legend."""
    renderer = fig.canvas.get_renderer()
    for _ in range(8):
        right = max((_text_box(a, renderer).x1 for a in labels), default=0.0) + pad_px
        over = right - ax.bbox.x1
        if over <= 0:
            return
        lo, hi = ax.get_xlim()
        ax.set_xlim(lo, hi + over * (hi - lo) / ax.bbox.width * 1.05)


def separate_labels(fig: Any, labels: list[Any], pad_px: float = 7.0, rounds: int = 400) -> None:
    """Move labels apart vertically (in their offset from the anchor) until no two overlap: the text's box (without
    the leader line) grown by `pad_px`, which covers the rounded frame drawn around it. Each overlapping pair is
    pushed apart by half the overlap, the upper one up, the lower one down, and a label past its axes' top or
    bottom is pushed back in, until a round moves nothing."""
    renderer = fig.canvas.get_renderer()
    to_points = 72.0 / fig.dpi

    def boxes() -> list[Any]:
        return [_text_box(a, renderer).padded(pad_px / 2) for a in labels]

    for _ in range(rounds):
        current = boxes()
        moved = False
        for i in range(len(labels)):
            for j in range(i + 1, len(labels)):
                a, b = current[i], current[j]
                if a.x1 <= b.x0 or b.x1 <= a.x0 or a.y1 <= b.y0 or b.y1 <= a.y0:
                    continue
                upper, lower = (i, j) if (a.y0 + a.y1, j) > (b.y0 + b.y1, i) else (j, i)
                push = (min(a.y1, b.y1) - max(a.y0, b.y0)) / 2 + 0.5
                for k, sign in ((upper, 1.0), (lower, -1.0)):
                    x, y = labels[k].xyann
                    labels[k].xyann = (x, y + sign * push * to_points)
                moved = True
                current = boxes()
        for k, box in enumerate(current):  # the axes' top and bottom are walls
            frame = labels[k].axes.bbox
            shift = max(frame.y0 - box.y0, 0.0) - max(box.y1 - frame.y1, 0.0)
            if abs(shift) > 0.5:
                x, y = labels[k].xyann
                labels[k].xyann = (x, y + shift * to_points)
                moved = True
        if not moved:
            return


def _legend(ax: Any, ok: list[dict[str, Any]], small_batch: int, with_front: bool) -> None:
    """One legend beside the plot with a section per encoding: target (colour), precision (shape), batch (fill)."""
    from matplotlib.lines import Line2D

    def header(text: str) -> Any:
        return Line2D([], [], ls="", marker="", label=text)

    handles = [header("target (colour)")]
    handles += [Line2D([], [], marker="o", ls="", color=c, label=t) for t, c in TARGET_COLORS.items()
                if any(r["target"] == t for r in ok)]
    handles += [header("precision (shape)")]
    handles += [Line2D([], [], marker=m, ls="", color="#444444", label=p) for p, m in PRECISION_MARKERS.items()
                if any(r["precision"] == p for r in ok)]
    batches = sorted({int(r["batch"]) for r in ok})
    handles += [header("batch (fill)")]
    handles += [Line2D([], [], marker="o", ls="", color="#444444", label=f"batch {small_batch} (filled)")]
    larger = [b for b in batches if b != small_batch]
    if larger:
        handles.append(Line2D([], [], marker="o", ls="", mfc="white", mec="#444444", mew=1.4,
                              label=f"batch {', '.join(map(str, larger))} (hollow)"))
    if with_front:
        handles += [header(""), Line2D([], [], ls="--", marker="o", mfc="none", ms=9, color="k", label="Pareto front")]
    legend = ax.legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0,
                       handletextpad=0.4, frameon=False)
    for text, handle in zip(legend.get_texts(), handles):
        if not handle.get_marker() and handle.get_linestyle() in ("None", "", " "):
            text.set_fontweight("bold")  # a section header


def plot_fps_vs_map(rows: list[dict[str, Any]], path: Path, title: str = "") -> None:
    """Write the figure of `rows` to `path` (PNG, atomically: a temp file renamed)."""
    fig = render_fps_figure(rows, title)
    import matplotlib.pyplot as plt

    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        fig.savefig(tmp, format="png", dpi=150, bbox_inches="tight")
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
