"""The device kinds a machine is, as suite rows and `--device` name them: "cpu" and "gpu" (any), "cpu:avx2",
"cpu:avx512", "cpu:vnni" (AVX512-VNNI or AVX-VNNI: the INT8 dot products OpenVINO's INT8 kernels need to keep
accuracy), "cpu:bf16" (AVX512-BF16), "cpu:amx" (AMX-INT8/BF16), and "gpu:NAME" for each NVIDIA GPU model
("gpu:H100", "gpu:A10G", "gpu:Orin"): the first word of the name that has a digit, after NVIDIA/GeForce/Tesla.

A Ray node advertises each kind as a custom resource `resource_name(kind)` (enginesmith worker, or
`ray start --resources`); a job that needs a kind asks for a small share of it."""

from __future__ import annotations

import platform
import re
import shutil
import subprocess
from pathlib import Path

from enginesmith.errors import EnginesmithError

RESOURCE_PREFIX = "enginesmith-device:"
MEASURE_SLOT = "enginesmith-measure-slot"  # one per node: benchmarks never share a node
CPU_FLAGS = {"cpu:avx2": ("avx2",), "cpu:avx512": ("avx512f",), "cpu:vnni": ("avx512_vnni", "avx_vnni"),
             "cpu:bf16": ("avx512_bf16",), "cpu:amx": ("amx_int8", "amx_bf16")}
_KIND = re.compile(r"^(cpu|gpu)(:[A-Za-z0-9_.-]+)?$")


def resource_name(kind: str) -> str:
    """The Ray custom resource a node of device kind `kind` advertises."""
    return RESOURCE_PREFIX + kind


def check_kind(kind: str, where: str = "device") -> str:
    """`kind` if it is a device kind ("cpu", "gpu", "cpu:amx", "gpu:H100"), else a one-line EnginesmithError."""
    if not isinstance(kind, str) or not _KIND.match(kind):
        raise EnginesmithError(f"{where} {kind!r} is not a device kind: write cpu, gpu, cpu:FEATURE "
                               f"({', '.join(k.split(':')[1] for k in CPU_FLAGS)}) or gpu:MODEL (e.g. gpu:H100)")
    return kind


def cpu_kinds(cpuinfo_flags: set[str]) -> list[str]:
    """The cpu kinds of a CPU with these /proc/cpuinfo flags."""
    return ["cpu", *(kind for kind, flags in CPU_FLAGS.items() if any(f in cpuinfo_flags for f in flags))]


def gpu_kind(name: str) -> str:
    """"NVIDIA H100 80GB HBM3" -> "gpu:H100"; "NVIDIA GeForce RTX 4090" -> "gpu:4090"; "Orin (nvgpu)" -> "gpu:Orin"."""
    words = [w for w in re.split(r"[\s_]+", name) if w and w.upper() not in ("NVIDIA", "GEFORCE", "TESLA", "RTX", "GTX")]
    pick = next((w for w in words if any(c.isdigit() for c in w)), words[0] if words else "unknown")
    return "gpu:" + re.sub(r"[^A-Za-z0-9_.-]", "", pick)


def local_flags() -> set[str]:
    """This CPU's /proc/cpuinfo flags (empty where there is no /proc/cpuinfo)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


# the ISA flags that decide INT8/BF16 kernels, as results files list them
DESCRIBED_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "avx512_fp16", "amx_int8", "amx_bf16")


def cpu_description() -> str:
    """"MODEL NAME; CPU flags: avx2 avx512f ...": the CPU model and the ISA flags that decide INT8/BF16 kernels."""
    name = platform.processor() or platform.machine()
    try:
        name = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                     if ln.startswith("model name")), name)
    except OSError:
        pass
    have = local_flags()
    return f"{name}; CPU flags: {' '.join(f for f in DESCRIBED_FLAGS if f in have) or 'unknown'}"


def local_gpus() -> list[str]:
    """Names of this machine's NVIDIA GPUs (nvidia-smi), [] without one."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        out = subprocess.run([smi, "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True,
                             timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.splitlines() if line.strip()]


def local_kinds() -> list[str]:
    """Every device kind this machine is."""
    kinds = cpu_kinds(local_flags())
    gpus = local_gpus()
    if gpus:
        kinds += ["gpu", *dict.fromkeys(gpu_kind(n) for n in gpus)]
    return kinds
