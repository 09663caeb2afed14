"""enginesmith/cluster/devices.py: device kinds from CPU flags and GPU names, written out by hand here."""

from __future__ import annotations

import pytest

from enginesmith.cluster.devices import check_kind, cpu_kinds, gpu_kind, resource_name
from enginesmith.errors import EnginesmithError


@pytest.mark.parametrize("flags,kinds", [
    ({"sse4_2", "avx2", "fma"}, ["cpu", "cpu:avx2"]),  # the common edge CPU: AVX2, no VNNI
    ({"avx2", "avx_vnni"}, ["cpu", "cpu:avx2", "cpu:vnni"]),  # Alder Lake's AVX-VNNI counts as VNNI
    ({"avx2", "avx512f", "avx512_vnni", "avx512_bf16"}, ["cpu", "cpu:avx2", "cpu:avx512", "cpu:vnni", "cpu:bf16"]),
    ({"avx2", "avx512f", "avx512_vnni", "amx_int8", "amx_bf16"}, ["cpu", "cpu:avx2", "cpu:avx512", "cpu:vnni", "cpu:amx"]),
    (set(), ["cpu"]),
])
def test_cpu_kinds(flags, kinds):
    assert cpu_kinds(flags) == kinds


@pytest.mark.parametrize("name,kind", [
    ("NVIDIA H100 80GB HBM3", "gpu:H100"), ("NVIDIA A10G", "gpu:A10G"), ("NVIDIA GeForce RTX 4090", "gpu:4090"),
    ("Tesla T4", "gpu:T4"), ("Orin (nvgpu)", "gpu:Orin"), ("NVIDIA L4", "gpu:L4"),
])
def test_gpu_kind(name, kind):
    assert gpu_kind(name) == kind


@pytest.mark.parametrize("bad", ["tpu", "gpu:", "cpu:a b", "", "CPU", "gpu:H100;rm"])
def test_check_kind_refuses_in_one_line(bad):
    with pytest.raises(EnginesmithError, match="is not a device kind: write cpu, gpu, cpu:FEATURE"):
        check_kind(bad)


def test_resource_names_are_distinct_per_kind():
    assert resource_name("cpu:amx") != resource_name("cpu") and resource_name("gpu:H100").endswith("gpu:H100")
