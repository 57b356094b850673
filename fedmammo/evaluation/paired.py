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

With ``groups`` (each image's patient) the variance is Obuchowski's (1997, "Nonparametric
analysis of clustered ROC curve data", Biometrics 53:567-578) for clustered data: the
components are summed per patient, their (co)variances taken over patients, plus the
covariance of a patient's positive and negative images. A patient's CC and MLO views of one
lesion, or two breasts, are not independent cases; treated as independent, they make the
p-value too small. With one image per patient it is DeLong's test exactly.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from fedmammo.errors import DataError
from fedmammo.evaluation.metrics import MIN_UNITS_PER_CLASS, group_codes, units_per_class

__all__ = ["delong_test"]


def _components(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Structural components (V10 per positive, V01 per negative) by midranks."""
    from scipy.stats import rankdata

    m, n = len(pos), len(neg)
    both = rankdata(np.concatenate([pos, neg]))  # midranks: ties count one half
    v10 = (both[:m] - rankdata(pos)) / n
    v01 = 1.0 - (both[m:] - rankdata(neg)) / m
    return v10, v01


def delong_test(
    y_true: Any, score_a: Any, score_b: Any, groups: Any = None
) -> tuple[float, float, float]:
    """Return (AUC_a, AUC_b, p): DeLong's two-sided p-value of AUC_a != AUC_b, same images.

    ``y_true`` 0/1; both scores rank the same images (higher = more likely 1). ``groups``:
    one key per image, its patient (Obuchowski's clustered variance; None: every image its
    own). Identical scores give p = 1; a difference with zero variance gives p = 0. p is NaN
    with fewer than ``MIN_UNITS_PER_CLASS`` positive or negative units (patients with
    ``groups``, else images): one unit's side has no variance to estimate, and a p-value
    from the other side alone is far too small. All NaN without both classes.
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
    codes = None if groups is None else group_codes(groups, len(y))
    pos, neg = y == 1, y == 0
    m, n = int(pos.sum()), int(neg.sum())
    if m == 0 or n == 0:
        return math.nan, math.nan, math.nan
    v10_a, v01_a = _components(a[pos], a[neg])
    v10_b, v01_b = _components(b[pos], b[neg])
    v10, v01 = np.stack([v10_a, v10_b], axis=1), np.stack([v01_a, v01_b], axis=1)
    auc = v10.mean(axis=0)  # (AUC_a, AUC_b)
    if units_per_class(y, codes) < MIN_UNITS_PER_CLASS:  # one side's variance unknown
        return float(auc[0]), float(auc[1]), math.nan
    if codes is None:
        cov = np.cov(v10.T) / m + np.cov(v01.T) / n
    else:
        cov = _clustered_covariance(v10, v01, codes[pos], codes[neg], auc)
    var = float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    auc_a, auc_b = float(auc[0]), float(auc[1])
    diff = auc_a - auc_b
    if var <= 1e-15:
        return auc_a, auc_b, 1.0 if abs(diff) < 1e-12 else 0.0
    z = abs(diff) / math.sqrt(var)
    return auc_a, auc_b, float(math.erfc(z / math.sqrt(2.0)))


def _clustered_covariance(
    v10: np.ndarray, v01: np.ndarray, pos: np.ndarray, neg: np.ndarray, auc: np.ndarray
) -> np.ndarray:
    """Obuchowski's 2x2 covariance of the two AUCs: ``v10`` (M, 2) and ``v01`` (N, 2) are the
    positives' and negatives' components, ``pos`` and ``neg`` their patients' codes."""
    clusters = int(max(pos.max(), neg.max())) + 1
    m_i = np.bincount(pos, minlength=clusters)  # positives per patient
    n_i = np.bincount(neg, minlength=clusters)
    x = np.zeros((clusters, 2))
    y = np.zeros((clusters, 2))
    np.add.at(x, pos, v10)  # V10 summed per patient
    np.add.at(y, neg, v01)
    dx, dy = x - np.outer(m_i, auc), y - np.outer(n_i, auc)
    big_m, big_n = len(pos), len(neg)
    i10, i01, i = int((m_i > 0).sum()), int((n_i > 0).sum()), int(((m_i + n_i) > 0).sum())
    s10 = i10 / ((i10 - 1) * big_m) * (dx.T @ dx)  # i10, i01 >= 2: checked by the caller
    s01 = i01 / ((i01 - 1) * big_n) * (dy.T @ dy)
    s11 = i / (i - 1) * (dx.T @ dy) if i > 1 else np.zeros((2, 2))
    return s10 / big_m + s01 / big_n + (s11 + s11.T) / (big_m * big_n)
