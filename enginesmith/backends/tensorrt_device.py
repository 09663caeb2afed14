"""What a TensorRT plan is tied to: the TensorRT release and the GPU that built it, recorded in the engine's
manifest and compared with this machine's before the plan is loaded (stdlib only; TensorRT is not imported)."""

from __future__ import annotations

import os
import shutil
import subprocess
from importlib import metadata
from typing import Any

from enginesmith.errors import EnginesmithError

INSTALL_HINT = ("install NVIDIA TensorRT 10+ and Polygraphy (pip install tensorrt-cu12 polygraphy) on a machine with an "
                "NVIDIA GPU and the CUDA runtime (libcudart)")


def recorded_tensorrt(manifest: dict[str, Any]) -> dict[str, str | None]:
    """What a TensorRT engine was built with: {"tensorrt", "gpu", "compute_capability"} (None when unrecorded).

    Read from manifest["device"] when present, else from the engine stage's recorded tools."""
    device = dict(manifest.get("device") or {})
    tools: dict[str, Any] = {}
    for stage in manifest.get("stages") or []:
        if stage.get("stage") == "engine":
            tools = stage.get("tools") or {}
    def pick(key: str, *alts: str) -> str | None:
        for src in (device, tools):
            for k in (key, *alts):
                if src.get(k) not in (None, ""):
                    return str(src[k])
        return None
    return {"tensorrt": pick("tensorrt"), "gpu": pick("gpu", "gpu_name"),
            "compute_capability": pick("compute_capability", "gpu_compute_capability")}


def _same_version(a: str, b: str) -> bool:
    """TensorRT plans load only in the TensorRT release that built them: compare major.minor.patch."""
    return a.split("+")[0].split(".")[:3] == b.split("+")[0].split(".")[:3]


def check_tensorrt_compat(recorded: dict[str, str | None], installed_version: str | None,
                          gpu: str | None, compute_capability: str | None) -> None:
    """Refuse a TensorRT engine built with another TensorRT version or for another GPU.

    recorded: `recorded_tensorrt(manifest)`; the rest describe this machine (None: unknown here, not
    checked). A manifest that records no TensorRT version cannot be trusted and is refused too."""
    if installed_version is None:
        raise EnginesmithError(f"this is a TensorRT engine, but TensorRT is not installed here; "
                               f"{INSTALL_HINT}")
    built = recorded.get("tensorrt")
    if not built:
        raise EnginesmithError("this TensorRT engine's manifest does not record the TensorRT version that built "
                               "it, so it may not load here: rebuild for this device with `enginesmith build "
                               "--target tensorrt`")
    if not _same_version(built, installed_version):
        raise EnginesmithError(f"this engine was built with TensorRT {built}, this machine has TensorRT "
                               f"{installed_version}: rebuild for this device with `enginesmith build --target tensorrt`")
    rec_cc, rec_gpu = recorded.get("compute_capability"), recorded.get("gpu")
    if rec_cc and compute_capability and str(rec_cc) != str(compute_capability):
        raise EnginesmithError(f"this engine was built for compute capability {rec_cc} ({rec_gpu or 'unknown GPU'}), "
                               f"this GPU is {compute_capability} ({gpu or 'unknown'}): rebuild for this device "
                               "with `enginesmith build --target tensorrt`")
    if rec_gpu and gpu and rec_gpu.strip() != gpu.strip():
        raise EnginesmithError(f"this engine was built on a {rec_gpu}, this GPU is a {gpu}: rebuild for this device "
                               "with `enginesmith build --target tensorrt`")


def local_tensorrt_version() -> str | None:
    """The installed TensorRT version from package metadata (TensorRT is not imported)."""
    for dist in ("tensorrt", "tensorrt-cu13", "tensorrt-cu12", "tensorrt_libs"):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


def local_gpu() -> tuple[str | None, str | None]:
    """(name, compute capability "8.9") of CUDA device 0 from nvidia-smi; (None, None) when it cannot be asked.

    CUDA device 0 is the first entry of CUDA_VISIBLE_DEVICES (an index or a GPU UUID) when that is set, else
    nvidia-smi's first GPU (with GPUs of different kinds, CUDA orders them fastest first unless
    CUDA_DEVICE_ORDER=PCI_BUS_ID: set one of the two)."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None, None
    try:
        out = subprocess.run([exe, "--query-gpu=index,uuid,name,compute_cap", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return None, None
    return cuda_device_zero(out, os.environ.get("CUDA_VISIBLE_DEVICES"))


def cuda_device_zero(smi_csv: str, visible: str | None) -> tuple[str | None, str | None]:
    """(name, compute capability) of CUDA device 0 from nvidia-smi's `index,uuid,name,compute_cap` CSV rows and
    CUDA_VISIBLE_DEVICES (None: unset); (None, None) when no row is device 0 ("[N/A]" fields read as None)."""
    rows = [[f.strip() for f in line.split(",")] for line in smi_csv.splitlines() if line.strip()]
    rows = [r for r in rows if len(r) >= 4]
    if visible is not None:
        first = visible.split(",")[0].strip()
        rows = [r for r in rows if first and (r[0] == first or (first.startswith("GPU-") and r[1].startswith(first)))]
    if not rows:
        return None, None
    name, cc = (None if f in ("", "[N/A]", "N/A") else f for f in rows[0][2:4])
    return name, cc


def check_device(manifest: dict[str, Any]) -> None:
    """Refuse a TensorRT engine (its manifest.json as a dict) this machine's TensorRT or GPU cannot load."""
    gpu, cc = local_gpu()
    check_tensorrt_compat(recorded_tensorrt(manifest), local_tensorrt_version(), gpu, cc)
