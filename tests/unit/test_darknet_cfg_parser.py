"""darknet_cfg.py's parser and its cfg-text helpers, against darknet's own rules and published cfg text.

Expected values come from darknet itself, not from enginesmith: pjreddie/darknet src/parser.c `read_cfg` (a line
starting with '[' opens a section, '\\0' '#' ';' lines are skipped, any other line is `read_option`: split at the
FIRST '=', key and value stripped), `string_to_layer_type` ("[conv]" and "[convolutional]", "[conn]" and
"[connected]", "[net]" and "[network]" are the same type) and the blocks of cfg/yolov3.cfg written out by hand.
"""

from __future__ import annotations

import pytest
from torch import nn

from enginesmith.errors import EnginesmithError
from enginesmith.models.weights import darknet_cfg as dc
from enginesmith.models.weights.darknet_cfg import (CfgSection, WeightLayer, cfg_weight_layers, check_model_against_cfg,
                                                    parse_cfg, read_cfg)
from reference_helpers import cfg_sections


# ---------------------------------------------------------------------------------------------------- parse_cfg
def test_sections_options_and_line_numbers_as_written():
    text = "# comment\n[net]\nwidth=416\n\n; another\n  [convolutional]  \n filters = 32 \nsize=3\n"
    secs = parse_cfg(text)
    assert [(s.type, s.options, s.line) for s in secs] == [
        ("net", {"width": "416"}, 2),
        ("convolutional", {"filters": "32", "size": "3"}, 6),
    ]


def test_network_is_an_alias_of_net():
    assert [s.type for s in parse_cfg("[network]\nbatch=1\n[conv]\nfilters=2\n")] == ["network", "conv"]


def test_value_is_split_at_the_first_equals_sign():
    (net,) = parse_cfg("[net]\npolicy=a=b\n")
    assert net.options == {"policy": "a=b"}


def test_a_later_key_overrides_an_earlier_one():
    (net,) = parse_cfg("[net]\nwidth=1\nwidth=2\n")
    assert net.options == {"width": "2"}


def test_section_name_is_stripped_inside_brackets():
    secs = parse_cfg("[net]\n[ maxpool ]\nsize=2\n")
    assert secs[1].type == "maxpool" and secs[1].options == {"size": "2"}


@pytest.mark.parametrize("text, where", [
    ("[net]\n[convolutional\n", "line 2"),     # no closing bracket
    ("[net]\n[]\n", "line 2"),                  # too short: no name
    ("[net]\nfilters\n", "line 2"),             # no '='
    ("width=1\n[net]\n", "line 1"),             # option before any section
])
def test_malformed_lines_name_their_line(text, where):
    with pytest.raises(EnginesmithError, match=where):
        parse_cfg(text)


def test_a_three_character_header_is_a_section():
    secs = parse_cfg("[net]\n[x]\n")
    assert [s.type for s in secs] == ["net", "x"]


@pytest.mark.parametrize("text", ["", "# only a comment\n", "[convolutional]\nfilters=1\n"])
def test_a_cfg_must_start_with_net(text):
    with pytest.raises(EnginesmithError, match=r"\[net\]"):
        parse_cfg(text)


def test_comment_and_blank_lines_anywhere():
    secs = parse_cfg("\n   \n#x=1\n[net]\n;y=2\n  # z=3\nw=4\n")
    assert len(secs) == 1 and secs[0].options == {"w": "4"}


# ---------------------------------------------------------------------------------------------------- CfgSection
def test_section_getters():
    s = CfgSection("yolo", {"mask": "0, 1,2", "anchors": "10,13,  16,30,", "classes": "80", "x": ""})
    assert s.get("classes") == "80" and s.get("none") is None and s.get("none", "d") == "d"
    assert s.getint("classes") == 80 and s.getint("none") == 0 and s.getint("none", 7) == 7
    assert s.getints("mask") == [0, 1, 2] and s.getints("none") == [] and s.getints("x") == []
    assert s.getfloats("anchors") == [10.0, 13.0, 16.0, 30.0] and s.getfloats("none") == []
    assert CfgSection("net").options == {} and CfgSection("net").line == 0


def test_section_default_options_are_not_shared():
    a, b = CfgSection("a"), CfgSection("b")
    a.options["k"] = "v"
    assert b.options == {}


