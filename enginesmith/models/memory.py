"""How much memory a build needs, estimated before anything is allocated, and whether this machine has it.

The model is built and run on PyTorch's ``meta`` device (shapes only: no memory, no arithmetic) at the build's
batch and input size, and every tensor an operator produces in that forward pass is summed (views and in-place
results are not new memory). That sum is the *activation* size; the parameters and buffers are the *weights*.
The peak resident memory of a build (export, simplification, calibration, engine, verification, latency: the
default OpenVINO INT8 path and the ONNX Runtime one) was measured with ``/usr/bin/time -v`` and fitted as

    peak = BASE_BYTES + WEIGHT_FACTOR * weights + ACTIVATION_FACTOR * activations

(the measurements are listed where the constants are defined). ``check_build_fits`` compares that with the
memory this machine has available (``MemAvailable`` from /proc/meminfo, or the cgroup's limit when it is
tighter) and refuses a build that cannot fit with one line: the estimate, what is available and roughly the
largest input size that fits.

Data-dependent operators have no meta kernel; while estimating they are answered with their worst case
(``nonzero``/``nms`` keep every element, ``.item()`` is 1), which only the models' random initialisation and
box post-processing use.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from enginesmith.errors import EnginesmithError
from enginesmith.runtime.proposals import REGIONS_PER_IMAGE, ROIS_PER_IMAGE

GIB = 2**30

# Fitted on real builds of this code (peak RSS of the build's largest process, /usr/bin/time -v, fresh cache, on
# the 2-core 24 GiB CI machine; `enginesmith build MODEL [--input-size S]`: OpenVINO INT8 with NNCF, 64 photos)
# as peak = BASE + 5.5 W + 1.5 A, W = weights and A = one forward pass's activations (both from the meta run).
# Weights are held ~5.5 times at the peak (the PyTorch model, the exported ONNX and its simplified copy, ONNX
# Runtime's and OpenVINO's copies, NNCF's); activations ~1.5 times (the inference runs of verification and
# calibration). MEASUREMENTS lists each build, its W and A, and the measured peak; every estimate is within
# 0.86-1.24x of its measurement (ESTIMATE_TOLERANCE gives the slow test room for other machines).
BASE_BYTES = int(1.05 * GIB)  # python + torch + onnx + ONNX Runtime + OpenVINO + NNCF loaded: lenet5's whole build
WEIGHT_FACTOR = 5.5
ACTIVATION_FACTOR = 1.5
ESTIMATE_TOLERANCE = 1.5

MEASUREMENTS: tuple[tuple[str, str, int, int, int, float], ...] = (
    # (model, HxW [, options], batch, W MiB, A MiB, measured peak GiB) -> estimate GiB
    ("lenet5", "32x32", 1, 0, 0, 1.05),  # -> 1.05
    ("yolov3-tiny-256", "256x256", 1, 33, 33, 1.15),  # -> 1.28
    ("yolov3-tiny-256", "1024x1024", 1, 33, 529, 2.32),  # -> 2.00 (2.32 with --target onnxruntime too)
    ("yolov3-tiny-256", "2048x2048 --calib-size 16", 1, 33, 2117, 3.67),  # -> 4.33
    ("alexnet", "227x227", 1, 238, 17, 2.27),  # -> 2.35
    ("yolov3", "416x416", 1, 237, 523, 2.60),  # -> 3.09
    ("vgg16", "224x224", 1, 528, 69, 3.98),  # -> 3.99
    ("yolov3-tiny-256", "512x512 --batch 4", 4, 33, 529, 1.61),  # -> 2.00
)


@dataclass(frozen=True)
class BuildMemory:
    """The estimate for one build: bytes of weights, of one forward pass's activations, and the peak."""

    weights: int
    activations: int
    batch: int
    size: tuple[int, int]

    @property
    def peak(self) -> int:
        return int(BASE_BYTES + WEIGHT_FACTOR * self.weights + ACTIVATION_FACTOR * self.activations)


