"""Model cost: parameter count and multiply-accumulates (MACs) of Conv2d and Linear layers.

MACs count one multiply-add per kernel tap: conv (1/2/3-D) = out_elements * (in_channels / groups) *
prod(kernel); transposed conv = in_elements * (out_channels / groups) * prod(kernel); linear =
in_features * out_features per output row. Batch 1; other layers (BN, activations, pooling, decode
arithmetic) are not counted, as in the papers' tables.
"""

from __future__ import annotations

import torch
from torch import nn


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (shared tensors counted once)."""
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """MACs of one forward pass on a zero input of shape (C, H, W) or (C, D, H, W) (batch 1)."""
    return profile_forward(model, input_shape)[0]


def profile_forward(model: nn.Module, input_shape: tuple[int, ...], extra_args: tuple = ()) -> tuple[int, object]:
    """(MACs, the model's outputs) of one forward pass on a zero input of shape `input_shape` (batch 1), with
    `extra_args` (numpy arrays or tensors) as the further inputs (Fast R-CNN's rois)."""
    total = 0

    def conv_hook(m: nn.modules.conv._ConvNd, inputs: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        nonlocal total
        taps = 1
        for k in m.kernel_size:
            taps *= k
        if m.transposed:
            total += inputs[0].numel() * (m.out_channels // m.groups) * taps
        else:
            total += out.numel() * (m.in_channels // m.groups) * taps

    def linear_hook(m: nn.Linear, inputs: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        nonlocal total
        total += (out.numel() // m.out_features) * m.in_features * m.out_features

    handles = []
    for m in model.modules():
        if isinstance(m, nn.modules.conv._ConvNd):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
    was_training = model.training
    try:
        model.eval()
        param = next(model.parameters(), None)
        x = torch.zeros((1, *input_shape), dtype=param.dtype if param is not None else torch.float32,
                        device=param.device if param is not None else None)
        extra = [torch.as_tensor(a, device=x.device) for a in extra_args]
        with torch.no_grad():
            outputs = model(x, *extra)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return int(total), outputs
