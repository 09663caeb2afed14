"""The roofline probe (benchmarks/roofline.py): its MAC count against counts made without it (by hand, from the
ONNX graph's shapes, and by models/profile.py's hooks), its ONNX against a numpy convolution, and its engines built
through the real precision stage and backends (NNCF FakeQuantize for OpenVINO INT8, Q/DQ for ONNX Runtime INT8,
OpenVINO bf16 running bf16). Real ONNX, ONNX Runtime and OpenVINO; nothing is mocked."""

from __future__ import annotations

import numpy as np
import pytest

from enginesmith.benchmarks.roofline import (INPUT_NAME, OUTPUT_NAME, STACKS, ProbeStack, Roofline, build_probe,
                                             measure_probe, probe_inputs, probe_job, probe_key, probe_onnx,
                                             probe_targets)
from enginesmith.benchmarks.timing import TimingProfile
from enginesmith.errors import EnginesmithError

TINY = ProbeStack(channels=3, size=5, convs=2)
SMALL = ProbeStack(channels=16, size=8, convs=2)  # big enough for every quantizer to quantize its convolutions
FAST = TimingProfile(warmup_iterations=1, warmup_s=0.0, min_iterations=3, min_time_s=0.0)


def _graph_macs(model) -> int:
    """MACs of every Conv from the ONNX graph alone: output elements (shape inference) x input channels per group x
    kernel taps (the weight's shape)."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in [*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input]}
    weights = {t.name: list(t.dims) for t in model.graph.initializer}
    total = 0
    for node in model.graph.node:
        if node.op_type == "Conv":
            out_ch, in_per_group, kh, kw = weights[node.input[1]]
            total += int(np.prod(shapes[node.output[0]])) * in_per_group * kh * kw
    return total


def test_probe_macs_by_hand_from_the_graph_and_by_the_projects_counter(tmp_path):
    # 4 convs x 52 x 52 output pixels x 256 out x 256 in x 9 taps; 26 x 26 x 512 x 512 is the same product
    assert [s.macs for s in STACKS] == [6_379_536_384, 6_379_536_384]
    assert TINY.macs == 2 * 5 * 5 * 3 * 3 * 9
    for stack in (*STACKS, TINY, ProbeStack(64, 13, 3)):
        assert _graph_macs(probe_onnx(stack)) == stack.macs, stack
    pytest.importorskip("torch")
    from enginesmith.benchmarks.roofline import _torch_probe
    from enginesmith.models.profile import profile_forward

    import onnx

    for stack in (TINY, ProbeStack(64, 13, 3)):
        path = str(tmp_path / f"probe-{stack.channels}-{stack.size}.onnx")
        onnx.save(probe_onnx(stack), path)
        assert profile_forward(_torch_probe(path).model, stack.shape[1:])[0] == stack.macs


def _numpy_probe(model, x: np.ndarray) -> np.ndarray:
    """The probe by hand: per conv, zero-pad by 1 and sum weight x shifted input over input channels and the 3 x 3
    taps, add the bias, ReLU."""
    from onnx import numpy_helper

    weights = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in model.graph.initializer}
    a = x[0].astype(np.float64)
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    for node in convs:
        w, b = weights[node.input[1]], weights[node.input[2]]
        _, h, wd = a.shape
        padded = np.pad(a, ((0, 0), (1, 1), (1, 1)))
        out = np.zeros((w.shape[0], h, wd))
        for o in range(w.shape[0]):
            for i in range(w.shape[1]):
                for ky in range(3):
                    for kx in range(3):
                        out[o] += w[o, i, ky, kx] * padded[i, ky:ky + h, kx:kx + wd]
            out[o] += b[o]
        a = np.maximum(out, 0.0)
    return a[None]


def test_probe_onnx_computes_the_convolutions_a_numpy_loop_computes(tmp_path):
    import onnxruntime as ort

    model = probe_onnx(TINY)  # the seed build_probe uses
    assert [n.op_type for n in model.graph.node] == ["Conv", "Relu", "Conv", "Relu"]
    x = probe_inputs(TINY, 1)[0]
    assert x.shape == (1, 3, 5, 5) and x.min() >= 0
    expected = _numpy_probe(model, x)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    got = sess.run([OUTPUT_NAME], {INPUT_NAME: x})[0]
    assert got.shape == expected.shape and np.abs(expected).max() > 0.1
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    # the OpenVINO FP32 engine of the same probe, built and run through the backend
    from enginesmith.backends.targets import TARGETS

    engine = build_probe("openvino", "fp32", TINY, tmp_path / "ov")
    with TARGETS["openvino"].runner(engine, "fp32") as runner:
        np.testing.assert_allclose(runner.infer({INPUT_NAME: x})[OUTPUT_NAME], expected, rtol=1e-4, atol=1e-4)


def test_int8_probes_go_through_each_targets_own_quantizer(tmp_path):
    import onnx
    import openvino as ov

    ir = build_probe("openvino", "int8", SMALL, tmp_path / "ov")
    ops = [op.get_type_name() for op in ov.Core().read_model(str(ir)).get_ordered_ops()]
    assert ops.count("FakeQuantize") >= SMALL.convs  # NNCF: the input of every convolution (and its weights)
    qdq = build_probe("onnxruntime", "int8", SMALL, tmp_path / "ort")
    types = [n.op_type for n in onnx.load(str(qdq)).graph.node]
    assert types.count("QuantizeLinear") >= SMALL.convs and types.count("Conv") == SMALL.convs
    assert build_probe("openvino", "mixed", SMALL, tmp_path / "mixed").is_file()  # mixed is built as int8
    assert probe_key("openvino", "mixed") == probe_key("openvino", "int8") == "openvino/int8"


def test_measured_gmacs_are_the_stacks_macs_over_the_median_call_and_bf16_runs_bf16(tmp_path):
    from enginesmith.backends.targets import TARGETS
    from enginesmith.benchmarks.bench import measure_isolated

    runs_bf16 = TARGETS["openvino"].precision_runs_here("bf16")[0]
    for precision in ("fp32", "int8", *(("bf16",) if runs_bf16 else ())):
        engine = build_probe("openvino", precision, SMALL, tmp_path / precision)
        job = probe_job("openvino", precision, [(SMALL, engine)], FAST)
        # int8 as the bench runs it: in a child process (bench.measure_isolated), as torch-free as an engine's
        result = measure_isolated(job, 300.0) if precision == "int8" else measure_probe(job)
        (s,) = result["stacks"]
        assert s["iterations"] >= 3 and s["macs"] == SMALL.macs
        assert s["gmacs_per_s"] == pytest.approx(SMALL.macs / (s["p50_ms"] * 1e6))
        assert s["inference_precision"] == {"fp32": "f32", "int8": "f32", "bf16": "bf16"}[precision]
        if precision == "int8":
            assert result["torch_imported"] is False


def test_gpu_targets_have_no_probe_and_a_failed_probe_leaves_no_ceiling():
    assert probe_targets("openvino") and probe_targets("onnxruntime") and probe_targets("torch")
    assert not probe_targets("tensorrt") and not probe_targets("torch-cuda") and not probe_targets("torch-compile")
    calls = []

    def fail(job):
        calls.append(job["key"])
        raise EnginesmithError("the probe's engine crashed")

    with Roofline(FAST, fail, stacks=(TINY,)) as roof:
        assert roof.ceiling("tensorrt", "int8") is None and roof.probes == {}
        assert roof.ceiling("onnxruntime", "fp32") is None
        assert roof.ceiling("onnxruntime", "fp32") is None  # measured once per run, failure included
        assert calls == ["roofline probe onnxruntime/fp32"]
        entry = roof.to_dict(quick=True)["probes"]["onnxruntime/fp32"]
        assert entry["error"] == "the probe's engine crashed" and entry["gmacs_per_s"] is None
        assert roof.ceilings() == {"onnxruntime/fp32": None}
        folder = roof._tmp
        assert folder.is_dir()
    assert not folder.exists()  # probe engines are not kept: nothing is cached across runs


def test_the_command_line_measures_the_probe_alone_in_child_processes(capsys):
    from enginesmith.benchmarks.roofline import main

    roof = main(["--targets", "onnxruntime,tensorrt", "--precisions", "fp32", "--quick"])
    (probe,) = roof["probes"].values()
    assert probe["target"] == "onnxruntime" and probe["error"] is None and len(probe["stacks"]) == 2
    assert probe["gmacs_per_s"] == max(s["gmacs_per_s"] for s in probe["stacks"]) > 0
    assert roof["command"] == "python -m enginesmith.benchmarks.roofline --targets onnxruntime --precisions fp32 --quick"
    out = capsys.readouterr().out
    assert "roofline probe onnxruntime/fp32: " in out and "skipped tensorrt: a GPU target has no probe" in out
