"""Fixtures shared by the unit tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def tiny_offline(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny offline detection set (20 images: 14 train, 3 val, 3 test; data/offline_detection.py, seed 0), with
    ENGINESMITH_CACHE pointing at a fresh cache directory for the module (restored afterwards)."""
    from enginesmith.data.offline_detection import generate_offline_dataset

    root = generate_offline_dataset(tmp_path_factory.mktemp("tiny") / "offline", images=20, seed=0)
    cache = tmp_path_factory.mktemp("cache")
    old = os.environ.get("ENGINESMITH_CACHE")
    os.environ["ENGINESMITH_CACHE"] = str(cache)
    yield root
    if old is None:
        os.environ.pop("ENGINESMITH_CACHE", None)
    else:
        os.environ["ENGINESMITH_CACHE"] = old
