"""Darknet `.weights` files (pjreddie / AlexeyAB format), read and written layer by layer.

File layout (little endian):
- header: int32 major, int32 minor, int32 revision, then `seen` (images seen in training) as
  int64 when (major*10 + minor) >= 2 and major < 1000 and minor < 1000, else int32
  (the rule in darknet's `load_weights_upto`).
- then float32 for every convolutional layer in cfg order:
  - with batch norm: beta (= BN bias) [c], gamma (= BN weight) [c], running_mean [c],
    running_var [c], kernel [c, cin/groups, k, k];
  - without batch norm: bias [c], kernel.

The model's convolutional layers are found in module registration order: a Conv2d immediately
followed (in `named_modules()` order) by a BatchNorm2d of the same width is a conv+BN layer,
otherwise the Conv2d must carry a bias. The family files register modules in cfg order.

Connected layers (YOLOv1, Fast YOLO) are read only from models that opt in with a class attribute
`darknet_connected = True` (every other model keeps the conv-only behaviour): an nn.Linear with a
bias is a Darknet `[connected]` layer without batch norm, stored as bias [out] then weights
[out, in] row-major (darknet's `load_connected_weights`; the same layout as nn.Linear.weight). The
input of the first connected layer is the conv map flattened channel, row, column (darknet keeps
feature maps as C x H x W, like torch.flatten on NCHW). Files whose header has major or minor
> 1000 store connected weights transposed ([in, out], darknet's `transpose` flag); they are read
and written that way.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from torch import nn

from enginesmith.errors import EnginesmithError
from enginesmith.models.weights.sniff import describe, head_bytes


@dataclass(frozen=True)
class DarknetConv:
    """One Darknet convolutional layer: the conv, its batch norm (or None) and the module name."""

    name: str
    conv: nn.Conv2d  # an nn.Linear for a connected layer (models with darknet_connected = True)
    bn: nn.BatchNorm2d | None

    @property
    def is_connected(self) -> bool:
        return isinstance(self.conv, nn.Linear)

    @property
    def kind(self) -> str:
        return "connected layer" if self.is_connected else "conv layer"

    @property
    def num_floats(self) -> int:
        c = self.conv.out_features if self.is_connected else self.conv.out_channels
        return self.conv.weight.numel() + (4 * c if self.bn is not None else c)


def darknet_layers(model: nn.Module) -> list[DarknetConv]:
    """The model's convolutional layers in Darknet file order (see the module docstring)."""
    mods = list(model.named_modules())
    layers: list[DarknetConv] = []
    connected = bool(getattr(model, "darknet_connected", False))
    for i, (name, m) in enumerate(mods):
        if connected and isinstance(m, nn.Linear):
            if m.bias is None:
                raise EnginesmithError(f"connected layer {name} has no bias, so it has no Darknet layout")
            layers.append(DarknetConv(name, m, None))  # type: ignore[arg-type]
            continue
        if not isinstance(m, nn.Conv2d):
            continue
        nxt = mods[i + 1][1] if i + 1 < len(mods) else None
        if isinstance(nxt, nn.BatchNorm2d) and nxt.num_features == m.out_channels:
            layers.append(DarknetConv(name, m, nxt))
        elif m.bias is not None:
            layers.append(DarknetConv(name, m, None))
        else:
            raise EnginesmithError(
                f"conv layer {name} has neither batch norm nor bias, so it has no Darknet layout; "
                "this model cannot use .weights files"
            )
    if not layers:
        raise EnginesmithError(f"{type(model).__name__} has no convolutional layers to load Darknet weights into")
    return layers


def _seen_is_64bit(major: int, minor: int) -> bool:
    return (major * 10 + minor) >= 2 and major < 1000 and minor < 1000


def _transposed_connected(major: int, minor: int) -> bool:
    """darknet's `transpose = (major > 1000) || (minor > 1000)` for connected-layer weights."""
    return major > 1000 or minor > 1000


def header_size(major: int, minor: int) -> int:
    """Bytes of the header for this version: 12 + (8 if seen is int64 else 4)."""
    return 12 + (8 if _seen_is_64bit(major, minor) else 4)


DARKNET_FORMAT = ("a Darknet .weights file is binary: a 16- or 20-byte header (int32 major, minor, revision, then "
                  "the images seen), then the float32 weights of every layer in cfg order")


@dataclass(frozen=True)
class DarknetFile:
    """What check_darknet_file learned: the header fields and where the floats start."""

    major: int
    minor: int
    revision: int
    header_size: int
    total_floats: int


def _size_text(n: int) -> str:
    """Bytes, with GiB/MiB beside large counts."""
    if n >= 2**30:
        return f"{n} bytes ({n / 2**30:.2f} GiB)"
    if n >= 2**20:
        return f"{n} bytes ({n / 2**20:.1f} MiB)"
    return f"{n} bytes"


