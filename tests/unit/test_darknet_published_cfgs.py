"""Anchors, masks, grids and detection-layer parameters of every YOLO in the zoo against darknet's published cfgs.

The published values below are transcribed from the cfg files themselves (repository, path, commit named per
entry); nothing here is read from enginesmith. Each model is checked three ways: its decode modules as built (the
anchors each scale really uses and the stride of that scale), its module constants, and the cfg text enginesmith
embeds (models/weights/darknet_cfg.py, which `check_model_against_cfg` and `load_darknet_checkpoint` rely on).

Strides: darknet has no stride option on [yolo]; a [yolo] layer's grid is the map it follows. Walking the cfgs (conv
stride, maxpool stride, upsample, route) gives 13x13, 26x26, 52x52 at 416 for yolov3.cfg's three [yolo] layers (cfg
layers 82, 94, 106: strides 32, 16, 8), 13x13 and 26x26 for yolov3-tiny.cfg (layers 16, 23) and 32, 16, 8 for
AlexeyAB's yolov3-tiny_3l.cfg (layers 16, 23, 30). tests/unit/test_yolov3_tiny_decode.py walks the tiny cfgs for real.
"""

from __future__ import annotations

import pytest
import torch

from enginesmith.models import registry
from reference_helpers import cfg_sections

PJREDDIE = "pjreddie/darknet@f6afaabcdf85f77e7aff2ec55c020c0e297c77f9"
ALEXEYAB = "AlexeyAB/darknet@59596d7880f6504768df41d6daa586f5cb2b932f"

# ---------------------------------------------------------------------------------------------- published values
# PJREDDIE cfg/yolov3.cfg (last changed f86901f6, 2018-08-15), lines 607-611, 693-697, 780-784; identical anchors and
# masks in cfg/yolov3-spp.cfg (lines 640-644, 726-730, 813-817) and AlexeyAB cfg/yolov3.cfg.
YOLOV3 = {
    "anchors": [(10, 13), (16, 30), (33, 23), (30, 61), (62, 45), (59, 119), (116, 90), (156, 198), (373, 326)],
    "yolo": [((6, 7, 8), 32), ((3, 4, 5), 16), ((0, 1, 2), 8)],  # (mask, stride) in cfg order
    "classes": 80, "num": 9,
}
# PJREDDIE cfg/yolov3-tiny.cfg (last changed f86901f6), lines 132-136 and 174-178; the same in AlexeyAB's
# cfg/yolov3-tiny.cfg since 74956888 "Fix yolov3-tiny mask" (2018-05-07; the day before it said mask = 1,2,3).
YOLOV3_TINY = {
    "anchors": [(10, 14), (23, 27), (37, 58), (81, 82), (135, 169), (344, 319)],
    "yolo": [((3, 4, 5), 32), ((0, 1, 2), 16)],
    "classes": 80, "num": 6,
}
# ALEXEYAB cfg/yolov3-tiny_3l.cfg (last changed 29f509e2, 2019-01-01), lines 133-137, 175-179, 219-223. Its anchors
# were fitted to a 2-class dataset; the layout (masks per scale, smallest anchors on the finest) is what we follow.
YOLOV3_TINY_3L = {
    "anchors": [(4, 7), (7, 15), (13, 25), (25, 42), (41, 67), (75, 94), (91, 162), (158, 205), (250, 332)],
    "yolo": [((6, 7, 8), 32), ((3, 4, 5), 16), ((0, 1, 2), 8)],
    "classes": 2, "num": 9,
}
# PJREDDIE cfg/yolov2-voc.cfg (last changed e84933bf, 2018-03-25), [region] lines 241-247, anchors in grid cells
# (x32 input pixels); the same values in AlexeyAB cfg/yolo-voc.cfg (e5ab66d7) and cfg/yolov2-voc.cfg.
YOLOV2_VOC = {
    "anchors": [(1.3221, 1.73145), (3.19275, 4.00944), (5.05587, 8.09892), (9.47112, 4.84053), (11.2364, 10.0071)],
    "classes": 20, "num": 5, "coords": 4, "softmax": 1, "stride": 32,
}
# PJREDDIE cfg/yolov1-tiny.cfg (e84933bf), [connected] output=1470, [detection] lines 116-123 (Fast YOLO); ALEXEYAB
# cfg/yolov1/yolo-small.cfg (c6afc7ff, 2016-11-17) has the same [detection] for a 24-conv YOLO, which is the paper's
# S=7, B=2, C=20 (Sec. 2: 7x7x30 output). PJREDDIE cfg/yolov1.cfg (num=3, output 1715, a locally connected layer) is a
# later network, not the paper's.
YOLOV1_DETECTION = {"side": 7, "num": 2, "classes": 20, "coords": 4, "sqrt": 1, "softmax": 0, "output": 1470}


