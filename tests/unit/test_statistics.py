"""Streaming activation statistics vs naive in-memory references (real ONNX Runtime)."""

from __future__ import annotations

import tracemalloc

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from enginesmith.calibration.statistics import activation_ranges, kl_threshold_bin, quantizable_tensors


def _conv_model(path, seed=0):
    """x[N,3,16,16] -> Conv -> Relu -> Conv -> (decode: Mul, Sigmoid, Concat named "out")."""
    rng = np.random.default_rng(seed)
    w1 = numpy_helper.from_array(rng.normal(0, 0.5, (8, 3, 3, 3)).astype(np.float32), "w1")
    b1 = numpy_helper.from_array(rng.normal(0, 0.1, (8,)).astype(np.float32), "b1")
    w2 = numpy_helper.from_array(rng.normal(0, 0.3, (4, 8, 3, 3)).astype(np.float32), "w2")
    k = numpy_helper.from_array(np.array(2.0, np.float32), "k")
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="/body/conv1/Conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="/body/relu1/Relu"),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], name="/head/Conv", pads=[1, 1, 1, 1]),
        helper.make_node("Mul", ["c2", "k"], ["m"], name="/decode/Mul"),
        helper.make_node("Sigmoid", ["c2"], ["s"], name="/decode/Sigmoid"),
        helper.make_node("Concat", ["m", "s"], ["out"], name="out", axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 16, 16])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["n", 8, 16, 16])],
        [w1, b1, w2, k],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, path)
    return path


def _batches(seed, n_batches=5, batch=4):
    rng = np.random.default_rng(seed)
    data = [(rng.standard_normal((batch, 3, 16, 16)) * rng.uniform(0.5, 2)).astype(np.float32) for _ in range(n_batches)]
    return lambda: iter(data), data


def _naive_activations(path, data, names):
    import onnxruntime as ort

    m = onnx.load(path)
    for n in names:
        if n not in {o.name for o in m.graph.output} and n != "x":
            m.graph.output.append(helper.make_tensor_value_info(n, TensorProto.FLOAT, None))
    s = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    fetch = [n for n in names if n != "x"]
    acts = {n: [] for n in names}
    for b in data:
        for n, v in zip(fetch, s.run(fetch, {"x": b})):
            acts[n].append(v.ravel())
        if "x" in acts:
            acts["x"].append(b.ravel())
    return {n: np.concatenate(v) for n, v in acts.items()}


def test_quantizable_tensors_skip_decode(tmp_path):
    p = _conv_model(str(tmp_path / "m.onnx"))
    assert quantizable_tensors(p) == ["x", "c1", "r1", "c2"]
    assert quantizable_tensors(p, op_types=("Conv", "Mul")) == ["x", "c1", "r1", "c2"]  # Mul is decode
    assert "m" in quantizable_tensors(p, op_types=("Conv", "Mul"), exclude_patterns=())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_minmax_and_percentile_match_numpy(tmp_path, seed):
    p = _conv_model(str(tmp_path / "m.onnx"), seed)
    factory, data = _batches(seed)
    names = quantizable_tensors(p) + ["s"]
    ref = _naive_activations(p, data, names)
    mm = activation_ranges(p, factory, names, "minmax")
    for n in names:
        assert mm[n] == pytest.approx((ref[n].min(), ref[n].max()), rel=1e-6, abs=1e-6)
    pc = activation_ranges(p, factory, names, "percentile", percentile=99.9, num_bins=4096)
    for n in names:
        x = ref[n]
        amax = np.abs(x).max()
        tol = float(2 * amax / 4096)
        if x.min() >= 0:  # one-sided: (min, P-th percentile of x)
            assert pc[n][0] == pytest.approx(x.min(), abs=1e-6)
            assert pc[n][1] == pytest.approx(np.quantile(x, 0.999, method="inverted_cdf"), abs=tol)
        else:  # symmetric |x| percentile
            t = np.quantile(np.abs(x), 0.999, method="inverted_cdf")  # within one bin
            assert pc[n][1] == pytest.approx(t, abs=tol) and pc[n][0] == -pc[n][1]
    assert pc["r1"][0] == 0.0 and pc["s"][0] >= 0  # ReLU and Sigmoid are one-sided


def _kl_reference(hist, nq=128):
    """Loop-by-loop transcription of TensorRT/pytorch-quantization _compute_amax_entropy."""
    hist = [float(h) for h in hist]
    best_i, best = None, None
    for i in range(nq, len(hist) + 1):
        space = np.linspace(0, i, num=nq + 1)
        level = [int(np.digitize(j, space)) - 1 for j in range(i)]
        level = [lv if hist[j] != 0 else -1 for j, lv in enumerate(level)]
        sums, counts = [0.0] * nq, [0] * nq
        for j in range(i):
            if level[j] != -1:
                sums[level[j]] += hist[j]
                counts[level[j]] += 1
        q = [sums[level[j]] / counts[level[j]] if level[j] != -1 else 0.0 for j in range(i)]
        p = hist[:i]
        p[-1] += sum(hist[i:])
        sp, sq = sum(p), sum(q)
        kl = 0.0
        for pj, qj in zip(p, q):
            if pj > 0:
                if qj == 0:
                    kl = float("inf")
                    break
                kl += (pj / sp) * np.log((pj / sp) / (qj / sq))
        if best is None or kl <= best:
            best, best_i = kl, i
    return best_i


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_entropy_threshold_matches_loop_reference(seed):
    rng = np.random.default_rng(seed)
    x = np.abs(np.concatenate([rng.laplace(0, 1, 20000), rng.normal(0, 8, 50) * (seed + 1)]))
    hist, _ = np.histogram(x, bins=400, range=(0, x.max()))
    if seed == 3:
        hist[::7] = 0  # empty bins exercise the zero handling
    assert kl_threshold_bin(hist) == _kl_reference(hist)


def test_entropy_ranges_end_to_end(tmp_path):
    p = _conv_model(str(tmp_path / "m.onnx"), 0)
    factory, data = _batches(0)
    names = ["c1", "r1"]
    ref = _naive_activations(p, data, names)
    ent = activation_ranges(p, factory, names, "entropy", num_bins=512)
    for n in names:
        x = ref[n]
        amax = np.abs(x).max()
        hist, _ = np.histogram(np.abs(x), bins=512, range=(0, amax))
        t = _kl_reference(hist) * amax / 512
        assert ent[n][1] == pytest.approx(t, rel=1e-5)
        assert ent[n][0] == (pytest.approx(x.min()) if x.min() >= 0 else -ent[n][1])


def test_memory_flat_in_number_of_batches(tmp_path, capsys):
    p = _conv_model(str(tmp_path / "m.onnx"), 0)
    rng = np.random.default_rng(0)
    batch = rng.standard_normal((8, 3, 16, 16)).astype(np.float32)

    def factory(n):
        return lambda: (batch.copy() for _ in range(n))

    peaks = {}
    for n in (8, 64):
        tracemalloc.start()
        activation_ranges(p, factory(n), None, "percentile")
        peaks[n] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    with capsys.disabled():
        print(f"\n[statistics peak traced memory] 8 batches: {peaks[8] / 1e6:.2f} MB, 64 batches: {peaks[64] / 1e6:.2f} MB")
    # 56 extra batches of activations would add > 4 MB if anything were kept
    assert peaks[64] < peaks[8] * 1.5 + 1e6
