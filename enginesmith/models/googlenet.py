"""GoogLeNet (Szegedy et al., Going Deeper with Convolutions, CVPR 2015), Table 1 exactly, eval form.

Input [N, 3, 224, 224] RGB (ImageNet-normalised) -> logits [N, num_classes].

| layer          | #1x1 | #3x3 red | #3x3 | #5x5 red | #5x5 | pool proj | output       |
|----------------|------|----------|------|----------|------|-----------|--------------|
| conv 7x7/2     |      |          |      |          |      |           | 112x112x64   |
| max-pool 3x3/2 |      |          |      |          |      |           | 56x56x64     |
| LRN            |      |          |      |          |      |           |              |
| conv 3x3/1     |      | 64       | 192  |          |      |           | 56x56x192    |
| LRN, max-pool  |      |          |      |          |      |           | 28x28x192    |
| inception (3a) | 64   | 96       | 128  | 16       | 32   | 32        | 28x28x256    |
| inception (3b) | 128  | 128      | 192  | 32       | 96   | 64        | 28x28x480    |
| max-pool 3x3/2 |      |          |      |          |      |           | 14x14x480    |
| inception (4a) | 192  | 96       | 208  | 16       | 48   | 64        | 14x14x512    |
| inception (4b) | 160  | 112      | 224  | 24       | 64   | 64        | 14x14x512    |
| inception (4c) | 128  | 128      | 256  | 24       | 64   | 64        | 14x14x512    |
| inception (4d) | 112  | 144      | 288  | 32       | 64   | 64        | 14x14x528    |
| inception (4e) | 256  | 160      | 320  | 32       | 128  | 128       | 14x14x832    |
| max-pool 3x3/2 |      |          |      |          |      |           | 7x7x832      |
| inception (5a) | 256  | 160      | 320  | 32       | 128  | 128       | 7x7x832      |
| inception (5b) | 384  | 192      | 384  | 48       | 128  | 128       | 7x7x1024     |
| avg pool, dropout 40%, linear -> C (logits; the paper's softmax is left to the loss / runtime)        |

Every convolution (reductions and projections included) is followed by ReLU; there is no batch norm
(torchvision's GoogLeNet adds BN and uses 3x3 instead of 5x5 in the 5x5 branch, so it is not used).
Max-pools are 3x3/2 with padding 1 (the paper's "same"-style sizes above); the pool branch of an
inception module is max-pool 3x3/1 pad 1 then the 1x1 projection. The average pool is global (7x7
at 224), so any input whose sides are multiples of 32 works. The LRNs follow the released Caffe
model (n=5, alpha=1e-4 divided by n, beta=0.75, k=1; the paper gives no values).

The two auxiliary classifiers (on 4a and 4d) only add to the training loss (weight 0.3) and are
discarded at inference (paper Sec. 5), so they are not part of this eval/export model.

Parameters 6,998,552 at 1000 classes and 1.58 GMACs at 224. Table 1's params column sums to
6,797.7 K (its K is 1024 weights, biases omitted) and its ops column to 1,502 M, the paper's "1.5
billion multiply-adds" (Sec. 5); both under-count conv1 (the table's 2.7 K / 34 M row; a 7x7x3x64
conv has 9,408 weights and 118 M MACs at 112x112). With that row corrected the totals agree within 2%.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from enginesmith.models.resnet import register_imagenet_classifier, stride_check

INPUT_SIZE = (224, 224)

# Table 1: name -> (#1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5, pool proj); "M" = max-pool 3x3/2
TABLE1: list = [
    ("3a", (64, 96, 128, 16, 32, 32)),
    ("3b", (128, 128, 192, 32, 96, 64)),
    "M",
    ("4a", (192, 96, 208, 16, 48, 64)),
    ("4b", (160, 112, 224, 24, 64, 64)),
    ("4c", (128, 128, 256, 24, 64, 64)),
    ("4d", (112, 144, 288, 32, 64, 64)),
    ("4e", (256, 160, 320, 32, 128, 128)),
    "M",
    ("5a", (256, 160, 320, 32, 128, 128)),
    ("5b", (384, 192, 384, 48, 128, 128)),
]


def conv_relu(in_ch: int, out_ch: int, k: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, k, stride, k // 2), nn.ReLU(inplace=True))


class Inception(nn.Module):
    """Inception module with dimension reductions (Fig. 2b): four branches concatenated on channels."""

    def __init__(self, in_ch: int, n1: int, r3: int, n3: int, r5: int, n5: int, pp: int) -> None:
        super().__init__()
        self.branch1 = conv_relu(in_ch, n1, 1)
        self.branch3 = nn.Sequential(conv_relu(in_ch, r3, 1), conv_relu(r3, n3, 3))
        self.branch5 = nn.Sequential(conv_relu(in_ch, r5, 1), conv_relu(r5, n5, 5))
        self.branch_pool = nn.Sequential(nn.MaxPool2d(3, 1, 1), conv_relu(in_ch, pp, 1))
        self.out_channels = n1 + n3 + n5 + pp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch1(x), self.branch3(x), self.branch5(x), self.branch_pool(x)], 1)


class GoogLeNet(nn.Module):
    """GoogLeNet without auxiliary classifiers: x [N, 3, H, W] -> logits [N, num_classes]."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            conv_relu(3, 64, 7, 2), nn.MaxPool2d(3, 2, 1), nn.LocalResponseNorm(5, 1e-4, 0.75, 1.0),
            conv_relu(64, 64, 1), conv_relu(64, 192, 3), nn.LocalResponseNorm(5, 1e-4, 0.75, 1.0), nn.MaxPool2d(3, 2, 1),
        )
        blocks: dict[str, nn.Module] = {}
        in_ch = 192
        for i, row in enumerate(TABLE1):
            if row == "M":
                blocks[f"pool{i}"] = nn.MaxPool2d(3, 2, 1)
            else:
                name, widths = row
                blocks[f"inception{name}"] = block = Inception(in_ch, *widths)
                in_ch = block.out_channels
        self.inception = nn.Sequential(OrderedDict(blocks))  # inception.inception3a ... inception.inception5b
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(0.4)
        self.fc = nn.Linear(in_ch, num_classes)
        # He init (no BN here, so activations must be kept O(1) by the init); biases 0 (the paper's
        # Caffe model used Xavier and bias 0.2; with no trained weights either is fine).
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.inception(self.stem(x))
        return self.fc(self.dropout(torch.flatten(self.avgpool(x), 1)))


def build_googlenet(num_classes: int = 1000, input_size: tuple[int, int] = INPUT_SIZE) -> GoogLeNet:
    """Builder for the registry (seeded by the caller)."""
    check_input_size(input_size)
    return GoogLeNet(num_classes).eval()


check_input_size = stride_check("googlenet")

SPEC = register_imagenet_classifier(
    "googlenet",
    build_googlenet,
    check_input_size,
    "Szegedy et al., Going Deeper with Convolutions, CVPR 2015",
    __file__,
    ci_input_size=(64, 64),
)
