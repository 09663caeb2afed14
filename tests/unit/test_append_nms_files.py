"""append_nms's file handling: the error for an unreadable file names what onnx itself raised, and the output's
missing folders are made."""

from __future__ import annotations

import onnx
import pytest

from enginesmith.errors import EnginesmithError
from reference_helpers import passthrough_detector
from enginesmith.pipeline.nms import append_nms


def test_an_unreadable_onnx_file_is_named_with_the_error_onnx_raised(tmp_path):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a protobuf at all \xff\xfe")
    try:
        onnx.load(str(junk))
    except Exception as e:  # noqa: BLE001 - the reference: what onnx raises for these bytes
        want = type(e).__name__
    else:
        pytest.skip("this onnx version reads the junk bytes")
    with pytest.raises(EnginesmithError) as err:
        append_nms(junk, tmp_path / "y.onnx")
    assert str(err.value) == f"cannot read {junk} as ONNX ({want}); re-export the model"


def test_the_output_folders_are_made(tmp_path):
    src = tmp_path / "det.onnx"
    onnx.save(passthrough_detector(), str(src))
    out = append_nms(src, tmp_path / "a" / "b" / "det_nms.onnx")
    assert out == tmp_path / "a" / "b" / "det_nms.onnx" and out.is_file()
    assert [p.name for p in out.parent.iterdir()] == ["det_nms.onnx"]