def _pairs(text: str) -> list[tuple[float, float]]:
    v = [float(t) for t in text.split(",") if t.strip()]
    return [(v[i], v[i + 1]) for i in range(0, len(v), 2)]


def _scale_anchors(scale: torch.nn.Module) -> list[tuple[float, float]]:
    return [tuple(float(t) for t in row) for row in scale.anchors.reshape(-1, 2).tolist()]  # type: ignore[misc]


def test_published_tables_are_self_consistent() -> None:
    """Guards the transcription: each published mask set covers every anchor once, and darknet's anchor lists are
    sorted by area with the largest on the coarsest scale (the rule the edge detectors follow)."""
    for pub in (YOLOV3, YOLOV3_TINY, YOLOV3_TINY_3L):
        assert sorted(i for mask, _ in pub["yolo"] for i in mask) == list(range(pub["num"])) == list(
            range(len(pub["anchors"])))
        areas = [w * h for w, h in pub["anchors"]]
        assert areas == sorted(areas)
        strides = [s for _, s in pub["yolo"]]
        assert strides == sorted(strides, reverse=True)
        assert [max(mask) for mask, _ in pub["yolo"]] == sorted((max(m) for m, _ in pub["yolo"]), reverse=True)


# ---------------------------------------------------------------------------------------------- YOLOv3 and tiny
@pytest.mark.parametrize("name, published, size",
                         [("yolov3", YOLOV3, (64, 96)), ("yolov3-tiny", YOLOV3_TINY, (64, 96))],
                         ids=["yolov3", "yolov3-tiny"])
