"""PyTorch CUDA and compiled-PyTorch targets: the no-GPU errors, the bench plumbing, torch.compile /
AOTInductor on the CPU against eager (same code path as on the GPU), and gpu-marked CUDA checks."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from enginesmith.backends.torch import TorchRunner, torch_cuda_runner  # noqa: E402
from enginesmith.backends.torch_compile import TorchCompileRunner  # noqa: E402
from enginesmith.errors import EnginesmithError  # noqa: E402

HAS_CUDA = torch.cuda.is_available()
HAS_CXX = any(shutil.which(c) for c in ("g++", "c++", "clang++"))
needs_cxx = pytest.mark.skipif(not HAS_CXX, reason="Inductor's CPU code generation needs a C++ compiler (g++), "
                               "and none is on PATH")
no_cuda_only = pytest.mark.skipif(HAS_CUDA, reason="a CUDA GPU is present; the no-GPU path is not reachable")
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="no CUDA GPU: PyTorch sees none here")


@pytest.fixture(scope="module")
def lenet():
    from enginesmith.models import registry

    spec = registry.get("lenet5")
    model = spec.create(num_classes=spec.num_classes, input_size=tuple(spec.input_size), seed=0).eval()
    x = np.random.default_rng(0).standard_normal((2, spec.preprocess.channels, *spec.input_size)).astype(np.float32)
    return spec, model, x


def _eager(model, spec, x) -> dict[str, np.ndarray]:
    with TorchRunner(model, "images", list(spec.output_names)) as r:
        return r.infer({"images": x})


def _conv_reference(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Conv 3x3 (pad 1) + ReLU + global mean in float64 numpy: independent of PyTorch."""
    n, c, h, wd = x.shape
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (1, 1), (1, 1)))
    y = np.zeros((n, w.shape[0], h, wd))
    for i in range(h):
        for j in range(wd):
            y[:, :, i, j] = np.einsum("nckl,ockl->no", xp[:, :, i : i + 3, j : j + 3], w)
    return np.maximum(y + b[None, :, None, None], 0).mean(axis=(2, 3))


def _tiny_conv():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32) * 0.5
    b = rng.standard_normal(4).astype(np.float32) * 0.1
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                              torch.nn.Flatten())
    with torch.no_grad():
        net[0].weight.copy_(torch.from_numpy(w))
        net[0].bias.copy_(torch.from_numpy(b))
    x = rng.standard_normal((8, 3, 16, 16)).astype(np.float32)
    return net.eval(), x, _conv_reference(x, w, b)


# -- no GPU: one clear line -------------------------------------------------------------------------
@no_cuda_only
@pytest.mark.parametrize("make", [
    lambda m: torch_cuda_runner(m, "images", ["logits"], "fp32"),
    lambda m: torch_cuda_runner(m, "images", ["logits"], "fp16"),
    lambda m: TorchCompileRunner(m, "images", ["logits"], device="cuda"),
])
def test_cuda_targets_say_no_cuda_gpu(make):
    net, _, _ = _tiny_conv()
    runner = make(net)
    with pytest.raises(EnginesmithError) as e:
        runner.activate()
    msg = str(e.value)
    assert "needs a CUDA GPU" in msg and "no CUDA GPU" in msg and "--targets" in msg and "\n" not in msg
    assert not runner.is_active


def test_fp16_and_bad_options_are_refused_on_the_cpu():
    net, _, _ = _tiny_conv()
    with pytest.raises(EnginesmithError, match="FP16 \\(autocast\\) is measured on a CUDA GPU only"):
        TorchRunner(net, "images", ["logits"], precision="fp16")
    with pytest.raises(EnginesmithError, match="FP16 \\(autocast\\) runs on a CUDA GPU only"):
        TorchCompileRunner(net, "images", ["logits"], device="cpu", precision="fp16")
    with pytest.raises(EnginesmithError, match="runs fp32 or fp16, not 'int8'"):
        TorchRunner(net, "images", ["logits"], precision="int8")
    with pytest.raises(EnginesmithError, match="unknown compile method"):
        TorchCompileRunner(net, "images", ["logits"], device="cpu", how="trace")
    with pytest.raises(EnginesmithError, match="needs a package path"):
        TorchCompileRunner(net, "images", ["logits"], device="cpu", how="aoti")


def test_channels_last_on_the_cpu_matches_numpy():
    net, x, ref = _tiny_conv()
    with TorchRunner(net, "images", ["logits"], channels_last=True) as r:
        np.testing.assert_allclose(r.infer({"images": x})["logits"], ref, rtol=1e-4, atol=1e-5)
        assert r.last_gpu_ms is None


# -- bench plumbing ---------------------------------------------------------------------------------
def test_bench_accepts_the_gpu_targets():
    from enginesmith.benchmarks.suite import BASELINES, BENCH_TARGETS, GPU_TARGETS, override, plan, suite_from_args

    assert {"torch-cuda", "torch-compile", "tensorrt"} <= set(GPU_TARGETS) <= set(BENCH_TARGETS)
    assert BASELINES["torch-compile"].precisions == ("fp32", "fp16")
    suite = override(suite_from_args(["lenet5"]), targets=("torch-cuda", "torch-compile"), precisions=("fp32", "fp16", "int8"))
    runs, skipped = plan(suite, env={})
    got = sorted({(r.target, r.precision) for r in runs})
    assert got == [("torch-compile", "fp16"), ("torch-compile", "fp32"), ("torch-cuda", "fp16"), ("torch-cuda", "fp32")]
    assert any("torch-compile" in s.key and "int8" in s.key for s in skipped)


