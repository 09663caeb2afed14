"""ResNet-50 (He, Zhang, Ren, Sun 2016) — torchvision's implementation of the paper's architecture.

Input [N, 3, H, W] RGB (ImageNet-normalised, 224x224 by default) -> logits [N, num_classes].
25,557,032 parameters and ~4.1 GMACs at 224x224 with 1000 classes.
"""

from __future__ import annotations

from functools import partial

from torch import nn

from enginesmith.errors import EnginesmithError
from enginesmith.models.registry import ModelSpec, register
from enginesmith.models.weights import load_weights
from enginesmith.runtime.preprocess import PreprocessSpec

INPUT_SIZE = (224, 224)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def build_resnet50(num_classes: int = 1000, input_size: tuple[int, int] = INPUT_SIZE) -> nn.Module:
    """torchvision.models.resnet50 with no weights (torchvision's init, seeded by the caller)."""
    from torchvision.models import resnet50

    check_input_size(input_size)
    return resnet50(weights=None, num_classes=num_classes).eval()


def check_input_size(size: tuple[int, int]) -> None:
    """Both sides >= 32 and multiples of 32 (the network's total stride)."""
    h, w = (int(s) for s in size)
    if h < 32 or w < 32 or h % 32 or w % 32:
        raise EnginesmithError(
            f"resnet50 needs input sides that are multiples of 32 and >= 32 (five stride-2 stages downsample by 32, "
            f"so other sizes drop border pixels), got {h}x{w}; try 224x224"
        )


def imagenet_class_names() -> tuple[str, ...]:
    """The 1000 ImageNet category names shipped inside torchvision's weights metadata (no download)."""
    try:
        from torchvision.models import ResNet50_Weights

        return tuple(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])
    except Exception:  # pragma: no cover - very old torchvision
        return ()


PREPROCESS = PreprocessSpec(
    input_size=INPUT_SIZE, resize="center_crop", color="RGB", scale=1.0 / 255.0, mean=IMAGENET_MEAN, std=IMAGENET_STD
)

SPEC = register(
    ModelSpec(
        name="resnet50",
        task="classification",
        builder=build_resnet50,
        input_size=INPUT_SIZE,
        num_classes=1000,
        preprocess=PREPROCESS,
        output_names=("logits",),
        check_input_size=check_input_size,
        load_weights=partial(load_weights, darknet_ok=False),
        class_names=imagenet_class_names(),
        default_calibration="photos",
        paper="He et al., Deep Residual Learning for Image Recognition, CVPR 2016",
        source_file=__file__,
        extra={"ci_input_size": (64, 64)},
    )
)
