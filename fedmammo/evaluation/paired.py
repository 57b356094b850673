"""Paired comparison of two ROC AUCs on the same images: DeLong's test.

scikit-learn and scipy have no test comparing two correlated AUCs, so this is the
DeLong, DeLong & Clarke-Pearson (1988) test: the covariance of the two AUCs from their
structural components (:mod:`fedmammo.evaluation.auc_variance`), and
``z = (AUC_a - AUC_b) / sqrt(var_a + var_b - 2 cov_ab)`` compared with the standard normal
(two-sided). With ``groups`` (each image's patient) the covariance is Obuchowski's for
clustered data: a patient's CC and MLO views of one lesion, or two breasts, are not
independent cases; treated as independent, they make the p-value too small.

No method reports it: with 5-10 malignant test patients it fell below 0.05 for 7-10% of
equally good pairs (docs/report.md); the methods' paired p is the permutation test of
:func:`fedmammo.evaluation.metrics.paired_permutation_p`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from fedmammo.errors import DataError
from fedmammo.evaluation.auc_variance import clustered_covariance, structural_components
from fedmammo.evaluation.metrics import MIN_UNITS_PER_CLASS, group_codes, units_per_class

__all__ = ["delong_test"]


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
    v10_a, v01_a = structural_components(a[pos], a[neg])
    v10_b, v01_b = structural_components(b[pos], b[neg])
    v10, v01 = np.stack([v10_a, v10_b], axis=1), np.stack([v01_a, v01_b], axis=1)
    auc = v10.mean(axis=0)  # (AUC_a, AUC_b)
    if units_per_class(y, codes) < MIN_UNITS_PER_CLASS:  # one side's variance unknown
        return float(auc[0]), float(auc[1]), math.nan
    if codes is None:
        cov = np.cov(v10.T) / m + np.cov(v01.T) / n
    else:
        cov = clustered_covariance(v10, v01, codes[pos], codes[neg], auc)
    var = float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    auc_a, auc_b = float(auc[0]), float(auc[1])
    diff = auc_a - auc_b
    if var <= 1e-15:
        return auc_a, auc_b, 1.0 if abs(diff) < 1e-12 else 0.0
    z = abs(diff) / math.sqrt(var)
    return auc_a, auc_b, float(math.erfc(z / math.sqrt(2.0)))