# ---------------------------------------------------------------------------------------------------- cfg_weight_layers
def test_weight_layers_in_file_order_with_darknet_defaults():
    # parser.c defaults: convolutional filters=1 size=1 stride=1 batch_normalize=0; connected output=1
    text = ("[net]\n[convolutional]\n[conv]\nfilters=8\nsize=3\nstride=2\nbatch_normalize=1\n[maxpool]\n"
            "[connected]\n[conn]\noutput=10\nbatch_normalize=1\n[route]\nlayers=-1\n")
    assert cfg_weight_layers(parse_cfg(text)) == [
        WeightLayer("convolutional", 1, 1, 1, False),
        WeightLayer("convolutional", 8, 3, 2, True),
        WeightLayer("connected", 1, 0, 0, False),
        WeightLayer("connected", 10, 0, 0, True),
    ]


def test_the_net_section_is_not_a_layer():
    # even a [net] that carries conv-like options is skipped: layers start after it
    assert cfg_weight_layers(parse_cfg("[net]\nfilters=3\n")) == []


@pytest.mark.parametrize("kind", ["local", "deconvolutional", "crnn", "rnn", "gru", "lstm", "batchnorm"])
def test_layers_with_weights_we_cannot_map_are_refused_by_line(kind):
    with pytest.raises(EnginesmithError, match=rf"line 3: \[{kind}\] layers are not supported"):
        cfg_weight_layers(parse_cfg(f"[net]\n\n[{kind}]\n"))


def test_weight_layer_defaults():
    assert WeightLayer("connected", 5) == WeightLayer("connected", 5, 0, 0, False)


# ---------------------------------------------------------------------------------------------------- model check
class _Tiny(nn.Module):
    darknet_connected = True  # darknet.py's marker: its nn.Linear layers are [connected] layers

    def __init__(self, bn: bool = True, out: int = 10) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, 2, 1, bias=not bn)
        self.b1 = nn.BatchNorm2d(8) if bn else None
        self.fc = nn.Linear(8, out)


def test_model_weight_layers_read_kind_filters_size_stride_and_bn():
    from enginesmith.models.weights.darknet_cfg import model_weight_layers

    assert model_weight_layers(_Tiny()) == [WeightLayer("convolutional", 8, 3, 2, True),
                                            WeightLayer("connected", 10, 0, 0, False)]
    assert model_weight_layers(_Tiny(bn=False, out=4)) == [WeightLayer("convolutional", 8, 3, 2, False),
                                                           WeightLayer("connected", 4, 0, 0, False)]


def test_check_model_against_cfg_counts_and_names_the_first_difference():
    model = _Tiny()
    good = "[net]\n[convolutional]\nbatch_normalize=1\nfilters=8\nsize=3\nstride=2\n[connected]\noutput=10\n"
    assert check_model_against_cfg(model, good) == 2
    bad = good.replace("filters=8", "filters=9")
    with pytest.raises(EnginesmithError, match=r"_Tiny differs from my.cfg at weight layer 0"):
        check_model_against_cfg(model, bad, "my.cfg")
    with pytest.raises(EnginesmithError, match=r"_Tiny has 2 weight layers but cfg has 3"):
        check_model_against_cfg(model, good + "[connected]\noutput=3\n")
    with pytest.raises(EnginesmithError, match=r"_Tiny has 2 weight layers but cfg has 1"):
        check_model_against_cfg(model, good.split("[connected]")[0])


def test_read_cfg(tmp_path):
    p = tmp_path / "a.cfg"
    p.write_bytes(b"[net]\nname=\xff\n")
    assert read_cfg(p) == "[net]\nname=\ufffd\n"
    assert read_cfg(str(p)) == read_cfg(p)
    with pytest.raises(EnginesmithError, match="darknet cfg not found: .*missing.cfg"):
        read_cfg(tmp_path / "missing.cfg")
    with pytest.raises(EnginesmithError, match="darknet cfg not found"):
        read_cfg(tmp_path)  # a folder is not a cfg file


# ---------------------------------------------------------------------------------------------------- text helpers
# cfg/yolov3.cfg (pjreddie/darknet@f6afaabc), lines 25-31 (first conv) and 33-39 (the stride-2 conv), written out
_YOLOV3_FIRST_CONV = "[convolutional]\nbatch_normalize=1\nfilters=32\nsize=3\nstride=1\npad=1\nactivation=leaky\n\n"
_YOLOV3_DOWNSAMPLE = "[convolutional]\nbatch_normalize=1\nfilters=64\nsize=3\nstride=2\npad=1\nactivation=leaky\n\n"
# cfg/yolov3.cfg lines 599-605: the first head's output conv (no batch norm, linear)
_YOLOV3_OUTPUT_CONV = "[convolutional]\nsize=1\nstride=1\npad=1\nfilters=255\nactivation=linear\n\n"


