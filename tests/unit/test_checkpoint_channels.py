"""A checkpoint family's channel order and normalisation: enginesmith's preprocessing against each family's own
published code (ssd.pytorch transcribed in reference_ssd_pytorch.py; torchvision's transforms themselves; darknet's
letterbox_image transcribed below), and the --channels / --mean / --std overrides (runtime/preprocess_override.py)."""

from __future__ import annotations

import numpy as np
import pytest

from enginesmith.data.offline_photos import base_photos
from enginesmith.errors import EnginesmithError
from enginesmith.models import registry
from enginesmith.runtime.preprocess import PreprocessSpec, preprocess
from enginesmith.runtime.preprocess_override import (PreprocessOverride, make_override, parse_channels, parse_values,
                                                     resolve_preprocess)
from reference_ssd_pytorch import caffe_converted_input, train_py_input


def _crops(size: tuple[int, int], n: int = 4) -> list[np.ndarray]:
    """n real photographs (the packaged ones large enough) cropped to `size` (H, W) at their centre, RGB uint8."""
    out = []
    for p in base_photos():
        top, left = (p.shape[0] - size[0]) // 2, (p.shape[1] - size[1]) // 2
        if top >= 0 and left >= 0 and len(out) < n:
            out.append(np.ascontiguousarray(p[top : top + size[0], left : left + size[1]]))
    assert len(out) == n
    return out


def _bgr(rgb: np.ndarray) -> np.ndarray:
    """What cv2.imread gives for the same pixels."""
    return np.ascontiguousarray(rgb[:, :, ::-1])


# ------------------------------------------------------------------------------------------ ssd.pytorch


def _ssd300(override: PreprocessOverride | None = None) -> PreprocessSpec:
    return resolve_preprocess(registry.get("ssd300").preprocess, override, model="ssd300")[0]


def test_ssd300_default_is_what_ssd_pytorch_train_py_feeds():
    """At 300x300 (both resizes are the identity) the default input equals pull_item's, value for value."""
    for rgb in _crops((300, 300)):
        ours, _ = preprocess(rgb, _ssd300())
        ref = train_py_input(_bgr(rgb))
        np.testing.assert_array_equal(ours, ref)
        assert not np.array_equal(ours, caffe_converted_input(_bgr(rgb)))  # the other family is told apart


def test_ssd300_channels_bgr_is_what_the_caffe_converted_weights_expect():
    spec = _ssd300(make_override("bgr"))
    assert spec.color == "BGR" and spec.mean == (104.0, 117.0, 123.0)  # the mean moved with its colours
    for rgb in _crops((300, 300)):
        ours, _ = preprocess(rgb, spec)
        np.testing.assert_array_equal(ours, caffe_converted_input(_bgr(rgb)))


def test_ssd300_on_whole_photos_differs_from_ssd_pytorch_only_by_the_resize():
    """enginesmith resizes with Pillow's bilinear filter (antialiased when shrinking), ssd.pytorch with cv2's
    INTER_LINEAR: measured mean |difference| 0.6-3.7 levels of 255 on the packaged photos. A wrong channel order
    is several times that, so the bound still tells the families apart."""
    for rgb in list(base_photos())[:4]:
        ours, _ = preprocess(rgb, _ssd300())
        right = np.abs(ours - train_py_input(_bgr(rgb))).mean()
        wrong = np.abs(ours - caffe_converted_input(_bgr(rgb))).mean()
        assert right < 4.0 and wrong > 3 * right, (rgb.shape, right, wrong)


# ------------------------------------------------------------------------------------------ torchvision


