"""`--precision bf16`: an OpenVINO engine that really runs in bf16 on a CPU with bf16 instructions, is verified
against FP32 like FP16 is, and is refused in one line where it cannot run (another target, another CPU).

Whether this CPU has bf16 is read from /proc/cpuinfo (avx512_bf16 or amx_bf16), independently of OpenVINO's
own report, which is what enginesmith asks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from enginesmith.backends.openvino import bf16_refusal, precision_runs_here
from enginesmith.errors import EnginesmithError
from enginesmith.pipeline.config import BuildConfig

SIZE = 96


def _cpu_has_bf16() -> bool:
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return "avx512_bf16" in flags or "amx_bf16" in flags


BF16_CPU = _cpu_has_bf16()


def _cli(cwd: Path, cache: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ENGINESMITH_CACHE": str(cache), "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "enginesmith.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


def test_openvino_says_what_cpuinfo_says():
    assert precision_runs_here("bf16")[0] == BF16_CPU
    assert precision_runs_here("fp16") == precision_runs_here("int8") == (True, "")


def test_a_cpu_without_bf16_is_refused_in_one_line():
    ok, why = bf16_refusal(["WINOGRAD", "FP32", "INT8", "BIN", "EXPORT_IMPORT"])  # an AVX2 CPU's report
    assert not ok and "\n" not in why
    assert "AVX512-BF16 or AMX-BF16" in why and "FP32, INT8" in why and "build fp32, fp16 or int8" in why
    assert bf16_refusal(["BF16", "FP32"]) == (True, "")


@pytest.mark.parametrize("target", ["onnxruntime", "tensorrt"])
def test_targets_without_bf16_refuse_it_and_name_the_one_that_builds_it(target):
    with pytest.raises(EnginesmithError) as e:
        BuildConfig("lenet5", target=target, precision="bf16").validate()
    assert str(e.value).endswith("not bf16; --target openvino builds it"), str(e.value)


@pytest.fixture(scope="module")
def engines(tmp_path_factory, cache_dir) -> dict[str, Path]:
    """yolov3-tiny at 96x96 on OpenVINO, built fp32 and bf16 through the CLI (bf16 only on a bf16 CPU)."""
    if not BF16_CPU:
        return {}
    root = tmp_path_factory.mktemp("bf16")
    out = {}
    for precision in ("fp32", "bf16"):
        proc = _cli(root, cache_dir, "build", "yolov3-tiny", "--target", "openvino", "--precision", precision,
                    "--input-size", f"{SIZE}x{SIZE}", "--calib-size", "4", "--out", str(root / precision))
        assert proc.returncode == 0, proc.stderr[-3000:]
        out[precision] = root / precision
    return out


def test_bf16_engine_runs_in_bf16_and_is_verified_against_fp32(engines, tmp_path, cache_dir):
    if not BF16_CPU:  # the other half of the rule: the build is refused before any stage, in one line
        proc = _cli(tmp_path, cache_dir, "build", "yolov3-tiny", "--target", "openvino", "--precision", "bf16",
                    "--input-size", f"{SIZE}x{SIZE}", "--out", str(tmp_path / "bf16"))
        assert proc.returncode != 0 and "needs a CPU with bf16 instructions" in proc.stderr
        assert "Traceback" not in proc.stderr and not (tmp_path / "bf16").exists()
        return
    from enginesmith import runtime
    from enginesmith.backends.openvino import Runner

    manifest = json.loads((engines["bf16"] / "manifest.json").read_text())
    assert manifest["precision"] == "bf16"
    engine_stage = next(s for s in manifest["stages"] if s["stage"] == "engine")
    cosine = engine_stage["metrics"]["verify"]["cosine"]
    assert 0.99 <= cosine < 1.0, engine_stage["metrics"]["verify"]  # bf16 is not f32, and within its tolerance
    # the runtime compiles it with the bf16 hint, and the CPU plugin keeps it
    with runtime.load(engines["bf16"]) as detector:
        assert detector._runner.inference_precision == "bf16"
    x = np.random.default_rng(0).uniform(0, 1, (1, 3, SIZE, SIZE)).astype(np.float32)
    outs = {}
    for precision, hint in (("fp32", "f32"), ("bf16", "bf16")):
        with Runner(engines[precision] / "model.xml", inference_precision=hint) as r:
            assert r.inference_precision == hint
            outs[precision] = r.infer({r.input_names[0]: x})
    for name, ref in outs["fp32"].items():
        got = outs["bf16"][name]
        assert not np.array_equal(got, ref), f"{name}: the bf16 engine computed exactly the f32 result"
        a, b = ref.ravel().astype(np.float64), got.ravel().astype(np.float64)
        assert a @ b / (np.linalg.norm(a) * np.linalg.norm(b)) > 0.99
