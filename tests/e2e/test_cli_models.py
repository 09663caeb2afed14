"""`enginesmith models --json` against published architecture figures."""

from __future__ import annotations

import json

import pytest


def test_models_json_lists_the_slice_with_published_sizes(run_cli):
    proc = run_cli("models", "--json")
    assert proc.returncode == 0, proc.stderr
    rows = {r["name"]: r for r in json.loads(proc.stdout)}
    assert {"lenet5", "resnet50", "yolov3"} <= set(rows)
    # LeNet-5 as in the seed table: 156 + 2,416 + 48,120 + 10,164 + 850 parameters
    assert rows["lenet5"]["params"] == 61_706 and rows["lenet5"]["input_size"] == [32, 32]
    # torchvision's published ResNet-50 size, and 4.09 GMACs at 224
    assert rows["resnet50"]["params"] == 25_557_032 and abs(rows["resnet50"]["macs"] / 1e9 - 4.09) < 0.01
    # YOLOv3-416: 65.86 BFLOPs on the darknet site = 32.93 GMACs; 61.95M parameters
    assert rows["yolov3"]["task"] == "detection" and abs(rows["yolov3"]["macs"] / 1e9 - 32.93) < 0.01
    assert rows["yolov3"]["outputs"] == ["boxes", "scores"]
    assert rows["yolov3"]["boxes"] == 10647 and "boxes" not in rows["lenet5"]
    # default boxes before NMS as the papers give them
    assert rows["ssd300"]["boxes"] == 8732 and rows["ssd512"]["boxes"] == 24564 and rows["yolov1"]["boxes"] == 98
    assert rows["yolov2"]["boxes"] == 13 * 13 * 5
    # every registered model has the fields, detectors have their box count
    for r in rows.values():
        assert r["params"] > 0 and r["macs"] > 0 and len(r["input_shape"]) in (4, 5)
        assert ("boxes" in r) == (r["task"] == "detection")


@pytest.mark.slow  # 48 s alone (profiles every model); after the JSON test above, its cached rows: about 1 s
def test_models_table(run_cli):
    proc = run_cli("models")
    assert proc.returncode == 0 and "yolov3" in proc.stdout and "61.95 M" in proc.stdout
    assert "faster-rcnn-vgg16-slim " in proc.stdout and "…" not in proc.stdout  # names whole (unit: test_catalog_cache)
