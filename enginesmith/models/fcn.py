"""FCN-32s, FCN-16s, FCN-8s (Long, Shelhamer, Darrell, Fully Convolutional Networks for Semantic
Segmentation, CVPR 2015) on VGG16, in the form of the authors' reference Caffe nets (voc-fcn32s,
voc-fcn16s, voc-fcn8s in shelhamer/fcn.berkeleyvision.org).

Input [N, 3, H, W] (BGR, Caffe mean subtracted, any H, W >= 1) -> logits [N, 21, H, W] (PASCAL VOC's 20
classes + background). Checkpoint family: the authors' Caffe models converted to PyTorch take BGR 0-255 minus
the ILSVRC mean (the default here); a checkpoint trained on RGB is built with `--channels rgb` (the mean
follows its colours) or with its own `--mean`.

| layer        | op                                                         | params (21 classes) |
|--------------|------------------------------------------------------------|---------------------|
| conv1..conv5 | VGG16's 13 3x3 convs + ReLU, 2x2/2 max-pools (ceil mode);  | 14,714,688          |
|              | conv1_1 pads by 100 so small inputs still reach fc6        |                     |
| fc6          | conv 7x7 512 -> 4096, ReLU, dropout 0.5                    | 102,764,544         |
| fc7          | conv 1x1 4096 -> 4096, ReLU, dropout 0.5                   | 16,781,312          |
| score_fr     | conv 1x1 4096 -> 21                                        | 86,037              |
| 32s          | upscore: deconv 64x64 / 32 (no bias); crop 19              | 1,806,336           |
| 16s          | upscore2: deconv 4x4 / 2; score_pool4 1x1 512 -> 21, crop  | 7,056 + 10,773 +    |
|              | 5, sum; upscore16: deconv 32x32 / 16; crop 27              | 451,584             |
| 8s           | as 16s to the pool4 fuse; upscore_pool4 deconv 4x4 / 2;    | 7,056 + 10,773 +    |
|              | score_pool3 1x1 256 -> 21, crop 9, sum; upscore8 deconv    | 7,056 + 5,397 +     |
|              | 16x16 / 8; crop 31                                         | 112,896             |

Totals at 21 classes: FCN-32s 136,152,917; FCN-16s 134,815,994; FCN-8s 134,489,759 (the paper's
Table 1: FCN-VGG16, 134M parameters; the fixed 64x64 deconv of FCN-32s adds 1.8M). The crop offsets
are those Caffe's Crop layer computes for the reference nets and hold for every input size. Every
transposed convolution is initialised to bilinear interpolation, class by class, as the reference
nets' `surgery.interp` does (the paper: "we initialize the 2x upsampling to bilinear interpolation";
the final upsampling is fixed bilinear).
Other layers: He-normal weights (std sqrt(2/fan_in)), zero biases, so an untrained net has
non-degenerate activations (a trained one comes from VGG16 and is loaded by path). Attribute names are
the Caffe layer names (conv1_1 ... fc7, score_fr, score_pool4, upscore2, ...), the names of the
widely used PyTorch port (wkentaro/pytorch-fcn), so its state dicts load as they are.
"""

from __future__ import annotations

import math
from functools import partial

import numpy as np
import torch
from torch import nn

from enginesmith.errors import EnginesmithError
from enginesmith.models.registry import ModelSpec, register
from enginesmith.models.weights import load_weights
from enginesmith.runtime.preprocess import PreprocessSpec

INPUT_SIZE = (500, 500)  # PASCAL VOC images are at most 500x500
NUM_CLASSES = 21
VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)
# VGG16 (configuration D): channels of the 3x3 convs of each block
VGG16_BLOCKS = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))
# variant -> crop offsets of the reference Caffe nets: (score_pool4, score_pool3, final)
CROPS = {"fcn32s": (None, None, 19), "fcn16s": (5, None, 27), "fcn8s": (5, 9, 31)}


