"""Evaluation metrics of every method: AUROC with CIs over patients, paired delta-AUC with
patient-bootstrap CIs and permutation p-values, WLL, MCC, breast-level scores, operating
points."""

from __future__ import annotations

import logging
import math
from collections.abc import Hashable, Iterator, Sequence
from typing import Any

import numpy as np
import pandas as pd

from fedmammo.errors import DataError
from fedmammo.evaluation.auc_variance import logit_interval

__all__ = [
    "DEFAULT_THRESHOLDS",
    "MIN_UNITS_PER_CLASS",
    "auc_ci",
    "best_mcc",
    "bootstrap_auc",
    "breast_level",
    "classification_metrics",
    "delta_auc",
    "group_codes",
    "is_significant_decrease",
    "is_significant_increase",
    "mcc_at_threshold",
    "metrics_by_segment",
    "operating_points",
    "paired_permutation_p",
    "specificity_at_sensitivity",
    "units_per_class",
    "weighted_log_loss",
]

logger = logging.getLogger(__name__)

#: Thresholds of the operating points marked on every ROC curve (periodic-sampling paper, 3.1.2).
DEFAULT_THRESHOLDS: tuple[float, ...] = (0.2, 0.4, 0.6, 0.8)
_CHUNK_ELEMENTS = 1 << 22  # bootstrap rows are processed in chunks of about 4M indices


def _check(y: Any, score: Any, *, name: str = "score") -> tuple[np.ndarray, np.ndarray]:
    y_arr = np.asarray(y)
    s_arr = np.asarray(score, dtype=np.float64)
    if y_arr.ndim != 1 or s_arr.ndim != 1 or y_arr.size != s_arr.size:
        raise DataError(
            f"y_true (shape {y_arr.shape}) and {name} (shape {s_arr.shape}) must be 1-D arrays "
            "of the same length"
        )
    if y_arr.size == 0:
        raise DataError("no samples to evaluate: y_true is empty")
    try:
        ok = (y_arr == 0) | (y_arr == 1)
    except TypeError:
        ok = np.zeros(y_arr.size, dtype=bool)
    if not np.all(ok):
        raise DataError(
            "y_true must hold 0/1 labels only; drop samples with a missing label (NA) first"
        )
    if not np.all(np.isfinite(s_arr)):
        raise DataError(f"{name} holds NaN or infinite values; check the model outputs")
    return y_arr.astype(np.int8), s_arr


def _two_classes(y: np.ndarray) -> bool:
    return 0 < int(y.sum()) < y.size


#: The fewest positive and negative units (patients with ``groups``, else images) a CI or a
#: p-value of an AUC is given for. With one, the variance of its side cannot be estimated
#: (resampling it, or DeLong's S10, sees only the other side's variation); with a few, it is
#: underestimated: of 400 simulated pairs of equally good models, the paired bootstrap CI
#: alone lay beside 0 for 29.8% with 2 malignant patients, 18.0% with 3, 8.5% with 5
#: (docs/scripts/paired_test_null_rate.py --min-units 1; nominal 5%).
MIN_UNITS_PER_CLASS = 5


def units_per_class(y: np.ndarray, groups: Any = None) -> int:
    """The fewer of the positive and the negative units: images, or with ``groups`` (one key
    per sample) the patients holding at least one image of the class."""
    if groups is None:
        n_pos = int(y.sum())
        return min(n_pos, y.size - n_pos)
    codes = group_codes(groups, y.size)
    return min(np.unique(codes[y == 1]).size, np.unique(codes[y == 0]).size)


