"""Super-resolution ResNet in the seed's form: an interpolated low-resolution image in, a predicted
residual added to it inside the model (global residual learning, Kim, Lee, Lee, VDSR, CVPR 2016;
residual blocks as in Ledig et al., SRResNet, CVPR 2017, without batch norm as in Lim et al., EDSR,
CVPRW 2017).

Input [N, 3, H, W]: the low-resolution image already upscaled (bicubic) to the target size, RGB in
[0, 1]. Output `image` [N, 3, H, W] = input + residual(input).

| layer      | op                                                          | params    |
|------------|-------------------------------------------------------------|-----------|
| head       | conv 3x3 3 -> 64, ReLU                                      | 1,792     |
| blocks x 9 | conv 3x3 64 -> 64, ReLU, conv 3x3 64 -> 64, + identity      | 9 x 73,856|
| tail       | conv 3x3 64 -> 3 (the residual)                             | 1,731     |
| skip       | output = input + tail                                       | 0         |

668,227 parameters; 9 blocks of width 64 give 1 + 18 + 1 = 20 weight layers of 3x3x64, VDSR's depth
and width (VDSR: 20 layers of 64 filters, 665,921 parameters on the Y channel), so the receptive field
is 41x41 as in VDSR, while the blocks' identity shortcuts (SRResNet/EDSR) keep a deep plain stack
trainable. Batch norm is left out, as EDSR found it hurts super-resolution (it also keeps the net a
pure conv stack for INT8). All convs pad by 1, so any input size works; the residual learning means
an untrained or zero-residual network is already bicubic interpolation.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from enginesmith.errors import EnginesmithError
from enginesmith.models.registry import ModelSpec, register
from enginesmith.models.weights import load_weights
from enginesmith.runtime.preprocess import PreprocessSpec

INPUT_SIZE = (256, 256)
NUM_BLOCKS = 9
WIDTH = 64
MIN_SIDE = 8


class ResidualBlock(nn.Module):
    """conv 3x3 -> ReLU -> conv 3x3, plus the identity."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(width, width, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(self.relu(self.conv1(x)))


class SRResNet(nn.Module):
    """x [N, C, H, W] (bicubic-upscaled image) -> image [N, C, H, W] = x + residual(x)."""

    def __init__(self, channels: int = 3, width: int = WIDTH, num_blocks: int = NUM_BLOCKS) -> None:
        super().__init__()
        self.head = nn.Sequential(nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(inplace=True))
        self.blocks = nn.Sequential(*(ResidualBlock(width) for _ in range(num_blocks)))
        self.tail = nn.Conv2d(width, channels, 3, padding=1)

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        return self.tail(self.blocks(self.head(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.residual(x)


def build_srresnet(num_classes: int = 3, input_size: tuple[int, int] = INPUT_SIZE) -> SRResNet:
    """`num_classes` is the number of image channels out (3: RGB); PyTorch's default init, seeded by the caller."""
    check_input_size(input_size)
    if int(num_classes) != 3:
        raise EnginesmithError(f"srresnet outputs the 3 RGB channels of its input, not {num_classes} classes")
    return SRResNet().eval()


def check_input_size(size: tuple[int, int]) -> None:
    """Fully convolutional with padding 1: any size with both sides >= 8."""
    h, w = (int(s) for s in size)
    if h < MIN_SIDE or w < MIN_SIDE:
        raise EnginesmithError(
            f"srresnet takes any input with both sides >= {MIN_SIDE} (the bicubic-upscaled image), got {h}x{w}; "
            "try 256x256"
        )


def upscale_bicubic(low_res: torch.Tensor, scale: int) -> torch.Tensor:
    """The network's input from a low-resolution batch [N, 3, h, w] in [0, 1]: bicubic x`scale`, clamped."""
    return nn.functional.interpolate(low_res, scale_factor=scale, mode="bicubic", align_corners=False).clamp_(0.0, 1.0)


# RGB stretched to the (already interpolated) size, pixel / 255 in [0, 1]; the output is in the same range.
PREPROCESS = PreprocessSpec(input_size=INPUT_SIZE, resize="stretch", color="RGB", scale=1.0 / 255.0)

SPEC = register(
    ModelSpec(
        name="srresnet",
        task="dense",
        builder=build_srresnet,
        input_size=INPUT_SIZE,
        num_classes=3,
        preprocess=PREPROCESS,
        output_names=("image",),
        check_input_size=check_input_size,
        load_weights=partial(load_weights, darknet_ok=False),
        class_names=("R", "G", "B"),
        default_calibration="photos",
        paper="Kim, Lee, Lee, Accurate Image Super-Resolution Using Very Deep Convolutional Networks (VDSR), CVPR 2016; "
        "Ledig et al., Photo-Realistic Single Image Super-Resolution Using a GAN (SRResNet), CVPR 2017",
        source_file=__file__,
        ci_input_size=(64, 64), details={"blocks": NUM_BLOCKS, "width": WIDTH},
    )
)