def bilinear_kernel(channels: int, kernel_size: int) -> torch.Tensor:
    """[C, C, k, k] transposed-conv weight that upsamples each channel bilinearly (fcn surgery.upsample_filt)."""
    factor = (kernel_size + 1) // 2
    center = factor - 1 if kernel_size % 2 == 1 else factor - 0.5
    og = np.ogrid[:kernel_size, :kernel_size]
    filt = (1 - abs(og[0] - center) / factor) * (1 - abs(og[1] - center) / factor)
    weight = torch.zeros(channels, channels, kernel_size, kernel_size)
    weight[range(channels), range(channels)] = torch.from_numpy(filt).float()
    return weight


class FCN(nn.Module):
    """FCN-32s/16s/8s on VGG16: x [N, 3, H, W] -> logits [N, num_classes, H, W]."""

    def __init__(self, variant: str = "fcn8s", num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        if variant not in CROPS:
            raise ValueError(f"unknown FCN variant {variant!r}; one of {sorted(CROPS)}")
        self.variant = variant
        self.crop_pool4, self.crop_pool3, self.crop_out = CROPS[variant]
        cin = 3
        for b, widths in enumerate(VGG16_BLOCKS, start=1):
            for i, w in enumerate(widths, start=1):
                setattr(self, f"conv{b}_{i}", nn.Conv2d(cin, w, 3, padding=100 if (b, i) == (1, 1) else 1))
                setattr(self, f"relu{b}_{i}", nn.ReLU(inplace=True))
                cin = w
            setattr(self, f"pool{b}", nn.MaxPool2d(2, 2, ceil_mode=True))  # Caffe pooling rounds up
        self.fc6 = nn.Conv2d(512, 4096, 7)
        self.relu6 = nn.ReLU(inplace=True)
        self.drop6 = nn.Dropout2d(0.5)
        self.fc7 = nn.Conv2d(4096, 4096, 1)
        self.relu7 = nn.ReLU(inplace=True)
        self.drop7 = nn.Dropout2d(0.5)
        self.score_fr = nn.Conv2d(4096, num_classes, 1)
        c = num_classes
        if variant == "fcn32s":
            self.upscore = nn.ConvTranspose2d(c, c, 64, stride=32, bias=False)
        else:
            self.upscore2 = nn.ConvTranspose2d(c, c, 4, stride=2, bias=False)
            self.score_pool4 = nn.Conv2d(512, c, 1)
            if variant == "fcn16s":
                self.upscore16 = nn.ConvTranspose2d(c, c, 32, stride=16, bias=False)
            else:
                self.upscore_pool4 = nn.ConvTranspose2d(c, c, 4, stride=2, bias=False)
                self.score_pool3 = nn.Conv2d(256, c, 1)
                self.upscore8 = nn.ConvTranspose2d(c, c, 16, stride=8, bias=False)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.ConvTranspose2d):
                m.weight.data.copy_(bilinear_kernel(m.in_channels, m.kernel_size[0]))
            elif isinstance(m, nn.Conv2d):
                fan_in = m.in_channels * m.kernel_size[0] * m.kernel_size[1]
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_in))
                nn.init.zeros_(m.bias)

    def _block(self, x: torch.Tensor, b: int) -> torch.Tensor:
        for i in range(1, len(VGG16_BLOCKS[b - 1]) + 1):
            x = getattr(self, f"relu{b}_{i}")(getattr(self, f"conv{b}_{i}")(x))
        return getattr(self, f"pool{b}")(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[2], x.shape[3]
        pool3 = self._block(self._block(self._block(x, 1), 2), 3)
        pool4 = self._block(pool3, 4)
        y = self._block(pool4, 5)
        y = self.drop6(self.relu6(self.fc6(y)))
        y = self.drop7(self.relu7(self.fc7(y)))
        y = self.score_fr(y)
        if self.variant == "fcn32s":
            y = self.upscore(y)
        else:
            y = self.upscore2(y)
            o = self.crop_pool4
            y = y + self.score_pool4(pool4)[:, :, o : o + y.shape[2], o : o + y.shape[3]]
            if self.variant == "fcn16s":
                y = self.upscore16(y)
            else:
                y = self.upscore_pool4(y)
                o = self.crop_pool3
                y = y + self.score_pool3(pool3)[:, :, o : o + y.shape[2], o : o + y.shape[3]]
                y = self.upscore8(y)
        o = self.crop_out
        return y[:, :, o : o + h, o : o + w]


def _sizes(side: int, variant: str) -> dict[str, int]:
    """Spatial side of each map along one axis (Caffe arithmetic), to check that every crop fits."""
    s = {"conv1": side + 2 * 100 - 2}
    cur = s["conv1"]
    for b in range(1, 6):
        cur = -(-cur // 2)  # ceil-mode 2x2/2 pool
        s[f"pool{b}"] = cur
    s["score_fr"] = cur - 6
    if variant == "fcn32s":
        s["out"] = (s["score_fr"] - 1) * 32 + 64
        return s
    s["upscore2"] = (s["score_fr"] - 1) * 2 + 4
    if variant == "fcn16s":
        s["out"] = (s["upscore2"] - 1) * 16 + 32
        return s
    s["upscore_pool4"] = (s["upscore2"] - 1) * 2 + 4
    s["out"] = (s["upscore_pool4"] - 1) * 8 + 16
    return s


def _crops_fit(side: int, variant: str) -> bool:
    s = _sizes(side, variant)
    p4, p3, out = CROPS[variant]
    ok = s["score_fr"] >= 1 and s["out"] >= out + side
    if p4 is not None:
        ok = ok and s["pool4"] >= p4 + s["upscore2"]
    if p3 is not None:
        ok = ok and s["pool3"] >= p3 + s["upscore_pool4"]
    return ok


def make_check_input_size(variant: str):
    def check_input_size(size: tuple[int, int]) -> None:
        """Any side from 1 to 4096 whose crops fit (the 100-pixel pad makes that every side in range)."""
        for side in (int(s) for s in size):
            if not (1 <= side <= 4096 and _crops_fit(side, variant)):
                raise EnginesmithError(
                    f"{variant} takes any input side from 1 to 4096 (conv1_1 pads by 100 and the output is cropped "
                    f"back to the input size), got {size[0]}x{size[1]}; try 500x500"
                )

    check_input_size.__doc__ = f"{variant}: any side in [1, 4096] (the reference nets' pad-100-and-crop)."
    return check_input_size


def build_fcn(variant: str, num_classes: int = NUM_CLASSES, input_size: tuple[int, int] = INPUT_SIZE) -> FCN:
    make_check_input_size(variant)(input_size)
    return FCN(variant, num_classes).eval()


# The reference Caffe nets take BGR pixels in [0, 255] minus the ILSVRC mean (fcn's voc_layers.py).
PREPROCESS = PreprocessSpec(input_size=INPUT_SIZE, resize="stretch", color="BGR", scale=1.0,
                            mean=(104.00698793, 116.66876762, 122.67891434), std=(1.0, 1.0, 1.0))

SPECS = {
    variant: register(
        ModelSpec(
            name=variant,
            task="dense",
            builder=partial(build_fcn, variant),
            input_size=INPUT_SIZE,
            num_classes=NUM_CLASSES,
            preprocess=PREPROCESS,
            output_names=("logits",),
            check_input_size=make_check_input_size(variant),
            load_weights=partial(load_weights, darknet_ok=False),
            class_names=VOC_CLASSES,
            default_calibration="photos",
            paper="Long, Shelhamer, Darrell, Fully Convolutional Networks for Semantic Segmentation, CVPR 2015",
            source_file=__file__,
            # ~134M parameters (a 540 MB ONNX file): no ci_input_size, built only under -m slow
            details={"stride": int(variant[3:-1])},
        )
    )
    for variant in CROPS
}
