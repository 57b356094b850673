"""The variance of an ROC AUC without resampling, and the AUROC CI built on it.

An AUC is the mean of its structural components (DeLong, DeLong & Clarke-Pearson 1988; fast
midrank form of Sun & Xu 2014): per positive image the fraction of negatives it outranks
(ties counting one half), per negative the fraction of positives that outrank it. Their
variances over the positives and the negatives give the AUC's. With each image's patient
(``codes``) the components are summed per patient and the (co)variances taken over patients,
plus the covariance of a patient's positive and negative images: Obuchowski's (1997,
"Nonparametric analysis of clustered ROC curve data", Biometrics 53:567-578) variance for
clustered data; with one image per patient it is DeLong's.

:func:`logit_interval` turns it into the CI every method reports beside a test AUROC: a Wald
interval on the logit scale with a Student t quantile of ``min(I10, I01) - 1`` degrees of
freedom (``I10`` / ``I01``: patients with a positive / negative image). In simulation of
phantom-shaped test sets (4 images a patient, 5-30 cancer patients, docs/report.md) its
"95%" covered the true AUROC 93.0-95.5% of the time, where the patient percentile bootstrap
covered 76-94% and the same interval with a normal quantile 82-94%.

This module imports only numpy (scipy on first use): :mod:`fedmammo.evaluation.metrics` and
:mod:`fedmammo.evaluation.paired` build on it.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "clustered_covariance",
    "hanley_mcneil_variance",
    "logit_interval",
    "structural_components",
]


def structural_components(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Structural components (V10 per positive, V01 per negative) by midranks."""
    from scipy.stats import rankdata  # here: importing metrics stays light

    m, n = len(pos), len(neg)
    both = rankdata(np.concatenate([pos, neg]))  # midranks: ties count one half
    v10 = (both[:m] - rankdata(pos)) / n
    v01 = 1.0 - (both[m:] - rankdata(neg)) / m
    return v10, v01


def clustered_covariance(
    v10: np.ndarray, v01: np.ndarray, pos: np.ndarray, neg: np.ndarray, auc: np.ndarray
) -> np.ndarray:
    """Obuchowski's (k, k) covariance of k AUCs of the same images: ``v10`` (M, k) and ``v01``
    (N, k) are the positives' and negatives' components, ``pos`` and ``neg`` their patients'
    codes, ``auc`` (k,) the AUCs. Needs 2 or more patients of each class."""
    clusters = int(max(pos.max(), neg.max())) + 1
    m_i = np.bincount(pos, minlength=clusters)  # positives per patient
    n_i = np.bincount(neg, minlength=clusters)
    x = np.zeros((clusters, v10.shape[1]))
    y = np.zeros((clusters, v01.shape[1]))
    np.add.at(x, pos, v10)  # V10 summed per patient
    np.add.at(y, neg, v01)
    dx, dy = x - np.outer(m_i, auc), y - np.outer(n_i, auc)
    big_m, big_n = len(pos), len(neg)
    i10, i01, i = int((m_i > 0).sum()), int((n_i > 0).sum()), int(((m_i + n_i) > 0).sum())
    s10 = i10 / ((i10 - 1) * big_m) * (dx.T @ dx)
    s01 = i01 / ((i01 - 1) * big_n) * (dy.T @ dy)
    s11 = i / (i - 1) * (dx.T @ dy) if i > 1 else np.zeros_like(s10)
    return s10 / big_m + s01 / big_n + (s11 + s11.T) / (big_m * big_n)


def hanley_mcneil_variance(auc: float, m: int, n: int) -> float:
    """Hanley & McNeil's (1982) variance of an AUC from ``m`` positive and ``n`` negative
    cases: for an AUC of 1, whose components have no spread to estimate one from."""
    q1, q2 = auc / (2.0 - auc), 2.0 * auc * auc / (1.0 + auc)
    return (auc * (1 - auc) + (m - 1) * (q1 - auc * auc) + (n - 1) * (q2 - auc * auc)) / (m * n)


def logit_interval(
    y: np.ndarray, score: np.ndarray, codes: np.ndarray, auc: float, confidence: float
) -> tuple[float, float]:
    """The (low, high) CI of ``auc`` (the AUC of ``score`` for 0/1 ``y``, both classes, 2 or
    more patients ``codes`` of each): ``expit(logit(A) -+ t * SE / (A (1 - A)))``, SE from
    Obuchowski's variance, ``t`` the Student quantile with ``min(I10, I01) - 1`` degrees of
    freedom.

    An AUC of 1 has no variance to estimate (every component is 1), and on the logit scale any
    would give [0, 1]: its lower end is ``A_c - t * SE`` on the AUC scale, ``A_c = 1 - 1/(2 I10
    I01)`` and SE Hanley & McNeil's there with ``I10`` positive and ``I01`` negative patients,
    the upper end 1 (an AUC of 0: the mirror). In simulation it covered all 116 separated test
    sets of 5 cancer patients at a true AUROC of 0.99 (docs/report.md). An AUC inside (0, 1)
    without variance (every score tied) is its own CI, as every resample of it would be."""
    from scipy.special import expit, logit
    from scipy.stats import t as student_t

    pos, neg = y == 1, y == 0
    i10, i01 = np.unique(codes[pos]).size, np.unique(codes[neg]).size
    quantile = float(student_t.ppf((1.0 + confidence) / 2.0, min(i10, i01) - 1))
    if auc in (0.0, 1.0):
        corrected = 1.0 - 1.0 / (2.0 * i10 * i01)
        low = corrected - quantile * math.sqrt(hanley_mcneil_variance(corrected, i10, i01))
        low = max(0.0, low)
        return (low, 1.0) if auc == 1.0 else (0.0, 1.0 - low)
    v10, v01 = structural_components(score[pos], score[neg])
    cov = clustered_covariance(v10[:, None], v01[:, None], codes[pos], codes[neg], np.r_[auc])
    var = float(cov[0, 0])
    if var <= 0.0:
        return auc, auc
    half = quantile * math.sqrt(var) / (auc * (1.0 - auc))
    return float(expit(logit(auc) - half)), float(expit(logit(auc) + half))
