"""Bootstrap CIs for any per-sample statistic (accuracy, detection AP), same draws as AUC's.

Resamples use :mod:`fedmammo.evaluation.metrics`' index stream (``default_rng(seed)``,
``n`` indices with replacement per resample) and its percentile CI, so an accuracy and an AUC
bootstrapped with the same seed see the same resamples.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from fedmammo.errors import DataError
from fedmammo.evaluation.metrics import (
    MIN_UNITS_PER_CLASS,
    _bootstrap_indices,
    _check_boot,
    _percentile_ci,
    _resample_counts,
    group_codes,
)
from fedmammo.progress import progress

__all__ = ["accuracy_ci", "bootstrap_mean", "bootstrap_statistic"]


def _too_few(n: int, groups: Any) -> bool:
    """Fewer than :data:`~fedmammo.evaluation.metrics.MIN_UNITS_PER_CLASS` units (patients
    with ``groups``, else samples) to resample: no CI (with 2 patients a "95%" percentile CI
    of an accuracy covered 49% in simulation; docs/report.md)."""
    units = n if groups is None else int(np.unique(group_codes(groups, n)).size)
    return units < MIN_UNITS_PER_CLASS


def bootstrap_statistic(
    statistic: Callable[[np.ndarray], float],
    n: int,
    *,
    n_boot: int = 2000,
    seed: int = 0,
    groups: Any = None,
    confidence: float = 0.95,
) -> tuple[float, float, float]:
    """Return (value, CI low, CI high) of ``statistic(index)`` over resamples of ``range(n)``.

    ``statistic`` takes an int index array (a multiset of the n samples) and returns a float
    (NaN for an undefined resample: skipped). With ``groups`` (one key per sample: its
    patient) whole patients are resampled, as by :func:`~fedmammo.evaluation.metrics.
    bootstrap_auc`. ``n_boot=0`` or fewer than 5 units (:func:`_too_few`): CI NaN.
    """
    if n < 1:
        raise DataError("no samples to evaluate")
    _check_boot(n_boot, confidence)
    value = float(statistic(np.arange(n)))
    if n_boot == 0 or _too_few(n, groups):
        return value, math.nan, math.nan
    if groups is None:
        rows = (row for chunk in _bootstrap_indices(n, n_boot, seed) for row in chunk)
    else:
        every = np.arange(n)
        rows = (
            np.repeat(every, row)
            for chunk in _resample_counts(n, n_boot, seed, groups)
            for row in chunk
        )
    boots = np.array(
        [statistic(row) for row in progress(rows, "bootstrap resamples", total=n_boot)],
        dtype=np.float64,
    )
    low, high = _percentile_ci(boots, confidence)
    return value, low, high


def bootstrap_mean(
    values: Any,
    *,
    n_boot: int = 2000,
    seed: int = 0,
    groups: Any = None,
    confidence: float = 0.95,
) -> tuple[float, float, float]:
    """Return (mean, CI low, CI high) of per-sample ``values`` (vectorised resamples); with
    ``groups`` (one key per sample: its patient) whole patients are resampled and each
    resample's mean is over the samples it drew. ``n_boot=0`` or fewer than 5 units
    (:func:`_too_few`): CI NaN."""
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1 or v.size == 0:
        raise DataError(f"bootstrap_mean: expected a non-empty 1-D array, got shape {v.shape}")
    _check_boot(n_boot, confidence)
    if n_boot == 0 or _too_few(v.size, groups):
        return float(v.mean()), math.nan, math.nan
    if groups is None:
        chunks = [v[c].mean(axis=1) for c in _bootstrap_indices(v.size, n_boot, seed)]
    else:
        chunks = [
            (counts @ v) / counts.sum(axis=1)
            for counts in _resample_counts(v.size, n_boot, seed, groups)
        ]
    boots = np.concatenate(chunks)
    low, high = _percentile_ci(boots, confidence)
    return float(v.mean()), low, high


def accuracy_ci(
    y_true: Any,
    y_pred: Any,
    *,
    n_boot: int = 2000,
    seed: int = 0,
    groups: Any = None,
    confidence: float = 0.95,
) -> tuple[float, float, float]:
    """Return (accuracy, CI low, CI high) of predicted class labels; with ``groups`` (one key
    per sample: its patient) the CI resamples whole patients (:func:`bootstrap_mean`)."""
    y, p = np.asarray(y_true), np.asarray(y_pred)
    if y.shape != p.shape or y.ndim != 1:
        raise DataError(f"accuracy_ci: y_true {y.shape} and y_pred {p.shape} must match (1-D)")
    return bootstrap_mean(y == p, n_boot=n_boot, seed=seed, groups=groups, confidence=confidence)
