"""Classification + localisation (single-object localisation as in OverFeat (Sermanet et al. 2014)
and VGG (Simonyan & Zisserman 2015, Sec. 4 of the ILSVRC localisation setup)): one classifier
backbone with two heads.

Input [N, 3, H, W] RGB (ImageNet-normalised, 224x224 default; sides multiples of 32) ->
  logits [N, C]  class scores (softmax in the loss / runtime),
  box    [N, 4]  (x, y, w, h): box centre and size as fractions of the input width/height, in [0, 1]
                 (sigmoid of a linear regression), for the single object of the image.

Backbone: torchvision ResNet-18's trunk (conv1 .. layer4, global average pool, 512 features), with
`fc` (512 -> C) and `box` (512 -> 4, sigmoid) heads. VGG regresses a single class-agnostic box
("single-class regression", SCR) with a Euclidean loss, as here.

Loss (`classloc_loss`): L = CE + weight * L2, where CE is the softmax cross-entropy averaged over the
batch and L2 = mean over the batch of sum_{j in x,y,w,h} (box_j - target_j)^2. With normalised boxes
the L2 term is at most 4 per image, while CE starts at ln(C) (6.9 for 1000 classes); weight (default
1.0) trades the two; VGG trained the localiser separately (CE weight 0), which is weight -> infinity.
"""

from __future__ import annotations


import torch
import torch.nn.functional as F
from torch import nn

from enginesmith.models.resnet import register_imagenet_classifier, stride_check

INPUT_SIZE = (224, 224)


class ClassLoc(nn.Module):
    """ResNet-18 trunk -> (logits [N, C], box [N, 4] = sigmoid (x, y, w, h) in [0, 1])."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        from torchvision.models import resnet18

        trunk = resnet18(weights=None)
        trunk.fc = nn.Identity()  # type: ignore[assignment]
        self.backbone = trunk
        self.fc = nn.Linear(512, num_classes)
        self.box = nn.Linear(512, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.backbone(x)
        return self.fc(f), torch.sigmoid(self.box(f))


def classloc_loss(
    logits: torch.Tensor, box: torch.Tensor, labels: torch.Tensor, target_box: torch.Tensor, weight: float = 1.0
) -> torch.Tensor:
    """Softmax cross-entropy (mean over the batch) + weight * (sum of squared box errors, mean over the batch).

    logits [N, C], box and target_box [N, 4] (x, y, w, h normalised to [0, 1]), labels [N] class indices.
    """
    ce = F.cross_entropy(logits, labels)
    l2 = ((box - target_box) ** 2).sum(dim=1).mean()
    return ce + weight * l2


def build_classloc(num_classes: int = 1000, input_size: tuple[int, int] = INPUT_SIZE) -> ClassLoc:
    """Builder for the registry (torchvision's ResNet init + default Linear init, seeded by the caller)."""
    check_input_size(input_size)
    return ClassLoc(num_classes).eval()


check_input_size = stride_check("classloc")

SPEC = register_imagenet_classifier(
    "classloc",
    build_classloc,
    check_input_size,
    "Sermanet et al., OverFeat, ICLR 2014; Simonyan & Zisserman, VGG, ICLR 2015 (localisation); ResNet-18 trunk",
    __file__,
    output_names=("logits", "box"),
    ci_input_size=(64, 64), details={"outputs": {"box": "(x, y, w, h) centre/size normalised to [0, 1]"}},
)
