"""INT8 ONNX Runtime experiments on a trained detector: which quantizer setting loses the mAP.
usage: int8_onnxruntime_variants.py FP32_ENGINE_DIR DATASET SPLIT [METHOD[:trt|:fullrange|:s8s8|:pertensor|:keep=NODE,...] ...]
Environment: FP32=points skips the FP32 run; EXTRA="a.onnx b.onnx" also evaluates ready Q/DQ models; EXP_OUT=folder (build/int8-exp)."""
import json, os, sys, time
from pathlib import Path
import numpy as np
import onnxruntime as ort
from onnxruntime.quantization import QuantType
from enginesmith.pipeline.accuracy import load_validation, measure
from enginesmith.calibration.qdq import calibration_tensors, quantize_qdq, _qdq_config
from enginesmith.calibration.sources import calibration_source, calibration_batches
from enginesmith.calibration.statistics import activation_ranges
from enginesmith.runtime.preprocess import PreprocessSpec

eng, data = Path(sys.argv[1]), Path(sys.argv[2])
split = sys.argv[3]
variants = sys.argv[4:]
man = json.loads((eng / "manifest.json").read_text())
spec = PreprocessSpec.from_dict(man["preprocess"])
onnx_fp32 = eng / man["engine"]
val = load_validation(data, "detection", split)
src = calibration_source(data, "photos", 300)
out = Path(os.environ.get("EXP_OUT", "build/int8-exp")); out.mkdir(parents=True, exist_ok=True)
rcache = {}
def ranges(method, symmetric):
    """The ranges the pipeline's statistics stage computes: of qdq.calibration_tensors for the form (:trt =
    TensorRT's placement, the tensors it quantizes)."""
    key = f"{method}-trt" if symmetric else method
    if key not in rcache:
        f = out / f"ranges-{key}.json"
        if f.exists():
            rcache[key] = {k: tuple(v) for k, v in json.loads(f.read_text()).items()}
        else:
            t = time.time()
            names = calibration_tensors(onnx_fp32, symmetric=symmetric)
            r = activation_ranges(onnx_fp32, lambda: calibration_batches(src, spec, 1), names, method=method)
            f.write_text(json.dumps(r)); rcache[key] = r
            print(f"ranges {key} {time.time()-t:.0f}s", flush=True)
    return rcache[key]

def run(onnx_path):
    so = ort.SessionOptions(); so.intra_op_num_threads = 2
    s = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
    names = [o.name for o in s.get_outputs()]; inp = s.get_inputs()[0].name
    def infer(x):
        return dict(zip(names, s.run(None, {inp: x})))
    return measure(infer, 1, val, spec)["value"]

import os; base = float(os.environ["FP32"]) if "FP32" in os.environ else run(onnx_fp32)
print(f"fp32 {base:.2f}", flush=True)
for v in variants:
    method, *opts = v.split(":")
    symmetric = "trt" in opts  # TensorRT's form: int8 symmetric activations and weights, zero points 0
    cfg = _qdq_config(symmetric)
    per_channel = True
    kw = {}
    for o in opts:
        if o == "fullrange": cfg["reduce_range"] = False
        if o == "s8s8": cfg["activation_type"] = QuantType.QInt8; cfg["extra_options"] = {**cfg["extra_options"], "ActivationSymmetric": True}
        if o == "pertensor": per_channel = False
        if o.startswith("keep="): kw["keep_float"] = o[5:].split(",")
    dst = out / f"{v.replace(':','_').replace('/','_').replace(',','_')[:80]}.onnx"
    t = time.time()
    info = quantize_qdq(onnx_fp32, dst, ranges(method, symmetric), symmetric=symmetric, per_channel=per_channel, _config=cfg, **kw)
    m = run(dst)
    print(f"{v}: mAP {m:.2f} drop {base-m:+.2f} ({time.time()-t:.0f}s) qdq={info['qdq_pairs']} decode_kept={info['decode_inputs_kept_float']}", flush=True)
for extra in os.environ.get("EXTRA", "").split():
    m = run(Path(extra))
    print(f"{extra}: mAP {m:.2f} drop {base-m:+.2f}", flush=True)
