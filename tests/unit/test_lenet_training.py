"""LeNet-5 trained on scikit-learn's digits through the shared numpy preprocessing."""

from __future__ import annotations


import numpy as np
import torch

from enginesmith.data.digits import load_digits_32
from enginesmith.models import registry
from enginesmith.training.digits import train_lenet5
from enginesmith.runtime.preprocess import preprocess_batch


def test_digits_split_is_stratified_and_fixed() -> None:
    d = load_digits_32()
    assert d.train_images.shape == (1437, 32, 32, 3) and d.train_images.dtype == np.uint8
    assert d.test_images.shape == (360, 32, 32, 3)
    assert d.train_labels.dtype == np.int64 and set(d.test_labels.tolist()) == set(range(10))
    # gray replicated, ink bright on a dark background, full 0..255 range
    assert np.array_equal(d.train_images[..., 0], d.train_images[..., 2])
    assert d.train_images.max() >= 250 and d.train_images[:, :, 0].mean() < d.train_images[:, 12:20].mean()
    # stratified: every class keeps ~20% in test
    counts = np.bincount(d.test_labels, minlength=10)
    assert counts.min() >= 34 and counts.max() <= 38
    assert load_digits_32() is d  # cached
    assert np.array_equal(load_digits_32(seed=1).test_labels, d.test_labels) is False


def test_lenet5_trains_to_95_percent_deterministically() -> None:
    d = load_digits_32()
    model, top1 = train_lenet5(d, seed=0)
    assert top1 >= 0.95, top1
    # test top-1 recomputed independently from the returned model and the spec's preprocessing
    spec = registry.get("lenet5")
    x = torch.from_numpy(preprocess_batch(list(d.test_images), spec.preprocess))
    with torch.no_grad():
        pred = model(x).argmax(1).numpy()
    assert abs(float((pred == d.test_labels).mean()) - top1) < 1e-9
    # same seed, same weights
    model2, _ = train_lenet5(d, seed=0, epochs=1)
    model3, _ = train_lenet5(d, seed=0, epochs=1)
    for a, b in zip(model2.state_dict().values(), model3.state_dict().values()):
        assert torch.equal(a, b)
