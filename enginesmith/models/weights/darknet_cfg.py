"""Darknet `.cfg` files: a parser, the official layouts of our YOLO models, and a check of a PyTorch
model against a cfg.

A cfg is a list of `[section]` headers, each followed by `key=value` options; `#` and `;` start
comment lines. `parse_cfg(text)` returns the sections in order ([net] first). `cfg_weight_layers`
lists the layers that own weights in a `.weights` file (convolutional and connected), in file order,
and `model_weight_layers(model)` lists the same for a PyTorch model (through darknet.py's
`darknet_layers`); `check_model_against_cfg` compares the two (count, filters, kernel size, stride,
batch_normalize, connected outputs) and raises EnginesmithError naming the first layer that differs;
`load_darknet_checkpoint(model, weights, cfg)` does that check against a `.cfg` file, then loads the
`.weights` (models/weights/darknet.py).

The embedded texts are the layer layouts of the official cfgs, written out without their training
options (learning rate, augmentation, loss scales); repeated blocks are written with small helpers
(`_conv`, `_maxpool`, ...) instead of copy-paste. Sources:
- YOLOV1_CFG: the YOLO paper's Fig. 3 (Redmon et al. 2016) as darknet's original `yolo.cfg` ran it:
  24 convolutional layers (no batch norm, bias, leaky), connected 4096 leaky, dropout .5, connected
  1470 linear, [detection] side=7 num=2 classes=20 sqrt=1. (pjreddie's later `cfg/yolov1.cfg`, with
  batch norm, a 3x3 locally connected layer and num=3 / 1715 outputs, is a different network.)
- TINY_YOLOV1_CFG: pjreddie/darknet `cfg/yolov1-tiny.cfg` (Fast YOLO): convolutional 16, 32, 64, 128,
  256, 512 each followed by maxpool 2/2, then 1024 and 256 (3x3, batch norm), connected 1470.
- YOLOV2_VOC_CFG: pjreddie/darknet `cfg/yolo-voc.cfg` (YOLOv2 VOC, 416): Darknet-19's 18 convs,
  two 3x3x1024 convs, route -9, 1x1x64 conv, reorg 2, route -1,-4, 3x3x1024, 1x1x125, [region].
- YOLOV3_CFG: pjreddie/darknet `cfg/yolov3.cfg` (Darknet-53, three yolo heads).
- YOLOV3_TINY_CFG: pjreddie/darknet `cfg/yolov3-tiny.cfg`; its second [yolo] has mask = 0,1,2
  (as AlexeyAB's fork has since commit 74956888; it briefly had 1,2,3).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from enginesmith.errors import EnginesmithError
from enginesmith.models.weights.darknet import darknet_layers, load_darknet_weights


@dataclass
class CfgSection:
    """One `[type]` section and its options (raw strings, keys as written, whitespace stripped)."""

    type: str
    options: dict[str, str] = field(default_factory=dict)
    line: int = 0
    lines: dict[str, int] = field(default_factory=dict)  # the line each option was read from (the last one wins)

    def get(self, key: str, default: str | None = None) -> str | None:
        return self.options.get(key, default)

    def getint(self, key: str, default: int = 0) -> int:
        v = self.options.get(key)
        return default if v is None else int(v)

    def getints(self, key: str) -> list[int]:
        v = self.options.get(key, "")
        return [int(t) for t in v.split(",") if t.strip()]

    def getfloats(self, key: str) -> list[float]:
        v = self.options.get(key, "")
        return [float(t) for t in v.split(",") if t.strip()]


def parse_cfg(text: str, name: str = "darknet cfg") -> list[CfgSection]:
    """Parse darknet cfg text into its sections, in order (a repeated option: the later one wins). Raises a
    one-line EnginesmithError on a malformed line, naming `name` (the file) and the line number."""
    sections: list[CfgSection] = []
    for n, raw in enumerate(text.split("\n"), start=1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            if not line.endswith("]") or len(line) < 3:
                raise EnginesmithError(f"{name} line {n}: malformed section header {line[:80]!r}")
            sections.append(CfgSection(line[1:-1].strip(), {}, n))
            continue
        if "=" not in line:
            raise EnginesmithError(f"{name} line {n}: expected key=value, got {line[:80]!r}")
        if not sections:
            raise EnginesmithError(f"{name} line {n}: option {line[:80]!r} before any [section]")
        key, value = line.split("=", 1)
        sections[-1].options[key.strip()] = value.strip()
        sections[-1].lines[key.strip()] = n
    if not sections or sections[0].type not in ("net", "network"):
        where = f" (line {sections[0].line} is [{sections[0].type[:40]}])" if sections else ""
        raise EnginesmithError(f"{name} must start with a [net] section{where}")
    return sections


@dataclass(frozen=True)
class WeightLayer:
    """A layer that owns weights in a .weights file: conv (filters, size, stride, bn) or connected (output)."""

    kind: str  # "convolutional" | "connected"
    filters: int
    size: int = 0
    stride: int = 0
    batch_normalize: bool = False


def cfg_weight_layers(sections: list[CfgSection]) -> list[WeightLayer]:
    """The [convolutional] and [connected] layers of a parsed cfg, in file order."""
    out: list[WeightLayer] = []
    for s in sections[1:]:
        if s.type in ("convolutional", "conv"):
            out.append(WeightLayer("convolutional", s.getint("filters", 1), s.getint("size", 1), s.getint("stride", 1),
                                   bool(s.getint("batch_normalize", 0))))
        elif s.type in ("connected", "conn"):
            out.append(WeightLayer("connected", s.getint("output", 1), 0, 0, bool(s.getint("batch_normalize", 0))))
        elif s.type in ("local", "deconvolutional", "crnn", "rnn", "gru", "lstm", "batchnorm"):
            raise EnginesmithError(f"darknet cfg line {s.line}: [{s.type}] layers are not supported")
    return out


def model_weight_layers(model: nn.Module) -> list[WeightLayer]:
    """The same list for a PyTorch model, from darknet.py's `darknet_layers` (file order)."""
    out: list[WeightLayer] = []
    for layer in darknet_layers(model):
        m = layer.conv
        if isinstance(m, nn.Linear):
            out.append(WeightLayer("connected", m.out_features, 0, 0, layer.bn is not None))
        else:
            out.append(WeightLayer("convolutional", m.out_channels, m.kernel_size[0], m.stride[0], layer.bn is not None))
    return out


