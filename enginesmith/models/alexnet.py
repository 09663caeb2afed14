"""AlexNet (Krizhevsky, Sutskever, Hinton 2012), single-tower, at the paper's 227x227 input.

Input [N, 3, 227, 227] RGB (ImageNet-normalised) -> logits [N, num_classes].

| layer | op                                                   | output        |
|-------|------------------------------------------------------|---------------|
| conv1 | conv 96@11x11 / 4, ReLU, LRN, max-pool 3x3 / 2        | 96 x 27 x 27  |
| conv2 | conv 256@5x5 pad 2, ReLU, LRN, max-pool 3x3 / 2       | 256 x 13 x 13 |
| conv3 | conv 384@3x3 pad 1, ReLU                              | 384 x 13 x 13 |
| conv4 | conv 384@3x3 pad 1, ReLU                              | 384 x 13 x 13 |
| conv5 | conv 256@3x3 pad 1, ReLU, max-pool 3x3 / 2            | 256 x 6 x 6   |
| fc6   | dropout 0.5, linear 9216 -> 4096, ReLU                | 4096          |
| fc7   | dropout 0.5, linear 4096 -> 4096, ReLU                | 4096          |
| fc8   | linear 4096 -> C (logits)                             | C             |

Single tower, no groups: the paper split conv2, conv4 and conv5 across two GPUs (each kernel seeing
only the half of the previous layer on its own GPU); here every kernel sees all input channels, so
the network has 62,378,344 parameters and 1.135 GMACs (the paper's "60 million" and the usual
0.72 GMACs are the two-tower figures: `AlexNet(towers=2)` reproduces that connectivity, with groups=2
on conv2/4/5, and gives 60,965,224 parameters and 0.724 GMACs). Dropout (p=0.5) is applied to the
inputs of fc6 and fc7 as in the paper's "first two fully-connected layers"; it is a no-op in the
exported eval model.

Local response normalisation is the paper's b = a / (k + alpha * sum_{n neighbours} a^2)^beta with
n=5, k=2, alpha=1e-4, beta=0.75. torch.nn.LocalResponseNorm divides alpha by n (as Caffe does), so
it is given alpha = 5 * 1e-4 to compute the paper's formula.
"""

from __future__ import annotations


import torch
from torch import nn

from enginesmith.errors import EnginesmithError
from enginesmith.models.resnet import register_imagenet_classifier

INPUT_SIZE = (227, 227)
LRN_SIZE, LRN_ALPHA, LRN_BETA, LRN_K = 5, 1e-4, 0.75, 2.0  # paper Sec. 3.3


def paper_lrn() -> nn.LocalResponseNorm:
    """The paper's LRN (alpha not divided by n; torch divides, so it is multiplied back)."""
    return nn.LocalResponseNorm(LRN_SIZE, alpha=LRN_ALPHA * LRN_SIZE, beta=LRN_BETA, k=LRN_K)


class AlexNet(nn.Module):
    """AlexNet: x [N, 3, 227, 227] -> logits [N, num_classes]; towers=2 gives the paper's two-GPU grouping."""

    def __init__(self, num_classes: int = 1000, towers: int = 1) -> None:
        super().__init__()
        g = towers
        self.features = nn.Sequential(
            nn.Conv2d(3, 96, 11, stride=4), nn.ReLU(inplace=True), paper_lrn(), nn.MaxPool2d(3, 2),  # conv1
            nn.Conv2d(96, 256, 5, padding=2, groups=g), nn.ReLU(inplace=True), paper_lrn(), nn.MaxPool2d(3, 2),  # conv2
            nn.Conv2d(256, 384, 3, padding=1), nn.ReLU(inplace=True),  # conv3 (connected across towers)
            nn.Conv2d(384, 384, 3, padding=1, groups=g), nn.ReLU(inplace=True),  # conv4
            nn.Conv2d(384, 256, 3, padding=1, groups=g), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),  # conv5
        )
        self.classifier = nn.Sequential(
            nn.Dropout(0.5), nn.Linear(256 * 6 * 6, 4096), nn.ReLU(inplace=True),  # fc6
            nn.Dropout(0.5), nn.Linear(4096, 4096), nn.ReLU(inplace=True),  # fc7
            nn.Linear(4096, num_classes),  # fc8
        )
        # He init keeps untrained activations O(1) through the stack (the paper's N(0, 0.01) would
        # leave them ~1e-6 by fc8); biases 0.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


def build_alexnet(num_classes: int = 1000, input_size: tuple[int, int] = INPUT_SIZE) -> AlexNet:
    """Builder for the registry (seeded by the caller)."""
    check_input_size(input_size)
    return AlexNet(num_classes).eval()


def check_input_size(size: tuple[int, int]) -> None:
    """fc6 takes exactly a 256x6x6 map: only 227x227 inputs give it."""
    if tuple(int(s) for s in size) != INPUT_SIZE:
        raise EnginesmithError(
            f"alexnet takes exactly 227x227 input (fc6 needs conv5's 6x6 map), got {size[0]}x{size[1]}; "
            "use --input-size 227"
        )


SPEC = register_imagenet_classifier(
    "alexnet",
    build_alexnet,
    check_input_size,
    "Krizhevsky et al., ImageNet Classification with Deep Convolutional Neural Networks, NIPS 2012",
    __file__,
    input_size=INPUT_SIZE,
    ci_input_size=INPUT_SIZE,
)
