"""Evaluation: detection/COCO/classification metrics, the prediction loop over an engine, latency timing.

numpy only (pycocotools on first COCO use); imports runtime/ and below, never models/, data/ or torch.
"""