class _RankAuc:
    """AUC of one score under many multisets of its samples (rank-based Mann-Whitney U).

    Not ``sklearn.metrics.roc_auc_score`` per resample: that sorts every resample again; here
    one sort serves all of them (a bootstrap's AUCs in one vectorised pass). Tests compare the
    two (``tests/evaluation/test_metrics.py``)."""

    def __init__(self, y: np.ndarray, score: np.ndarray) -> None:
        order = np.argsort(score, kind="mergesort")
        self.rank_of = np.empty_like(order)
        self.rank_of[order] = np.arange(order.size)
        self.pos = y[order].astype(np.float64)
        sorted_score = score[order]
        self.starts = np.flatnonzero(np.r_[True, sorted_score[1:] != sorted_score[:-1]])

    def full(self) -> float:
        """The AUC of the samples themselves (each once): ``roc_auc_score``'s value, without
        importing scikit-learn (a centre computes it when it connects)."""
        return float(self(np.ones((1, self.rank_of.size)))[0])

    def __call__(self, counts: np.ndarray) -> np.ndarray:
        """AUCs of the resamples ``counts[b]`` (how often each sample, in the caller's order,
        is in resample b; NaN where a resample has one class)."""
        n = counts.shape[1]
        in_order = np.empty(counts.shape, dtype=np.float64)
        in_order[:, self.rank_of] = counts  # into score order
        pos = in_order * self.pos
        neg = in_order - pos
        if self.starts.size < n:  # tied scores: pool each tie group
            pos = np.add.reduceat(pos, self.starts, axis=1)
            neg = np.add.reduceat(neg, self.starts, axis=1)
        below = np.cumsum(neg, axis=1) - neg
        num = np.sum(pos * (below + 0.5 * neg), axis=1)
        den = pos.sum(axis=1) * neg.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def _bootstrap_indices(n: int, n_boot: int, seed: int) -> Iterator[np.ndarray]:
    """Yield row chunks of the resample indices ``default_rng(seed).integers(0, n, (b, n))``."""
    rng = np.random.default_rng(seed)
    rows = max(1, _CHUNK_ELEMENTS // n)
    for first in range(0, n_boot, rows):
        yield rng.integers(0, n, size=(min(rows, n_boot - first), n))


def group_codes(groups: Any, n: int) -> np.ndarray:
    """``groups`` (one key per sample: its patient) as codes 0..g-1; DataError if it does not
    fit the samples."""
    keys = np.asarray(groups, dtype=object)
    if keys.shape != (n,):
        raise DataError(f"groups has shape {keys.shape}; expected one key per sample ({n},)")
    if pd.isna(keys).any():
        raise DataError("groups holds missing keys; every sample needs its patient")
    return pd.factorize(keys)[0]


def _resample_counts(n: int, n_boot: int, seed: int, groups: Any = None) -> Iterator[np.ndarray]:
    """Yield chunks (rows: resamples) of how often each of the ``n`` samples is drawn.

    ``groups`` None: ``n`` samples with replacement (the stream of :func:`_bootstrap_indices`).
    Otherwise whole groups (patients) are drawn with replacement, as many as there are, each
    bringing all its samples: a cluster bootstrap, for samples that are not independent (the
    CC and MLO views of a breast, a patient's two breasts).
    """
    if groups is None:
        for idx in _bootstrap_indices(n, n_boot, seed):
            yield _row_counts(idx, n)
        return
    codes = group_codes(groups, n)
    g = int(codes.max()) + 1
    rng = np.random.default_rng(seed)
    rows = max(1, _CHUNK_ELEMENTS // max(n, g))
    for first in range(0, n_boot, rows):
        drawn = rng.integers(0, g, size=(min(rows, n_boot - first), g))
        yield _row_counts(drawn, g)[:, codes]


def _row_counts(idx: np.ndarray, n: int) -> np.ndarray:
    """``counts[b, i]``: how often index ``i`` (of ``n``) is in row ``b`` of ``idx``."""
    b = idx.shape[0]
    flat = (idx + (np.arange(b) * n)[:, None]).ravel()
    return np.bincount(flat, minlength=b * n).reshape(b, n)


def _percentile_ci(values: np.ndarray, confidence: float) -> tuple[float, float]:
    valid = values[np.isfinite(values)]
    if valid.size < values.size:
        logger.debug("bootstrap: skipped %d one-class resamples", values.size - valid.size)
    if valid.size == 0:
        return math.nan, math.nan
    tail = 100.0 * (1.0 - confidence) / 2.0
    low, high = np.percentile(valid, [tail, 100.0 - tail])
    return float(low), float(high)


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise DataError(f"confidence must be in (0, 1), got {confidence!r}")


def _check_boot(n_boot: int, confidence: float) -> None:
    if isinstance(n_boot, bool) or not isinstance(n_boot, int | np.integer) or n_boot < 0:
        raise DataError(f"n_boot must be an integer >= 0 (0: no CI), got {n_boot!r}")
    _check_confidence(confidence)


def auc_ci(
    y_true: Any,
    y_score: Any,
    *,
    groups: Any = None,
    confidence: float = 0.95,
    with_ci: bool = True,
) -> tuple[float, float, float]:
    """Return (AUC, CI low, CI high): the AUROC and the CI every method reports beside it.

    The CI is a Wald interval on the logit scale with Obuchowski's variance over patients
    (``groups``, one key per sample; None: every sample its own, DeLong's variance) and a
    Student t quantile with ``min(I10, I01) - 1`` degrees of freedom, the patients holding a
    positive / negative sample (:func:`fedmammo.evaluation.auc_variance.logit_interval`). With
    5-30 cancer patients its "95%" covered 93.0-95.5% of simulated test sets where the patient
    percentile bootstrap (:func:`bootstrap_auc`) covered 76-94% (docs/report.md). No
    resampling: the same numbers on every machine. ``with_ci`` False (a recipe's ``bootstrap:
    0``) or a class with fewer than :data:`MIN_UNITS_PER_CLASS` units: CI NaN. All NaN if
    ``y_true`` has one class.
    """
    y, score = _check(y_true, y_score)
    _check_confidence(confidence)
    if not _two_classes(y):
        return math.nan, math.nan, math.nan
    auc = _RankAuc(y, score).full()
    codes = np.arange(y.size) if groups is None else group_codes(groups, y.size)
    if not with_ci or units_per_class(y, codes) < MIN_UNITS_PER_CLASS:
        return auc, math.nan, math.nan
    return (auc, *logit_interval(y, score, codes, auc, confidence))


def bootstrap_auc(
    y_true: Any,
    y_score: Any,
    n_boot: int = 2000,
    seed: int = 0,
    *,
    groups: Any = None,
    confidence: float = 0.95,
) -> tuple[float, float, float]:
    """Return (AUC, CI low, CI high): full-set AUC and an Efron percentile bootstrap CI.

    No method reports this CI: with few cancer patients it is too narrow (a "95%" one
    covered 76-94% with 5-30 cancer patients in simulation, docs/report.md); they report
    :func:`auc_ci`'s. Its resamples are those of :func:`delta_auc`'s paired bootstrap.

    Resamples draw ``n`` indices with replacement (``default_rng(seed).integers``, row
    chunks), or, with ``groups`` (one key per sample: its patient), whole patients with
    replacement (:func:`_resample_counts`); resamples with a single class are skipped.
    ``n_boot=0`` skips the bootstrap (CI NaN), as does a class with fewer than
    :data:`MIN_UNITS_PER_CLASS` units (:func:`units_per_class`). All NaN if ``y_true`` has
    one class.
    """
    y, score = _check(y_true, y_score)
    _check_boot(n_boot, confidence)
    if not _two_classes(y):
        return math.nan, math.nan, math.nan
    ranker = _RankAuc(y, score)
    auc = ranker.full()
    if n_boot == 0 or units_per_class(y, groups) < MIN_UNITS_PER_CLASS:
        return auc, math.nan, math.nan
    boots = np.concatenate([ranker(c) for c in _resample_counts(y.size, n_boot, seed, groups)])
    low, high = _percentile_ci(boots, confidence)
    return auc, low, high


class _PairedRanks:
    """Two models' scores of the same samples as within-model midranks (doubled: integers
    2..2n), and the AUC of many rows of them at once (each row: one model's ranks, possibly
    swapped with the other's for some patients)."""

    def __init__(self, y: np.ndarray, score_a: np.ndarray, score_b: np.ndarray) -> None:
        from scipy.stats import rankdata  # here: importing metrics stays light

        self.pos, self.neg = y == 1, y == 0
        # AUC is rank-invariant: the same AUCs, with the two models' values on one scale
        self.a = (2 * rankdata(score_a)).astype(np.int64)
        self.b = (2 * rankdata(score_b)).astype(np.int64)
        self.bins = 2 * y.size + 1

    def aucs(self, rows: np.ndarray) -> np.ndarray:
        """AUC of each row (ties count one half), by counting: each row's negatives as a
        histogram over the rank values, whose running sum gives each positive's count below."""
        b, m = rows.shape[0], self.bins
        shift = m * np.arange(b)[:, None]
        counts = np.bincount((rows[:, self.neg] + shift).ravel(), minlength=b * m).reshape(b, m)
        below = np.cumsum(counts, axis=1) - counts
        pos = rows[:, self.pos]
        wins = np.take_along_axis(below, pos, 1) + 0.5 * np.take_along_axis(counts, pos, 1)
        return wins.sum(axis=1) / (pos.shape[1] * (rows.shape[1] - pos.shape[1]))


def paired_permutation_p(
    y_true: Any,
    score_a: Any,
    score_b: Any,
    n_perm: int = 2000,
    seed: int = 0,
    *,
    groups: Any = None,
) -> float:
    """Two-sided p-value of AUC(b) - AUC(a) from a paired permutation test.

    Each permutation swaps the two models' scores of a random half of the patients (with
    ``groups``, one key per sample; else of the samples), as within-model ranks so that the
    two models' scales do not matter (Bandos, Rockette & Gur, Stat Med 2005;24:2873). Under
    the null hypothesis that, patient by patient, the two models' scores are exchangeable (two
    equally good models), every swap is as likely as the observed assignment, and the p-value
    is ``(1 + #{|d*| >= |d|}) / (n_perm + 1)``. The ranks are computed once, before the swaps,
    so this holds closely rather than exactly; measured: p < 0.05 in 5.0% and p < 0.01 in
    0.45% of 2,000 simulated null studies with 10 malignant test patients (docs/report.md).
    NaN if ``y_true`` has one class.
    """
    y, a = _check(y_true, score_a, name="score_a")
    _, b = _check(y_true, score_b, name="score_b")
    if isinstance(n_perm, bool) or not isinstance(n_perm, int | np.integer) or n_perm < 1:
        raise DataError(f"n_perm must be an integer >= 1, got {n_perm!r}")
    if not _two_classes(y):
        return math.nan
    ranks = _PairedRanks(y, a, b)
    observed = abs(float(np.diff(ranks.aucs(np.stack([ranks.a, ranks.b])))[0]))
    codes = np.arange(y.size) if groups is None else group_codes(groups, y.size)
    g = int(codes.max()) + 1
    rng = np.random.default_rng([seed, 1])  # not the bootstrap's stream
    rows = max(1, _CHUNK_ELEMENTS // (4 * y.size))
    extreme = 0
    for first in range(0, n_perm, rows):
        swap = rng.integers(0, 2, size=(min(rows, n_perm - first), g), dtype=bool)[:, codes]
        d = ranks.aucs(np.where(swap, ranks.a, ranks.b)) - ranks.aucs(
            np.where(swap, ranks.b, ranks.a)
        )
        extreme += int(np.sum(np.abs(d) >= observed - 1e-12))
    return (1 + extreme) / (n_perm + 1)


def delta_auc(
    y_true: Any,
    score_baseline: Any,
    score_method: Any,
    n_boot: int = 2000,
    seed: int = 0,
    *,
    groups: Any = None,
    confidence: float = 0.95,
) -> tuple[float, float, float, float]:
    """Return (delta, CI low, CI high, p): AUC(method) - AUC(baseline) on the same samples.

    The CI is the percentile CI of the paired bootstrap (both scores on the same resamples,
    same draws as :func:`bootstrap_auc`, by patient with ``groups``); ``p`` is the paired
    permutation test's (:func:`paired_permutation_p`, ``n_boot`` permutations, by patient with
    ``groups``). ``n_boot=0`` or a class with fewer than :data:`MIN_UNITS_PER_CLASS` units: CI
    and p NaN. All NaN if ``y_true`` has one class.
    """
    y, base = _check(y_true, score_baseline, name="score_baseline")
    _, method = _check(y_true, score_method, name="score_method")
    _check_boot(n_boot, confidence)
    if not _two_classes(y):
        return math.nan, math.nan, math.nan, math.nan
    rank_base, rank_method = _RankAuc(y, base), _RankAuc(y, method)
    delta = rank_method.full() - rank_base.full()
    if n_boot == 0 or units_per_class(y, groups) < MIN_UNITS_PER_CLASS:
        return delta, math.nan, math.nan, math.nan
    diffs = np.concatenate(
        [rank_method(c) - rank_base(c) for c in _resample_counts(y.size, n_boot, seed, groups)]
    )
    low, high = _percentile_ci(diffs, confidence)
    return delta, low, high, paired_permutation_p(y, base, method, n_boot, seed, groups=groups)


def is_significant_increase(ci_low: float, p_value: float, *, alpha: float = 0.05) -> bool:
    """Return whether a delta-AUC is a significant increase (CI low > 0 and p < alpha)."""
    return bool(ci_low > 0.0 and p_value < alpha)


def is_significant_decrease(ci_high: float, p_value: float, *, alpha: float = 0.05) -> bool:
    """Return whether a delta-AUC is a significant decrease (CI high < 0 and p < alpha)."""
    return bool(ci_high < 0.0 and p_value < alpha)


def weighted_log_loss(y_true: Any, y_prob: Any, *, eps: float = 1e-7) -> float:
    """Return the WLL per image: log loss with balanced class weights ``n / (2 n_c)``.

    Weights are estimated on the evaluated set itself, so the result is the mean of the
    per-class mean losses (the plain log loss if a single class is present). Probabilities are
    clipped to ``[eps, 1 - eps]``.
    """
    y, p = _check(y_true, y_prob, name="y_prob")
    if p.min() < 0.0 or p.max() > 1.0:
        raise DataError("y_prob must be probabilities in [0, 1]; apply a sigmoid to logits")
    p = np.clip(p, eps, 1.0 - eps)
    losses = -(y * np.log(p) + (1 - y) * np.log1p(-p))
    n_pos = int(y.sum())
    counts = np.where(y == 1, n_pos, y.size - n_pos)
    weights = y.size / (2.0 * counts)
    return float(np.sum(weights * losses) / np.sum(weights))


def operating_points(
    y_true: Any, y_score: Any, thresholds: Sequence[float] = DEFAULT_THRESHOLDS
) -> list[dict[str, float]]:
    """Return the ROC operating point (``score >= threshold`` is positive) at each threshold.

    Each record has threshold, tpr, fpr, sensitivity (= tpr) and specificity (= 1 - fpr);
    tpr (fpr) is NaN without positives (negatives).
    """
    y, score = _check(y_true, y_score)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    points = []
    for t in thresholds:
        predicted = score >= float(t)
        tpr = float(np.sum(predicted & (y == 1)) / n_pos) if n_pos else math.nan
        fpr = float(np.sum(predicted & (y == 0)) / n_neg) if n_neg else math.nan
        points.append(
            {
                "threshold": float(t),
                "tpr": tpr,
                "fpr": fpr,
                "sensitivity": tpr,
                "specificity": 1.0 - fpr,
            }
        )
    return points


def mcc_at_threshold(y: Any, score: Any, threshold: float = 0.5) -> dict[str, float]:
    """MCC, sensitivity and specificity of ``score > threshold`` (the multi-task paper's
    operating point is ``p > 0.5``).

    sklearn's ``matthews_corrcoef`` (0 when a row or column of the confusion matrix is
    empty) and ``confusion_matrix``; sensitivity (specificity) is NaN without positives
    (negatives).
    """
    from sklearn.metrics import confusion_matrix, matthews_corrcoef

    y = np.asarray(y, dtype=np.int64)
    pred = (np.asarray(score, dtype=np.float64) > threshold).astype(np.int64)
    tn, fp, fn, tp = confusion_matrix(y, pred, labels=[0, 1]).ravel()
    return {
        "mcc": float(matthews_corrcoef(y, pred)),
        "sensitivity": float(tp / (tp + fn)) if tp + fn else math.nan,
        "specificity": float(tn / (tn + fp)) if tn + fp else math.nan,
    }


def _roc(y: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(y, score, drop_intermediate=False)
    return fpr, tpr


def best_mcc(y: Any, score: Any) -> tuple[float, float, float]:
    """(MCC, sensitivity, specificity) at the ROC threshold (``score >= t``) of highest MCC
    (multi-task paper section 4, "the highest MCC"); NaN without both classes."""
    y, score = np.asarray(y, dtype=np.int64), np.asarray(score, dtype=np.float64)
    if len(np.unique(y)) < 2:
        return math.nan, math.nan, math.nan
    fpr, tpr = _roc(y, score)
    p, n = int((y == 1).sum()), int((y == 0).sum())
    tp, fp = tpr * p, fpr * n
    fn, tn = p - tp, n - fp
    den = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    mcc = np.where(den > 0, (tp * tn - fp * fn) / np.where(den > 0, den, 1.0), 0.0)
    k = int(np.argmax(mcc))
    return float(mcc[k]), float(tpr[k]), float(1.0 - fpr[k])


def specificity_at_sensitivity(y: Any, score: Any, target: float = 0.95) -> float:
    """The highest specificity of a ROC threshold whose sensitivity is at least ``target``
    (multi-task paper section 4, triage at 95 % sensitivity); NaN without both classes."""
    y, score = np.asarray(y, dtype=np.int64), np.asarray(score, dtype=np.float64)
    if len(np.unique(y)) < 2:
        return math.nan
    fpr, tpr = _roc(y, score)
    return float((1.0 - fpr[tpr >= target - 1e-12]).max())


def breast_level(breasts: Any, y: Any, score: Any) -> tuple[np.ndarray, np.ndarray]:
    """Breast-wise labels and scores: per breast the highest malignancy probability of its
    images and the highest label of its labelled images (multi-task paper section 5: "the highest
    malignancy probability for two views of a breast"); breasts without a labelled image
    are left out. Sorted by breast key."""
    frame = pd.DataFrame(
        {
            "breast": np.asarray(breasts, dtype=object),
            "y": np.asarray(y, dtype=np.float64),
            "score": np.asarray(score, dtype=np.float64),
        }
    )
    frame.loc[frame["y"] < 0, "y"] = np.nan
    grouped = frame.groupby("breast", sort=True).agg(y=("y", "max"), score=("score", "max"))
    grouped = grouped.dropna(subset=["y"])
    return grouped["y"].to_numpy(dtype=np.int64), grouped["score"].to_numpy()


def classification_metrics(y_true: Any, y_score: Any, threshold: float = 0.5) -> dict[str, float]:
    """Return accuracy, f1, auroc, auprc, wll, n and n_pos (NaN where undefined, no error).

    ``y_score`` is the probability of label 1; predictions are ``y_score >= threshold``.
    auroc, auprc and f1 are NaN when the positive class (for f1) or either class is absent.
    """
    y, score = _check(y_true, y_score)
    predicted = (score >= threshold).astype(np.int8)
    n_pos = int(y.sum())
    tp = int(np.sum((predicted == 1) & (y == 1)))
    fp = int(np.sum((predicted == 1) & (y == 0)))
    fn = n_pos - tp
    both = _two_classes(y)
    from sklearn.metrics import average_precision_score

    return {
        "accuracy": float(np.mean(predicted == y)),
        "f1": 2.0 * tp / (2 * tp + fp + fn) if n_pos else math.nan,
        "auroc": _RankAuc(y, score).full() if both else math.nan,  # as bootstrap_auc's
        "auprc": float(average_precision_score(y, score)) if both else math.nan,
        "wll": weighted_log_loss(y, score),
        "n": float(y.size),
        "n_pos": float(n_pos),
    }


def _scope_records(
    segment: str | None,
    y: np.ndarray,
    score: np.ndarray,
    *,
    with_ci: bool,
    threshold: float,
    thresholds: Sequence[float],
    groups: np.ndarray | None,
) -> list[dict[str, Any]]:
    auc, low, high = auc_ci(y, score, groups=groups, with_ci=with_ci)
    if not with_ci:
        low = high = None
    records = [{"segment": segment, "metric": "auc", "value": auc, "ci_low": low, "ci_high": high}]
    values = classification_metrics(y, score, threshold=threshold)
    del values["auroc"]  # reported above with its CI
    for point in operating_points(y, score, thresholds):
        values[f"tpr@{point['threshold']:g}"] = point["tpr"]
        values[f"fpr@{point['threshold']:g}"] = point["fpr"]
    for metric, value in values.items():
        records.append(
            {"segment": segment, "metric": metric, "value": value, "ci_low": None, "ci_high": None}
        )
    return records


def metrics_by_segment(
    y_true: Any,
    y_score: Any,
    segments: Sequence[Hashable],
    *,
    with_ci: bool = True,
    threshold: float = 0.5,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    groups: Any = None,
) -> list[dict[str, Any]]:
    """Return metric records globally (segment None) and per segment (as text, sorted).

    Records are ``{"segment", "metric", "value", "ci_low", "ci_high"}``: ``auc`` with its CI
    (:func:`auc_ci`; None without ``with_ci``; over patients with ``groups``, one key per
    sample),
    then accuracy, f1, auprc, wll, n, n_pos and ``tpr@t`` / ``fpr@t`` at the operating
    thresholds (CI None).
    """
    y, score = _check(y_true, y_score)
    keys = np.asarray(segments, dtype=object)
    if keys.shape != y.shape:
        raise DataError(f"segments has shape {keys.shape}; expected one key per sample {y.shape}")
    if pd.isna(keys).any():
        raise DataError("segments holds missing keys; fill the manifest's segment column")
    patients = None if groups is None else group_codes(groups, y.size)
    text = np.array([str(k) for k in keys], dtype=object)
    options = {"with_ci": with_ci, "threshold": threshold, "thresholds": thresholds}
    records = _scope_records(None, y, score, groups=patients, **options)
    for segment in sorted(set(text)):
        mask = text == segment
        part = None if patients is None else patients[mask]
        records.extend(_scope_records(segment, y[mask], score[mask], groups=part, **options))
    return records
