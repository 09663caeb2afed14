"""A user's Darknet `.cfg` as a checked layer plan (torch-free): every option read and checked, every layer's
output shape inferred, the detection heads described. models/darknet_net.py builds the PyTorch network from it.

Layers (darknet's parser.c defaults; one plan layer per cfg section after [net], so route indexes are darknet's):
- [convolutional] batch_normalize, filters, size, stride, pad (padding = size/2) or padding, groups, activation
  (leaky 0.1 | linear | relu | logistic | mish | swish; default logistic, as darknet);
- [maxpool] size, stride, padding (default size-1): out = (w + padding - size)/stride + 1, windows start at
  -padding/2 and cells outside the map never win (darknet's -FLT_MAX); a window with no cell of the map is refused;
- [upsample] stride (nearest); [reorg] stride (darknet's reorg_cpu, forward); [dropout] (identity at inference);
- [route] layers (negative = relative), groups, group_id (the group_id-th channel slice of each input);
- [shortcut] from (one layer of the same shape), activation;
- [yolo] mask (default 0..num-1), anchors (input pixels), classes, num, scale_x_y; the map before it must have
  len(mask) * (classes + 5) channels;
- [region] (YOLOv2) anchors (grid cells), classes, num, coords=4, softmax=1.
[net] gives width, height and channels (3); its other options train. Layer sections take only the options
listed in KNOWN (what they build) and TRAINING (loss and augmentation settings, ignored): anything else might change
the network, so it is refused. Every error is one line naming the file and the line.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from enginesmith.errors import EnginesmithError
from enginesmith.models.registry import MAX_INPUT_SIDE, check_input_side
from enginesmith.models.weights.darknet_cfg import CfgSection, parse_cfg

ACTIVATIONS = ("leaky", "linear", "relu", "logistic", "mish", "swish")
ALIASES = {"conv": "convolutional", "max": "maxpool", "network": "net"}
KNOWN: dict[str, frozenset[str]] = {
    "convolutional": frozenset({"batch_normalize", "filters", "size", "stride", "pad", "padding", "groups",
                                "activation"}),
    "maxpool": frozenset({"size", "stride", "padding"}),
    "upsample": frozenset({"stride"}),
    "route": frozenset({"layers", "groups", "group_id"}),
    "shortcut": frozenset({"from", "activation"}),
    "reorg": frozenset({"stride"}),
    "dropout": frozenset({"probability"}),
    "yolo": frozenset({"mask", "anchors", "classes", "num", "scale_x_y", "new_coords"}),
    "region": frozenset({"anchors", "classes", "num", "coords", "softmax"}),
}
SUPPORTED = tuple(KNOWN)
TRAINING: dict[str, frozenset[str]] = {
    "convolutional": frozenset({"stopbackward"}),
    "yolo": frozenset({"jitter", "ignore_thresh", "truth_thresh", "random", "iou_thresh", "iou_normalizer",
                       "cls_normalizer", "obj_normalizer", "iou_loss", "iou_thresh_kind", "nms_kind", "beta_nms",
                       "max_delta", "label_smooth_eps", "counters_per_class", "resize", "focal_loss",
                       "uc_normalizer", "objectness_smooth", "max", "delta_normalizer"}),
    "region": frozenset({"bias_match", "jitter", "rescore", "object_scale", "noobject_scale", "class_scale",
                         "coord_scale", "absolute", "thresh", "random", "max"}),
}
MAX_PARAMS = 1_000_000_000  # far above any published Darknet detector (YOLOv4: 64M)
MAX_ELEMENTS = 2**31  # one layer's output map, C x H x W
MAX_CFG_BYTES = 4 * 2**20
_INT = re.compile(r"[+-]?[0-9]{1,10}")
_FLOAT = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]{1,3})?")

Shape = tuple[int, int, int]  # C, H, W


@dataclass(frozen=True)
class CfgSource:
    """A cfg file as read once: the build uses `text`, and `sha256` names exactly those bytes."""

    path: Path
    text: str
    sha256: str
    size: int

    @property
    def name(self) -> str:
        return self.path.name


def read_cfg_source(path: str | Path) -> CfgSource:
    """Read a `.cfg` once (its bytes hashed and decoded from the same buffer); one-line errors for a missing,
    huge or binary file."""
    p = Path(path)
    if not p.is_file():
        raise EnginesmithError(f"darknet cfg not found: {p}" if not p.exists() else f"darknet cfg {p} is not a file")
    with open(p, "rb") as f:  # bounded: a file that grows after a size check is still read at most once, in full
        data = f.read(MAX_CFG_BYTES + 1)
    if len(data) > MAX_CFG_BYTES:
        raise EnginesmithError(f"{p} is over {MAX_CFG_BYTES} bytes, not a Darknet cfg (those are a few KB of text)")
    if b"\0" in data:
        raise EnginesmithError(f"{p} is binary, not a Darknet cfg (a text file of [sections] and key=value lines)")
    return CfgSource(p, data.decode("utf-8", errors="replace"), hashlib.sha256(data).hexdigest(), len(data))


@dataclass(frozen=True)
class PlanLayer:
    """One cfg layer: its kind (a SUPPORTED name), cfg line, output shape (C, H, W) and typed options."""

    kind: str
    line: int
    shape: Shape
    opts: dict[str, Any]


@dataclass(frozen=True)
class Head:
    """One [yolo] / [region] layer, as decoding needs it: raw map [N, na*(5+C), h, w] -> na*h*w boxes.

    anchors: (w, h) in input pixels, those of its mask; stride: (sy, sx) input pixels per cell (H/h, W/w);
    scale_xy: darknet's scale_x_y; classes: "sigmoid" ([yolo]) or "softmax" ([region] softmax=1)."""

    kind: str
    index: int
    line: int
    anchors: tuple[tuple[float, float], ...]
    num_classes: int
    grid: tuple[int, int]
    stride: tuple[float, float]
    scale_xy: float
    class_activation: str


