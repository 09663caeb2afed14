"""Darknet .weights and PyTorch state-dict loading: round trips, byte layout, and every error path."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from enginesmith.errors import EnginesmithError
from enginesmith.models import registry
from enginesmith.models.weights import load_weights
from enginesmith.models.weights.darknet import load_darknet_weights, save_darknet_weights
from enginesmith.models.weights.state_dict import load_state_dict_file


class ToyDarknet(nn.Module):
    """conv-BN-leaky, conv-BN-leaky, detection conv with bias: the three Darknet layer kinds we use."""

    def __init__(self, out: int = 7) -> None:
        super().__init__()
        self.c0 = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.b0 = nn.BatchNorm2d(4)
        self.c1 = nn.Conv2d(4, 6, 1, bias=False)
        self.b1 = nn.BatchNorm2d(6)
        self.head = nn.Conv2d(6, out, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.leaky_relu(self.b0(self.c0(x)), 0.1)
        x = nn.functional.leaky_relu(self.b1(self.c1(x)), 0.1)
        return self.head(x)


def _toy(seed: int, out: int = 7) -> ToyDarknet:
    torch.manual_seed(seed)
    m = ToyDarknet(out)
    with torch.no_grad():  # non-trivial BN statistics so their order matters
        for bn in (m.b0, m.b1):
            bn.weight.uniform_(0.5, 2)
            bn.bias.normal_()
            bn.running_mean.normal_()
            bn.running_var.uniform_(0.5, 2)
    return m.eval()


TOY_FLOATS = (4 * 4 + 4 * 3 * 9) + (4 * 6 + 6 * 4) + (7 + 7 * 6)


def _write_reference_file(path: Path, model: ToyDarknet, major: int, minor: int, seen: int) -> None:
    """Darknet layout written by hand: header, then per layer beta, gamma, mean, var, kernel / bias, kernel."""
    seen_fmt = "<q" if (major * 10 + minor) >= 2 and major < 1000 else "<i"
    chunks = [struct.pack("<3i", major, minor, 0), struct.pack(seen_fmt, seen)]
    for conv, bn in ((model.c0, model.b0), (model.c1, model.b1)):
        for t in (bn.bias, bn.weight, bn.running_mean, bn.running_var, conv.weight):
            chunks.append(t.detach().numpy().astype("<f4").tobytes())
    chunks += [model.head.bias.detach().numpy().astype("<f4").tobytes(), model.head.weight.detach().numpy().astype("<f4").tobytes()]
    path.write_bytes(b"".join(chunks))


@pytest.mark.parametrize("version, header", [((0, 2, 0), 20), ((0, 1, 0), 16), ((1000, 0, 0), 16)])
def test_darknet_reads_the_documented_layout(tmp_path: Path, version, header) -> None:
    src = _toy(1)
    f = tmp_path / "toy.weights"
    _write_reference_file(f, src, version[0], version[1], seen=123456)
    assert f.stat().st_size == header + 4 * TOY_FLOATS
    dst = _toy(2)
    info = load_darknet_weights(dst, f)
    assert info["seen"] == 123456 and (info["major"], info["minor"]) == version[:2]
    for k, v in src.state_dict().items():
        if not k.endswith("num_batches_tracked"):
            assert torch.equal(v, dst.state_dict()[k]), k


@pytest.mark.parametrize("version, header", [((0, 2, 0), 20), ((0, 1, 0), 16)])
def test_darknet_save_matches_reference_and_round_trips(tmp_path: Path, version, header) -> None:
    src = _toy(3)
    ours, ref = tmp_path / "ours.weights", tmp_path / "ref.weights"
    save_darknet_weights(src, ours, seen=2**33 if header == 20 else 77, version=version)
    _write_reference_file(ref, src, version[0], version[1], seen=2**33 if header == 20 else 77)
    assert ours.read_bytes() == ref.read_bytes()
    dst = _toy(4)
    x = torch.rand(2, 3, 8, 8)
    assert not torch.allclose(dst(x), src(x))
    info = load_darknet_weights(dst, ours)
    assert info["seen"] == (2**33 if header == 20 else 77)
    assert torch.equal(dst(x), src(x))


def test_darknet_truncated_names_sizes_and_layer(tmp_path: Path) -> None:
    f = tmp_path / "toy.weights"
    save_darknet_weights(_toy(1), f)
    full = f.read_bytes()
    # cut inside the second conv layer (c1): header 20 + first layer floats + a few
    cut = 20 + 4 * (4 * 4 + 4 * 3 * 9 + 5)
    f.write_bytes(full[:cut])
    dst = _toy(2)
    before = {k: v.clone() for k, v in dst.state_dict().items()}
    with pytest.raises(EnginesmithError) as e:
        load_darknet_weights(dst, f)
    msg = str(e.value)
    assert "truncated" in msg and f"expected {len(full)} bytes" in msg and f"found {cut}" in msg
    assert "conv layer 1 (c1)" in msg and "\n" not in msg
    for k, v in dst.state_dict().items():  # nothing was half-loaded
        assert torch.equal(v, before[k])


def test_darknet_trailing_data_is_a_mismatch(tmp_path: Path) -> None:
    f = tmp_path / "toy.weights"
    save_darknet_weights(_toy(1, out=9), f)  # more classes than the model we load into
    with pytest.raises(EnginesmithError, match="more weights than the model.*num_classes"):
        load_darknet_weights(_toy(2, out=7), f)


def test_darknet_missing_file(tmp_path: Path) -> None:
    with pytest.raises(EnginesmithError, match="not found"):
        load_darknet_weights(_toy(1), tmp_path / "nope.weights")


def test_yolov3_darknet_round_trip(tmp_path: Path) -> None:
    spec = registry.get("yolov3")
    a = spec.create(num_classes=2, input_size=(64, 64), seed=0)
    f = tmp_path / "yolov3.weights"
    save_darknet_weights(a, f, seen=32013312)
    b = spec.create(num_classes=2, input_size=(64, 64), seed=1)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert not torch.allclose(a(x)[1], b(x)[1])
        spec.load_weights(b, f)
        for ya, yb in zip(a(x), b(x)):
            assert torch.equal(ya, yb)


# ----------------------------------------------------------------------------------- state dicts
def _lenet(seed: int, num_classes: int = 10) -> nn.Module:
    return registry.get("lenet5").create(num_classes=num_classes, seed=seed)


def test_state_dict_round_trip_and_wrappers(tmp_path: Path) -> None:
    src = _lenet(0)
    x = torch.rand(2, 1, 32, 32)
    plain, wrapped = tmp_path / "plain.pt", tmp_path / "ckpt.pth"
    torch.save(src.state_dict(), plain)
    torch.save({"epoch": 3, "state_dict": {"module." + k: v for k, v in src.state_dict().items()}}, wrapped)
    for f in (plain, wrapped):
        dst = _lenet(1)
        assert not torch.allclose(dst(x), src(x))
        registry.get("lenet5").load_weights(dst, f)
        assert torch.equal(dst(x), src(x))
    model_wrapped = tmp_path / "m.pt"
    torch.save({"model": src.state_dict()}, model_wrapped)
    dst = _lenet(2)
    load_state_dict_file(dst, model_wrapped)
    assert torch.equal(dst(x), src(x))


def test_state_dict_missing_and_unexpected_keys(tmp_path: Path) -> None:
    sd = _lenet(0).state_dict()
    sd.pop("features.0.weight")
    sd["extra.layer.weight"] = torch.zeros(3)
    f = tmp_path / "bad.pt"
    torch.save(sd, f)
    with pytest.raises(EnginesmithError) as e:
        load_state_dict_file(_lenet(1), f)
    msg = str(e.value)
    assert "missing keys: features.0.weight" in msg and "unexpected keys: extra.layer.weight" in msg
    assert "\n" not in msg


def test_state_dict_lists_at_most_five_names(tmp_path: Path) -> None:
    f = tmp_path / "many.pt"
    torch.save({f"w{i}": torch.zeros(1) for i in range(12)}, f)
    with pytest.raises(EnginesmithError) as e:
        load_state_dict_file(_lenet(0), f)
    msg = str(e.value)
    assert "12 unexpected keys" in msg and "w4" in msg and "w5" not in msg and "(+7 more)" in msg


def test_state_dict_shape_mismatch_names_key_and_shapes(tmp_path: Path) -> None:
    f = tmp_path / "five.pt"
    torch.save(_lenet(0, num_classes=5).state_dict(), f)
    with pytest.raises(EnginesmithError) as e:
        load_state_dict_file(_lenet(1), f)
    msg = str(e.value)
    assert "classifier.3.weight" in msg and "(5, 84)" in msg and "(10, 84)" in msg


@pytest.mark.parametrize("content", [b"this is not a checkpoint at all", b""])
def test_state_dict_garbage_file(tmp_path: Path, content: bytes) -> None:
    f = tmp_path / "garbage.pt"
    f.write_bytes(content)
    with pytest.raises(EnginesmithError, match="cannot read .* as a PyTorch checkpoint"):
        load_state_dict_file(_lenet(0), f)


def test_state_dict_truncated_zip(tmp_path: Path) -> None:
    f = tmp_path / "cut.pt"
    torch.save(_lenet(0).state_dict(), f)
    f.write_bytes(f.read_bytes()[:1000])
    with pytest.raises(EnginesmithError, match="cannot read"):
        load_state_dict_file(_lenet(0), f)


def test_state_dict_refuses_pickled_code(tmp_path: Path) -> None:
    f = tmp_path / "module.pt"
    torch.save(_lenet(0), f)  # a whole pickled module, not a state dict
    with pytest.raises(EnginesmithError, match="cannot read"):
        load_state_dict_file(_lenet(0), f)


def test_load_weights_dispatch(tmp_path: Path) -> None:
    with pytest.raises(EnginesmithError, match="not found"):
        load_weights(_lenet(0), tmp_path / "missing.pt")
    with pytest.raises(EnginesmithError, match="not a file"):
        load_weights(_lenet(0), tmp_path)
    dk = tmp_path / "lenet.weights"
    dk.write_bytes(b"\0" * 64)
    with pytest.raises(EnginesmithError, match="not a Darknet model"):
        registry.get("lenet5").load_weights(_lenet(0), dk)
    # darknet_ok routes .weights to the Darknet reader
    toy = tmp_path / "toy.weights"
    save_darknet_weights(_toy(5), toy)
    dst = _toy(6)
    load_weights(dst, toy, darknet_ok=True)
    assert torch.equal(dst.head.weight, _toy(5).head.weight)
    np.testing.assert_array_equal(dst.b0.running_var.numpy(), _toy(5).b0.running_var.numpy())


# ----------------------------------------------------------------------------------- hostile files
def _yolo_tiny_meta():
    from enginesmith.models.memory import meta_model

    spec = registry.get("yolov3-tiny-256")
    return spec, meta_model(spec, spec.num_classes, spec.input_size)


def test_darknet_size_checked_before_reading_a_12_gib_file(tmp_path: Path) -> None:
    """A sparse 12 GiB file (no disk used): refused from its size alone, fast, both by the pre-check on a meta model
    and by the loader, which therefore never reads it (reading 12 GiB would take far longer and MemoryError)."""
    import os
    import time

    from enginesmith.models.weights.darknet import check_darknet_file

    f = tmp_path / "huge.weights"
    with open(f, "wb") as fh:
        fh.write(struct.pack("<3iq", 0, 2, 0, 0))
        fh.truncate(12 * 2**30)
    assert os.stat(f).st_size == 12 * 2**30
    spec, meta = _yolo_tiny_meta()
    t0 = time.perf_counter()
    with pytest.raises(EnginesmithError) as pre:
        check_darknet_file(meta, f)
    model = spec.create()
    with pytest.raises(EnginesmithError) as load:
        spec.load_weights(model, f)
    assert time.perf_counter() - t0 < 30  # reading the file would be minutes of I/O, not a stat
    for e in (pre, load):
        msg = str(e.value)
        assert str(f) in msg and "more weights than the model" in msg and "12.00 GiB" in msg and "\n" not in msg


@pytest.mark.parametrize("content, words", [
    (b"", "is empty (0 bytes), not Darknet weights"),
    (b"0.25 0.5 -1.0\n0.75 1.0 2.0\n" * 10, "is a text file (it starts with '0.25 0.5 -1.0'), not Darknet weights"),
    (struct.pack("<3iq", 0, 2, 0, 123), "hold only the 20-byte header and no weights"),
])
def test_darknet_empty_text_and_header_only_files(tmp_path: Path, content: bytes, words: str) -> None:
    f = tmp_path / "bad.weights"
    f.write_bytes(content)
    dst = _toy(1)
    with pytest.raises(EnginesmithError) as e:
        load_weights(dst, f, darknet_ok=True)
    msg = str(e.value)
    assert words in msg and str(f) in msg and "\n" not in msg
    assert "a Darknet .weights file is binary" in msg  # says what the file should have been


def test_darknet_streaming_read_is_exact(tmp_path: Path) -> None:
    """The streamed reader gives the same tensors as the documented layout, for the 16-byte header too."""
    src = _toy(7)
    f = tmp_path / "toy.weights"
    _write_reference_file(f, src, 0, 1, seen=9)
    dst = _toy(8)
    assert load_darknet_weights(dst, f)["seen"] == 9
    for k, v in src.state_dict().items():
        assert torch.equal(v, dst.state_dict()[k]), k


def test_text_file_as_state_dict_names_the_file_not_a_pickle_error(tmp_path: Path) -> None:
    """A text of numbers: '0' is pickle's POP opcode, so torch.load says 'IndexError: pop from empty list'."""
    f = tmp_path / "weights.pt"
    f.write_text("0.1 0.2 0.3\n0.4 0.5 0.6\n")
    with pytest.raises(EnginesmithError) as e:
        load_state_dict_file(_lenet(0), f)
    msg = str(e.value)
    assert "text file" in msg and str(f) in msg and "IndexError" not in msg and "pop from empty list" not in msg
    assert "torch.save(model.state_dict(), path)" in msg