def test_resnet_default_is_torchvision_s_imagenet_transform():
    """torchvision's ImageNet evaluation (Resize(256) -> CenterCrop(224) -> to_tensor -> normalize), run by
    torchvision itself on PIL images; 320x480 crops make every size and offset a whole number for both."""
    pytest.importorskip("torchvision")
    import torchvision.transforms.functional as TF
    from PIL import Image

    spec = registry.get("resnet50").preprocess
    assert spec.input_size == (224, 224) and spec.color == "RGB"
    for rgb in _crops((320, 480), n=3):
        t = TF.center_crop(TF.resize(Image.fromarray(rgb), 256, interpolation=TF.InterpolationMode.BILINEAR), 224)
        ref = TF.normalize(TF.to_tensor(t), [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
        ours, _ = preprocess(rgb, spec)
        np.testing.assert_allclose(ours, ref.numpy(), atol=1e-5)
        bgr, _ = preprocess(rgb, resolve_preprocess(spec, make_override("bgr"))[0])  # the same values, other order
        np.testing.assert_allclose(bgr, ref.numpy()[::-1], atol=1e-5)


# ------------------------------------------------------------------------------------------ darknet


def darknet_letterbox(rgb: np.ndarray, w: int, h: int) -> np.ndarray:
    """pjreddie/darknet src/image.c (commit f6afaabcdf85f77e7aff2ec55c020c0e297c77f9): load_image_stb (RGB / 255,
    planar), then letterbox_image: new size by integer arithmetic, resize_image (two-pass bilinear, no antialias),
    fill_image(boxed, .5), embed_image at ((w - new_w) / 2, (h - new_h) / 2) -> (3, h, w) float32."""
    im = rgb.astype(np.float32).transpose(2, 0, 1) / np.float32(255.0)
    c, ih, iw = im.shape
    if np.float32(w) / iw < np.float32(h) / ih:
        new_w, new_h = w, (ih * w) // iw
    else:
        new_h, new_w = h, (iw * h) // ih
    part = np.empty((c, ih, new_w), np.float32)
    w_scale = np.float32(iw - 1) / np.float32(new_w - 1)
    for col in range(new_w):
        if col == new_w - 1 or iw == 1:
            part[:, :, col] = im[:, :, iw - 1]
        else:
            sx = np.float32(col) * w_scale
            ix = int(sx)
            dx = sx - np.float32(ix)
            part[:, :, col] = (1 - dx) * im[:, :, ix] + dx * im[:, :, ix + 1]
    resized = np.empty((c, new_h, new_w), np.float32)
    h_scale = np.float32(ih - 1) / np.float32(new_h - 1)
    for r in range(new_h):
        sy = np.float32(r) * h_scale
        iy = int(sy)
        dy = sy - np.float32(iy)
        resized[:, r] = (1 - dy) * part[:, iy]
        if not (r == new_h - 1 or ih == 1):
            resized[:, r] += dy * part[:, iy + 1]
    boxed = np.full((c, h, w), 0.5, np.float32)
    dx0, dy0 = (w - new_w) // 2, (h - new_h) // 2
    boxed[:, dy0 : dy0 + new_h, dx0 : dx0 + new_w] = resized
    return boxed


def test_yolov3_default_is_darknet_s_letterbox_where_the_photo_lies():
    """A 416-wide photo letterboxed into 416x416 (resize is the identity for both): the image rows equal darknet's
    RGB / 255 exactly. The bars differ on purpose: enginesmith pads with 114 (0.447), darknet with 0.5."""
    spec = registry.get("yolov3").preprocess.with_size(416, 416)
    for rgb in _crops((312, 416), n=3):
        ours, t = preprocess(rgb, spec)
        ref = darknet_letterbox(rgb, 416, 416)
        top = int(t.pad_y)
        assert top == (416 - 312) // 2
        np.testing.assert_allclose(ours[:, top : top + 312], ref[:, top : top + 312], atol=1e-6)
        assert np.allclose(ours[:, :top], spec.pad_value / 255) and np.allclose(ref[:, :top], 0.5)


def test_darknet_reference_resize_is_bilinear_on_a_ramp():
    """The transcription itself, on a case with a known answer: a linear ramp stays linear under resize_image."""
    ramp = np.tile(np.arange(0, 200, 2, dtype=np.uint8)[None, :, None], (10, 1, 3))  # 10 x 100, 0..198
    out = darknet_letterbox(ramp, 50, 50)  # 100 wide -> 50 x 5, placed at row 22
    row = out[0, 22]
    np.testing.assert_allclose(row * 255, np.linspace(0, 198, 50), atol=1e-3)


# ------------------------------------------------------------------------------------------ the overrides


def test_mean_and_std_follow_their_colours_when_the_order_changes():
    spec = PreprocessSpec((8, 8), color="RGB", scale=1 / 255, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    bgr, warnings = resolve_preprocess(spec, make_override("BGR"))
    assert (bgr.color, bgr.mean, bgr.std, warnings) == ("BGR", (0.406, 0.456, 0.485), (0.225, 0.224, 0.229), [])
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    a, _ = preprocess(img, spec)
    b, _ = preprocess(img, bgr)
    np.testing.assert_array_equal(a[::-1], b)  # the same values per colour, fed in the other order


def test_explicit_mean_std_are_in_the_order_fed():
    spec, _ = resolve_preprocess(registry.get("ssd300").preprocess, make_override("bgr", "1,2,3", "4,5,6"))
    assert (spec.color, spec.mean, spec.std) == ("BGR", (1.0, 2.0, 3.0), (4.0, 5.0, 6.0))


def test_fcn_keeps_its_caffe_bgr_default_and_channels_rgb_overrides_it():
    fcn = registry.get("fcn32s").preprocess
    assert fcn.color == "BGR"
    rgb, _ = resolve_preprocess(fcn, make_override("rgb"))
    assert rgb.color == "RGB" and rgb.mean == tuple(reversed(fcn.mean))


@pytest.mark.parametrize("text", ["xyz", "", "rgba", "gray"])
def test_unknown_channel_order_is_one_line(text):
    with pytest.raises(EnginesmithError, match="choose rgb or bgr") as e:
        parse_channels(text)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("text", ["1,2", "1,2,3,4", "7"])
def test_wrong_length_mean_is_one_line(text):
    with pytest.raises(EnginesmithError, match="give 3 values") as e:
        resolve_preprocess(registry.get("ssd300").preprocess, make_override(mean=text), model="ssd300")
    assert "\n" not in str(e.value) and "--mean" in str(e.value)


@pytest.mark.parametrize("text,match", [("a,b,c", "comma-separated numbers"), ("1,nan,3", "comma-separated"),
                                        ("1,,3", "comma-separated")])
def test_bad_numbers_are_one_line(text, match):
    with pytest.raises(EnginesmithError, match=match):
        parse_values(text, "--mean")


def test_std_must_be_positive_and_gray_models_refuse_a_channel_order():
    with pytest.raises(EnginesmithError, match="std above 0"):
        resolve_preprocess(registry.get("ssd300").preprocess, make_override(std="1,0,1"))
    with pytest.raises(EnginesmithError, match="GRAY input"):
        resolve_preprocess(registry.get("lenet5").preprocess, make_override("bgr"), model="lenet5")
    spec, _ = resolve_preprocess(registry.get("lenet5").preprocess, make_override(mean="0.25"))
    assert spec.mean == (0.25,)


def test_checkpoint_record_is_honoured_and_a_contradicting_option_warns_in_one_line():
    base = registry.get("ssd300").preprocess
    recorded = {"color": "BGR", "mean": (104.0, 117.0, 123.0), "scale": 1.0}
    spec, warnings = resolve_preprocess(base, None, recorded, "ssd300", "ck.pt")
    assert (spec.color, spec.mean, warnings) == ("BGR", (104.0, 117.0, 123.0), [])
    spec, warnings = resolve_preprocess(base, make_override("rgb"), recorded, "ssd300", "ck.pt")
    assert spec.color == "RGB" and spec.mean == (123.0, 117.0, 104.0)
    assert len(warnings) == 1 and "\n" not in warnings[0] and "ck.pt" in warnings[0] and "BGR" in warnings[0]
    _, agree = resolve_preprocess(base, make_override("bgr"), recorded, "ssd300", "ck.pt")
    assert agree == []


def test_rcnn_mean_pixel_fill_follows_a_bgr_spec():
    from enginesmith.runtime.region_warp import mean_pixel

    spec = PreprocessSpec((64, 64), mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    bgr, _ = resolve_preprocess(spec, make_override("bgr"))
    assert mean_pixel(spec) == mean_pixel(bgr) == (124, 116, 104)  # RGB fill either way


def test_checkpoint_info_reads_and_checks_the_recorded_preprocess(tmp_path):
    torch = pytest.importorskip("torch")
    from enginesmith.models.weights.checkpoint_info import read_checkpoint_info

    good = tmp_path / "good.pt"
    torch.save({"state_dict": {}, "preprocess": {"color": "BGR", "scale": 1.0, "mean": [104, 117, 123],
                                                 "resize": "stretch"}}, good)
    assert read_checkpoint_info(good)["preprocess"] == {"color": "BGR", "scale": 1.0, "mean": (104.0, 117.0, 123.0)}
    for bad in ({"color": "bgr"}, {"mean": "104"}, {"std": [1, 0, 1]}, {"scale": 0}, ["BGR"]):
        path = tmp_path / "bad.pt"
        torch.save({"state_dict": {}, "preprocess": bad}, path)
        with pytest.raises(EnginesmithError, match="field 'preprocess'") as e:
            read_checkpoint_info(path)
        assert "\n" not in str(e.value)


def test_eval_of_a_checkpoint_honours_its_record_and_warns_on_a_contradicting_option(tmp_path):
    torch = pytest.importorskip("torch")
    from enginesmith.benchmarks.evaluate import predictor_for

    spec = registry.get("yolov3-tiny")
    path = tmp_path / "ck.pt"
    torch.save({"model": "yolov3-tiny", "state_dict": spec.create(input_size=(64, 64)).state_dict(),
                "input_size": [64, 64], "preprocess": {"color": "BGR"}}, path)
    recorded = predictor_for(path)
    assert recorded.preprocess.color == "BGR" and recorded.warnings == []
    asked = predictor_for(path, preprocess=make_override("rgb"))
    assert asked.preprocess.color == "RGB" and len(asked.warnings) == 1 and "records BGR" in asked.warnings[0]
