"""append_nms's file handling: the error for an unreadable file names what onnx itself raised, and the output's
missing folders are made."""

from __future__ import annotations

import onnx
import pytest
from onnx import TensorProto, helper

from enginesmith.errors import EnginesmithError
from enginesmith.pipeline.nms import append_nms


def _detector() -> onnx.ModelProto:
    g = helper.make_graph(
        [helper.make_node("Identity", ["b_in"], ["boxes"]), helper.make_node("Identity", ["s_in"], ["scores"])], "det",
        [helper.make_tensor_value_info("b_in", TensorProto.FLOAT, ["N", "A", 4]),
         helper.make_tensor_value_info("s_in", TensorProto.FLOAT, ["N", "A", "C"])],
        [helper.make_tensor_value_info("boxes", TensorProto.FLOAT, ["N", "A", 4]),
         helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", "A", "C"])])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


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
    onnx.save(_detector(), str(src))
    out = append_nms(src, tmp_path / "a" / "b" / "det_nms.onnx")
    assert out == tmp_path / "a" / "b" / "det_nms.onnx" and out.is_file()
    assert [p.name for p in out.parent.iterdir()] == ["det_nms.onnx"]
