"""One module per engine (onnxruntime, openvino, tensorrt) plus the PyTorch baselines (torch, torch_compile).

`targets.py` is the table of engine targets and precisions: find a backend through `TARGETS[name].backend`
(or `get_target(name)`, which names the choices when the name is unknown). Importing this package or the
table imports no engine library: each backend module imports its native library inside its functions.
"""
