"""Darknet .weights layout (models/weights/darknet.py) against darknet's own C code (src/parser.c, load_weights /
save_weights / load_connected_weights) and files written by hand with struct."""

from __future__ import annotations

import pytest

from enginesmith.models.weights import darknet


def c_header_size(major: int, minor: int) -> int:
    """parser.c: `if ((major*10 + minor) >= 2 && major < 1000 && minor < 1000) fread(seen, sizeof(size_t))`."""
    return 12 + (8 if (major * 10 + minor) >= 2 and major < 1000 and minor < 1000 else 4)


@pytest.mark.parametrize("major,minor", [(0, 0), (0, 1), (0, 2), (1, 0), (0, 5), (999, 0), (1000, 0), (1001, 0),
                                         (0, 999), (0, 1000), (0, 1001), (2, 1000), (1000, 1000)])
def test_header_size_and_transpose_follow_parser_c(major, minor):
    assert darknet.header_size(major, minor) == c_header_size(major, minor)
    # parser.c load_connected_weights: `int transpose = (major > 1000) || (minor > 1000);`
    assert darknet._transposed_connected(major, minor) == ((major > 1000) or (minor > 1000))


# ---- the file layout, written by hand with struct ----------------------------------------------------------

import struct  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from enginesmith.errors import EnginesmithError  # noqa: E402


class Tiny(nn.Module):
    """conv+BN (4 x 3 x 3 x 3), conv with bias (2 x 4 x 1 x 1), connected 8 -> 5 (read when darknet_connected)."""

    def __init__(self, connected: bool = True):
        super().__init__()
        self.darknet_connected = connected
        self.c1 = nn.Conv2d(3, 4, 3, bias=False)
        self.b1 = nn.BatchNorm2d(4)
        self.c2 = nn.Conv2d(4, 2, 1, bias=True)
        self.fc = nn.Linear(8, 5)


# floats per layer in file order (darknet parser.c load_convolutional_weights / load_connected_weights):
# c1: biases(=BN beta) 4, scales(=gamma) 4, rolling_mean 4, rolling_variance 4, weights 108; c2: biases 2, weights 8;
# fc: biases 5, weights 40
CONV_FLOATS = 4 * 4 + 108 + 2 + 8
ALL_FLOATS = CONV_FLOATS + 5 + 40


def weights_file(path, version=(0, 2, 0), seen=12345678901, n=ALL_FLOATS, extra=0):
    major, minor, revision = version
    big_seen = (major * 10 + minor) >= 2 and major < 1000 and minor < 1000
    head = struct.pack("<3i", major, minor, revision) + struct.pack("<q" if big_seen else "<i", seen)
    floats = (np.arange(n + extra, dtype="<f4") * 0.5 - 7).astype("<f4")
    path.write_bytes(head + floats.tobytes())
    return floats


def expect_tensors(floats, transposed=False, connected=True):
    f = torch.from_numpy(floats.astype(np.float32))
    out = {"b1.bias": f[0:4], "b1.weight": f[4:8], "b1.running_mean": f[8:12], "b1.running_var": f[12:16],
           "c1.weight": f[16:124].reshape(4, 3, 3, 3), "c2.bias": f[124:126], "c2.weight": f[126:134].reshape(2, 4, 1, 1)}
    if connected:
        out["fc.bias"] = f[134:139]
        out["fc.weight"] = f[139:179].reshape(8, 5).t() if transposed else f[139:179].reshape(5, 8)
    return out


@pytest.mark.parametrize("version,seen,transposed", [((0, 2, 0), 12345678901, False), ((0, 1, 0), 123456, False),
                                                     ((1, 0, 3), 2**40, False), ((0, 1001, 0), 654321, True),
                                                     ((1001, 0, 0), 7, True)])
def test_load_reads_the_c_layout_and_save_writes_it_back(tmp_path, version, seen, transposed):
    src = tmp_path / "tiny.weights"
    floats = weights_file(src, version, seen)
    model = Tiny()
    header = darknet.load_darknet_weights(model, src)
    assert header == {"major": version[0], "minor": version[1], "revision": version[2], "seen": seen}
    state = model.state_dict()
    for name, t in expect_tensors(floats, transposed).items():
        torch.testing.assert_close(state[name], t, rtol=0, atol=0, msg=name)
    out = darknet.save_darknet_weights(model, tmp_path / "sub" / "copy.weights", seen=seen, version=version)
    assert out == tmp_path / "sub" / "copy.weights" and out.read_bytes() == src.read_bytes()
    assert not (tmp_path / "sub" / "copy.weights.tmp").exists()