@dataclass(frozen=True)
class CfgPlan:
    """The whole network at one input size (H, W): layers in cfg order and the heads in cfg order."""

    name: str
    input_size: tuple[int, int]
    layers: tuple[PlanLayer, ...]
    heads: tuple[Head, ...]
    params: int

    @property
    def num_classes(self) -> int:
        return self.heads[0].num_classes

    @property
    def num_boxes(self) -> int:
        """A in boxes [N, A, 4]: anchors x cells summed over the heads."""
        return sum(len(h.anchors) * h.grid[0] * h.grid[1] for h in self.heads)


class Options:
    """A section's options, read with darknet's defaults; each error names the file and the option's line."""

    def __init__(self, sec: CfgSection, file: str, kind: str) -> None:
        self.sec, self.file, self.kind = sec, file, kind
        if kind == "net":  # [net]'s other options are training settings: all taken
            return
        allowed = KNOWN[kind] | TRAINING.get(kind, frozenset())
        for key in sec.options:
            if key not in allowed:
                raise self.error(key, f"[{sec.type}] option {key[:40]!r} is not one enginesmith reads (it could change "
                                 f"the network); [{kind}] takes {', '.join(sorted(KNOWN[kind]))}")

    def error(self, key: str | None, text: str) -> EnginesmithError:
        line = self.sec.lines.get(key, self.sec.line) if key else self.sec.line
        return EnginesmithError(f"{self.file} line {line}: {text}")

    def has(self, key: str) -> bool:
        return key in self.sec.options

    def int(self, key: str, default: int, lo: int = 0, hi: int = 2**31 - 1) -> int:
        raw = self.sec.options.get(key)
        if raw is None:
            return default
        if not _INT.fullmatch(raw):
            raise self.error(key, f"{key}={raw[:40]} is not an integer")
        v = int(raw)
        if not lo <= v <= hi:
            raise self.error(key, f"{key}={v} is out of range; [{self.kind}] takes {key} from {lo} to {hi}")
        return v

    def float(self, key: str, default: float) -> float:
        raw = self.sec.options.get(key)
        if raw is None:
            return default
        values = self._floats(key, raw)
        if len(values) != 1:
            raise self.error(key, f"{key}={raw[:40]} must be one number")
        return values[0]

    def _floats(self, key: str, raw: str) -> list[float]:
        out = []
        for t in raw.split(","):
            t = t.strip()
            if not _FLOAT.fullmatch(t) or not math.isfinite(float(t)):
                raise self.error(key, f"{key}: {t[:40]!r} is not a number")
            out.append(float(t))
        return out

    def floats(self, key: str) -> list[float] | None:
        raw = self.sec.options.get(key)
        return None if raw is None else self._floats(key, raw.rstrip(", "))

    def ints(self, key: str) -> list[int] | None:
        raw = self.sec.options.get(key)
        if raw is None:
            return None
        parts = [t.strip() for t in raw.split(",")]
        bad = next((t for t in parts if not _INT.fullmatch(t)), None)
        if bad is not None:
            raise self.error(key, f"{key}: {bad[:40]!r} is not an integer")
        return [int(t) for t in parts]

    def activation(self, default: str) -> str:
        act = self.sec.options.get("activation", default)
        if act not in ACTIVATIONS:
            raise self.error("activation", f"activation={act[:40]} is not one enginesmith builds; choose "
                             f"{', '.join(ACTIVATIONS)}")
        return act


