"""The PyTorch baseline as a Runner (the only backend module that imports torch, lazily)."""

from __future__ import annotations

from typing import Any

import numpy as np

from enginesmith.backends.base import Runner
from enginesmith.errors import EnginesmithError


class TorchRunner(Runner):
    """Run an nn.Module under torch.inference_mode on one named input; outputs come back as numpy.

    The module's output (a tensor, a tuple/list of tensors, or a dict) is matched to `output_names`
    in order (or by key for a dict).
    """

    name = "torch"

    def __init__(self, model: Any, input_name: str, output_names: list[str], *, device: str = "cpu") -> None:
        super().__init__()
        self.model = model
        self.device = device
        self.input_names = [input_name]
        self.output_names = list(output_names)
        self._was_training = False

    def _load(self) -> None:
        self._was_training = bool(getattr(self.model, "training", False))
        self.model.eval()
        self.model.to(self.device)

    def _infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        x = torch.from_numpy(np.ascontiguousarray(feed[self.input_names[0]])).to(self.device)
        with torch.inference_mode():
            out = self.model(x)
        if isinstance(out, dict):
            values = [out[k] for k in self.output_names]
        elif isinstance(out, (tuple, list)):
            values = list(out)
        else:
            values = [out]
        if len(values) != len(self.output_names):
            raise EnginesmithError(
                f"the PyTorch model returned {len(values)} outputs but {len(self.output_names)} names were given "
                f"({self.output_names}); give one name per output"
            )
        return {n: v.detach().cpu().numpy() for n, v in zip(self.output_names, values)}

    def _release(self) -> None:
        if self._was_training:
            self.model.train()