def test_save_default_header_and_conv_only_models(tmp_path):
    model = Tiny(connected=False)  # the Linear is not a Darknet layer here
    src = tmp_path / "conv.weights"
    floats = weights_file(src, n=CONV_FLOATS)
    darknet.load_darknet_weights(model, src)
    for name, t in expect_tensors(floats, connected=False).items():
        torch.testing.assert_close(model.state_dict()[name], t, rtol=0, atol=0)
    out = darknet.save_darknet_weights(model, tmp_path / "d.weights")  # default: version 0.2.0, seen 0 (int64)
    data = out.read_bytes()
    assert data[:20] == struct.pack("<3iq", 0, 2, 0, 0) and len(data) == 20 + 4 * CONV_FLOATS
    assert data[20:] == src.read_bytes()[20:]
    assert [layer.name for layer in darknet.darknet_layers(model)] == ["c1", "c2"]
    layers = darknet.darknet_layers(Tiny())
    assert [(layer.name, layer.kind, layer.num_floats, layer.bn is not None) for layer in layers] == [
        ("c1", "conv layer", 124, True), ("c2", "conv layer", 10, False), ("fc", "connected layer", 45, False)]


def test_layers_without_a_darknet_layout_are_refused():
    m = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.ReLU())
    with pytest.raises(EnginesmithError, match="conv layer 0 has neither batch norm nor bias"):
        darknet.darknet_layers(m)
    m = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(5))  # BN of another width: not its BN
    with pytest.raises(EnginesmithError, match="conv layer 0 has neither batch norm nor bias"):
        darknet.darknet_layers(m)
    m = Tiny()
    m.fc = nn.Linear(8, 5, bias=False)
    with pytest.raises(EnginesmithError, match="connected layer fc has no bias, so it has no Darknet layout"):
        darknet.darknet_layers(m)
    with pytest.raises(EnginesmithError, match="Sequential has no convolutional layers to load Darknet weights into"):
        darknet.darknet_layers(nn.Sequential(nn.Linear(2, 2)))


def test_bad_files_are_one_line_errors_and_leave_the_model_untouched(tmp_path):
    model = Tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    p = tmp_path / "w.weights"
    expected = 20 + 4 * ALL_FLOATS
    cases = []  # one float short: runs out in the last (connected) layer; then in c2, in c1; one float extra
    cases.append(rf"truncated darknet weights .*w.weights: expected {expected} bytes, found {expected - 4}; "
                 r"ran out at connected layer 2 \(fc\)")
    cases.append(r"ran out at conv layer 1 \(c2\)")
    cases.append(r"ran out at conv layer 0 \(c1\)")
    cases.append(rf"do not match the architecture: the file has more weights than the model \(expected {expected} bytes, "
                 rf"found {expected + 4} bytes, 4 bytes extra\); wrong file, cfg or num_classes\?")
    msgs = []
    for n, extra in ((ALL_FLOATS - 1, 0), (CONV_FLOATS - 1, 0), (3, 0), (ALL_FLOATS, 1)):
        weights_file(p, n=n, extra=extra)
        with pytest.raises(EnginesmithError) as e:
            darknet.load_darknet_weights(model, p)
        msgs.append(str(e.value))
    for msg, match in zip(msgs, cases):
        assert __import__("re").search(match, msg), (match, msg)
    p.write_bytes(struct.pack("<3i", 0, 2, 0) + b"\1\0\0\0\0\0\0\0")  # the 20-byte header alone
    with pytest.raises(EnginesmithError, match=rf"hold only the 20-byte header and no weights \(expected {expected} bytes\)"):
        darknet.load_darknet_weights(model, p)
    p.write_bytes(struct.pack("<3i", 0, 2, 0) + b"\1\0\0")  # 15 bytes: inside the header
    with pytest.raises(EnginesmithError, match=rf"expected {expected} bytes, found 15; ran out in the header"):
        darknet.load_darknet_weights(model, p)
    p.write_bytes(b"\1\0\0\0\0")
    with pytest.raises(EnginesmithError, match=rf"expected {12 + 8 + 4 * ALL_FLOATS} bytes, found 5; ran out in the header"):
        darknet.load_darknet_weights(model, p)
    p.write_bytes(b"")
    with pytest.raises(EnginesmithError, match=r"is empty \(0 bytes\), not Darknet weights"):
        darknet.load_darknet_weights(model, p)
    with pytest.raises(EnginesmithError, match=r"darknet weights not found: .*nope.weights"):
        darknet.load_darknet_weights(model, tmp_path / "nope.weights")
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)
    big = 2**30 + 5 * 2**20
    assert darknet._size_text(big) == f"{big} bytes (1.00 GiB)" and darknet._size_text(3 * 2**20) == "3145728 bytes (3.0 MiB)"
    assert darknet._size_text(2**20 - 1) == "1048575 bytes" and darknet._size_text(2**20) == "1048576 bytes (1.0 MiB)"
    assert darknet._size_text(2**30) == "1073741824 bytes (1.00 GiB)"
