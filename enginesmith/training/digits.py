"""Short, deterministic training runs that give real (not random) weights without downloads.

`train_lenet5` trains LeNet-5 on the scikit-learn digits with the model's own numpy preprocessing
(`preprocess_batch(images, spec.preprocess)`), so the trained network sees exactly what the engine
will be fed at inference and calibration.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from enginesmith.data.digits import DigitsSplit
from enginesmith.models import registry
from enginesmith.runtime.preprocess import preprocess_batch


def evaluate_top1(model: nn.Module, x: np.ndarray, labels: np.ndarray, batch_size: int = 512) -> float:
    """Top-1 accuracy of `model` on preprocessed inputs x [N, C, H, W] float32."""
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            logits = model(torch.from_numpy(x[i : i + batch_size]))
            correct += int((logits.argmax(1).numpy() == labels[i : i + batch_size]).sum())
    return correct / max(1, len(x))


def train_lenet5(
    digits: DigitsSplit, epochs: int = 15, seed: int = 0, lr: float = 2e-3, batch_size: int = 32
) -> tuple[nn.Module, float]:
    """Train LeNet-5 (Adam, cross-entropy) on digits.train_*; returns (model in eval mode, test top-1).

    Deterministic for a given seed (init, shuffling); ~2-3 s on 2 CPU cores; ~0.97 test top-1 (seeds 0-2).
    """
    spec = registry.get("lenet5")
    x_train = preprocess_batch(list(digits.train_images), spec.preprocess)
    x_test = preprocess_batch(list(digits.test_images), spec.preprocess)
    y_train = torch.from_numpy(np.array(digits.train_labels, dtype=np.int64))

    # LeNet-5 is tiny: one thread is as fast as two and does not collapse when the CPU is shared.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = _fit(spec.create(seed=seed), torch.from_numpy(x_train), y_train, epochs, seed, lr, batch_size)
    finally:
        torch.set_num_threads(threads)
    return model, evaluate_top1(model, x_test, np.asarray(digits.test_labels))


def _fit(
    model: nn.Module, xt: torch.Tensor, y_train: torch.Tensor, epochs: int, seed: int, lr: float, batch_size: int
) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(xt), generator=gen)
        for i in range(0, len(order), batch_size):
            idx = order[i : i + batch_size]
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(xt[idx]), y_train[idx])
            loss.backward()
            opt.step()
        sched.step()
    return model.eval()
