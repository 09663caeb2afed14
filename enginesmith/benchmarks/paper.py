"""The papers' published speed and accuracy, and whether their order holds in a bench run.

PUBLISHED holds the numbers as printed (all measured on an NVIDIA Titan X, or for YOLOv3 "an M40 or
Titan X"; VOC2007 test mAP unless `metric` says otherwise):
- SSD (Liu et al. 2016), Table 7: Faster R-CNN (VGG16), Fast YOLO, YOLO (VGG16), SSD300, SSD512 at
  batch 1, and SSD300/SSD512 at batch 8;
- YOLO (Redmon et al. 2016), Table 1: YOLO 63.4 mAP, 45 FPS;
- YOLO9000 (Redmon & Farhadi 2017), Table 3: YOLOv2 416 and 544;
- YOLOv3 (Redmon & Farhadi 2018), Figure 3 / Table 3: COCO AP50 and milliseconds per image.

`paper_order_section(rows)` compares, for each (target, precision) of a run's batch-1 rows, the measured
FPS order with the published order (Spearman rank correlation over the methods both have), checks the
issue's statements (Fast YOLO fastest, Faster R-CNN slowest, SSD300 about 2.4x SSD512) and prints each
network's MACs beside it: on a CPU, which is compute-bound at these sizes, FPS follows MACs, while on a
Titan X at batch 1 small networks are bound by kernel launches and memory traffic instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Published:
    method: str
    map: float  # VOC2007 test mAP (points) unless metric says otherwise
    fps: float
    batch: int
    boxes: str
    resolution: str
    source: str
    metric: str = "VOC07 mAP"


PUBLISHED: dict[tuple[str, str, int], Published] = {
    ("faster-rcnn-vgg16", "600x600", 1): Published("Faster R-CNN (VGG16)", 73.2, 7, 1, "~6000", "~1000x600", "SSD Table 7"),
    ("fast-yolo", "448x448", 1): Published("Fast YOLO", 52.7, 155, 1, "98", "448x448", "SSD Table 7"),
    ("yolo-vgg16", "448x448", 1): Published("YOLO (VGG16)", 66.4, 21, 1, "98", "448x448", "SSD Table 7"),
    ("yolov1", "448x448", 1): Published("YOLO", 63.4, 45, 1, "98", "448x448", "YOLO Table 1"),
    ("ssd300", "300x300", 1): Published("SSD300", 74.3, 46, 1, "8732", "300x300", "SSD Table 7"),
    ("ssd512", "512x512", 1): Published("SSD512", 76.8, 19, 1, "24564", "512x512", "SSD Table 7"),
    ("ssd300", "300x300", 8): Published("SSD300", 74.3, 59, 8, "8732", "300x300", "SSD Table 7"),
    ("ssd512", "512x512", 8): Published("SSD512", 76.8, 22, 8, "24564", "512x512", "SSD Table 7"),
    ("yolov2", "416x416", 1): Published("YOLOv2 416", 76.8, 67, 1, "845", "416x416", "YOLO9000 Table 3"),
    ("yolov2-544", "544x544", 1): Published("YOLOv2 544", 78.6, 40, 1, "1445", "544x544", "YOLO9000 Table 3"),
    ("yolov3", "320x320", 1): Published("YOLOv3-320", 51.5, 1000 / 22, 1, "6300", "320x320", "YOLOv3 Table 3",
                                        "COCO AP50"),
    ("yolov3", "416x416", 1): Published("YOLOv3-416", 55.3, 1000 / 29, 1, "10647", "416x416", "YOLOv3 Table 3",
                                        "COCO AP50"),
    ("yolov3", "608x608", 1): Published("YOLOv3-608", 57.9, 1000 / 51, 1, "22743", "608x608", "YOLOv3 Table 3",
                                        "COCO AP50"),
}


def ranks(values: list[float]) -> np.ndarray:
    """1 = largest; ties share their mean rank."""
    v = np.asarray(values, dtype=np.float64)
    order = np.argsort(-v, kind="stable")
    r = np.empty(len(v))
    r[order] = np.arange(1, len(v) + 1)
    for x in np.unique(v):
        tie = v == x
        r[tie] = r[tie].mean()
    return r


def spearman(a: list[float], b: list[float]) -> float | None:
    """Spearman's rank correlation (Pearson correlation of the ranks); None under 3 items or no spread."""
    if len(a) < 3:
        return None
    ra, rb = ranks(a), ranks(b)
    sa, sb = ra.std(), rb.std()
    if sa == 0 or sb == 0:
        return None
    return float(((ra - ra.mean()) * (rb - rb.mean())).mean() / (sa * sb))