def test_yolo_scales_use_the_published_anchors_masks_and_strides(name: str, published: dict, size: tuple[int, int]
                                                                  ) -> None:
    model = registry.get(name).create(num_classes=2, input_size=size)
    scales = list(model.decode.scales)
    assert len(scales) == len(published["yolo"])
    for scale, (mask, stride) in zip(scales, published["yolo"]):
        assert scale.stride == stride
        assert _scale_anchors(scale) == [tuple(map(float, published["anchors"][i])) for i in mask]
        assert tuple(scale.static_shape[2:]) == (size[0] // stride, size[1] // stride)
    # the raw maps the body hands to the decode come at those strides, in that order
    with torch.no_grad():
        raws = model.forward_raw(torch.zeros(1, 3, *size))
    assert [tuple(r.shape[2:]) for r in raws] == [(size[0] // s, size[1] // s) for _, s in published["yolo"]]
    import importlib

    mod = importlib.import_module(registry.get(name).builder.__module__)
    assert [tuple(a) for a in mod.ANCHORS] == published["anchors"]
    assert [tuple(m) for m in mod.MASKS] == [m for m, _ in published["yolo"]]


@pytest.mark.parametrize("name, published", [("yolov3", YOLOV3), ("yolov3-tiny", YOLOV3_TINY)],
                         ids=["yolov3", "yolov3-tiny"])
def test_embedded_cfg_texts_have_the_published_yolocfg_sections(name: str, published: dict) -> None:
    from enginesmith.models.weights.darknet_cfg import OFFICIAL_CFGS

    yolos = [o for kind, o in cfg_sections(OFFICIAL_CFGS[name]) if kind == "yolo"]
    assert [tuple(int(t) for t in o["mask"].split(",")) for o in yolos] == [m for m, _ in published["yolo"]]
    for o in yolos:
        assert _pairs(o["anchors"]) == [tuple(map(float, a)) for a in published["anchors"]]
        assert int(o["classes"]) == published["classes"] and int(o["num"]) == published["num"]


# ---------------------------------------------------------------------------------------------- YOLOv2
@pytest.mark.parametrize("name", ["yolov2", "yolov2-544"])
def test_yolov2_region_uses_the_published_voc_anchors(name: str) -> None:
    from enginesmith.models.weights.darknet_cfg import YOLOV2_VOC_CFG
    from enginesmith.models import yolov2

    model = registry.get(name).create(num_classes=20, input_size=(64, 96))
    decode = model.decode
    assert decode.stride == YOLOV2_VOC["stride"] and tuple(decode.static_shape) == (5, 25, 2, 3)
    px = [(w * 32, h * 32) for w, h in YOLOV2_VOC["anchors"]]  # grid cells -> input pixels
    got = _scale_anchors(decode)
    assert len(got) == YOLOV2_VOC["num"]
    for (gw, gh), (pw, ph) in zip(got, px):
        assert gw == pytest.approx(pw, rel=1e-6) and gh == pytest.approx(ph, rel=1e-6)
    assert [tuple(a) for a in yolov2.ANCHORS] == YOLOV2_VOC["anchors"]
    region = [o for kind, o in cfg_sections(YOLOV2_VOC_CFG) if kind == "region"]
    assert len(region) == 1
    r = region[0]
    assert _pairs(r["anchors"]) == YOLOV2_VOC["anchors"]
    assert {k: int(r[k]) for k in ("classes", "num", "coords", "softmax")} == {
        k: YOLOV2_VOC[k] for k in ("classes", "num", "coords", "softmax")}


# ---------------------------------------------------------------------------------------------- YOLOv1
@pytest.mark.parametrize("name", ["yolov1", "fast-yolo", "yolo-vgg16"])
def test_yolov1_detection_layer_is_the_published_one(name: str) -> None:
    """S = 7 at 448, B = 2, C = 20, 1470 outputs: built on the meta device (yolov1 has 272M parameters)."""
    spec = registry.get(name)
    with torch.device("meta"):
        model = spec.builder(num_classes=20, input_size=(448, 448))
    d = YOLOV1_DETECTION
    assert model.decode.cells == d["side"] ** 2 and model.decode.num_boxes == d["num"]
    assert model.decode.num_classes == d["classes"]
    last = [m for m in model.classifier.modules() if isinstance(m, torch.nn.Linear)][-1]
    assert last.out_features == d["output"] == d["side"] ** 2 * (d["num"] * (d["coords"] + 1) + d["classes"])
    assert spec.details["grid"] == (d["side"], d["side"]) and spec.details["num_boxes"] == d["num"]


@pytest.mark.parametrize("cfg", ["yolov1", "fast-yolo"])
def test_embedded_yolov1_cfgs_have_the_published_detection_layer(cfg: str) -> None:
    from enginesmith.models.weights.darknet_cfg import OFFICIAL_CFGS

    secs = cfg_sections(OFFICIAL_CFGS[cfg])
    det = [o for kind, o in secs if kind == "detection"]
    assert len(det) == 1
    assert {k: int(det[0][k]) for k in ("side", "num", "classes", "coords", "sqrt", "softmax")} == {
        k: YOLOV1_DETECTION[k] for k in ("side", "num", "classes", "coords", "sqrt", "softmax")}
    connected = [o for kind, o in secs if kind == "connected"]
    assert int(connected[-1]["output"]) == YOLOV1_DETECTION["output"]


def test_yolov1_sqrt_box_coding() -> None:
    """cfg sqrt=1: the network predicts sqrt(w), sqrt(h) relative to the image (darknet get_detection_boxes:
    b.w = pow(predictions[box_index + 2], 2) * w). One cell, one box, checked by hand."""
    from enginesmith.models.yolov1 import DetectionDecode

    s, b, c = 4, 2, 3
    raw = torch.zeros(1, s * (c + b) + s * b * 4)
    box = s * (c + b) + (1 * b + 0) * 4  # cell 1 (row 0, col 1), box 0
    raw[0, box: box + 4] = torch.tensor([0.5, 0.25, 0.5, 0.25])
    boxes, _ = DetectionDecode((2, 2), b, c, (128, 256))(raw)  # H 128, W 256
    cx, cy, w, h = (1 + 0.5) / 2 * 256, (0 + 0.25) / 2 * 128, 0.25 * 256, 0.0625 * 128
    assert boxes[0, 1 * b + 0].tolist() == pytest.approx([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])


# ---------------------------------------------------------------------------------------------- edge detectors
@pytest.mark.parametrize("name, published", [("yolov3-tiny-256", YOLOV3_TINY), ("yolov3-tiny-3l-256", YOLOV3_TINY_3L)],
                         ids=["tiny-256", "tiny-3l-256"])
def test_edge_detectors_place_anchors_as_darknet_does(name: str, published: dict) -> None:
    """Their anchors are k-means fits (not published), but they follow the published cfgs' layout: the masks of
    yolov3-tiny.cfg / yolov3-tiny_3l.cfg over anchors sorted by area, so the coarsest scale gets the largest three
    and every anchor of a finer scale is smaller (by area) than every anchor of a coarser one."""
    spec = registry.get(name)
    model = spec.create(input_size=(64, 96))
    scales = list(model.decode.scales)
    assert [s.stride for s in scales] == [float(st) for _, st in published["yolo"]]
    per_scale = [_scale_anchors(s) for s in scales]
    assert all(len(a) == 3 for a in per_scale)
    anchors = [tuple(map(float, a)) for a in spec.details["anchors"]]
    areas = [w * h for w, h in anchors]
    assert areas == sorted(areas), "anchors must be listed smallest area first, as darknet's are"
    assert per_scale == [[anchors[i] for i in mask] for mask, _ in published["yolo"]]
    for coarse, fine in zip(per_scale, per_scale[1:]):
        assert min(w * h for w, h in coarse) >= max(w * h for w, h in fine), (coarse, fine)
    assert [tuple(m) for m in spec.details["masks"]] == [m for m, _ in published["yolo"]]
    assert tuple(spec.details["strides"]) == tuple(st for _, st in published["yolo"])
