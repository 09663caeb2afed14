"""LeNet-5 (LeCun, Bottou, Bengio, Haffner 1998), as in the seed table.

Input [N, 1, 32, 32] (gray) -> logits [N, 10].

| layer | op                          | output      | params |
|-------|-----------------------------|-------------|--------|
| C1    | conv 6@5x5, tanh            | 6 x 28 x 28 | 156    |
| S2    | avg-pool 2x2 / 2            | 6 x 14 x 14 | 0      |
| C3    | conv 16@5x5, tanh           | 16 x 10 x 10| 2,416  |
| S4    | avg-pool 2x2 / 2            | 16 x 5 x 5  | 0      |
| C5    | conv 120@5x5, tanh          | 120 x 1 x 1 | 48,120 |
| F6    | linear 120 -> 84, tanh      | 84          | 10,164 |
| out   | linear 84 -> C (logits)     | C           | 850    |

61,706 parameters at 10 classes. C3 is fully connected to S2 (the paper's sparse connection table
and trainable pooling coefficients are dropped, as in every modern re-implementation) and the
RBF output layer is a linear layer giving logits.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from enginesmith.errors import EnginesmithError
from enginesmith.models.registry import ModelSpec, register
from enginesmith.models.weights import load_weights
from enginesmith.runtime.preprocess import PreprocessSpec

INPUT_SIZE = (32, 32)


class LeNet5(nn.Module):
    """LeNet-5: x [N, 1, 32, 32] -> logits [N, num_classes]."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 6, 5), nn.Tanh(), nn.AvgPool2d(2, 2),  # C1, S2
            nn.Conv2d(6, 16, 5), nn.Tanh(), nn.AvgPool2d(2, 2),  # C3, S4
            nn.Conv2d(16, 120, 5), nn.Tanh(),  # C5
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(120, 84), nn.Tanh(), nn.Linear(84, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def build_lenet5(num_classes: int = 10, input_size: tuple[int, int] = INPUT_SIZE) -> LeNet5:
    """Builder for the registry (PyTorch default init, seeded by the caller)."""
    check_input_size(input_size)
    return LeNet5(num_classes).eval()


def check_input_size(size: tuple[int, int]) -> None:
    """LeNet-5's C5 is a 5x5 conv over a 5x5 map: only 32x32 inputs give a 1x1 C5 output."""
    if tuple(int(s) for s in size) != INPUT_SIZE:
        raise EnginesmithError(
            f"lenet5 takes exactly 32x32 input (C5 must see a 5x5 map), got {size[0]}x{size[1]}; use --input-size 32"
        )


# Gray, stretched to 32x32, x = (pixel/255 - 0.5) / 0.5 in [-1, 1]: centred for tanh units, as
# the paper normalised inputs to roughly zero mean and unit variance.
PREPROCESS = PreprocessSpec(input_size=INPUT_SIZE, resize="stretch", color="GRAY", scale=1.0 / 255.0, mean=(0.5,), std=(0.5,))

SPEC = register(
    ModelSpec(
        name="lenet5",
        task="classification",
        builder=build_lenet5,
        input_size=INPUT_SIZE,
        num_classes=10,
        preprocess=PREPROCESS,
        output_names=("logits",),
        check_input_size=check_input_size,
        load_weights=partial(load_weights, darknet_ok=False),
        class_names=tuple(str(i) for i in range(10)),
        default_calibration="digits",
        paper="LeCun et al., Gradient-Based Learning Applied to Document Recognition, Proc. IEEE 1998",
        source_file=__file__,
        ci_input_size=(32, 32),
    )
)
