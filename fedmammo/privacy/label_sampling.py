"""Poisson sampling with one rate per label: label-balanced batches that DP-SGD can account.

A recipe's ``balanced_labels`` sampler draws fixed batches with as many examples of each label,
which the accountant's Poisson bound does not cover. Under DP the batches are Poisson-sampled
instead; with one rate for every example, a centre with 10% positives sees 10% positives per
step, and on this project's centres DP-SGD then learns nothing at any budget
(docs/privacy_budget.md). Here every example of label ``c`` joins a step independently with
rate ``q_c = B / (K n_c)`` (capped at 1): ``B = n / steps`` is the expected batch of uniform
Poisson sampling at rate ``1 / steps``, ``K`` the number of labels present and ``n_c`` their
counts, so each label is expected ``B / K`` times per step. Balanced labels give every example
rate ``1 / steps``, the uniform sampler's.

Accounting: an example joins a step with probability at most ``q_max = max_c q_c``, and the
privacy loss of the Poisson-subsampled Gaussian mechanism grows with the sampling rate, so
every step is accounted at ``q_max`` (for the minority label, its own rate; for the others, an
upper bound). The rates use the training set's label counts, which are treated as public, as
Opacus treats the dataset size that its rate ``1 / steps`` is made of.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import Sampler

__all__ = ["LabelPoissonSampler", "epoch_label_rates", "label_rates"]


def label_rates(labels: Any, expected_batch: float) -> np.ndarray:
    """Per-example Poisson rates that expect every label ``expected_batch / K`` times a step.

    ``expected_batch`` is the uniform sampler's expected batch (``n / steps`` for rate ``1 /
    steps``); a label with fewer examples than its share joins every step (rate 1).
    """
    labels = np.asarray(labels)
    if labels.ndim != 1 or len(labels) == 0:
        raise ValueError(f"labels must be a non-empty 1-D array, got shape {labels.shape}")
    if not expected_batch > 0:
        raise ValueError(f"the expected batch must be > 0, got {expected_batch}")
    values, index, counts = np.unique(labels, return_inverse=True, return_counts=True)
    per_label = np.minimum(1.0, float(expected_batch) / (len(values) * counts))
    return per_label[index.ravel()]


def epoch_label_rates(labels: Any, steps: int) -> np.ndarray:
    """:func:`label_rates` for ``steps`` steps per epoch (expected batch ``n / steps``): the
    rates a DP round samples with, and whose largest its budget check plans at."""
    return label_rates(labels, len(labels) / int(steps))


class LabelPoissonSampler(Sampler[list[int]]):
    """``steps`` Poisson batches, example ``i`` in each with probability ``rates[i]``.

    ``sample_rate`` (the largest rate) is the rate the accountant charges every step;
    ``expected_batch_size`` (the rates' sum) is what Opacus divides the noisy sum by.
    ``drawn`` counts the batches drawn, as the uniform sampler of ``engine`` does.
    """

    def __init__(self, rates: np.ndarray, *, steps: int, generator: torch.Generator) -> None:
        self.rates = torch.as_tensor(np.asarray(rates, dtype=np.float64))
        if self.rates.ndim != 1 or len(self.rates) == 0:
            raise ValueError("rates must be a non-empty 1-D array")
        if bool(((self.rates <= 0) | (self.rates > 1)).any()):
            raise ValueError("every rate must be in (0, 1]")
        self.steps, self.generator, self.drawn = int(steps), generator, 0
        self.sample_rate = float(self.rates.max())
        self.expected_batch_size = float(self.rates.sum())

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator[list[int]]:
        for _ in range(self.steps):
            mask = torch.rand(len(self.rates), generator=self.generator, dtype=torch.float64)
            self.drawn += 1
            yield torch.nonzero(mask < self.rates).flatten().tolist()