def test_unpickling_refusal_never_advises_weights_only_false(tmp_path: Path) -> None:
    from enginesmith.models.weights import check_weights_file

    f = tmp_path / "whole_model.pt"
    torch.save(_lenet(0), f)  # the whole module pickled: loading it would run code
    for check in (lambda: load_state_dict_file(_lenet(0), f),
                  lambda: check_weights_file(_lenet(0), f, registry.get("lenet5").load_weights)):
        with pytest.raises(EnginesmithError) as e:
            check()
        msg = str(e.value)
        assert "weights_only" not in msg and "trust" not in msg.lower()
        assert "pickled Python objects" in msg and "GLOBAL enginesmith.models.lenet" in msg and str(f) in msg
        assert "torch.save(model.state_dict(), path) (tensors only)" in msg and "\n" not in msg


def test_check_weights_file_is_lazy_and_strict(tmp_path: Path) -> None:
    """The pre-check maps a zip checkpoint (its tensors unread) and still finds a shape mismatch, on a meta model."""
    from enginesmith.models.memory import meta_model
    from enginesmith.models.weights import check_weights_file

    spec = registry.get("lenet5")
    meta = meta_model(spec, 10, (32, 32))
    good, five = tmp_path / "good.pt", tmp_path / "five.pt"
    torch.save(_lenet(0).state_dict(), good)
    torch.save(_lenet(0, num_classes=5).state_dict(), five)
    check_weights_file(meta, good, spec.load_weights)
    with pytest.raises(EnginesmithError, match=r"classifier.3.weight has shape \(5, 84\)"):
        check_weights_file(meta, five, spec.load_weights)
    dk = tmp_path / "x.weights"
    dk.write_bytes(b"\0" * 64)
    with pytest.raises(EnginesmithError, match="not a Darknet model"):
        check_weights_file(meta, dk, spec.load_weights)


