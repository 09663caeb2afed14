"""Small references several unit-test files share (written here, independent of enginesmith's own code)."""

from __future__ import annotations

from onnx import ModelProto, TensorProto, helper


def passthrough_detector() -> ModelProto:
    """An opset-17 ONNX detector whose outputs are its inputs: boxes [N, A, 4] and scores [N, A, C]."""
    g = helper.make_graph(
        [helper.make_node("Identity", ["b_in"], ["boxes"]), helper.make_node("Identity", ["s_in"], ["scores"])], "det",
        [helper.make_tensor_value_info("b_in", TensorProto.FLOAT, ["N", "A", 4]),
         helper.make_tensor_value_info("s_in", TensorProto.FLOAT, ["N", "A", "C"])],
        [helper.make_tensor_value_info("boxes", TensorProto.FLOAT, ["N", "A", 4]),
         helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", "A", "C"])])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def cfg_sections(text: str) -> list[tuple[str, dict[str, str]]]:
    """[(type, options)] of a darknet cfg text, '#' / ';' comment lines skipped; the order of options is ignored
    (darknet reads them into a list it searches)."""
    out: list[tuple[str, dict[str, str]]] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            out.append((line[1:-1].strip(), {}))
        else:
            k, v = line.split("=", 1)
            out[-1][1][k.strip()] = v.strip()
    return out
