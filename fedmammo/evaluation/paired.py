"""Paired comparison of two ROC AUCs on the same images: DeLong's test.

scikit-learn and scipy have no test comparing two correlated AUCs, so this is the
DeLong, DeLong & Clarke-Pearson (1988) test in the fast midrank form of Sun & Xu (2014):
each model's AUC is the mean of its structural components (per positive: the fraction of
negatives it outranks, ties counting one half; per negative: the fraction of positives that
outrank it), the covariance of the two AUCs is ``S10 / m + S01 / n`` from the components'
covariances over the ``m`` positives and ``n`` negatives, and
``z = (AUC_a - AUC_b) / sqrt(var_a + var_b - 2 cov_ab)`` is compared with the standard
normal (two-sided). Deterministic, no resampling: a centre can compute it on its own test
images and send only the numbers.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from fedmammo.errors import DataError

__all__ = ["delong_test"]


def _components(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Structural components (V10 per positive, V01 per negative) by midranks."""
    from scipy.stats import rankdata

    m, n = len(pos), len(neg)
    both = rankdata(np.concatenate([pos, neg]))  # midranks: ties count one half
    v10 = (both[:m] - rankdata(pos)) / n
    v01 = 1.0 - (both[m:] - rankdata(neg)) / m
    return v10, v01


def delong_test(y_true: Any, score_a: Any, score_b: Any) -> tuple[float, float, float]:
    """Return (AUC_a, AUC_b, p): DeLong's two-sided p-value of AUC_a != AUC_b, same images.

    ``y_true`` 0/1; both scores rank the same images (higher = more likely 1). Identical
    scores give p = 1; a difference with zero variance gives p = 0. All NaN without both
    classes.
    """
    y = np.asarray(y_true).reshape(-1)
    a = np.asarray(score_a, dtype=np.float64).reshape(-1)
    b = np.asarray(score_b, dtype=np.float64).reshape(-1)
    if not (len(y) == len(a) == len(b)):
        raise DataError(
            f"delong_test: {len(y)} labels, {len(a)} and {len(b)} scores; they must match"
        )
    if not set(np.unique(y).tolist()) <= {0, 1}:
        raise DataError("delong_test: y_true must be 0/1")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise DataError("delong_test: scores must be finite")
    pos, neg = y == 1, y == 0
    m, n = int(pos.sum()), int(neg.sum())
    if m == 0 or n == 0:
        return math.nan, math.nan, math.nan
    v10_a, v01_a = _components(a[pos], a[neg])
    v10_b, v01_b = _components(b[pos], b[neg])
    auc_a, auc_b = float(v10_a.mean()), float(v10_b.mean())
    s10 = np.cov(np.vstack([v10_a, v10_b])) if m > 1 else np.zeros((2, 2))
    s01 = np.cov(np.vstack([v01_a, v01_b])) if n > 1 else np.zeros((2, 2))
    s = s10 / m + s01 / n
    var = float(s[0, 0] + s[1, 1] - 2 * s[0, 1])
    diff = auc_a - auc_b
    if var <= 1e-15:
        return auc_a, auc_b, 1.0 if abs(diff) < 1e-12 else 0.0
    z = abs(diff) / math.sqrt(var)
    return auc_a, auc_b, float(math.erfc(z / math.sqrt(2.0)))