def check_model_against_cfg(model: nn.Module, cfg_text: str, name: str = "cfg") -> int:
    """Raise EnginesmithError unless `model`'s weight layers match the cfg's, in order; returns their count."""
    want = cfg_weight_layers(parse_cfg(cfg_text))
    have = model_weight_layers(model)
    for i, (w, h) in enumerate(zip(want, have)):
        if w != h:
            raise EnginesmithError(f"{type(model).__name__} differs from {name} at weight layer {i}: cfg {w}, model {h}")
    if len(want) != len(have):
        raise EnginesmithError(
            f"{type(model).__name__} has {len(have)} weight layers but {name} has {len(want)}"
        )
    return len(want)


def read_cfg(path: str | Path) -> str:
    """The text of a `.cfg` file (EnginesmithError if missing)."""
    p = Path(path)
    if not p.is_file():
        raise EnginesmithError(f"darknet cfg not found: {p}")
    return p.read_text(encoding="utf-8", errors="replace")


def load_darknet_checkpoint(model: nn.Module, weights: str | Path, cfg: str | Path | None = None) -> dict[str, int]:
    """Load a Darknet `.weights` file, first checking `model` against the `.cfg` file given with it
    (filters, sizes, strides, batch norm, connected outputs, layer by layer), so a cfg/model mismatch is
    reported by layer rather than as a byte count. Returns the header fields (major, minor, revision, seen)."""
    if cfg is not None:
        check_model_against_cfg(model, read_cfg(cfg), str(cfg))
    return load_darknet_weights(model, weights)


# ------------------------------------------------------------------------------ official layouts
def _net(width: int, height: int) -> str:
    return f"[net]\nbatch=1\nsubdivisions=1\nwidth={width}\nheight={height}\nchannels=3\n\n"


def _conv(filters: int, size: int, stride: int = 1, bn: bool = True, activation: str = "leaky") -> str:
    bn_line = "batch_normalize=1\n" if bn else ""
    return (f"[convolutional]\n{bn_line}filters={filters}\nsize={size}\nstride={stride}\npad=1\n"
            f"activation={activation}\n\n")


def _maxpool(size: int = 2, stride: int = 2) -> str:
    return f"[maxpool]\nsize={size}\nstride={stride}\n\n"


def _connected(output: int, activation: str) -> str:
    return f"[connected]\noutput={output}\nactivation={activation}\n\n"


def _route(layers: str) -> str:
    return f"[route]\nlayers={layers}\n\n"


def _v1_conv(filters: int, size: int, stride: int = 1) -> str:
    return _conv(filters, size, stride, bn=False)


_V1_DETECTION = ("[detection]\nclasses=20\ncoords=4\nrescore=1\nside=7\nnum=2\nsoftmax=0\nsqrt=1\njitter=.2\n"
                 "object_scale=1\nnoobject_scale=.5\nclass_scale=1\ncoord_scale=5\n")

YOLOV1_CFG = (
    _net(448, 448)
    + _v1_conv(64, 7, 2) + _maxpool()
    + _v1_conv(192, 3) + _maxpool()
    + _v1_conv(128, 1) + _v1_conv(256, 3) + _v1_conv(256, 1) + _v1_conv(512, 3) + _maxpool()
    + (_v1_conv(256, 1) + _v1_conv(512, 3)) * 4 + _v1_conv(512, 1) + _v1_conv(1024, 3) + _maxpool()
    + (_v1_conv(512, 1) + _v1_conv(1024, 3)) * 2 + _v1_conv(1024, 3) + _v1_conv(1024, 3, 2)
    + _v1_conv(1024, 3) + _v1_conv(1024, 3)
    + _connected(4096, "leaky") + "[dropout]\nprobability=.5\n\n" + _connected(1470, "linear")
    + _V1_DETECTION
)

