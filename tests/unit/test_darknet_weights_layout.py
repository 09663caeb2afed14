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


# ---- edges of the header, the size check and the writer (written with numpy, not with enginesmith) --------

def np_weights_file(path, version, seen, seen_dtype, floats):
    """parser.c's layout written with numpy: int32 major, minor, revision, then seen, then the float32 values."""
    path.write_bytes(np.array(version, dtype="<i4").tobytes() + np.array([seen], dtype=seen_dtype).tobytes()
                     + np.asarray(floats, dtype="<f4").tobytes())


@pytest.mark.parametrize("version,seen_dtype,hsize", [((-1, 12, -3), "<i8", 20), ((-1, 11, -3), "<i4", 16)])
def test_negative_version_fields_are_int32_and_choose_seen_by_parser_c(tmp_path, version, seen_dtype, hsize):
    # parser.c reads major/minor/revision with fread(&x, sizeof(int)): signed. major -1, minor 12: -10 + 12 = 2 >= 2,
    # so seen is a size_t (8 bytes); minor 11: -10 + 11 = 1, so seen is an int (4 bytes)
    assert darknet.header_size(version[0], version[1]) == hsize
    floats = np.arange(ALL_FLOATS, dtype="<f4") * 0.25 + 1
    src = tmp_path / "neg.weights"
    np_weights_file(src, version, 77, seen_dtype, floats)
    assert src.stat().st_size == hsize + 4 * 179
    model = Tiny()
    info = darknet.check_darknet_file(model, src)
    assert info == darknet.DarknetFile(-1, version[1], -3, hsize, 179)
    assert darknet.load_darknet_weights(model, src) == {"major": -1, "minor": version[1], "revision": -3, "seen": 77}
    out = darknet.save_darknet_weights(model, tmp_path / "neg_copy.weights", seen=77, version=version)
    assert out.read_bytes() == src.read_bytes()


def test_check_uses_the_layers_it_is_given(tmp_path):
    model = Tiny()
    first = darknet.darknet_layers(model)[:1]  # c1 + b1 only: 4 * 4 + 108 = 124 floats
    p = tmp_path / "c1.weights"
    np_weights_file(p, (0, 2, 0), 5, "<i8", np.ones(124))
    assert darknet.check_darknet_file(model, p, first) == darknet.DarknetFile(0, 2, 0, 20, 124)
    with pytest.raises(EnginesmithError, match=r"expected 736 bytes, found 516; ran out at conv layer 1 \(c2\)"):
        darknet.check_darknet_file(model, p)  # all of Tiny: 20 + 4 * 179 = 736 bytes


def test_truncated_exactly_at_a_layer_boundary_names_the_next_layer(tmp_path):
    p = tmp_path / "w.weights"
    # all 124 floats of c1, none of c2: the file runs out at c2 (layer 1), not in c1
    np_weights_file(p, (0, 2, 0), 0, "<i8", np.zeros(124))
    with pytest.raises(EnginesmithError, match=r"expected 736 bytes, found 516; ran out at conv layer 1 \(c2\)$"):
        darknet.check_darknet_file(Tiny(), p)
    # all of c1 and c2 (134 floats): runs out at the connected layer
    np_weights_file(p, (0, 2, 0), 0, "<i8", np.zeros(134))
    with pytest.raises(EnginesmithError, match=r"found 556; ran out at connected layer 2 \(fc\)$"):
        darknet.check_darknet_file(Tiny(), p)


class OneBias(nn.Module):
    """A connected layer with no inputs (1 float: its bias) before a 2 -> 3 connected layer (9 floats)."""

    darknet_connected = True

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(0, 1)
        self.b = nn.Linear(2, 3)


@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors")
def test_fewer_than_four_bytes_after_the_header_run_out_in_the_first_layer(tmp_path):
    p = tmp_path / "w.weights"
    p.write_bytes(struct.pack("<3iq", 0, 2, 0, 0) + b"\0\0")  # 2 bytes: not even the first float
    with pytest.raises(EnginesmithError, match=r"expected 60 bytes, found 22; ran out at connected layer 0 \(a\)$"):
        darknet.check_darknet_file(OneBias(), p)
    p.write_bytes(struct.pack("<3iq", 0, 2, 0, 0) + b"\0\0\0\0\0")  # a's bias, then 1 byte of b
    with pytest.raises(EnginesmithError, match=r"expected 60 bytes, found 25; ran out at connected layer 1 \(b\)$"):
        darknet.check_darknet_file(OneBias(), p)


def test_a_12_byte_file_runs_out_in_the_header_of_its_own_version(tmp_path):
    p = tmp_path / "w.weights"
    p.write_bytes(struct.pack("<3i", 0, 1, 0))  # version 0.1: 16-byte header, 4 * 179 floats -> 732 bytes
    with pytest.raises(EnginesmithError, match=r"expected 732 bytes, found 12; ran out in the header$"):
        darknet.check_darknet_file(Tiny(), p)
    p.write_bytes(struct.pack("<3i", 0, 2, 0))  # version 0.2: 20-byte header -> 736 bytes
    with pytest.raises(EnginesmithError, match=r"expected 736 bytes, found 12; ran out in the header$"):
        darknet.check_darknet_file(Tiny(), p)