def check_darknet_file(model: nn.Module, path: str | Path, layers: list[DarknetConv] | None = None) -> DarknetFile:
    """Check a `.weights` file against `model`'s layers without reading its weights: its size (os.stat) must be
    exactly header + 4 bytes per float the layers hold, and it must look like a Darknet file (not text, not
    empty). Only the first bytes are read, so a wrong 12 GiB file is refused at once. `model` may be on the
    meta device. Raises a one-line EnginesmithError naming the file."""
    p = Path(path)
    if not p.is_file():
        raise EnginesmithError(f"darknet weights not found: {p}")
    size = p.stat().st_size
    layers = layers if layers is not None else darknet_layers(model)
    total_floats = sum(layer.num_floats for layer in layers)
    head = head_bytes(p)
    what = describe(head, size)
    if what is not None:
        raise EnginesmithError(f"{p} is {what}, not Darknet weights; {DARKNET_FORMAT}")
    if size < 12:
        raise EnginesmithError(
            f"truncated darknet weights {p}: expected {12 + 8 + 4 * total_floats} bytes, found {size}; "
            "ran out in the header"
        )
    major, minor, revision = struct.unpack("<3i", head[:12])
    hsize = header_size(major, minor)
    expected = hsize + 4 * total_floats
    if size < hsize:
        raise EnginesmithError(
            f"truncated darknet weights {p}: expected {expected} bytes, found {size}; ran out in the header"
        )
    if size == hsize:
        raise EnginesmithError(
            f"darknet weights {p} hold only the {hsize}-byte header and no weights (expected {expected} bytes); "
            f"{DARKNET_FORMAT}"
        )
    if size < expected:
        avail = max(0, (size - hsize) // 4)
        where = "the header"
        used = 0
        for k, layer in enumerate(layers):
            used += layer.num_floats
            if used > avail:
                where = f"{layer.kind} {k} ({layer.name})"
                break
        raise EnginesmithError(
            f"truncated darknet weights {p}: expected {expected} bytes, found {size}; ran out at {where}"
        )
    if size > expected:
        raise EnginesmithError(
            f"darknet weights {p} do not match the architecture: the file has more weights than the model "
            f"(expected {_size_text(expected)}, found {_size_text(size)}, {size - expected} bytes extra); "
            "wrong file, cfg or num_classes?"
        )
    return DarknetFile(major, minor, revision, hsize, total_floats)


def _read_floats(f: BinaryIO, n: int, p: Path) -> np.ndarray:
    """Exactly n little-endian float32 from the open file (a fresh array); a short read is a one-line error."""
    buf = bytearray(4 * n)
    got = f.readinto(buf)
    if got != len(buf):
        raise EnginesmithError(f"darknet weights {p} ended early while being read (did the file change?); read it again")
    return np.frombuffer(buf, dtype="<f4").astype(np.float32, copy=False)


def load_darknet_weights(model: nn.Module, path: str | Path) -> dict[str, int]:
    """Load a Darknet `.weights` file into `model` (in place); returns the header fields.

    The file's size is checked against the architecture before anything is read (check_darknet_file), then the
    weights are read tensor by tensor (never more than the model holds) and copied in only once all are read,
    so a bad file leaves the model untouched. Raises EnginesmithError for a missing, truncated, oversized, empty
    or text file.
    """
    p = Path(path)
    layers = darknet_layers(model)
    info = check_darknet_file(model, p, layers)
    transpose = _transposed_connected(info.major, info.minor)
    plan: list[tuple[torch.Tensor, bool]] = []  # (destination, transposed) in file order
    for layer in layers:
        if layer.bn is not None:
            plan += [(layer.bn.bias, False), (layer.bn.weight, False), (layer.bn.running_mean, False),
                     (layer.bn.running_var, False)]
        else:
            plan.append((layer.conv.bias, False))
        plan.append((layer.conv.weight, layer.is_connected and transpose))
    try:
        with open(p, "rb") as f:
            header = f.read(info.header_size)
            seen = struct.unpack("<Q" if info.header_size == 20 else "<i", header[12:])[0]
            arrays = [_read_floats(f, t.numel(), p) for t, _ in plan]
    except OSError as e:
        raise EnginesmithError(f"cannot read darknet weights {p}: {e.strerror or e}") from None

    with torch.no_grad():
        for (t, transposed), values in zip(plan, arrays):
            chunk = torch.from_numpy(values)
            t.copy_(chunk.view(t.shape[1], t.shape[0]).t() if transposed else chunk.view_as(t))
    return {"major": info.major, "minor": info.minor, "revision": info.revision, "seen": int(seen)}


def save_darknet_weights(
    model: nn.Module, path: str | Path, seen: int = 0, version: tuple[int, int, int] = (0, 2, 0)
) -> Path:
    """Write `model`'s conv layers as a Darknet `.weights` file (the inverse of load); returns the path."""
    p = Path(path)
    major, minor, revision = version
    parts = [struct.pack("<3i", major, minor, revision)]
    parts.append(struct.pack("<Q" if _seen_is_64bit(major, minor) else "<i", seen))
    with torch.no_grad():
        for layer in darknet_layers(model):
            tensors = (
                [layer.bn.bias, layer.bn.weight, layer.bn.running_mean, layer.bn.running_var]
                if layer.bn is not None
                else [layer.conv.bias]
            )
            weight = layer.conv.weight
            if layer.is_connected and _transposed_connected(major, minor):
                weight = weight.t()
            tensors.append(weight)
            for t in tensors:
                parts.append(t.detach().cpu().to(torch.float32).contiguous().numpy().astype("<f4").tobytes())
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_bytes(b"".join(parts))
    tmp.replace(p)
    return p
