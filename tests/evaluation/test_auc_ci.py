"""The AUROC CI every method reports: logit interval, Obuchowski's variance, t quantile."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import norm
from scipy.stats import t as student_t
from sklearn.metrics import roc_auc_score

from fedmammo.errors import DataError
from fedmammo.evaluation.auc_variance import hanley_mcneil_variance
from fedmammo.evaluation.metrics import auc_ci, bootstrap_auc


def _phantom_shaped(rng, patients: int, cancers: int, shift: float):
    """4 images a patient (a cancer patient: 2 malignant), patient effect + image noise."""
    groups = np.repeat(np.arange(patients), 4)
    y = np.zeros(groups.size, dtype=int)
    y[(groups < cancers) & (np.arange(groups.size) % 4 < 2)] = 1
    score = np.repeat(rng.normal(0, 0.7, patients), 4) + rng.normal(0, 0.7, y.size) + shift * y
    return y, score, groups


def _delong_variance_by_hand(y, score):
    """DeLong's variance from every positive-negative comparison, written out."""
    pos, neg = score[y == 1], score[y == 0]
    wins = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
    return np.var(wins.mean(axis=1), ddof=1) / pos.size + np.var(wins.mean(axis=0), ddof=1) / (
        neg.size
    )


def test_the_interval_is_the_logit_wald_with_a_t_quantile():
    # Prepare: 12 positives, 30 negatives, one image each
    rng = np.random.default_rng(3)
    y = np.r_[np.ones(12, dtype=int), np.zeros(30, dtype=int)]
    score = rng.normal(0, 1, y.size) + 1.0 * y
    # Execute
    auc, low, high = auc_ci(y, score)
    # Assert: logit(A) -+ t_{11} * SE / (A (1 - A)), SE DeLong's, back-transformed
    a = roc_auc_score(y, score)
    half = student_t.ppf(0.975, 11) * math.sqrt(_delong_variance_by_hand(y, score)) / (a * (1 - a))
    logit = math.log(a / (1 - a))
    assert auc == pytest.approx(a, abs=1e-12)
    assert low == pytest.approx(1 / (1 + math.exp(-(logit - half))), abs=1e-12)
    assert high == pytest.approx(1 / (1 + math.exp(-(logit + half))), abs=1e-12)
    # one image per patient: the same interval; a narrower confidence: a narrower one
    assert auc_ci(y, score, groups=[f"p{i}" for i in range(y.size)]) == pytest.approx(
        (auc, low, high), abs=1e-12
    )
    _, low90, high90 = auc_ci(y, score, confidence=0.90)
    assert low < low90 < auc < high90 < high


def test_a_patients_images_widen_the_interval_and_the_mirror_is_symmetric():
    # Prepare: 4 images a patient, strongly correlated within the patient
    y, score, groups = _phantom_shaped(np.random.default_rng(5), 60, 10, 1.2)
    # Execute
    by_patient = auc_ci(y, score, groups=groups)
    by_image = auc_ci(y, score)
    mirrored = auc_ci(y, -score, groups=groups)
    # Assert
    assert by_patient[0] == by_image[0]
    assert by_patient[2] - by_patient[1] > by_image[2] - by_image[1]
    assert mirrored == pytest.approx(
        (1 - by_patient[0], 1 - by_patient[2], 1 - by_patient[1]), abs=1e-12
    )


def test_edge_cases_perfect_separation_ties_too_few_and_no_ci():
    # Prepare: 6 positives above 10 negatives, and the same with one pair swapped
    y = np.r_[np.ones(6, dtype=int), np.zeros(10, dtype=int)]
    perfect = np.r_[np.linspace(2, 3, 6), np.linspace(0, 1, 10)]
    swapped = perfect.copy()
    swapped[0] = 0.95
    # Execute
    auc, low, high = auc_ci(y, perfect)
    # Assert: AUC 1 keeps 1 as its upper end; the lower is 1 - 1/(2 m n) minus t_5 times
    # Hanley & McNeil's SE there, on the AUC scale
    corrected = 1 - 1 / (2 * 6 * 10)
    se = math.sqrt(hanley_mcneil_variance(corrected, 6, 10))
    assert (auc, high) == (1.0, 1.0)
    assert low == pytest.approx(corrected - student_t.ppf(0.975, 5) * se, abs=1e-12)
    assert auc_ci(y, swapped)[1] < 0.9 < low < 0.95
    assert auc_ci(y, -perfect) == pytest.approx((0.0, 0.0, 1 - low), abs=1e-12)
    assert auc_ci(y, np.ones(y.size)) == (0.5, 0.5, 0.5)  # every score tied
    few = auc_ci(y[2:], perfect[2:])  # 4 positives: too few for a CI
    assert few[0] == 1.0 and math.isnan(few[1]) and math.isnan(few[2])
    off = auc_ci(y, perfect, with_ci=False)
    assert off[0] == 1.0 and math.isnan(off[1]) and math.isnan(off[2])
    assert all(math.isnan(v) for v in auc_ci(np.ones(5, dtype=int), np.arange(5.0)))
    with pytest.raises(DataError, match=r"confidence must be in \(0, 1\), got 95"):
        auc_ci(y, perfect, confidence=95)


def test_it_covers_at_its_level_where_the_percentile_bootstrap_does_not():
    # Prepare: 5 cancer patients of 50, true AUROC 0.95 (the phantom's ceiling, docs/report.md)
    shift = 2.3
    true = norm.cdf(shift / math.sqrt(2 * (0.7**2 + 0.7**2)))
    rng = np.random.default_rng(11)
    sets = [_phantom_shaped(rng, 50, 5, shift) for _ in range(400)]
    # Execute
    ours = [auc_ci(y, s, groups=g) for y, s, g in sets]
    boot = [bootstrap_auc(y, s, 500, seed=i, groups=g) for i, (y, s, g) in enumerate(sets[:200])]
    # Assert: within about 2 binomial SEs of 95% (measured 95.5% in 1,000 such sets);
    # the percentile bootstrap's "95%" covers about 75%
    covers = np.mean([low <= true <= high for _, low, high in ours])
    assert 0.925 <= covers <= 0.98
    assert np.mean([low <= true <= high for _, low, high in boot]) < 0.85


def test_separated_test_sets_near_the_ceiling_are_covered():
    # Prepare: 5 cancer patients of 50 at a true AUROC of 0.99: about one set in ten separates
    shift = norm.ppf(0.99) * math.sqrt(2 * (0.7**2 + 0.7**2))
    rng = np.random.default_rng(2)
    sets = [_phantom_shaped(rng, 50, 5, shift) for _ in range(300)]
    # Execute
    separated = [auc_ci(y, s, groups=g) for y, s, g in sets if roc_auc_score(y, s) == 1.0]
    # Assert: each interval of an AUROC of 1 reaches below 0.99 (31 of 31 measured; the
    # lowest positive tied with the highest negative, a rule tried before, covered 1 in 116)
    assert len(separated) >= 15
    assert np.mean([low <= 0.99 for _, low, _ in separated]) >= 0.95