TINY_YOLOV1_CFG = (
    _net(448, 448)
    + "".join(_conv(f, 3) + _maxpool() for f in (16, 32, 64, 128, 256, 512))
    + _conv(1024, 3) + _conv(256, 3)
    + _connected(1470, "linear")
    + _V1_DETECTION
)

YOLOV2_VOC_CFG = (
    _net(416, 416)
    + _conv(32, 3) + _maxpool() + _conv(64, 3) + _maxpool()
    + _conv(128, 3) + _conv(64, 1) + _conv(128, 3) + _maxpool()
    + _conv(256, 3) + _conv(128, 1) + _conv(256, 3) + _maxpool()
    + _conv(512, 3) + _conv(256, 1) + _conv(512, 3) + _conv(256, 1) + _conv(512, 3) + _maxpool()
    + _conv(1024, 3) + _conv(512, 1) + _conv(1024, 3) + _conv(512, 1) + _conv(1024, 3)
    + "#######\n\n"
    + _conv(1024, 3) + _conv(1024, 3)
    + _route("-9") + _conv(64, 1) + "[reorg]\nstride=2\n\n" + _route("-1,-4")
    + _conv(1024, 3) + _conv(125, 1, bn=False, activation="linear")
    + "[region]\nanchors = 1.3221, 1.73145, 3.19275, 4.00944, 5.05587, 8.09892, 9.47112, 4.84053, 11.2364, 10.0071\n"
      "bias_match=1\nclasses=20\ncoords=4\nnum=5\nsoftmax=1\njitter=.3\nrescore=1\n"
      "object_scale=5\nnoobject_scale=1\nclass_scale=1\ncoord_scale=1\nabsolute=1\nthresh=.6\nrandom=1\n"
)


def _v3_residual(filters: int, n: int) -> str:
    block = _conv(filters // 2, 1) + _conv(filters, 3) + "[shortcut]\nfrom=-3\nactivation=linear\n\n"
    return block * n


def _v3_yolo(mask: str, anchors: str, num: int) -> str:
    return (f"[yolo]\nmask = {mask}\nanchors = {anchors}\nclasses=80\nnum={num}\njitter=.3\nignore_thresh = .7\n"
            "truth_thresh = 1\nrandom=1\n\n")


_V3_ANCHORS = "10,13,  16,30,  33,23,  30,61,  62,45,  59,119,  116,90,  156,198,  373,326"


def _v3_head(filters: int, mask: str) -> str:
    return ((_conv(filters, 1) + _conv(filters * 2, 3)) * 3 + _conv(255, 1, bn=False, activation="linear")
            + _v3_yolo(mask, _V3_ANCHORS, 9))


YOLOV3_CFG = (
    _net(416, 416)
    + _conv(32, 3)
    + _conv(64, 3, 2) + _v3_residual(64, 1)
    + _conv(128, 3, 2) + _v3_residual(128, 2)
    + _conv(256, 3, 2) + _v3_residual(256, 8)
    + _conv(512, 3, 2) + _v3_residual(512, 8)
    + _conv(1024, 3, 2) + _v3_residual(1024, 4)
    + "######################\n\n"
    + _v3_head(512, "6,7,8")
    + _route("-4") + _conv(256, 1) + "[upsample]\nstride=2\n\n" + _route("-1, 61")
    + _v3_head(256, "3,4,5")
    + _route("-4") + _conv(128, 1) + "[upsample]\nstride=2\n\n" + _route("-1, 36")
    + _v3_head(128, "0,1,2")
)

_TINY_ANCHORS = "10,14,  23,27,  37,58,  81,82,  135,169,  344,319"

YOLOV3_TINY_CFG = (
    _net(416, 416)
    + "".join(_conv(f, 3) + _maxpool() for f in (16, 32, 64, 128, 256))
    + _conv(512, 3) + _maxpool(2, 1)
    + _conv(1024, 3)
    + "###########\n\n"
    + _conv(256, 1) + _conv(512, 3) + _conv(255, 1, bn=False, activation="linear")
    + _v3_yolo("3,4,5", _TINY_ANCHORS, 6)
    + _route("-4") + _conv(128, 1) + "[upsample]\nstride=2\n\n" + _route("-1, 8")
    + _conv(256, 3) + _conv(255, 1, bn=False, activation="linear")
    + _v3_yolo("0,1,2", _TINY_ANCHORS, 6)
)

OFFICIAL_CFGS: dict[str, str] = {
    "yolov1": YOLOV1_CFG,
    "fast-yolo": TINY_YOLOV1_CFG,
    "yolov2": YOLOV2_VOC_CFG,
    "yolov3": YOLOV3_CFG,
    "yolov3-tiny": YOLOV3_TINY_CFG,
}

__all__ = [
    "CfgSection", "WeightLayer", "parse_cfg", "cfg_weight_layers", "model_weight_layers",
    "check_model_against_cfg", "read_cfg", "load_darknet_checkpoint", "OFFICIAL_CFGS", "YOLOV1_CFG", "TINY_YOLOV1_CFG", "YOLOV2_VOC_CFG",
    "YOLOV3_CFG", "YOLOV3_TINY_CFG",
]