def gib(n: float) -> str:
    """Bytes as 'X MiB', 'X.Y GiB' or 'X.Y TiB' (and 'more than 1024 TiB' past that)."""
    if n < GIB:
        return f"{n / 2**20:.0f} MiB"
    if n < 2**40:
        return f"{n / GIB:.1f} GiB"
    return f"{n / 2**40:.1f} TiB" if n < 2**50 else "more than 1024 TiB"


# ---------------------------------------------------------------------------------------------- meta run


def _meta_modes() -> tuple[Any, type]:
    """(torch, the dispatch mode class) imported lazily: this module is imported by validate() only."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    class _Meta(TorchDispatchMode):
        """Answers data-dependent ops on meta tensors with their worst case and counts new output bytes."""

        def __init__(self) -> None:
            super().__init__()
            self.bytes = 0
            self.counting = False

        def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
            kwargs = kwargs or {}
            name = func.name()
            if name == "aten::_local_scalar_dense":  # .item(), float(t), bool(t): values do not matter here
                t = args[0]
                return True if t.dtype == torch.bool else (1.0 if t.is_floating_point() or t.is_complex() else 1)
            if name == "torchvision::nms":  # every box kept: the largest output nms can give
                return torch.empty((args[0].shape[0],), dtype=torch.long, device="meta")
            if name == "aten::nonzero":
                return torch.empty((args[0].numel(), args[0].dim()), dtype=torch.long, device="meta")
            out = func(*args, **kwargs)
            if self.counting and not func.is_view:
                inputs = {id(a) for a in torch.utils._pytree.tree_leaves((args, kwargs)) if isinstance(a, torch.Tensor)}
                for t in torch.utils._pytree.tree_leaves(out):
                    if isinstance(t, torch.Tensor) and id(t) not in inputs:  # in-place ops return their input
                        self.bytes += t.numel() * t.element_size()
            return out

    return torch, _Meta


def meta_model(spec: Any, num_classes: int, size: tuple[int, int]) -> Any:
    """`spec`'s network built on the meta device (no memory) with `num_classes` classes at input `size`."""
    torch, Meta = _meta_modes()
    with torch.device("meta"), Meta():
        return spec.create(num_classes=num_classes, input_size=size)


def _effective_batch(spec: Any, batch: int, dynamic_batch: bool) -> int:
    """Images (or R-CNN regions) in the largest batch the build runs: verification runs 2 on a dynamic axis, but
    R-CNN's feeds carry all REGIONS_PER_IMAGE regions of an image on it (calibration/feeds.py)."""
    if spec.feeds == "rcnn_regions":
        return REGIONS_PER_IMAGE if dynamic_batch else batch
    return 2 if dynamic_batch else batch


def activation_bytes(spec: Any, model: Any, batch: int, size: tuple[int, int]) -> int:
    """Bytes of every tensor the model's operators produce in one forward at (batch, C, H, W), on meta."""
    torch, Meta = _meta_modes()
    shape = (batch, spec.preprocess.channels, *size)
    extra = ()
    if spec.feeds == "fast_rcnn_rois":
        extra = (torch.zeros((ROIS_PER_IMAGE, 4), device="meta"),)
    mode = Meta()
    with torch.no_grad(), mode:
        x = torch.zeros(shape, device="meta")
        mode.counting = True
        model(x, *extra)
    return mode.bytes


def estimate_build_memory(spec: Any, size: tuple[int, int], batch: int = 1, num_classes: int | None = None,
                          dynamic_batch: bool = False, model: Any = None) -> BuildMemory | None:
    """The memory a build of `spec` at `size` and `batch` needs (see the module docstring), or None when the
    model cannot run on the meta device (then nothing is known; the caller goes on without the check).
    `model`: the network already built on meta (meta_model), to avoid building it twice."""
    try:
        if model is None:
            model = meta_model(spec, num_classes or spec.num_classes, size)
        weights = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
        eff = _effective_batch(spec, batch, dynamic_batch)
        return BuildMemory(weights, activation_bytes(spec, model, eff, size), eff, tuple(size))  # type: ignore[arg-type]
    except EnginesmithError:
        raise
    except Exception:  # an op without a meta kernel: no estimate (tests run every registered model on meta)
        return None