def _key(r: dict[str, Any]) -> tuple[str, str, int]:
    return (str(r["model"]), str(r["input_size"]), int(r["batch"]))


def comparisons(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (target, precision) with at least two published batch-1 methods measured: the methods with
    published and measured FPS and ranks, Spearman's rho, and the issue's checks."""
    out = []
    ok = [r for r in rows if r["status"] == "ok" and r["fps"] and r["batch"] == 1 and _key(r) in PUBLISHED]
    for tp in dict.fromkeys((r["target"], r["precision"]) for r in ok):
        group = [r for r in ok if (r["target"], r["precision"]) == tp]
        if len(group) < 2:
            continue
        pub = [PUBLISHED[_key(r)].fps for r in group]
        mine = [float(r["fps"]) for r in group]
        rp, rm = ranks(pub), ranks(mine)
        by_model = {r["model"]: r for r in group}
        checks = {}
        if "fast-yolo" in by_model:
            checks["Fast YOLO fastest"] = bool(rm[list(by_model).index("fast-yolo")] == 1)
        if "faster-rcnn-vgg16" in by_model:
            checks["Faster R-CNN slowest"] = bool(rm[list(by_model).index("faster-rcnn-vgg16")] == len(group))
        ratio = None
        if "ssd300" in by_model and "ssd512" in by_model:
            ratio = by_model["ssd300"]["fps"] / by_model["ssd512"]["fps"]
        out.append({"target": tp[0], "precision": tp[1], "spearman": spearman(pub, mine), "checks": checks,
                    "ssd300_over_ssd512": ratio,
                    "methods": [{"method": PUBLISHED[_key(r)].method, "model": r["model"], "input_size": r["input_size"],
                                 "published_fps": p, "published_rank": float(a), "fps": m, "rank": float(b),
                                 "macs": r.get("macs")} for r, p, m, a, b in zip(group, pub, mine, rp, rm)]})
    return out


def paper_order_section(rows: list[dict[str, Any]]) -> list[str]:
    """Markdown lines for results.md ("Against the papers"); empty when no published method was measured."""
    comps = comparisons(rows)
    if not comps:
        return []
    published_ratio = PUBLISHED[("ssd300", "300x300", 1)].fps / PUBLISHED[("ssd512", "512x512", 1)].fps
    lines = ["## Against the papers", "",
             "Published FPS are the papers' own (Titan X GPU, batch 1; YOLOv3: M40 or Titan X); the measured FPS "
             "are this run's, inference only. Ranks: 1 = fastest. Spearman's rho compares the two orders (1: "
             "the same order). GMAC per image beside them: on this CPU FPS follows the arithmetic.", ""]
    for c in comps:
        rho = "—" if c["spearman"] is None else f"{c['spearman']:.2f}"
        lines += [f"### {c['target']} {c['precision']}, batch 1 (Spearman's rho {rho})", "",
                  "| Method | published FPS | published rank | measured FPS | measured rank | GMAC |",
                  "|---|---|---|---|---|---|"]
        for m in sorted(c["methods"], key=lambda m: m["published_rank"]):
            gmac = "—" if not m["macs"] else f"{m['macs'] / 1e9:.1f}"
            lines.append(f"| {m['method']} | {m['published_fps']:.0f} | {m['published_rank']:g} | {m['fps']:.1f} | "
                         f"{m['rank']:g} | {gmac} |")
        notes = [f"{name}: {'holds' if held else 'does not hold'}" for name, held in c["checks"].items()]
        if c["ssd300_over_ssd512"] is not None:
            notes.append(f"SSD300 / SSD512 FPS: {c['ssd300_over_ssd512']:.2f}x here, {published_ratio:.2f}x "
                         "published")
        lines += ["", *(f"- {n}" for n in notes), ""]
    return lines


__all__ = ["PUBLISHED", "Published", "comparisons", "paper_order_section", "ranks", "spearman"]