def test_conv_then_bn_as_the_last_modules_is_a_conv_bn_layer():
    bn = nn.BatchNorm2d(4)
    layers = darknet.darknet_layers(nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), bn))
    assert len(layers) == 1 and layers[0].bn is bn and layers[0].num_floats == 4 * 4 + 108
    with pytest.raises(EnginesmithError) as e:
        darknet.darknet_layers(nn.Sequential(nn.Conv2d(3, 4, 3, bias=False)))
    assert str(e.value) == ("conv layer 0 has neither batch norm nor bias, so it has no Darknet layout; "
                            "this model cannot use .weights files")


def test_read_floats_returns_float32_without_a_second_copy(tmp_path):
    import io

    vals = np.array([1.5, -2.25, 3e-8, 1e30], dtype="<f4")
    out = darknet._read_floats(io.BytesIO(vals.tobytes() + b"rest"), 4, tmp_path / "x.weights")
    assert out.dtype == np.float32 and np.array_equal(out, vals)
    assert not out.flags.owndata and out.flags.writeable  # a view of the buffer read into: no second copy
    with pytest.raises(EnginesmithError) as e:
        darknet._read_floats(io.BytesIO(vals.tobytes()), 5, tmp_path / "x.weights")
    assert str(e.value) == (f"darknet weights {tmp_path / 'x.weights'} ended early while being read "
                            "(did the file change?); read it again")


def test_a_file_that_changes_after_the_check_is_a_one_line_error(tmp_path, monkeypatch):
    real_check = darknet.check_darknet_file
    p = tmp_path / "w.weights"
    weights_file(p)

    def shrink_after_check(model, path, layers=None):
        info = real_check(model, path, layers)
        with open(path, "r+b") as f:
            f.truncate(20 + 4 * 10)  # someone rewrites the file: 10 floats left
        return info

    monkeypatch.setattr(darknet, "check_darknet_file", shrink_after_check)
    model = Tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(EnginesmithError) as e:
        darknet.load_darknet_weights(model, p)
    assert str(e.value) == f"darknet weights {p} ended early while being read (did the file change?); read it again"
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)

    def directory_after_check(model, path, layers=None):
        info = real_check(model, path, layers)
        path.unlink()
        path.mkdir()  # open(path, "rb") now fails with IsADirectoryError (strerror "Is a directory")
        return info

    weights_file(p)
    monkeypatch.setattr(darknet, "check_darknet_file", directory_after_check)
    with pytest.raises(EnginesmithError) as e:
        darknet.load_darknet_weights(model, p)
    assert str(e.value) == f"cannot read darknet weights {p}: Is a directory"


def test_save_converts_other_dtypes_to_float32_and_creates_parent_folders(tmp_path):
    src = tmp_path / "w.weights"
    weights_file(src)  # values -7, -6.5, ..., 82: exact in bfloat16
    model = Tiny()
    darknet.load_darknet_weights(model, src)
    model = model.to(torch.bfloat16)  # tensor.numpy() refuses bfloat16: the writer must go through float32
    dst = tmp_path / "a" / "b" / "w.weights"
    stale = tmp_path / "a" / "b" / "w.weights.tmp"
    darknet.save_darknet_weights(model, dst, seen=12345678901)
    assert dst.read_bytes() == src.read_bytes()
    stale.write_bytes(b"left by an interrupted save")
    darknet.save_darknet_weights(model, dst, seen=12345678901)
    assert dst.read_bytes() == src.read_bytes() and not stale.exists()  # the partial file is replaced, then moved


def test_32_bit_seen_is_a_c_int(tmp_path):
    # pjreddie parser.c (the `major < 1000` rule followed here): `int iseen = 0; fread(&iseen, sizeof(int), 1, fp);`
    src = tmp_path / "w.weights"
    np_weights_file(src, (0, 1, 0), -1, "<i4", np.arange(ALL_FLOATS))
    assert src.read_bytes()[12:16] == b"\xff\xff\xff\xff"
    model = Tiny()
    assert darknet.load_darknet_weights(model, src)["seen"] == -1
    out = darknet.save_darknet_weights(model, tmp_path / "copy.weights", seen=-1, version=(0, 1, 0))
    assert out.read_bytes() == src.read_bytes()


# parser.c reads and writes a 64-bit seen as size_t (unsigned; AlexeyAB: uint64_t): seen >= 2**63 must load as itself


def test_64_bit_seen_is_unsigned_on_load(tmp_path):
    src = tmp_path / "w.weights"
    np_weights_file(src, (0, 2, 0), 2**63, "<u8", np.arange(ALL_FLOATS))
    assert darknet.load_darknet_weights(Tiny(), src)["seen"] == 2**63


def test_64_bit_seen_is_unsigned_on_save(tmp_path):
    out = darknet.save_darknet_weights(Tiny(), tmp_path / "w.weights", seen=2**64 - 1)
    assert out.read_bytes()[12:20] == b"\xff" * 8
