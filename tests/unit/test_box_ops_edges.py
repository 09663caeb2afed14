"""models/ops.py at its edges (empty inputs, one RoI, batch axes, default arguments), against torchvision.ops
and hand-computed values."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torchvision.models.detection._utils import BoxCoder

from enginesmith.models import ops


@pytest.mark.parametrize("agnostic", [False, True])
def test_batched_nms_on_no_boxes(agnostic):
    keep = ops.batched_nms(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64), 0.5, agnostic)
    ref = torchvision.ops.batched_nms(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64), 0.5)
    assert keep.shape == ref.shape == (0,) and keep.dtype == ref.dtype == torch.int64
    # the empty result lives on the boxes' device (the meta device stands in for a GPU here)
    keep = ops.batched_nms(torch.zeros(0, 4, device="meta"), torch.zeros(0, device="meta"),
                           torch.zeros(0, dtype=torch.int64, device="meta"), 0.5)
    assert keep.device.type == "meta" and keep.dtype == torch.int64 and keep.shape == (0,)


def test_batched_nms_one_box():
    keep = ops.batched_nms(torch.tensor([[0.0, 0.0, 1.0, 1.0]]), torch.tensor([0.5]), torch.tensor([3]), 0.5)
    assert keep.tolist() == [0]


def test_batched_nms_equal_scores_across_classes_keep_index_order():
    # three disjoint boxes, equal scores, classes 2, 0, 1: per-class NMS keeps all; ties by index (torchvision)
    boxes = torch.tensor([[0.0, 0, 1, 1], [2, 2, 3, 3], [4, 4, 5, 5], [6, 6, 7, 7], [8, 8, 9, 9]])
    scores = torch.tensor([0.5, 0.5, 0.9, 0.5, 0.5])
    classes = torch.tensor([2, 0, 1, 0, 2])
    keep = ops.batched_nms(boxes, scores, classes, 0.5)
    assert keep.tolist() == [2, 0, 1, 3, 4]
    assert keep.tolist() == torchvision.ops.batched_nms(boxes, scores, classes, 0.5).tolist()
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(300, 2, generator=g) * 50
    boxes = torch.cat([xy, xy + 10], 1)
    scores = torch.randint(0, 3, (300,), generator=g).float() / 2  # many exact ties
    classes = torch.randint(0, 4, (300,), generator=g)
    assert ops.batched_nms(boxes, scores, classes, 0.3).tolist() == \
        torchvision.ops.batched_nms(boxes, scores, classes, 0.3).tolist()


def test_box_conversions_hand_values_with_batch_axes():
    xyxy = torch.tensor([[[0.0, 0.0, 4.0, 2.0], [1.0, 2.0, 3.0, 8.0]], [[-2.0, -2.0, 2.0, 2.0], [5.0, 5.0, 5.0, 5.0]]])
    cxcywh = torch.tensor([[[2.0, 1.0, 4.0, 2.0], [2.0, 5.0, 2.0, 6.0]], [[0.0, 0.0, 4.0, 4.0], [5.0, 5.0, 0.0, 0.0]]])
    torch.testing.assert_close(ops.xyxy_to_cxcywh(xyxy), cxcywh)
    torch.testing.assert_close(ops.cxcywh_to_xyxy(cxcywh), xyxy)
    torch.testing.assert_close(ops.cxcywh_to_xyxy(cxcywh[0, 0]), xyxy[0, 0])  # a single box [4]
    assert ops.cxcywh_to_xyxy(torch.zeros(3, 5, 4)).shape == (3, 5, 4)


def rand_boxes(g, *shape):
    xy = torch.rand(*shape, 2, generator=g) * 50
    return torch.cat([xy, xy + 1 + torch.rand(*shape, 2, generator=g) * 30], -1)


def test_rcnn_coding_defaults_and_batch_axes_match_torchvision():
    g = torch.Generator().manual_seed(0)
    boxes, anchors = rand_boxes(g, 2, 3), rand_boxes(g, 2, 3)
    coder = BoxCoder(weights=(1.0, 1.0, 1.0, 1.0))
    enc = ops.encode_boxes(boxes, anchors)  # default form: rcnn, weights 1
    assert enc.shape == (2, 3, 4)
    torch.testing.assert_close(enc, coder.encode_single(boxes.reshape(-1, 4), anchors.reshape(-1, 4)).reshape(2, 3, 4),
                               rtol=1e-5, atol=1e-5)
    deltas = torch.randn(2, 3, 4, generator=g) * 0.5
    dec = ops.decode_boxes(deltas, anchors)
    assert dec.shape == (2, 3, 4)
    torch.testing.assert_close(dec, coder.decode_single(deltas.reshape(-1, 4), anchors.reshape(-1, 4)).reshape(2, 3, 4),
                               rtol=1e-5, atol=1e-4)


def test_ssd_coding_with_batch_axes_hand_values():
    priors = torch.tensor([[[0.5, 0.5, 0.2, 0.4]]]).expand(2, 3, 4)  # cx, cy, w, h
    boxes = torch.tensor([0.4, 0.3, 0.8, 0.7]).expand(2, 3, 4)  # cx 0.6, cy 0.5, w 0.4, h 0.4
    enc = ops.encode_boxes(boxes, priors, form="ssd")
    expect = torch.tensor([0.1 / (0.1 * 0.2), 0.0, torch.log(torch.tensor(2.0)) / 0.2, 0.0])
    assert enc.shape == (2, 3, 4)
    torch.testing.assert_close(enc, expect.expand(2, 3, 4), rtol=1e-5, atol=1e-5)
    dec = ops.decode_boxes(enc, priors, form="ssd")
    assert dec.shape == (2, 3, 4)
    torch.testing.assert_close(dec, boxes, rtol=1e-5, atol=1e-5)


def test_unknown_form_message():
    with pytest.raises(ValueError, match=r"unknown box coding form 'yolo'; use 'ssd' or 'rcnn'"):
        ops.encode_boxes(torch.ones(1, 4), torch.ones(1, 4), form="yolo")
    with pytest.raises(ValueError, match=r"unknown box coding form 'yolo'; use 'ssd' or 'rcnn'"):
        ops.decode_boxes(torch.ones(1, 4), torch.ones(1, 4), form="yolo")


@pytest.mark.parametrize("k", [0, 1, 3])
@pytest.mark.parametrize("size", [3, (2, 4)])
def test_roi_pool_few_rois_and_int_size_match_torchvision(k, size):
    g = torch.Generator().manual_seed(k)
    feat = torch.randn(2, 3, 9, 11, generator=g)
    xy = torch.rand(k, 2, generator=g) * 120
    rois = torch.cat([torch.randint(0, 2, (k, 1), generator=g).float(), xy, xy + torch.rand(k, 2, generator=g) * 80], 1)
    ours = ops.roi_pool(feat, rois, size, 1 / 16)
    ref = torchvision.ops.roi_pool(feat, rois, size, 1 / 16)
    assert ours.shape == ref.shape
    torch.testing.assert_close(ours, ref, rtol=0, atol=0)


def test_nms_on_no_boxes_is_an_empty_int64_index_on_the_boxes_device():
    keep = ops.nms(torch.zeros(0, 4), torch.zeros(0), 0.5)
    assert keep.dtype == torch.int64 and keep.shape == (0,)
    keep = ops.nms(torch.zeros(0, 4, device="meta"), torch.zeros(0, device="meta"), 0.5)
    assert keep.device.type == "meta" and keep.dtype == torch.int64


def test_box_iou_of_sub_pixel_boxes_matches_torchvision():
    g = torch.Generator().manual_seed(3)
    xy = torch.rand(20, 2, generator=g)
    boxes = torch.cat([xy, xy + torch.rand(20, 2, generator=g) * 0.8 + 0.01], 1)  # sides < 1: areas and unions < 1
    torch.testing.assert_close(ops.box_iou(boxes, boxes), torchvision.ops.box_iou(boxes, boxes), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(ops.box_area(boxes), torchvision.ops.box_area(boxes))


def test_rpn_anchor_default_stride_is_16_and_ssd_priors_clip_by_default():
    gen = torchvision.models.detection.anchor_utils.AnchorGenerator(((128, 256, 512),), ((0.5, 1.0, 2.0),))
    # torchvision orders per location: ratio-major then scale, like ours; image 64 x 80 -> stride 16 on a 4 x 5 map
    from torchvision.models.detection.image_list import ImageList

    ref = gen(ImageList(torch.zeros(1, 3, 64, 80), [(64, 80)]), [torch.zeros(1, 1, 4, 5)])[0]
    torch.testing.assert_close(ops.rpn_anchors(4, 5), ref)
    priors = ops.ssd_priors(300, (1,), (300,), (264.0,), (315.0,), ((2, 3),))  # sqrt(264*315)/300 > 1: clipped
    assert priors.max() == 1.0 and priors.min() >= 0.0
    assert not torch.equal(priors, ops.ssd_priors(300, (1,), (300,), (264.0,), (315.0,), ((2, 3),), clip=False))
