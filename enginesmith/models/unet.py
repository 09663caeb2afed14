"""U-Net (Ronneberger, Fischer, Brox 2015) and 3D U-Net (Çiçek, Abdulkadir, Lienkamp, Brox, Ronneberger 2016).

Both use valid (unpadded) convolutions, so the output is smaller than the input and only some input
sizes let every 2x2 max-pool see an even map (check_input_size lists the nearest valid ones).

## unet (the paper's Fig. 1): [N, 1, 572, 572] gray -> logits [N, 2, 388, 388]

| level      | op                                                        | output (at 572)  |
|------------|-----------------------------------------------------------|------------------|
| down1      | 2 x (conv 3x3 valid, ReLU) 1->64->64                      | 64 x 568 x 568   |
| down2..4   | max-pool 2x2/2, 2 x conv 3x3: 128, 256, 512               | 512 x 64 x 64    |
| bottom     | max-pool 2x2/2, 2 x conv 3x3: 1024                        | 1024 x 28 x 28   |
| up4..up1   | up-conv 2x2/2 halving channels, crop-and-concat the       | 64 x 388 x 388   |
|            | down map, 2 x conv 3x3: 512, 256, 128, 64                 |                  |
| out        | conv 1x1 64 -> C                                          | C x 388 x 388    |

31,030,658 parameters at C=2 (hand count in tests/unit/test_zoo_dense.py). The count quoted widely
for "U-Net", 31,031,685, is 1,027 more: it is that of the popular Keras re-implementation
(zhixuhao/unet), whose head is conv 3x3 64->2 then conv 1x1 2->1 (sigmoid), not the paper's
1x1 conv to 2 classes (1,157 vs 130 parameters). The paper's weights are initialised from a Gaussian
with std sqrt(2/N), N = incoming connections (k*k*in_channels); biases 0. Valid sizes: s = 16*b + 60
with b >= 8 (b = the bottom map before its two convs), i.e. s in {188, 204, ..., 572, ...}; the
output side is s - 184.

## unet3d (the paper's Fig. 1): [N, 3, 116, 132, 132] (D, H, W) -> logits [N, 3, 28, 44, 44]

Analysis path 3->32->64, 64->64->128, 128->128->256, 256->256->512 (two 3x3x3 valid convs per level,
each conv -> BN -> ReLU, 2x2x2 max-pool between levels); synthesis path: up-conv 2x2x2/2 keeping the
channels (512, 256, 128), crop-and-concat, two 3x3x3 convs (256, 128, 64), final 1x1x1 conv to 3
labels. The paper's 132 x 132 x 116 tile is x, y, z: PyTorch's (D, H, W) = (116, 132, 132), output
(28, 44, 44). The registry's `input_size` is (H, W) = (132, 132); the depth (116) is in
details["depth"] and the whole per-sample shape in `input_shape`. It is volumetric, so the
image pipeline skips it (`image_model=False`) and its own tests export it.

19,069,955 parameters, exactly the paper's figure ("The architecture has 19069955 parameters in
total"): that count is reproduced when batch normalisation has no learned scale/shift (Caffe's
BatchNorm layer, which the authors' Caffe implementation uses, keeps only statistics) and the
up-convolutions have no bias; with affine BN and biased up-convs it would be 19,075,523 (+5,568).
Valid sides: s = 8*b + 28 with b >= 8, i.e. {92, 100, ..., 116, ..., 132, ...}; output side s - 88.
"""

from __future__ import annotations

import math
from functools import partial

import torch
from torch import nn

from enginesmith.errors import EnginesmithError
from enginesmith.models.registry import ModelSpec, register
from enginesmith.models.weights import load_weights
from enginesmith.runtime.preprocess import PreprocessSpec

UNET_INPUT_SIZE = (572, 572)
UNET_WIDTHS = (64, 128, 256, 512, 1024)
UNET3D_INPUT_SHAPE = (116, 132, 132)  # (D, H, W): the paper's 132 x 132 x 116 (x, y, z) tile
UNET3D_INPUT_SIZE = UNET3D_INPUT_SHAPE[1:]
# (first conv, second conv) output channels of each analysis level (the 3D U-Net doubles in the
# second conv of each level, not the first)
UNET3D_LEVELS = ((32, 64), (64, 128), (128, 256), (256, 512))


