"""enginesmith: an edge deployment compiler for the classic CNNs (PyTorch -> ONNX -> engine)."""

__version__ = "0.1.0"