def test_bench_job_and_check_for_torch_compile():
    from enginesmith.benchmarks.bench import check_targets, make_job
    from enginesmith.benchmarks.suite import override, plan, suite_from_args
    from enginesmith.benchmarks.timing import TimingProfile

    suite = override(suite_from_args(["lenet5"]), targets=("torch-compile",), precisions=("fp16",), batches=(8,))
    runs, _ = plan(suite, env={})
    profile = TimingProfile()
    jobs = {r.precision: make_job(r, None, profile, False, None)["torch"] for r in runs}
    assert jobs["fp16"]["device"] == "cuda" and jobs["fp16"]["compile"] and jobs["fp16"]["half"]
    assert jobs["fp32"]["device"] == "cuda" and not jobs["fp32"]["half"]
    if not HAS_CUDA:
        with pytest.raises(EnginesmithError, match="target torch-compile is not usable here \\(no CUDA GPU"):
            check_targets(runs)


def test_bench_torch_runner_builds_the_compiled_engine_for_the_job():
    from enginesmith.benchmarks.bench import _torch_runner

    job = {"model": "lenet5", "input_size": [32, 32], "num_classes": None, "weights": None, "seed": 0,
           "device": "cuda", "half": True, "compile": True}
    from enginesmith.models import registry

    job["num_classes"] = registry.get("lenet5").num_classes
    runner, size = _torch_runner(job)
    assert isinstance(runner, TorchCompileRunner) and runner.precision == "fp16" and runner.device == "cuda" and size > 0
    runner, _ = _torch_runner({**job, "compile": False})
    assert isinstance(runner, TorchRunner) and runner.precision == "fp16" and runner.channels_last
    cpu, _ = _torch_runner({**job, "compile": False, "device": "cpu", "half": False})
    assert isinstance(cpu, TorchRunner) and cpu.device == "cpu" and cpu.precision == "fp32" and not cpu.channels_last


# -- torch.compile / AOTInductor on the CPU (the GPU path's code, small) ----------------------------
@needs_cxx
def test_torch_compile_jit_equals_eager_on_lenet5(lenet):
    spec, model, x = lenet
    ref = _eager(model, spec, x)
    with TorchCompileRunner(model, "images", list(spec.output_names), device="cpu", how="jit") as r:
        got = r.infer({"images": x})
        again = r.infer({"images": x})
        assert r.compile_s is not None and r.compile_s > 0
    for k in ref:
        np.testing.assert_allclose(got[k], ref[k], rtol=1e-4, atol=1e-5)
        np.testing.assert_array_equal(got[k], again[k])


@needs_cxx
def test_aoti_package_is_written_reused_and_equals_eager(lenet, tmp_path):
    spec, model, x = lenet
    ref = _eager(model, spec, x)
    pkg = tmp_path / "lenet5.pt2"
    with TorchCompileRunner(model, "images", list(spec.output_names), device="cpu", how="aoti", package=pkg) as r:
        got = r.infer({"images": x})
        assert r.compile_s is not None
    assert pkg.is_file() and pkg.stat().st_size > 0
    with TorchCompileRunner(model, "images", list(spec.output_names), device="cpu", how="aoti", package=pkg) as r:
        again = r.infer({"images": x})
        assert r.compile_s is None  # loaded, not compiled again
    for k in ref:
        np.testing.assert_allclose(got[k], ref[k], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(again[k], ref[k], rtol=1e-4, atol=1e-5)
    bad = tmp_path / "bad.pt2"
    bad.write_bytes(b"not a package")
    with pytest.raises(EnginesmithError, match="cannot load AOTInductor package.*delete it to rebuild"):
        TorchCompileRunner(model, "images", list(spec.output_names), device="cpu", how="aoti", package=bad).activate()


# -- on a CUDA GPU ------------------------------------------------------------------------------------
@pytest.mark.gpu
@needs_cuda
def test_torch_cuda_fp32_and_fp16_against_numpy():
    net, x, ref = _tiny_conv()
    with torch_cuda_runner(net, "images", ["logits"], "fp32") as r:
        out = r.infer({"images": x})["logits"]
        assert out.dtype == np.float32 and r.last_gpu_ms is not None and r.last_gpu_ms > 0
        np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)  # TF32 off: FP32 is FP32
        assert not torch.backends.cudnn.allow_tf32
    with torch_cuda_runner(net, "images", ["logits"], "fp16") as r:
        out = r.infer({"images": x})["logits"]
        assert out.dtype == np.float32
        np.testing.assert_allclose(out, ref, rtol=2e-2, atol=2e-2)
    assert next(net.parameters()).dtype == torch.float32  # autocast: the weights stay FP32


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_torch_compile_on_cuda_equals_eager(lenet, precision):
    spec, model, x = lenet
    with torch_cuda_runner(model, "images", list(spec.output_names), precision) as r:
        ref = r.infer({"images": x})
    with TorchCompileRunner(model, "images", list(spec.output_names), device="cuda", precision=precision) as r:
        got = r.infer({"images": x})
        got = r.infer({"images": x})
        assert r.last_gpu_ms is not None and r.last_gpu_ms > 0
    tol = 1e-3 if precision == "fp32" else 2e-2
    for k in ref:
        np.testing.assert_allclose(got[k], ref[k], rtol=tol, atol=tol)