# ---------------------------------------------------------------------------------------------- the machine


def _read_int(path: str) -> int | None:
    try:
        text = Path(path).read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def available_memory() -> tuple[int, str]:
    """(bytes this process can still allocate, where that number comes from).

    MemAvailable of /proc/meminfo (what the kernel can give without swapping), else free pages from
    os.sysconf; lowered to the cgroup v2/v1 limit minus its usage when a container limit is tighter."""
    avail, source = None, ""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                avail, source = int(line.split()[1]) * 1024, "MemAvailable in /proc/meminfo"
                break
    except (OSError, ValueError, IndexError):
        pass
    if avail is None:
        try:
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
            source = "free physical pages (sysconf)"
        except (ValueError, OSError, AttributeError):  # pragma: no cover - not Linux/macOS
            avail, source = 1 << 62, "unknown"
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        limit, usage = _read_int(limit_file), _read_int(usage_file)
        if limit is not None and usage is not None and limit < (1 << 60) and limit - usage < avail:
            avail, source = max(0, limit - usage), f"the container's memory limit ({limit_file})"
    return int(avail), source


# ---------------------------------------------------------------------------------------------- the check


def _largest_fitting(spec: Any, est: BuildMemory, budget: int) -> tuple[int, int] | None:
    """Roughly the largest input size (same aspect ratio) whose estimate fits `budget` bytes, that the model
    accepts; activations grow with H x W. None when even a tiny input would not fit or the model takes one size."""
    room = (budget - BASE_BYTES - WEIGHT_FACTOR * est.weights) / ACTIVATION_FACTOR
    if room <= 0 or est.activations <= 0:
        return None
    h, w = est.size
    scale = math.sqrt(room / est.activations)
    if scale >= 1:
        return None
    side_h, side_w = int(h * scale) // 32 * 32, int(w * scale) // 32 * 32
    for _ in range(64):  # step down to a size the architecture takes (most need multiples of 32)
        if side_h < 32 or side_w < 32:
            return None
        try:
            spec.check_input_size((side_h, side_w))
            return side_h, side_w
        except EnginesmithError:
            side_h, side_w = side_h - 32, side_w - 32
    return None


def check_build_fits(spec: Any, size: tuple[int, int], batch: int = 1, num_classes: int | None = None,
                     dynamic_batch: bool = False, model: Any = None) -> BuildMemory | None:
    """Refuse (EnginesmithError, one line) a build whose estimated peak memory exceeds what this machine has
    available; return the estimate (None when it cannot be made)."""
    est = estimate_build_memory(spec, size, batch, num_classes, dynamic_batch, model)
    if est is None:
        return None
    avail, source = available_memory()
    if est.peak <= avail:
        return est
    h, w = est.size
    what = f"{spec.name} at {h}x{w}, batch {batch}" + (
        f", {num_classes} classes" if num_classes and num_classes != spec.num_classes else "")
    parts = [f"building {what} needs about {gib(est.peak)} of memory (weights {gib(est.weights)}, activations "
             f"{gib(est.activations)} per batch of {est.batch}), but this machine has {gib(avail)} available ({source})"]
    if BASE_BYTES + WEIGHT_FACTOR * est.weights > avail:
        parts.append("the weights alone do not fit: use fewer --num-classes or a machine with more memory")
    else:
        fits = _largest_fitting(spec, est, avail)
        if fits is not None:
            parts.append(f"roughly {fits[0]}x{fits[1]} fits: give a smaller --input-size")
        elif est.batch > 1:
            parts.append("give a smaller --batch or --input-size")
        else:
            parts.append("give a smaller --input-size or free memory")
    raise EnginesmithError("; ".join(parts))


__all__ = ["BuildMemory", "estimate_build_memory", "check_build_fits", "available_memory", "meta_model",
           "activation_bytes", "BASE_BYTES", "WEIGHT_FACTOR", "ACTIVATION_FACTOR", "ESTIMATE_TOLERANCE", "gib"]
