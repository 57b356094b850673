"""Local training and prediction for binary image classifiers (no Flower imports)."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from fedmammo.data.sampling import build_sampler
from fedmammo.errors import DataError
from fedmammo.training.augment import vertical_flips
from fedmammo.training.runtime import Runtime, keep_freed_memory, seed_torch

__all__ = ["TrainResult", "augment_batch", "predict_scores", "train_classifier"]

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What one local training call did."""

    num_examples: int
    steps: int
    loss: float
    seconds: float
    epsilon: float | None = None
    optimizer_state: dict | None = None  # the optimiser's state_dict after the last step


def augment_batch(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Per-sample vertical flips (:func:`~fedmammo.training.augment.vertical_flips`), then one
    circular vertical shift of the whole batch by up to 1/16 of the height."""
    x = vertical_flips(x, generator)
    max_shift = max(1, x.shape[-2] // 16)
    dy = int(torch.randint(-max_shift, max_shift + 1, (1,), generator=generator))
    return torch.roll(x, shifts=dy, dims=-2)


def _optimizer(model: nn.Module, params: Any) -> torch.optim.Optimizer:
    trainable = [p for p in model.parameters() if p.requires_grad]
    if params.optimizer == "sgd":
        return torch.optim.SGD(
            trainable, lr=params.lr, momentum=params.momentum, weight_decay=params.weight_decay
        )
    return torch.optim.Adam(trainable, lr=params.lr, weight_decay=params.weight_decay)


def train_classifier(
    model: nn.Module,
    dataset: Dataset,
    labels: np.ndarray,
    segments: Sequence[str],
    *,
    params: Any,
    seed: int,
    device: str | torch.device = "cpu",
    privacy: Any | None = None,
    batch_sampler: Any | None = None,
    runtime: Runtime | None = None,
    optimizer_state: dict | None = None,
) -> TrainResult:
    """Train ``model`` in place on ``dataset`` with the recipe's sampler and optimiser.

    ``params`` is a :class:`fedmammo.config.recipe.LocalTrainingParams`. ``batch_sampler``
    overrides the recipe's sampler (federated periodic sampling passes its quota sampler).
    ``privacy`` is a :class:`fedmammo.privacy.engine.DPSession` or None. ``runtime`` (a
    :class:`~fedmammo.training.runtime.Runtime`) overrides ``device`` and turns on mixed
    precision, channels_last and pinned memory; None keeps the plain float32 loop.
    ``optimizer_state`` (a previous result's ``optimizer_state``) continues that optimiser
    (Adam's moments and step count) instead of starting a fresh one.
    """
    start = time.perf_counter()
    gen = seed_torch(seed)
    labels = np.asarray(labels)
    n = len(labels)
    if n == 0:
        raise DataError(
            "no training examples: the training split holds no image with a label (malignancy "
            "labels missing, or too few images for the split); fix: give the centre labels "
            "(docs/datasets.md) or make it a test centre"
        )
    steps_per_epoch = params.steps_per_epoch or math.ceil(n / params.batch_size)
    run = runtime or Runtime(device=str(device))
    if privacy is not None:
        run.check_dp()
        keep_freed_memory()  # DP steps churn tens of MB: keep the heap (see runtime)
    run.prepare(model).train()
    optimizer = base_optimizer = _optimizer(model, params)
    if optimizer_state is not None:
        base_optimizer.load_state_dict(optimizer_state)
    epochs = params.epochs
    # Under DP the recipe's balanced batches become Poisson ones with a rate per label.
    balanced = batch_sampler is None and params.sampler == "balanced_labels"
    if batch_sampler is None:
        batch_sampler = build_sampler(
            params.sampler,
            segments=np.asarray(segments),
            labels=labels,
            batch_size=params.batch_size,
            num_batches=steps_per_epoch,
            seed=seed,
        )
    loader = DataLoader(dataset, batch_sampler=batch_sampler, **run.loader_kwargs())
    if privacy is not None:
        by_label = {"labels": labels} if balanced else {}
        model, optimizer, loader = privacy.attach(model, optimizer, loader, **by_label)
    backward = getattr(privacy, "backward", Tensor.backward)
    scaler = run.scaler()
    steps, total_loss, seen = 0, 0.0, 0
    for epoch in range(epochs):
        if hasattr(getattr(loader, "batch_sampler", None), "set_epoch"):
            loader.batch_sampler.set_epoch(epoch)
        for x, y in loader:
            if len(y) == 0:  # Poisson sampling can draw an empty batch
                continue
            x, y = run.batch(x), run.batch(y)
            if params.augment:
                x = augment_batch(x, gen)
            optimizer.zero_grad(set_to_none=True)
            with run.autocast():
                loss = F.cross_entropy(model(x), y)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            else:
                backward(loss)
                optimizer.step()
            steps += 1
            seen += len(y)
            total_loss += float(loss.detach()) * len(y)
    epsilon = privacy.after_training(steps) if privacy is not None else None
    return TrainResult(
        num_examples=seen,
        steps=steps,
        loss=total_loss / max(seen, 1),
        seconds=time.perf_counter() - start,
        epsilon=epsilon,
        optimizer_state=base_optimizer.state_dict(),
    )


@torch.no_grad()
def predict_scores(
    model: nn.Module,
    dataset: Dataset,
    *,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    runtime: Runtime | None = None,
) -> np.ndarray:
    """Probability of class 1 for every item of ``dataset``, in order."""
    run = runtime or Runtime(device=str(device))
    run.prepare(model).eval()
    out: list[np.ndarray] = []
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, **run.loader_kwargs())
    for x, _ in loader:
        with run.autocast():
            logits = model(run.batch(x))
        out.append(torch.softmax(logits.float(), dim=1)[:, 1].cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)
