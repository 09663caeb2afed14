"""Precision stage: turn the simplified FP32 ONNX into what each backend's engine is built from.

Per DESIGN.md (Precision): each backend gets its model from the quantizer that knows its kernels.
- openvino int8: NNCF on the OpenVINO model (overflow fix for AVX2-without-VNNI) -> IR model.xml/.bin
- onnxruntime int8: our streaming activation ranges -> ONNX Runtime's Q/DQ quantizer -> model.onnx
- tensorrt int8: ranges of the tensors TensorRT's placement quantizes -> symmetric Q/DQ (zero points 0)
  placed as NVIDIA recommends (calibration/tensorrt_placement.py) -> model.onnx
- fp16: an FP16-typed ONNX for onnxruntime/tensorrt; OpenVINO compresses at engine build instead.
- fp32: nothing to do.
Compute layers are quantized; nodes under a `decode` module (box decoding) stay float.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from enginesmith.backends.targets import Target, get_precision, get_target
from enginesmith.calibration.fp16 import onnx_to_fp16
from enginesmith.calibration.nncf_openvino import quantize_openvino
from enginesmith.calibration.qdq import calibration_tensors, quantize_qdq
from enginesmith.calibration.sources import calibration_batches
from enginesmith.calibration.statistics import activation_ranges
from enginesmith.pipeline.artifacts import Artifact, Cache, StageResult
from enginesmith.progress import progress_bar
from enginesmith.runtime.preprocess import PreprocessSpec

DECODE_ONNX_PATTERN = "/decode/"
DECODE_OPENVINO_PATTERN = ".*decode.*"
QUANTIZED_OP_TYPES = ("Conv", "Gemm", "MatMul")


@dataclass
class Calibration:
    """The calibration data of one build: where the images come from and how they are batched.

    `batches()` streams (batch, C, H, W) float32 arrays preprocessed with `spec`, so calibration
    and inference share one preprocessing definition.
    """

    source: object  # calibration.sources.CalibrationSource
    spec: PreprocessSpec
    method: str
    batch: int  # images per batch (the engine's static batch, or 1 for a dynamic one)
    feeds: Any = None  # calibration/feeds.py FeedMaker (proposal-driven detectors): image -> list of feeds


    def fingerprint(self) -> dict[str, object]:
        return {
            "images": self.source.fingerprint(),  # type: ignore[attr-defined]
            "count": len(self.source),  # type: ignore[arg-type]
            "preprocess": self.spec.to_dict(),
            "method": self.method,
            "batch": self.batch,
            **(self.feeds.fingerprint() if self.feeds is not None else {}),  # type: ignore[attr-defined]
        }

    def batches(self) -> Iterator[np.ndarray | dict[str, np.ndarray]]:
        """(batch, C, H, W) arrays; for a model with feeds, one feed dict per calibration image."""
        if self.feeds is not None:
            for image in self.source.images():  # type: ignore[attr-defined]
                yield from self.feeds(image)
            return
        for b in calibration_batches(self.source, self.spec, self.batch):
            if len(b) == self.batch:
                yield b

    def __iter__(self) -> Iterator[np.ndarray]:
        """Re-iterable: every pass streams the images again (memory flat in the set size)."""
        return self.batches()

    def __len__(self) -> int:
        if self.feeds is not None:
            return len(self.source) * self.feeds.feeds_per_image  # type: ignore[arg-type]
        return len(self.source) // self.batch  # type: ignore[arg-type]


@dataclass(frozen=True)
class QuantizeOptions:
    """How INT8 is made beyond the calibration data: nodes kept in float (ONNX node names, from the
    mixed-precision search) and NNCF's preset / overflow fix for OpenVINO."""

    keep_float: tuple[str, ...] = ()
    nncf_preset: str = "mixed"
    overflow_fix: str = "enable"

    def params(self, target: Target) -> dict[str, object]:
        """What enters the precision stage's cache key: the kept-float nodes, and the options `target`'s
        quantizer takes (Target.quantize_options)."""
        return {"keep_float": list(self.keep_float), **{k: getattr(self, k) for k in target.quantize_options}}


