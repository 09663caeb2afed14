"""The cfg parser and network builder (models/darknet_plan.py, darknet_net.py) on broken cfgs: each error is one line
naming the file and the line, and no mutation of a real cfg raises anything but EnginesmithError.

The fuzz takes the embedded official cfgs (yolov3, yolov3-tiny, yolo-voc, Fast YOLO) with a 64x64 [net], applies 1-3
random mutations (delete / duplicate / swap lines, a number made random, negative, huge or not a number, '=' dropped,
a garbage section inserted, the text truncated) with a fixed seed, then plans the cfg and, when that succeeds, builds
and runs the network on PyTorch's meta device (shapes only, so any size is cheap).
"""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest
import torch

from enginesmith.errors import EnginesmithError
from enginesmith.models.darknet_net import build_cfg_net, cfg_spec
from enginesmith.models.darknet_plan import plan_cfg, read_cfg_source
from enginesmith.models.weights.darknet_cfg import (TINY_YOLOV1_CFG, YOLOV2_VOC_CFG, YOLOV3_CFG,
                                                    YOLOV3_TINY_CFG)

SEEDS = 300
FILE = "fuzz.cfg"


def _small(text: str) -> str:
    return re.sub(r"(width|height)=\d+", r"\1=64", text, count=2)


BASES = [_small(t) for t in (YOLOV3_TINY_CFG, YOLOV2_VOC_CFG, YOLOV3_CFG, TINY_YOLOV1_CFG)]
GARBAGE = ["[foo]", "[connected]\noutput=10", "[]", "[convolutional", "=", "filters=", "[yolo]\nmask=0",
           "[route]\nlayers=", "[shortcut]\nfrom=99", "\x00\x01", "[maxpool]\nsize=9\nstride=0", "ü=ß", "[net]"]
NUMBERS = ["0", "-1", "-416", "999999999", "99999999999999999999", "1e9", "abc", "", "3.5", "nan", "inf", "0x10",
           "1,2", " ", "٣"]


def mutate(text: str, rng: random.Random) -> str:
    lines = text.split("\n")
    for _ in range(rng.randint(1, 3)):
        op = rng.randrange(7)
        i, j = rng.randrange(len(lines)), rng.randrange(len(lines))
        if op == 0:
            del lines[i]
        elif op == 1:
            lines.insert(i, lines[i])
        elif op == 2:
            lines[i], lines[j] = lines[j], lines[i]
        elif op == 3:
            numbered = [k for k, line in enumerate(lines) if re.search(r"\d", line)]
            k = rng.choice(numbered)
            lines[k] = re.sub(r"-?\d+", lambda _: rng.choice(NUMBERS + [str(rng.randint(-5, 2000))]), lines[k], count=1)
        elif op == 4:
            lines[i] = lines[i].replace("=", " ", 1)
        elif op == 5:
            lines.insert(i, rng.choice(GARBAGE))
        else:
            lines = lines[: max(1, i)]
        if not lines:
            lines = [""]
    return "\n".join(lines)


def _plan_and_build(text: str) -> None:
    plan = plan_cfg(text, FILE)
    with torch.device("meta"):
        model = build_cfg_net(text, FILE, plan.num_classes, plan.input_size)
        boxes, scores = model(torch.zeros(1, 3, *plan.input_size))
    assert tuple(boxes.shape) == (1, plan.num_boxes, 4) and tuple(scores.shape) == (1, plan.num_boxes, plan.num_classes)


def test_fuzzed_cfgs_build_or_fail_in_one_line() -> None:
    rng = random.Random(20261205)
    built = failed = 0
    for case in range(SEEDS):
        text = mutate(BASES[case % len(BASES)], rng)
        try:
            _plan_and_build(text)
            built += 1
        except EnginesmithError as e:
            msg = str(e)
            assert "\n" not in msg and FILE in msg, (case, msg)
            failed += 1
        except Exception as e:  # noqa: BLE001 - the point of the test
            pytest.fail(f"case {case}: {type(e).__name__}: {e}\n--- cfg ---\n{text}")
    assert built > 20 and failed > 50, (built, failed)  # both paths were exercised


def test_the_unmutated_cfgs_build() -> None:
    for text in BASES[:3]:
        _plan_and_build(text)


# ---------------------------------------------------------------------------------------------- one-line errors
def _line_of(text: str, needle: str, nth: int = 1) -> int:
    lines = text.split("\n")
    hits = [n for n, line in enumerate(lines, start=1) if line.strip() == needle]
    return hits[nth - 1]


