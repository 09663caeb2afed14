"""INT8 for OpenVINO: NNCF post-training quantization of the OpenVINO model (FakeQuantize).

Decisions:
- Overflow fix: ``OverflowFix.ENABLE`` by default. The target CPU is AVX2 without VNNI, where
  OpenVINO's u8 x s8 kernels saturate unless weights use half the 8-bit range (DESIGN.md,
  measured -40 mAP on a plain Q/DQ file). NNCF's default (FIRST_LAYER) narrows only the first
  convolution; ENABLE narrows every Conv/MatMul weight (7-bit), the safe choice for AVX2.
- Method mapping (``info["estimator"]`` records it for the manifest):
    minmax     -> RangeEstimatorParametersSet.MINMAX (global min / max);
    percentile -> per-sample QUANTILE statistics (outlier prob = 1 - p/100) averaged over
                  samples (NNCF's MEAN_QUANTILE aggregation): NNCF has no global quantile, so
                  this is not the same number as statistics.activation_ranges' percentile;
    entropy    -> NNCF has no KL-divergence calibrator; the closest is
                  RangeEstimatorParametersSet.HISTOGRAM (range chosen by minimising the
                  quantization error on a histogram). Not TensorRT's entropy.
  Weights always use NNCF's default (per-channel min/max).
- Decode subgraph: OpenVINO friendly names after ``convert_model(onnx)`` keep the ONNX node
  names ("/decode/Slice", "/decode/Mul", ...), but the *last* decode node takes the graph
  output's name ("boxes", "scores", "out"): a name pattern alone misses the decode Concat that
  crashed OpenVINO. So the ignored scope is ``patterns`` (regex, validate=False) plus the names
  of every op fed only by decode ops (propagated in topological order).
- No statistics cache here: NNCF 3.4 honours ``statistics_path`` only in compress_weights
  (AdvancedCompressionParameters). The pipeline caches the quantized IR itself as the
  ``quantize-nncf`` stage, keyed by the calibration fingerprint and these options.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from enginesmith.calibration.feeds import as_feed
from enginesmith.errors import EnginesmithError

METHODS = ("minmax", "percentile", "entropy")
PRESETS = ("performance", "mixed")


def _estimator(method: str, percentile: float):
    from nncf.quantization.range_estimator import (
        AggregatorType,
        RangeEstimatorParameters,
        RangeEstimatorParametersSet,
        StatisticsCollectorParameters,
        StatisticsType,
    )

    if method == "minmax":
        return RangeEstimatorParametersSet.MINMAX, "MINMAX (global min/max)"
    if method == "percentile":
        prob = max(1e-6, 1.0 - percentile / 100.0)
        params = RangeEstimatorParameters(
            min=StatisticsCollectorParameters(StatisticsType.QUANTILE, AggregatorType.MEAN, quantile_outlier_prob=prob),
            max=StatisticsCollectorParameters(StatisticsType.QUANTILE, AggregatorType.MEAN, quantile_outlier_prob=prob),
        )
        return params, f"MEAN_QUANTILE (per-sample quantile {percentile}%, averaged)"
    if method == "entropy":
        return RangeEstimatorParametersSet.HISTOGRAM, "HISTOGRAM (quantization-error minimising; NNCF has no KL entropy)"
    raise EnginesmithError(f"unknown calibration method {method!r}; use one of {', '.join(METHODS)}")


def decode_op_names(model, patterns: Sequence[str]) -> list[str]:
    """Friendly names of the ops kept in float: names matching a regex in `patterns`, plus every
    non-constant op whose non-constant inputs all come from such ops (e.g. the final decode
    Concat named after the graph output) and the Results they feed."""
    if not patterns:
        return []
    decode: set[str] = set()
    out: list[str] = []
    for op in model.get_ordered_ops():  # topological order
        t = op.get_type_name()
        name = op.get_friendly_name()
        if t in ("Parameter", "Constant"):
            continue
        producers = [
            inp.get_source_output().get_node() for inp in op.inputs()
        ]
        acts = [p for p in producers if p.get_type_name() != "Constant"]
        if any(re.search(p, name) for p in patterns) or (
            acts and all(p.get_friendly_name() in decode for p in acts)
        ):
            decode.add(name)
            out.append(name)
    return out


def count_fake_quantize(model) -> int:
    return sum(1 for op in model.get_ordered_ops() if op.get_type_name() == "FakeQuantize")


def fake_quantize_feeding(model, names: Iterable[str]) -> list[str]:
    """Ops in `names` that have a FakeQuantize (possibly through a Convert) as a direct input."""
    wanted = set(names)
    bad = []
    for op in model.get_ordered_ops():
        if op.get_friendly_name() not in wanted:
            continue
        for inp in op.inputs():
            src = inp.get_source_output().get_node()
            if src.get_type_name() == "Convert":
                src = src.input_value(0).get_node()
            if src.get_type_name() == "FakeQuantize":
                bad.append(op.get_friendly_name())
    return bad


def _batches_list(batches) -> Callable[[], Iterable[np.ndarray]]:
    if callable(batches):
        return batches
    return lambda: batches


def quantize_openvino(
    model: Any,
    batches: Iterable[np.ndarray] | Callable[[], Iterable[np.ndarray]],
    *,
    subset_size: int,
    method: str = "minmax",
    ignored_patterns: Sequence[str] = (".*decode.*",),
    percentile: float = 99.99,
    overflow_fix: str = "enable",
    preset: str = "performance",
    keep_float: Sequence[str] = (),
) -> tuple[Any, dict[str, Any]]:
    """NNCF INT8 of an ``openvino.Model`` -> (quantized openvino.Model, info).

    batches: a re-iterable of (N, C, H, W) float32 arrays (a list) or a factory returning a fresh
    iterator. subset_size counts *samples* (images); NNCF reads whole feeds, so with feeds of N
    it runs ceil(subset_size / N) of them. A model with a static batch dim B is fed B at a time
    (batches are sliced; a remainder smaller than B is dropped). info: fake_quantize (count), estimator, method,
    overflow_fix, preset, ignored (names), kept_float. (The result is cached by the pipeline's stage cache.)

    keep_float: ONNX node names to leave in float (the mixed-precision search); after
    convert_model a Conv/Gemm named X becomes ops "X/WithoutBiases" (+ "X" for the bias Add), so
    both are put in the ignored scope. preset: "performance" (symmetric activations) or "mixed"
    (asymmetric activations), NNCF's QuantizationPreset.
    """
    import logging

    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)  # nncf probes torch
    import nncf
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix

    nncf.set_log_level(logging.WARNING)
    if subset_size <= 0:
        raise EnginesmithError(f"calibration subset size must be positive, got {subset_size}")
    if preset not in PRESETS:
        raise EnginesmithError(f"unknown NNCF preset {preset!r}; use one of {', '.join(PRESETS)}")
    estimator, estimator_name = _estimator(method, percentile)
    ignored = decode_op_names(model, ignored_patterns)
    kept = [name for n in keep_float for name in (n, f"{n}/WithoutBiases")]
    info: dict[str, Any] = {"method": method, "estimator": estimator_name, "overflow_fix": overflow_fix,
                            "preset": preset, "kept_float": list(keep_float),
                            "ignored_patterns": list(ignored_patterns), "ignored": ignored}
    dataset, n_batches = _calibration_dataset(model, _batches_list(batches), subset_size)
    advanced = AdvancedQuantizationParameters(overflow_fix=OverflowFix(overflow_fix),
                                              activations_range_estimator_params=estimator)
    try:
        q = nncf.quantize(
            model,
            dataset,
            subset_size=n_batches,
            preset=nncf.QuantizationPreset(preset),
            ignored_scope=nncf.IgnoredScope(names=ignored + kept, patterns=list(ignored_patterns), validate=False),
            advanced_parameters=advanced,
        )
    except Exception as e:  # NNCF raises many types; the user needs the stage and the reason
        raise EnginesmithError(f"NNCF quantization failed ({type(e).__name__}: {e}); try --calib-method minmax") from None
    info["fake_quantize"] = count_fake_quantize(q)
    bad = fake_quantize_feeding(q, ignored)
    if bad:
        raise EnginesmithError(f"NNCF quantized inputs of decode ops {bad[:5]}; the decode subgraph must stay float")
    return q, info


def _calibration_dataset(model: Any, factory: Callable[[], Iterable[Any]], subset_size: int) -> tuple[Any, int]:
    """(nncf.Dataset over the calibration batches, how many feeds NNCF should read for `subset_size` samples).

    A model exported with a static batch (usually 1) is fed in slices of that size; a feed dict
    (calibration/feeds.py: several inputs) counts as one sample and is fed whole."""
    import nncf

    first = next(iter(factory()), None)
    if first is None:
        raise EnginesmithError("calibration data is empty; give at least one image")
    dim0 = model.inputs[0].get_partial_shape()[0]
    feeds = isinstance(first, dict)
    feed_n = 1 if feeds else int(dim0.get_length()) if dim0.is_static else int(first.shape[0])
    input_name = model.inputs[0].get_any_name()

    class _Reiterable:
        def __iter__(self):
            for batch in factory():
                if feeds or batch.shape[0] == feed_n:
                    yield batch
                    continue
                for i in range(0, batch.shape[0] - feed_n + 1, feed_n):
                    yield batch[i : i + feed_n]

    return nncf.Dataset(_Reiterable(), lambda batch: as_feed(batch, [input_name])), max(1, -(-subset_size // feed_n))