def precision_artifacts(
    cache: Cache, target: str, precision: str, simplified: Artifact, calibration: Calibration | None,
    on_stage: Callable[[Artifact], None], options: QuantizeOptions = QuantizeOptions(),
) -> Artifact | None:
    """Run the precision stage(s) for (target, precision); return the artifact the engine is built
    from, or None when the engine is built straight from the simplified ONNX. "mixed" is INT8 with
    `options.keep_float` left in float."""
    t, p = get_target(target), get_precision(precision)
    if p.engine in ("fp32", "bf16") or (p.engine == "fp16" and t.fp16_model == "engine"):
        return None
    if p.engine == "fp16":
        art = cache.run("fp16", [simplified], {"keep_io_types": True}, lambda tmp: _fp16(simplified.file, tmp))
        on_stage(art)
        return art
    assert calibration is not None
    if t.int8_quantizer == "nncf":
        art = cache.run(
            "quantize-nncf", [simplified], {"calibration": calibration.fingerprint(), **options.params(t)},
            lambda tmp: _nncf(simplified.file, calibration, options, tmp),
        )
        on_stage(art)
        return art
    symmetric = t.int8_symmetric  # TensorRT's explicit quantization: zero points 0, TensorRT's Q/DQ placement
    placement = {"placement": "tensorrt" if symmetric else "onnxruntime", "op_types": list(QUANTIZED_OP_TYPES)}
    stats = cache.run(
        "statistics", [simplified],
        {"calibration": calibration.fingerprint(), "exclude": DECODE_ONNX_PATTERN, **placement},
        lambda tmp: _statistics(simplified.file, calibration, symmetric, tmp),
    )
    on_stage(stats)
    art = cache.run(
        "quantize-qdq", [simplified, stats], {"symmetric": symmetric, **placement, **options.params(t)},
        lambda tmp: _qdq(simplified.file, stats.file, symmetric, options.keep_float, tmp),
    )
    on_stage(art)
    return art


def _fp16(src: Path, tmp: Path) -> StageResult:
    onnx_to_fp16(src, tmp / "model.onnx", keep_io_types=True)
    return StageResult(["model.onnx"], {"precision": "fp16"})


def _nncf(src: Path, calibration: Calibration, options: QuantizeOptions, tmp: Path) -> StageResult:
    import openvino as ov

    result = quantize_openvino(
        ov.convert_model(str(src)),
        calibration,
        subset_size=len(calibration) * calibration.batch,
        method=calibration.method,
        ignored_patterns=(DECODE_OPENVINO_PATTERN,),
        preset=options.nncf_preset,
        overflow_fix=options.overflow_fix,
        keep_float=options.keep_float,
    )
    model, info = result
    info = {k: v for k, v in info.items() if k != "ignored"}
    ov.save_model(model, str(tmp / "model.xml"), compress_to_fp16=False)
    return StageResult(["model.xml", "model.bin"], {"quantizer": "nncf", "calibration_batches": len(calibration), **info})


def _statistics(src: Path, calibration: Calibration, symmetric: bool, tmp: Path) -> StageResult:
    """Ranges of the tensors quantize_qdq quantizes in the form `symmetric` selects (qdq.calibration_tensors)."""
    names = calibration_tensors(src, symmetric=symmetric, exclude_patterns=(DECODE_ONNX_PATTERN,),
                                op_types=QUANTIZED_OP_TYPES)
    passes = 1 if calibration.method == "minmax" else 2
    with progress_bar(f"activation statistics ({calibration.method})", len(calibration) * calibration.batch,
                      passes) as update:
        ranges = activation_ranges(src, calibration.batches, names, calibration.method, progress=update)
    (tmp / "ranges.json").write_text(json.dumps({k: [float(lo), float(hi)] for k, (lo, hi) in ranges.items()}))
    return StageResult(["ranges.json"], {"tensors": len(ranges), "method": calibration.method})


def _qdq(src: Path, ranges_file: Path, symmetric: bool, keep_float: tuple[str, ...], tmp: Path) -> StageResult:
    ranges = {k: (lo, hi) for k, (lo, hi) in json.loads(ranges_file.read_text()).items()}
    info = quantize_qdq(src, tmp / "model.onnx", ranges, symmetric=symmetric, exclude_patterns=(DECODE_ONNX_PATTERN,),
                        keep_float=keep_float)
    return StageResult(["model.onnx"], {"quantizer": "onnxruntime-qdq", "symmetric": symmetric, **(info or {})})