TINY = _small(YOLOV3_TINY_CFG)
ERRORS = [
    # (edit: old -> new, the line to find in the edited text, nth occurrence, message fragment)
    (("[upsample]", "[foo]"), "[foo]", 1, "[foo] is not a Darknet layer enginesmith builds; supported: convolutional"),
    (("filters=32", "filters=abc"), "filters=abc", 1, "filters=abc is not an integer"),
    (("filters=32", "filters=-4"), "filters=-4", 1, "filters=-4 is out of range"),
    (("layers=-1, 8", "layers=-1, 30"), "layers=-1, 30", 1, "layers=30 points at layer 30"),
    (("layers=-4", "layers=-40"), "layers=-40", 1, "layers=-40 points at layer -23"),
    (("mask = 0,1,2", "mask = 0,1,6"), "mask = 0,1,6", 1, "mask index 6 is beyond the num=6 anchors"),
    (("classes=80", "classes=2"), "[yolo]", 1, "needs 3*(2+5) = 21 channels in, the layer before gives 255 (filters=255 on line"),
    (("filters=1024", "filters=1024\ndilation=2"), "dilation=2", 1, "option 'dilation' is not one enginesmith reads"),
    (("activation=leaky", "activation=elu"), "activation=elu", 1, "activation=elu is not one enginesmith builds"),
    (("filters=16", "filters 16"), "filters 16", 1, "expected key=value"),
    (("layers=-1, 8", "layers=-1, 6"), "layers=-1, 6", 1, "[route] inputs differ in size (layer 19 is 4x4, layer 6 is 8x8)"),
    (("anchors = 10,14,  23,27,  37,58,  81,82,  135,169,  344,319", "anchors = 10,14"),
     "anchors = 10,14", 1, "num=6 needs 12 anchor values"),
]


@pytest.mark.parametrize("edit, needle, nth, fragment", ERRORS, ids=[e[3][:30] for e in ERRORS])
def test_errors_name_the_file_and_line(edit: tuple[str, str], needle: str, nth: int, fragment: str) -> None:
    text = TINY.replace(edit[0], edit[1], 1)
    assert text != TINY
    with pytest.raises(EnginesmithError) as e:
        plan_cfg(text, "yolov3-custom.cfg")
    msg = str(e.value)
    assert msg.startswith(f"yolov3-custom.cfg line {_line_of(text, needle, nth)}: "), msg
    assert fragment in msg and "\n" not in msg, msg


def test_shortcut_shape_mismatch_names_its_line() -> None:
    text = _small(YOLOV3_CFG).replace("[shortcut]\nfrom=-3", "[shortcut]\nfrom=-4", 1)
    with pytest.raises(EnginesmithError, match=r"line \d+: \[shortcut\] adds layer 0 \(32x64x64\) to layer 3 "
                                               r"\(64x32x32\): shapes must match"):
        plan_cfg(text, FILE)


def test_a_cfg_without_heads_and_an_input_size_it_cannot_take() -> None:
    with pytest.raises(EnginesmithError, match="has no \\[yolo\\] or \\[region\\] layer"):
        plan_cfg("[net]\nwidth=32\nheight=32\n[convolutional]\nfilters=4\nsize=3\n", FILE)
    with pytest.raises(EnginesmithError, match=r"line \d+: \[route\] inputs differ in size"):
        plan_cfg(TINY, FILE, (48, 48))  # the x2 upsample of 2x2 does not meet layer 8's 3x3


def test_class_count_and_input_size_come_from_the_cfg(tmp_path: Path) -> None:
    cfg = tmp_path / "two.cfg"
    cfg.write_text(TINY.replace("classes=80", "classes=2").replace("filters=255", "filters=21"))
    spec = cfg_spec(read_cfg_source(cfg))
    assert (spec.num_classes, spec.input_size, spec.class_names) == (2, (64, 64), ("0", "1"))
    assert spec.definition["file"] == "two.cfg" and len(spec.definition["sha256"]) == 64
    with pytest.raises(EnginesmithError, match="defines 2 classes .* drop --num-classes"):
        spec.create(num_classes=5)
    names = tmp_path / "two.names"
    names.write_text("cat\ndog\n")
    assert cfg_spec(read_cfg_source(cfg), names).class_names == ("cat", "dog")
    names.write_text("cat\n")
    with pytest.raises(EnginesmithError, match="has 1 class names, but the cfg has classes=2"):
        cfg_spec(read_cfg_source(cfg), names)


def test_oversized_and_binary_cfg_files_are_one_line_errors(tmp_path):
    from enginesmith.errors import EnginesmithError
    from enginesmith.models.darknet_plan import MAX_CFG_BYTES, read_cfg_source

    big = tmp_path / "big.cfg"
    big.write_bytes(b"[net]\n" + b"#" * MAX_CFG_BYTES)
    with pytest.raises(EnginesmithError, match=r"big\.cfg is over \d+ bytes, not a Darknet cfg"):
        read_cfg_source(big)
    binary = tmp_path / "bin.cfg"
    binary.write_bytes(b"[net]\n\0\0")
    with pytest.raises(EnginesmithError, match="is binary, not a Darknet cfg"):
        read_cfg_source(binary)
    with pytest.raises(EnginesmithError, match="darknet cfg not found"):
        read_cfg_source(tmp_path / "missing.cfg")
