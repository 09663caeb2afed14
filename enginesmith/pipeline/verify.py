"""Compare one stage's outputs with the stage before it, and fail loudly beyond tolerance.

Outputs are dicts name -> ndarray (e.g. `logits [N, C]`, or `boxes [N, A, 4]` + `scores [N, A, C]`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from enginesmith.errors import EnginesmithError
from enginesmith.runtime.nms import DEFAULT_IOU_THRESHOLD, DEFAULT_SCORE_THRESHOLD, nms_detections


@dataclass(frozen=True)
class Tolerance:
    """Limits a stage must hold: relative max error (max|a-b| / max|ref|) and cosine similarity."""

    max_rel: float | None = None
    min_cosine: float | None = None


# Per stage/precision. FP32 stages must be numerically equivalent; reduced precision is judged by
# cosine similarity of every output (the task metric is judged separately, on held-out data).
TOLERANCES: dict[str, Tolerance] = {
    "export": Tolerance(max_rel=1e-3, min_cosine=0.9999),
    "simplify": Tolerance(max_rel=1e-4, min_cosine=0.99999),
    "fp32": Tolerance(max_rel=2e-3, min_cosine=0.9999),
    "fp16": Tolerance(max_rel=None, min_cosine=0.999),
    # bf16 keeps 8 significant bits (fp16: 11); measured worst cosine to f32 on the trained edge detectors'
    # raw heads, OpenVINO CPU plugin: 0.9944 (YOLOv3-tiny), 0.9986 (YOLOv3-tiny-3l), 0.9998 (SSD-slim)
    "bf16": Tolerance(max_rel=None, min_cosine=0.99),
    "int8": Tolerance(max_rel=None, min_cosine=0.99),
}


@dataclass(frozen=True)
class Comparison:
    """Worst case over the outputs compared."""

    max_abs: float
    max_rel: float
    cosine: float
    pearson: float
    top1_agreement: float | None  # classifiers only: share of samples whose argmax agrees

    def summary(self) -> str:
        s = f"max|Δ| {self.max_abs:.3g} (rel {self.max_rel:.3g}), cosine {self.cosine:.6f}"
        if self.top1_agreement is not None:
            s += f", top-1 agreement {self.top1_agreement:.1%}"
        return s

    def to_dict(self) -> dict[str, float | None]:
        return {
            "max_abs": self.max_abs,
            "max_rel": self.max_rel,
            "cosine": self.cosine,
            "pearson": self.pearson,
            "top1_agreement": self.top1_agreement,
        }


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0.0 and nb == 0.0:
        return 1.0
    if na == 0.0 or nb == 0.0:
        return 0.0
    return float(np.dot(a, b) / (na * nb))


def compare(reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray]) -> Comparison:
    """Compare every output present in `reference` (same names and shapes required)."""
    max_abs = max_rel = 0.0
    cosine = pearson = 1.0
    top1: float | None = None
    for name, ref in reference.items():
        if name not in candidate:
            raise EnginesmithError(f"output {name!r} missing from the stage's outputs ({sorted(candidate)})")
        got = candidate[name]
        if got.shape != ref.shape:
            raise EnginesmithError(f"output {name!r} changed shape: {ref.shape} -> {got.shape}")
        r = ref.astype(np.float64).ravel()
        g = got.astype(np.float64).ravel()
        if not np.all(np.isfinite(g)):
            raise EnginesmithError(f"output {name!r} has NaN or Inf values")
        diff = float(np.max(np.abs(r - g))) if r.size else 0.0
        scale = float(np.max(np.abs(r))) if r.size else 0.0
        max_abs = max(max_abs, diff)
        max_rel = max(max_rel, diff / scale if scale > 0 else diff)
        cosine = min(cosine, _cosine(r, g))
        pearson = min(pearson, _cosine(r - r.mean(), g - g.mean()))
        if name == "logits" and ref.ndim == 2:
            agree = float(np.mean(np.argmax(ref, 1) == np.argmax(got, 1)))
            top1 = agree if top1 is None else min(top1, agree)
    return Comparison(max_abs, max_rel, cosine, pearson, top1)


def check(comparison: Comparison, tolerance: Tolerance, what: str) -> None:
    """Raise EnginesmithError when `comparison` breaks `tolerance`."""
    if tolerance.max_rel is not None and comparison.max_rel > tolerance.max_rel:
        raise EnginesmithError(
            f"{what} changed the outputs beyond tolerance: relative error {comparison.max_rel:.3g} > "
            f"{tolerance.max_rel:g} ({comparison.summary()})"
        )
    if tolerance.min_cosine is not None and comparison.cosine < tolerance.min_cosine:
        raise EnginesmithError(
            f"{what} changed the outputs beyond tolerance: cosine {comparison.cosine:.5f} < "
            f"{tolerance.min_cosine:g} ({comparison.summary()})"
        )


def nms_parity(outputs: dict[str, np.ndarray], iou_threshold: float = DEFAULT_IOU_THRESHOLD,
               score_threshold: float = DEFAULT_SCORE_THRESHOLD) -> dict[str, float]:
    """Engine NMS vs host NMS on the same raw outputs: `outputs` holds detections, num_detections, boxes
    and scores from one run. Returns {"count_mismatches", "max_abs"}; raises EnginesmithError if the
    two disagree (different counts, or detections further apart than float rounding)."""
    dets, counts = outputs["detections"], outputs["num_detections"]
    host, host_counts = nms_detections(outputs["boxes"], outputs["scores"], iou_threshold, score_threshold,
                                       dets.shape[1])
    mismatches = int(np.sum(counts != host_counts))
    worst = 0.0
    for i in range(len(dets)):
        n = int(min(counts[i], host_counts[i]))
        if n:  # compare as sets of rows: exact score ties may be ordered differently
            a = dets[i, :n][np.lexsort(dets[i, :n].T[::-1])]
            b = host[i, :n][np.lexsort(host[i, :n].T[::-1])]
            worst = max(worst, float(np.max(np.abs(a - b))))
    if mismatches or worst > 1e-3 * max(1.0, float(np.max(np.abs(host))) if host.size else 1.0):
        raise EnginesmithError(
            f"in-engine NMS disagrees with host NMS on the engine's own raw outputs ({mismatches} images with a "
            f"different count, max |Δ| {worst:.3g}); build with --nms host"
        )
    return {"count_mismatches": mismatches, "max_abs": worst}