# ----------------------------------------------------------------------------------- checkpoint metadata
@pytest.mark.parametrize("field, value, words", [
    ("num_classes", "ten", "field 'num_classes' is 'ten' (str)"),
    ("num_classes", 0, "field 'num_classes' is 0 (int)"),
    ("num_classes", True, "field 'num_classes' is True (bool)"),
    ("class_names", "cat,dog", "field 'class_names' is 'cat,dog' (str)"),
    ("class_names", ["cat", 3], "field 'class_names'"),
    ("input_size", [416], "field 'input_size' is [416] (list)"),
    ("input_size", [416, -1], "field 'input_size'"),
    ("input_size", [416.0, 416.0], "field 'input_size'"),
])
def test_checkpoint_metadata_fields(tmp_path: Path, field: str, value, words: str) -> None:
    from enginesmith.models.weights.checkpoint_info import read_checkpoint_info

    f = tmp_path / "ckpt.pt"
    torch.save({"model": "lenet5", "state_dict": _lenet(0).state_dict(), field: value}, f)
    with pytest.raises(EnginesmithError) as e:
        read_checkpoint_info(f)
    msg = str(e.value)
    assert words in msg and str(f) in msg and "\n" not in msg and "re-save the checkpoint" in msg


def test_checkpoint_metadata_good_and_inconsistent(tmp_path: Path) -> None:
    from enginesmith.models.weights.checkpoint_info import read_checkpoint_info

    f = tmp_path / "ckpt.pt"
    torch.save({"model": "lenet5", "state_dict": _lenet(0, 3).state_dict(), "num_classes": 3,
                "class_names": ["a", "b", "c"], "input_size": [32, 32]}, f)
    assert read_checkpoint_info(f) == {"model": "lenet5", "num_classes": 3, "class_names": ["a", "b", "c"],
                                       "input_size": (32, 32)}
    torch.save({"state_dict": _lenet(0, 3).state_dict(), "num_classes": 3, "class_names": ["a", "b"]}, f)
    with pytest.raises(EnginesmithError, match="lists 2 names but 'num_classes' is 3"):
        read_checkpoint_info(f)
