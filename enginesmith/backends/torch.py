"""The PyTorch baseline as a Runner (the only backend module that imports torch, lazily).

On the CPU it is PyTorch eager FP32. On a CUDA GPU ("torch-cuda") the model runs channels_last, FP32 or
FP16 under autocast (weights stay FP32; autocast picks FP16 kernels for convolutions and matrix
products), and `last_gpu_ms` holds the CUDA-event time of the last forward pass. FP32 on the GPU turns
TF32 off (cuDNN convolutions use it by default): FP32 means FP32, as for the TensorRT fp32 engine.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from enginesmith.backends.base import Runner
from enginesmith.errors import EnginesmithError

TORCH_PRECISIONS = ("fp32", "fp16")


def require_cuda(what: str) -> None:
    """Raise the one-line "no CUDA GPU" error unless PyTorch sees a CUDA device."""
    import torch

    if not torch.cuda.is_available():
        raise EnginesmithError(f"{what} needs a CUDA GPU, and PyTorch sees no CUDA GPU here "
                               f"(torch {torch.__version__}); drop it from --targets or run on a GPU machine")


def strict_fp32() -> None:
    """No TF32 in convolutions or matrix products (process-wide; each benchmark job is its own process)."""
    import torch

    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False


def split_outputs(out: Any, output_names: list[str]) -> list[Any]:
    """The module's output (tensor, tuple/list, or dict) as a list matched to `output_names`."""
    if isinstance(out, dict):
        values = [out[k] for k in output_names]
    elif isinstance(out, (tuple, list)):
        values = list(out)
    else:
        values = [out]
    if len(values) != len(output_names):
        raise EnginesmithError(
            f"the PyTorch model returned {len(values)} outputs but {len(output_names)} names were given "
            f"({output_names}); give one name per output"
        )
    return values


def to_numpy(values: list[Any], output_names: list[str]) -> dict[str, np.ndarray]:
    """Tensors -> float32 (for floating outputs) numpy arrays owned by the caller."""
    import torch

    out: dict[str, np.ndarray] = {}
    for name, v in zip(output_names, values):
        v = v.detach()
        if v.is_floating_point() and v.dtype != torch.float32:
            v = v.float()
        out[name] = v.cpu().contiguous().numpy()
    return out


class TorchRunner(Runner):
    """Run an nn.Module under torch.inference_mode on one named input; outputs come back as numpy.

    The module's output (a tensor, a tuple/list of tensors, or a dict) is matched to `output_names`
    in order (or by key for a dict). device "cuda": channels_last, and precision "fp16" runs under
    torch.autocast(float16); floating outputs are returned as float32.
    """

    name = "torch"
    target = "the torch-cuda target"  # what require_cuda names when no GPU is there

    def __init__(self, model: Any, input_name: str | list[str], output_names: list[str], *, device: str = "cpu",
                 precision: str = "fp32", channels_last: bool | None = None) -> None:
        super().__init__()
        if precision not in TORCH_PRECISIONS:
            raise EnginesmithError(f"PyTorch runs {' or '.join(TORCH_PRECISIONS)}, not {precision!r}; pick one of those")
        if precision == "fp16" and not str(device).startswith("cuda"):
            raise EnginesmithError("PyTorch FP16 (autocast) is measured on a CUDA GPU only; use fp32 on the CPU")
        self.model = model
        self.device = device
        self.precision = precision
        self.channels_last = str(device).startswith("cuda") if channels_last is None else channels_last
        self.input_names = [input_name] if isinstance(input_name, str) else list(input_name)
        self.output_names = list(output_names)
        self.last_gpu_ms: float | None = None
        self._was_training = False
        self._events: tuple[Any, Any] | None = None

    @property
    def is_cuda(self) -> bool:
        return str(self.device).startswith("cuda")

    def _load(self) -> None:
        import torch

        if self.is_cuda:
            require_cuda(self.target)
            if self.precision == "fp32":
                strict_fp32()
            self._events = (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
        self._was_training = bool(getattr(self.model, "training", False))
        self.model.eval()
        if self.channels_last:
            self.model.to(self.device, memory_format=torch.channels_last)
        else:
            self.model.to(self.device)

    def _input(self, feed: dict[str, np.ndarray]) -> Any:
        """The image tensor; a tuple of tensors (in input_names order) for a model with several inputs."""
        import torch

        xs = []
        for name in self.input_names:
            x = torch.from_numpy(np.ascontiguousarray(feed[name])).to(self.device, non_blocking=False)
            if self.channels_last and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            xs.append(x)
        return xs[0] if len(xs) == 1 else tuple(xs)

    def _forward(self, x: Any) -> Any:
        import torch

        with torch.inference_mode():
            if self.precision == "fp16":
                with torch.autocast(device_type="cuda", dtype=torch.float16):
                    return self.model(*x) if isinstance(x, tuple) else self.model(x)
            return self.model(*x) if isinstance(x, tuple) else self.model(x)

    def _infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = self._input(feed)
        if self._events is not None:
            start, stop = self._events
            start.record()
            out = self._forward(x)
            stop.record()
        else:
            out = self._forward(x)
        result = to_numpy(split_outputs(out, self.output_names), self.output_names)  # .cpu() waits for the GPU
        if self._events is not None:
            self._events[1].synchronize()
            self.last_gpu_ms = float(self._events[0].elapsed_time(self._events[1]))
        return result

    def _release(self) -> None:
        self._events = None
        if self._was_training:
            self.model.train()


def torch_cuda_runner(model: Any, input_name: str, output_names: list[str], precision: str = "fp32") -> TorchRunner:
    """The "torch-cuda" target: PyTorch eager on GPU 0, channels_last, FP32 or FP16 autocast."""
    return TorchRunner(model, input_name, output_names, device="cuda", precision=precision, channels_last=True)