# ---------------------------------------------------------------------------------------------- layers
# Each: (options, index, layers so far, input shape) -> (typed options, output shape, parameters)
LayerRule = Callable[[Options, int, list[PlanLayer], Shape], tuple[dict[str, Any], Shape, int]]


def _conv(o: Options, i: int, layers: list[PlanLayer], s: Shape) -> tuple[dict[str, Any], Shape, int]:
    c, h, w = s
    filters, size = o.int("filters", 1, lo=1, hi=65536), o.int("size", 1, lo=1, hi=64)
    stride, groups = o.int("stride", 1, lo=1, hi=64), o.int("groups", 1, lo=1, hi=65536)
    bn = bool(o.int("batch_normalize", 0, lo=0, hi=1))
    pad = size // 2 if o.int("pad", 0, lo=0, hi=1) else o.int("padding", 0, lo=0, hi=64)
    if c % groups or filters % groups:
        raise o.error("groups", f"groups={groups} must divide both the {c} input channels and filters={filters}")
    if min(h, w) + 2 * pad < size:
        raise o.error("size", f"[convolutional] size={size} is larger than its {h}x{w} input (+{pad} padding)")
    opts = {"filters": filters, "size": size, "stride": stride, "pad": pad, "groups": groups, "bn": bn,
            "activation": o.activation("logistic")}
    params = filters * (c // groups) * size * size + (2 if bn else 1) * filters
    return opts, (filters, (h + 2 * pad - size) // stride + 1, (w + 2 * pad - size) // stride + 1), params


def _maxpool(o: Options, i: int, layers: list[PlanLayer], s: Shape) -> tuple[dict[str, Any], Shape, int]:
    c, h, w = s
    stride = o.int("stride", 1, lo=1, hi=64)
    size = o.int("size", stride, lo=1, hi=64)
    padding = o.int("padding", size - 1, lo=0, hi=128)
    out = []
    for n in (h, w):
        if n + padding < size:
            raise o.error("size", f"[maxpool] size={size} is larger than its {h}x{w} input (+{padding} padding)")
        k = (n + padding - size) // stride + 1
        first, last = -(padding // 2), -(padding // 2) + (k - 1) * stride
        if first + size - 1 < 0 or last > n - 1:
            raise o.error("padding", f"[maxpool] padding={padding} with size={size} gives windows that hold no "
                          f"input cell (darknet fills them with -FLT_MAX); use a padding up to size-1")
        out.append(k)
    return {"size": size, "stride": stride, "padding": padding}, (c, out[0], out[1]), 0


def _upsample(o: Options, i: int, layers: list[PlanLayer], s: Shape) -> tuple[dict[str, Any], Shape, int]:
    stride = o.int("stride", 2, lo=1, hi=32)
    return {"stride": stride}, (s[0], s[1] * stride, s[2] * stride), 0


def _reorg(o: Options, i: int, layers: list[PlanLayer], s: Shape) -> tuple[dict[str, Any], Shape, int]:
    c, h, w = s
    stride = o.int("stride", 1, lo=1, hi=32)
    if c % (stride * stride) or h % stride or w % stride:
        raise o.error("stride", f"[reorg] stride={stride} needs channels divisible by {stride * stride} and sides "
                      f"divisible by {stride}; its input is {c}x{h}x{w}")
    return {"stride": stride}, (c * stride * stride, h // stride, w // stride), 0


def _dropout(o: Options, i: int, layers: list[PlanLayer], s: Shape) -> tuple[dict[str, Any], Shape, int]:
    o.float("probability", 0.5)
    return {}, s, 0


def _source(o: Options, key: str, i: int, j: int, layers: list[PlanLayer]) -> int:
    """A route/shortcut input index (negative: relative to layer i), checked to be an earlier, non-head layer."""
    k = i + j if j < 0 else j
    if not 0 <= k < i:
        raise o.error(key, f"{key}={j} points at layer {k}; layer {i} can only read layers 0..{i - 1}")
    if layers[k].kind in ("yolo", "region"):
        raise o.error(key, f"{key}={j} reads the [{layers[k].kind}] layer {k}; route or shortcut from the conv before it")
    return k


def _route(o: Options, i: int, layers: list[PlanLayer], s: Shape) -> tuple[dict[str, Any], Shape, int]:
    idx = o.ints("layers")
    if not idx:
        raise o.error(None, "[route] needs layers=...")
    sources = [_source(o, "layers", i, j, layers) for j in idx]
    groups = o.int("groups", 1, lo=1, hi=65536)
    group_id = o.int("group_id", 0, lo=0, hi=groups - 1)
    hw = {layers[k].shape[1:] for k in sources}
    if len(hw) > 1:
        sizes = ", ".join(f"layer {k} is {layers[k].shape[1]}x{layers[k].shape[2]}" for k in sources)
        raise o.error("layers", f"[route] inputs differ in size ({sizes}); at this input size they cannot be joined")
    if any(layers[k].shape[0] % groups for k in sources):
        raise o.error("groups", f"groups={groups} must divide the channels of every input "
                      f"({', '.join(str(layers[k].shape[0]) for k in sources)})")
    c = sum(layers[k].shape[0] // groups for k in sources)
    h, w = hw.pop()
    return {"sources": tuple(sources), "groups": groups, "group_id": group_id}, (c, h, w), 0


def _shortcut(o: Options, i: int, layers: list[PlanLayer], s: Shape) -> tuple[dict[str, Any], Shape, int]:
    raw = o.sec.options.get("from")
    if raw is None:
        raise o.error(None, "[shortcut] needs from=...")
    idx = o.ints("from") or []
    if len(idx) != 1:
        raise o.error("from", f"from={raw[:40]}: enginesmith builds a shortcut from one layer")
    k = _source(o, "from", i, idx[0], layers)
    if layers[k].shape != s:
        a, b = layers[k].shape, s
        raise o.error("from", f"[shortcut] adds layer {k} ({a[0]}x{a[1]}x{a[2]}) to layer {i - 1} "
                      f"({b[0]}x{b[1]}x{b[2]}): shapes must match")
    return {"source": k, "activation": o.activation("linear")}, s, 0


def _anchors(o: Options, num: int) -> list[tuple[float, float]]:
    values = o.floats("anchors")
    if values is None or len(values) != 2 * num:
        have = "no anchors" if values is None else f"{len(values)} anchor values"
        raise o.error("anchors" if values is not None else "num", f"[{o.kind}] num={num} needs {2 * num} anchor values "
                      f"(w,h pairs), the cfg gives {have}")
    if any(v < 0 for v in values):
        raise o.error("anchors", "anchors must not be negative")
    return [(values[2 * k], values[2 * k + 1]) for k in range(num)]


def _head_input(o: Options, layers: list[PlanLayer], s: Shape, na: int, classes: int, extra: int = 5) -> None:
    """The map before a head must hold na * (classes + 5) channels: one line naming the conv that makes it."""
    want = na * (classes + extra)
    if s[0] != want:
        prev = layers[-1] if layers else None
        where = f" (filters={s[0]} on line {prev.line})" if prev is not None and prev.kind == "convolutional" else ""
        raise o.error(None, f"[{o.kind}] needs {na}*({classes}+5) = {want} channels in, the layer before gives "
                      f"{s[0]}{where}; set filters={want} there")


def _yolo(o: Options, i: int, layers: list[PlanLayer], s: Shape) -> tuple[dict[str, Any], Shape, int]:
    classes, num = o.int("classes", 20, lo=1, hi=100000), o.int("num", 1, lo=1, hi=1000)
    mask = o.ints("mask")
    mask = list(range(num)) if mask is None else mask
    bad = next((m for m in mask if not 0 <= m < num), None)
    if bad is not None:
        raise o.error("mask", f"mask index {bad} is beyond the num={num} anchors (0..{num - 1})")
    anchors = _anchors(o, num)
    if o.int("new_coords", 0, lo=0, hi=1):
        raise o.error("new_coords", "new_coords=1 (scaled-YOLOv4 box coding) is not supported; enginesmith decodes "
                      "darknet's sigmoid/exp boxes")
    scale = o.float("scale_x_y", 1.0)
    if scale <= 0:
        raise o.error("scale_x_y", f"scale_x_y={scale} must be positive")
    _head_input(o, layers, s, len(mask), classes)
    return {"anchors": tuple(anchors[m] for m in mask), "classes": classes, "scale_xy": scale}, s, 0


def _region(o: Options, i: int, layers: list[PlanLayer], s: Shape) -> tuple[dict[str, Any], Shape, int]:
    classes, num = o.int("classes", 20, lo=1, hi=100000), o.int("num", 1, lo=1, hi=1000)
    if o.int("coords", 4, lo=0, hi=100) != 4:
        raise o.error("coords", "[region] coords must be 4 (x, y, w, h)")
    if o.int("softmax", 0, lo=0, hi=1) != 1:
        raise o.error("softmax" if o.has("softmax") else None, "[region] needs softmax=1 (class probabilities by "
                      "softmax, as yolo-voc.cfg); other class activations are not supported")
    anchors = _anchors(o, num)
    _head_input(o, layers, s, num, classes)
    return {"anchors": tuple(anchors), "classes": classes, "scale_xy": 1.0}, s, 0


RULES: dict[str, LayerRule] = {
    "convolutional": _conv, "maxpool": _maxpool, "upsample": _upsample, "route": _route, "shortcut": _shortcut,
    "reorg": _reorg, "dropout": _dropout, "yolo": _yolo, "region": _region,
}


# ---------------------------------------------------------------------------------------------- the plan
def net_size(sections: list[CfgSection], file: str) -> tuple[int, int]:
    """[net] height, width (and channels=3), checked."""
    o = Options(sections[0], file, "net")
    size = (o.int("height", 416, lo=1, hi=MAX_INPUT_SIDE), o.int("width", 416, lo=1, hi=MAX_INPUT_SIDE))
    if o.int("channels", 3, lo=1, hi=2**31 - 1) != 3:
        raise o.error("channels", "enginesmith builds RGB networks: [net] channels must be 3")
    return size


def plan_cfg(text: str, file: str, input_size: tuple[int, int] | None = None) -> CfgPlan:
    """Parse and check a cfg text (named `file` in errors) at `input_size` (default: [net] height x width)."""
    sections = parse_cfg(text, file)
    size = net_size(sections, file)
    size = tuple(int(v) for v in input_size) if input_size is not None else size
    check_input_side(size)
    layers: list[PlanLayer] = []
    shape: Shape = (3, size[0], size[1])
    params = 0
    for i, sec in enumerate(sections[1:]):
        kind = ALIASES.get(sec.type, sec.type)
        if kind not in RULES:
            raise EnginesmithError(f"{file} line {sec.line}: [{sec.type[:40]}] is not a Darknet layer enginesmith builds;"
                                   f" supported: {', '.join(SUPPORTED)}")
        o = Options(sec, file, kind)
        opts, shape, n = RULES[kind](o, i, layers, shape)
        params += n
        if min(shape) < 1 or shape[0] * shape[1] * shape[2] > MAX_ELEMENTS:
            raise o.error(None, f"[{sec.type}] (layer {i}) would output {shape[0]}x{shape[1]}x{shape[2]} at input "
                          f"{size[0]}x{size[1]}; choose another --input-size or fix the cfg")
        if params > MAX_PARAMS:
            raise o.error(None, f"the network has over {MAX_PARAMS:,} parameters by layer {i}; that is not a "
                          "detector enginesmith builds (check filters/size)")
        layers.append(PlanLayer(kind, sec.line, shape, opts))
    return CfgPlan(file, (size[0], size[1]), tuple(layers), _heads(layers, file, size), params)


def _heads(layers: list[PlanLayer], file: str, size: tuple[int, int]) -> tuple[Head, ...]:
    heads = tuple(
        Head(l.kind, i, l.line, l.opts["anchors"] if l.kind == "yolo" else tuple(
            (aw * size[1] / l.shape[2], ah * size[0] / l.shape[1]) for aw, ah in l.opts["anchors"]),
            l.opts["classes"], (l.shape[1], l.shape[2]), (size[0] / l.shape[1], size[1] / l.shape[2]),
            l.opts["scale_xy"], "sigmoid" if l.kind == "yolo" else "softmax")
        for i, l in enumerate(layers) if l.kind in ("yolo", "region"))
    if not heads:
        raise EnginesmithError(f"{file} has no [yolo] or [region] layer: enginesmith builds Darknet detectors")
    if len({h.kind for h in heads}) > 1 or (heads[0].kind == "region" and len(heads) > 1):
        raise EnginesmithError(f"{file} line {heads[1].line}: one [region] layer, or [yolo] layers only; this cfg mixes "
                               "them")
    odd = next((h for h in heads if h.num_classes != heads[0].num_classes), None)
    if odd is not None:
        raise EnginesmithError(f"{file} line {odd.line}: classes={odd.num_classes}, but the [{heads[0].kind}] on line "
                               f"{heads[0].line} has classes={heads[0].num_classes}; every head must have the same")
    return heads


__all__ = ["CfgSource", "CfgPlan", "Head", "PlanLayer", "read_cfg_source", "plan_cfg", "SUPPORTED", "ACTIVATIONS"]
