"""A compiled PyTorch engine behind the Runner interface: torch.compile (Inductor) or an AOTInductor package.

The "torch-compile" benchmark target runs this on GPU 0 (channels_last, FP32 with TF32 off or FP16
autocast, as "torch-cuda" does), an alternative GPU engine to TensorRT that needs nothing beyond
PyTorch. The code path is the same on the CPU (device="cpu", FP32), which is how it is tested without a GPU.

- how="jit": `torch.compile(model, mode=...)`; the first `infer` of each new input shape compiles.
- how="aoti": `torch.export` + `torch._inductor.aoti_compile_and_package` at the first `infer` (the
  package is specialised to that input shape and written to `package`, then reused when it exists),
  loaded with `torch._inductor.aoti_load_package`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from enginesmith.backends.torch import TORCH_PRECISIONS, TorchRunner
from enginesmith.errors import EnginesmithError

HOW = ("jit", "aoti")
MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


class _Autocast:
    """Wraps a module so its forward runs under CUDA FP16 autocast and returns float32 tensors."""

    @staticmethod
    def wrap(model: Any) -> Any:
        import torch

        class Autocast(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.inner = model

            def forward(self, x: Any) -> Any:
                with torch.autocast(device_type="cuda", dtype=torch.float16):
                    out = self.inner(x)
                if isinstance(out, (tuple, list)):
                    return tuple(o.float() for o in out)
                if isinstance(out, dict):
                    return {k: v.float() for k, v in out.items()}
                return out.float()

        return Autocast().eval()


class TorchCompileRunner(TorchRunner):
    """PyTorch compiled with Inductor (jit) or as an AOTInductor package (aoti); numpy in, numpy out.

    TorchRunner does the device, channels_last, FP32 strictness, CUDA-event timing and output conversion;
    this class only replaces the forward call by the compiled one."""

    name = "torch-compile"
    target = "the torch-compile target"

    def __init__(self, model: Any, input_name: str, output_names: list[str], *, device: str = "cuda",
                 precision: str = "fp32", how: str = "jit", mode: str = "default", package: str | Path | None = None,
                 channels_last: bool | None = None) -> None:
        if precision not in TORCH_PRECISIONS:
            raise EnginesmithError(f"compiled PyTorch runs {' or '.join(TORCH_PRECISIONS)}, not {precision!r}")
        if precision == "fp16" and not str(device).startswith("cuda"):
            raise EnginesmithError("compiled PyTorch FP16 (autocast) runs on a CUDA GPU only; use fp32 on the CPU")
        if how not in HOW:
            raise EnginesmithError(f"unknown compile method {how!r}; choose one of {', '.join(HOW)}")
        if mode not in MODES:
            raise EnginesmithError(f"unknown torch.compile mode {mode!r}; choose one of {', '.join(MODES)}")
        if how == "aoti" and package is None:
            raise EnginesmithError("the AOTInductor engine needs a package path (a .pt2 file to write or reuse)")
        super().__init__(model, input_name, output_names, device=device, precision=precision,
                         channels_last=channels_last)
        self.how, self.mode = how, mode
        self.package = Path(package) if package is not None else None
        self.compile_s: float | None = None
        self._fn: Any = None

    def _load(self) -> None:
        import torch

        super()._load()
        self._module = _Autocast.wrap(self.model) if self.precision == "fp16" else self.model
        if self.how == "jit":
            try:
                self._fn = torch.compile(self._module, mode=self.mode, dynamic=False)
            except Exception as e:  # a backend that cannot compile here (no C++ compiler, no Triton)
                raise EnginesmithError(f"torch.compile failed: {str(e).strip().splitlines()[0][:300]}; "
                                       "use the torch or torch-cuda target instead") from None
        elif self.package is not None and self.package.is_file():
            self._fn = self._load_package()

    def _load_package(self) -> Any:
        import torch

        try:
            return torch._inductor.aoti_load_package(str(self.package))
        except Exception as e:
            raise EnginesmithError(f"cannot load AOTInductor package {self.package}: {str(e).strip().splitlines()[0][:300]}; "
                                   "delete it to rebuild it for this PyTorch and device") from None

    def _compile_package(self, x: Any) -> Any:
        """torch.export the module at x's shape, compile it with AOTInductor into self.package, load it."""
        import time

        import torch

        assert self.package is not None
        t0 = time.perf_counter()
        try:
            with torch.no_grad():
                exported = torch.export.export(self._module, (x,))
                self.package.parent.mkdir(parents=True, exist_ok=True)
                torch._inductor.aoti_compile_and_package(exported, package_path=str(self.package))
        except Exception as e:
            raise EnginesmithError(f"AOTInductor could not compile the model: {str(e).strip().splitlines()[0][:300]}; "
                                   "use how='jit' or the torch-cuda target") from None
        self.compile_s = time.perf_counter() - t0
        return self._load_package()

    def _infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._fn is None:  # AOTInductor: compile at the first shape seen (before any GPU timing)
            self._fn = self._compile_package(self._input(feed))
        return super()._infer(feed)

    def _forward(self, x: Any) -> Any:
        import time

        import torch

        first = self.compile_s is None and self.how == "jit"
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = self._fn(x)
        if first:
            self.compile_s = time.perf_counter() - t0
        if self.how == "aoti" and isinstance(out, list) and len(self.output_names) == 1 and len(out) == 1:
            out = out[0]
        return out

    def _release(self) -> None:
        self._fn = None
        super()._release()