def _center_crop(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Crop the trailing spatial dims of `x` to those of `like`, centred (the paper's crop-and-copy)."""
    slices = [slice(None), slice(None)]
    for dim in range(2, x.dim()):
        off = (x.shape[dim] - like.shape[dim]) // 2
        slices.append(slice(off, off + like.shape[dim]))
    return x[tuple(slices)]


def _he_init(module: nn.Module) -> None:
    """The U-Net paper's initialisation: N(0, sqrt(2/N)), N = k^d * in_channels incoming nodes; biases 0."""
    for m in module.modules():
        if isinstance(m, nn.modules.conv._ConvNd):
            fan_in = (m.in_channels // m.groups) * math.prod(m.kernel_size)
            if m.transposed:
                fan_in = m.in_channels * math.prod(m.kernel_size) // max(1, math.prod(m.stride))
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_in))
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class DoubleConv(nn.Sequential):
    """Two valid 3x3 (or 3x3x3) convolutions, each followed by (BN and) ReLU."""

    def __init__(self, cin: int, cmid: int, cout: int, dims: int = 2, batch_norm: bool = False) -> None:
        conv = nn.Conv2d if dims == 2 else nn.Conv3d
        bn = nn.BatchNorm2d if dims == 2 else nn.BatchNorm3d
        layers: list[nn.Module] = []
        for a, b in ((cin, cmid), (cmid, cout)):
            layers.append(conv(a, b, 3))
            if batch_norm:
                layers.append(bn(b, affine=False))  # Caffe's BatchNorm: statistics only (see module doc)
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class _EncoderDecoder(nn.Module):
    """The U-Net forward shared by 2D and 3D: `down` blocks with `pool` between them, then `upconv`
    + concatenation with the centre-cropped skip + `up` blocks, then the 1x1 `out`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, block in enumerate(self.down):
            if i:
                x = self.pool(x)
            x = block(x)
            skips.append(x)
        skips.pop()
        for upconv, block in zip(self.upconv, self.up):
            x = upconv(x)
            x = block(torch.cat([_center_crop(skips.pop(), x), x], dim=1))
        return self.out(x)


class UNet(_EncoderDecoder):
    """U-Net: x [N, 1, H, W] -> logits [N, num_classes, H - 184, W - 184] (H, W valid sizes)."""

    def __init__(self, num_classes: int = 2, in_channels: int = 1, widths: tuple[int, ...] = UNET_WIDTHS) -> None:
        super().__init__()
        self.down = nn.ModuleList()
        cin = in_channels
        for w in widths:
            self.down.append(DoubleConv(cin, w, w))
            cin = w
        self.pool = nn.MaxPool2d(2, 2)
        self.upconv = nn.ModuleList()
        self.up = nn.ModuleList()
        for w in reversed(widths[:-1]):
            self.upconv.append(nn.ConvTranspose2d(cin, w, 2, stride=2))  # halves the channels
            self.up.append(DoubleConv(2 * w, w, w))
            cin = w
        self.out = nn.Conv2d(cin, num_classes, 1)
        _he_init(self)



class UNet3D(_EncoderDecoder):
    """3D U-Net: x [N, 3, D, H, W] -> logits [N, num_classes, D - 88, H - 88, W - 88] (valid sides)."""

    def __init__(self, num_classes: int = 3, in_channels: int = 3, levels: tuple[tuple[int, int], ...] = UNET3D_LEVELS) -> None:
        super().__init__()
        self.down = nn.ModuleList()
        cin = in_channels
        for mid, out in levels:
            self.down.append(DoubleConv(cin, mid, out, dims=3, batch_norm=True))
            cin = out
        self.pool = nn.MaxPool3d(2, 2)
        self.upconv = nn.ModuleList()
        self.up = nn.ModuleList()
        for _, skip in reversed(levels[:-1]):
            # up-conv 2x2x2 keeping the channels (Fig. 1: 512 -> 512, 256 -> 256, 128 -> 128)
            self.upconv.append(nn.ConvTranspose3d(cin, cin, 2, stride=2, bias=False))
            out = skip  # concat 768 -> 256, 384 -> 128, 192 -> 64
            self.up.append(DoubleConv(cin + skip, out, out, dims=3, batch_norm=True))
            cin = out
        self.out = nn.Conv3d(cin, num_classes, 1)
        _he_init(self)



def valid_sides(pools: int, min_bottom: int = 8) -> tuple[int, int]:
    """(step, smallest) of the valid input sides: s = step * b + offset, b >= min_bottom.

    Each level is two valid 3x3 convs (-4) then a 2x2 pool (/2, must be even): going down
    s -> (s - 4) / 2 `pools` times reaches b, so s = 2^pools * b + 4 * (2^pools - 1). The bottom
    loses 4 and each of the `pools` up-levels doubles then loses 4: output = 2^pools * (b - 4) -
    4 * (2^pools - 1), which is >= 1 from b = 8 on (b = 8 gives a 4-pixel output)."""
    step = 2**pools
    offset = 4 * (step - 1)
    return step, step * min_bottom + offset


def output_side(side: int, pools: int) -> int:
    step = 2**pools
    offset = 4 * (step - 1)
    b = (side - offset) // step
    return step * (b - 4) - offset


def _check_sides(name: str, sides: tuple[int, ...], pools: int, example: str) -> None:
    step, smallest = valid_sides(pools)
    offset = 4 * (step - 1)
    bad = [int(s) for s in sides if int(s) < smallest or (int(s) - offset) % step]
    if bad:
        s = bad[0]
        below = s - (s - offset) % step
        near = [n for n in (below, below + step) if n >= smallest] if s > smallest else [smallest]
        raise EnginesmithError(
            f"{name} takes sides s = {step}k + {offset} >= {smallest} (valid 3x3 convs and {pools} 2x2 pools must "
            f"divide evenly), got {s}; nearest valid: {' or '.join(str(n) for n in near)} (e.g. {example})"
        )


def check_input_size(size: tuple[int, int]) -> None:
    """U-Net: each side must be 16k + 60 >= 188 (572, 556, ..., 188); output side = side - 184."""
    _check_sides("unet", tuple(size), 4, "572x572 -> 388x388")


def check_input_size_3d(size: tuple[int, ...]) -> None:
    """3D U-Net: each side ((H, W) or (D, H, W)) must be 8k + 28 >= 92 (132, 116, 92, ...); output side - 88."""
    _check_sides("unet3d", tuple(size), 3, "116x132x132 -> 28x44x44")


def build_unet(num_classes: int = 2, input_size: tuple[int, int] = UNET_INPUT_SIZE) -> UNet:
    check_input_size(input_size)
    return UNet(num_classes).eval()


def build_unet3d(num_classes: int = 3, input_size: tuple[int, int] = UNET3D_INPUT_SIZE) -> UNet3D:
    """`input_size` is (H, W); the network is fully convolutional, any valid depth works at run time."""
    check_input_size_3d(input_size)
    return UNet3D(num_classes).eval()


UNET_PREPROCESS = PreprocessSpec(input_size=UNET_INPUT_SIZE, resize="stretch", color="GRAY", scale=1.0 / 255.0,
                                 mean=(0.0,), std=(1.0,))
# Per-voxel intensities scaled to [0, 1]; the 3 channels are the microscope's channels, not RGB (the
# image pipeline does not use this spec: image_model is False).
UNET3D_PREPROCESS = PreprocessSpec(input_size=UNET3D_INPUT_SIZE, resize="stretch", color="RGB", scale=1.0 / 255.0)

UNET_SPEC = register(
    ModelSpec(
        name="unet",
        task="dense",
        builder=build_unet,
        input_size=UNET_INPUT_SIZE,
        num_classes=2,
        preprocess=UNET_PREPROCESS,
        output_names=("logits",),
        check_input_size=check_input_size,
        load_weights=partial(load_weights, darknet_ok=False),
        class_names=("background", "foreground"),
        default_calibration="photos",
        paper="Ronneberger, Fischer, Brox, U-Net: Convolutional Networks for Biomedical Image Segmentation, MICCAI 2015",
        source_file=__file__,
        ci_input_size=(188, 188), details={"output_size": (388, 388)},
    )
)

UNET3D_SPEC = register(
    ModelSpec(
        name="unet3d",
        task="dense",
        builder=build_unet3d,
        input_size=UNET3D_INPUT_SIZE,
        num_classes=3,
        preprocess=UNET3D_PREPROCESS,
        output_names=("logits",),
        check_input_size=check_input_size_3d,
        load_weights=partial(load_weights, darknet_ok=False),
        class_names=("inside tubule", "tubule", "background"),  # the paper's labels 0, 1, 2
        default_calibration="photos",
        paper="Çiçek et al., 3D U-Net: Learning Dense Volumetric Segmentation from Sparse Annotation, MICCAI 2016",
        source_file=__file__,
        image_model=False,  # volumetric [N, 3, D, H, W]
        input_shape=(3, *UNET3D_INPUT_SHAPE),
        details={
            "depth": UNET3D_INPUT_SHAPE[0],
            "output_shape": (3, 28, 44, 44),
            "smallest_input_shape": (3, 92, 92, 92),
        },
    )
)