def test_conv_text_is_darknets():
    assert dc._conv(32, 3) == _YOLOV3_FIRST_CONV
    assert dc._conv(64, 3, 2) == _YOLOV3_DOWNSAMPLE
    assert cfg_sections(dc._conv(255, 1, bn=False, activation="linear")) == cfg_sections(_YOLOV3_OUTPUT_CONV)
    assert dc._conv(255, 1, bn=False, activation="linear").endswith("\n\n")


def test_v1_conv_has_no_batchcfg_sections():
    # the YOLO paper's network (darknet's original yolo.cfg): convolutions with bias, leaky, no batch norm
    assert cfg_sections(dc._v1_conv(64, 7, 2)) == [("convolutional", {"filters": "64", "size": "7", "stride": "2",
                                                               "pad": "1", "activation": "leaky"})]
    assert cfg_sections(dc._v1_conv(192, 3)) == [("convolutional", {"filters": "192", "size": "3", "stride": "1",
                                                             "pad": "1", "activation": "leaky"})]


def test_small_section_helpers():
    assert dc._maxpool() == "[maxpool]\nsize=2\nstride=2\n\n"
    assert dc._maxpool(2, 1) == "[maxpool]\nsize=2\nstride=1\n\n"  # yolov3-tiny.cfg line 81-83
    assert dc._connected(1470, "linear") == "[connected]\noutput=1470\nactivation=linear\n\n"
    assert dc._route("-1, 61") == "[route]\nlayers=-1, 61\n\n"
    assert dc._net(416, 320) == "[net]\nbatch=1\nsubdivisions=1\nwidth=416\nheight=320\nchannels=3\n\n"


def test_v3_residual_is_yolov3s_block():
    # cfg/yolov3.cfg lines 41-58: 1x1 conv of half the filters, 3x3 conv, shortcut from=-3 linear
    block = [("convolutional", {"batch_normalize": "1", "filters": "32", "size": "1", "stride": "1", "pad": "1",
                                "activation": "leaky"}),
             ("convolutional", {"batch_normalize": "1", "filters": "64", "size": "3", "stride": "1", "pad": "1",
                                "activation": "leaky"}),
             ("shortcut", {"from": "-3", "activation": "linear"})]
    assert cfg_sections(dc._v3_residual(64, 1)) == block
    assert cfg_sections(dc._v3_residual(64, 3)) == block * 3
    assert dc._v3_residual(64, 0) == ""
    assert dc._v3_residual(64, 2).endswith("activation=linear\n\n")


def _conv_opts(filters: int, size: int, bn: bool = True, act: str = "leaky") -> tuple[str, dict[str, str]]:
    d = {"batch_normalize": "1"} if bn else {}
    return ("convolutional", {**d, "filters": str(filters), "size": str(size), "stride": "1", "pad": "1",
                              "activation": act})


def test_v3_head_is_yolov3s_first_head():
    # cfg/yolov3.cfg lines 551-611: 1x1 512, 3x3 1024 three times, 1x1 255 linear, [yolo] mask 6,7,8
    want = [_conv_opts(512, 1), _conv_opts(1024, 3)] * 3 + [_conv_opts(255, 1, bn=False, act="linear"),
            ("yolo", {"mask": "6,7,8", "anchors": "10,13,  16,30,  33,23,  30,61,  62,45,  59,119,  116,90,  "
                      "156,198,  373,326", "classes": "80", "num": "9", "jitter": ".3", "ignore_thresh": ".7",
                      "truth_thresh": "1", "random": "1"})]
    assert cfg_sections(dc._v3_head(512, "6,7,8")) == want
    assert dc._v3_head(512, "6,7,8").endswith("random=1\n\n")


def test_v3_yolo_section():
    assert cfg_sections(dc._v3_yolo("0,1,2", "10,14,  23,27", 6)) == [
        ("yolo", {"mask": "0,1,2", "anchors": "10,14,  23,27", "classes": "80", "num": "6", "jitter": ".3",
                  "ignore_thresh": ".7", "truth_thresh": "1", "random": "1"})]


def test_load_darknet_checkpoint_names_the_cfg_file_before_reading_weights(tmp_path):
    from enginesmith.models.weights.darknet_cfg import load_darknet_checkpoint

    cfg = tmp_path / "tiny.cfg"
    cfg.write_text("[net]\n[convolutional]\nbatch_normalize=1\nfilters=9\nsize=3\nstride=2\n[connected]\noutput=10\n")
    with pytest.raises(EnginesmithError, match=rf"^_Tiny differs from {cfg} at weight layer 0"):
        load_darknet_checkpoint(_Tiny(), tmp_path / "never-read.weights", cfg)
    with pytest.raises(EnginesmithError, match=rf"^_Tiny differs from {cfg} at weight layer 0"):
        load_darknet_checkpoint(_Tiny(), tmp_path / "never-read.weights", str(cfg))
