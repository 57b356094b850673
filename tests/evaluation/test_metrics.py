"""Tests of fedmammo.evaluation.metrics against scikit-learn and slow reference loops."""

from __future__ import annotations

import itertools
import math
import warnings

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    f1_score,
    log_loss,
    roc_auc_score,
    roc_curve,
)
from sklearn.utils.class_weight import compute_sample_weight

from fedmammo.errors import DataError
from fedmammo.evaluation import tables
from fedmammo.evaluation.metrics import (
    MIN_UNITS_PER_CLASS,
    auc_ci,
    bootstrap_auc,
    classification_metrics,
    delta_auc,
    is_significant_decrease,
    is_significant_increase,
    metrics_by_segment,
    operating_points,
    paired_permutation_p,
    units_per_class,
    weighted_log_loss,
)


def _scores(n: int, shift: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.3).astype(int)
    score = 1.0 / (1.0 + np.exp(-(rng.normal(size=n) + shift * y - 0.5)))
    return y, np.round(score, 2)  # rounding creates ties


def _reference_boot(y, scores, n_boot, seed, stat):
    """Slow loop: the same resamples as the library, sklearn AUCs, one-class rows skipped."""
    idx = np.random.default_rng(seed).integers(0, y.size, size=(n_boot, y.size))
    values = [stat(y[i], *(s[i] for s in scores)) for i in idx if 0 < y[i].sum() < y.size]
    return np.percentile(values, [2.5, 97.5])


def test_bootstrap_auc_matches_a_slow_sklearn_loop_with_the_same_seed():
    # Prepare
    y, score = _scores(120, 1.5)

    # Execute
    auc, low, high = bootstrap_auc(y, score, n_boot=200, seed=7)

    # Assert
    ref_low, ref_high = _reference_boot(y, [score], 200, 7, roc_auc_score)
    assert auc == pytest.approx(roc_auc_score(y, score), abs=1e-12)  # counted, not sklearn
    assert (low, high) == pytest.approx((ref_low, ref_high), abs=1e-12)
    assert low < auc < high


def _patients(n_patients: int, per: int, seed: int = 0):
    """``per`` images a patient sharing its label and most of its score (CC/MLO views)."""
    rng = np.random.default_rng(seed)
    label = (rng.random(n_patients) < 0.3).astype(int)
    base = rng.normal(size=n_patients) + 1.2 * label
    groups = np.repeat([f"p{i}" for i in range(n_patients)], per)
    score = np.repeat(base, per) + 0.1 * rng.normal(size=n_patients * per)
    return np.repeat(label, per), score, groups


def test_a_patient_bootstrap_matches_a_slow_loop_over_drawn_patients():
    # Prepare: 40 patients, 4 images each, listed out of patient order
    y, score, groups = _patients(40, 4)
    order = np.random.default_rng(1).permutation(y.size)
    y, score, groups = y[order], score[order], groups[order]
    # Execute
    auc, low, high = bootstrap_auc(y, score, n_boot=300, seed=5, groups=groups)
    # Assert: the same as drawing 40 patients with replacement and taking all their images
    # (codes in order of first appearance, default_rng(seed).integers(0, 40, (300, 40)))
    names = list(dict.fromkeys(groups))
    members = [np.flatnonzero(groups == g) for g in names]
    draws = np.random.default_rng(5).integers(0, len(names), size=(300, len(names)))
    values = []
    for row in draws:
        i = np.concatenate([members[k] for k in row])
        if 0 < y[i].sum() < i.size:
            values.append(roc_auc_score(y[i], score[i]))
    assert auc == pytest.approx(roc_auc_score(y, score), abs=1e-12)
    assert (low, high) == pytest.approx(tuple(np.percentile(values, [2.5, 97.5])), abs=1e-12)


def test_a_patient_bootstrap_is_wider_than_an_image_one_when_images_are_copies():
    # Prepare: each patient's 4 images nearly the same: 4x the images, not 4x the information
    y, score, groups = _patients(60, 4, seed=3)
    # Execute
    _, i_low, i_high = bootstrap_auc(y, score, n_boot=1000, seed=0)
    _, p_low, p_high = bootstrap_auc(y, score, n_boot=1000, seed=0, groups=groups)
    d_img = delta_auc(y, score, score + 0.3 * y, n_boot=1000, seed=0)
    d_pat = delta_auc(y, score, score + 0.3 * y, n_boot=1000, seed=0, groups=groups)
    # Assert: about twice as wide (sqrt of 4 copies); so is the paired difference's CI
    assert 1.6 < (p_high - p_low) / (i_high - i_low) < 2.4
    assert (d_pat[2] - d_pat[1]) > 1.5 * (d_img[2] - d_img[1])


def test_a_patient_bootstrap_of_one_image_each_is_the_image_bootstrap_relabelled():
    # Prepare: one image a patient, patients named in image order
    y, score = _scores(80, 1.0)
    groups = np.array([f"p{i:03d}" for i in range(y.size)])
    # Execute / Assert: every patient is one image, so the draws are the same
    assert bootstrap_auc(y, score, n_boot=200, seed=2, groups=groups) == bootstrap_auc(
        y, score, n_boot=200, seed=2
    )


def test_patient_groups_must_fit_the_samples():
    y, score = _scores(10, 1.0)
    with pytest.raises(DataError, match=r"groups has shape \(9,\); expected one key per sample"):
        bootstrap_auc(y, score, groups=["p"] * 9)
    with pytest.raises(DataError, match="groups holds missing keys"):
        bootstrap_auc(y, score, groups=["p"] * 9 + [None])


def test_bootstrap_skips_one_class_resamples_like_the_reference():
    # Prepare: 5 positives in 10 samples -> 1 resample in 512 lacks a class; 1500 draws
    y = np.array([0, 0, 0, 1, 0, 1, 1, 0, 1, 1])
    score = np.array([0.1, 0.4, 0.35, 0.8, 0.2, 0.9, 0.05, 0.3, 0.6, 0.15])

    # Execute
    result = bootstrap_auc(y, score, n_boot=1500, seed=1)

    # Assert
    reference = _reference_boot(y, [score], 1500, 1, roc_auc_score)
    assert result[1:] == pytest.approx(tuple(reference))


def test_bootstrap_auc_of_separable_and_random_scores():
    # Prepare
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, size=400)

    # Execute
    separable = bootstrap_auc(y, y + rng.random(400) * 0.5, n_boot=500)
    random = bootstrap_auc(y, rng.random(400), n_boot=500)

    # Assert
    assert separable == (1.0, 1.0, 1.0)
    assert random[1] < 0.5 < random[2]
    assert random[2] - random[1] < 0.15


def test_auc_metrics_are_nan_with_a_single_class():
    assert all(math.isnan(v) for v in bootstrap_auc([0, 0, 0], [0.1, 0.5, 0.2]))
    assert all(math.isnan(v) for v in delta_auc([1, 1], [0.1, 0.5], [0.3, 0.2]))


def test_delta_auc_of_identical_scores_is_zero_with_p_one():
    # Prepare
    y, score = _scores(150, 1.0)

    # Execute
    result = delta_auc(y, score, score.copy(), n_boot=300)

    # Assert
    assert result == (0.0, 0.0, 0.0, 1.0)
    assert not is_significant_increase(result[1], result[3])


def test_delta_auc_matches_a_paired_reference_loop_and_detects_a_better_model():
    # Prepare
    y, weak = _scores(300, 0.5, seed=4)
    rng = np.random.default_rng(5)
    strong = np.clip(weak + 0.3 * y + rng.normal(scale=0.05, size=y.size), 0, 1)

    # Execute
    delta, low, high, p = delta_auc(y, weak, strong, n_boot=250, seed=9)

    # Assert
    diff = lambda yy, base, method: roc_auc_score(yy, method) - roc_auc_score(yy, base)  # noqa: E731
    assert delta == pytest.approx(roc_auc_score(y, strong) - roc_auc_score(y, weak), abs=1e-12)
    assert (low, high) == pytest.approx(tuple(_reference_boot(y, [weak, strong], 250, 9, diff)))
    assert p == paired_permutation_p(y, weak, strong, 250, 9)
    assert is_significant_increase(low, p) and p == 1 / 251  # no swap reaches it
    assert is_significant_decrease(*delta_auc(y, strong, weak, n_boot=250, seed=9)[2:])


def _exact_permutation_p(y, a, b, groups) -> float:
    """The permutation p-value by enumerating every swap of the patients (by hand)."""
    from scipy.stats import rankdata

    ra, rb = rankdata(a), rankdata(b)
    patients = sorted(set(groups))
    observed = abs(roc_auc_score(y, b) - roc_auc_score(y, a))
    extreme = 0
    for swapped in itertools.product([False, True], repeat=len(patients)):
        swap = np.array([swapped[patients.index(g)] for g in groups])
        d = roc_auc_score(y, np.where(swap, ra, rb)) - roc_auc_score(y, np.where(swap, rb, ra))
        extreme += abs(d) >= observed - 1e-12
    return extreme / 2 ** len(patients)


def test_paired_permutation_p_approaches_the_p_of_every_swap_enumerated():
    # Prepare: 8 patients of 2 images, 3 with cancer; tied scores; model b a bit better
    rng = np.random.default_rng(3)
    groups = np.repeat(np.arange(8), 2)
    y = (groups < 3).astype(int)
    a = np.round(y + rng.normal(size=16), 1)
    b = np.round(1.5 * y + rng.normal(size=16), 1)
    exact = _exact_permutation_p(y, a, b, groups)  # 256 swaps

    # Execute
    p = paired_permutation_p(y, a, b, 20_000, seed=1, groups=groups)

    # Assert: Monte-Carlo error of 20,000 permutations is below 0.004 here
    assert 0.02 < exact < 0.8
    assert p == pytest.approx(exact, abs=0.012)


def test_paired_permutation_p_ignores_each_models_scale():
    y, score = _scores(120, 1.0, seed=2)
    other = np.clip(score + np.random.default_rng(3).normal(scale=0.2, size=y.size), 0, 1)
    p = paired_permutation_p(y, score, other, 500, seed=4)
    assert paired_permutation_p(y, score, np.exp(5 * other), 500, seed=4) == p
    assert paired_permutation_p(y, score * 100 - 7, other, 500, seed=4) == p


def test_paired_permutation_p_holds_its_level_for_two_equally_good_models():
    # Prepare: 300 null studies (the same score distribution, a patient effect both share)
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(16), 3)
    y = ((groups < 6) & (np.arange(48) % 3 < 2)).astype(int)
    ps = []
    for study in range(300):
        shared = 0.5 * rng.normal(size=16)[groups]
        a, b = (y + shared + rng.normal(size=48) for _ in range(2))

        # Execute
        ps.append(paired_permutation_p(y, a, b, 199, seed=study, groups=groups))

    # Assert: exact test: P(p <= alpha) <= alpha (binomial sd of the rate about 0.013)
    ps = np.array(ps)
    assert np.mean(ps < 0.05) <= 0.05 + 0.03
    assert np.mean(ps < 0.5) == pytest.approx(0.5, abs=0.1)


def test_paired_permutation_p_edge_cases():
    y, score = _scores(60, 1.0)
    assert paired_permutation_p(y, score, score.copy(), 100) == 1.0  # no difference at all
    assert math.isnan(paired_permutation_p([1, 1, 1], [0.1, 0.2, 0.3], [0.3, 0.2, 0.1]))
    with pytest.raises(DataError, match="n_perm must be an integer >= 1, got 0"):
        paired_permutation_p(y, score, score, 0)


def test_weighted_log_loss_equals_sklearn_with_balanced_weights():
    # Prepare
    y, p = _scores(200, 1.2, seed=6)

    # Execute
    wll = weighted_log_loss(y, p)

    # Assert
    expected = log_loss(y, p, sample_weight=compute_sample_weight("balanced", y))
    assert wll == pytest.approx(expected, rel=1e-12)
    per_class = [np.mean(-np.log(np.where(y == c, p if c else 1 - p, 1.0)[y == c])) for c in (0, 1)]
    assert wll == pytest.approx(np.mean(per_class))


def test_weighted_log_loss_clips_and_rejects_non_probabilities():
    assert weighted_log_loss([0, 1], [0.0, 1.0]) == pytest.approx(-math.log(1 - 1e-7))
    assert weighted_log_loss([0, 0], [0.5, 0.5]) == pytest.approx(math.log(2))
    with pytest.raises(DataError, match="probabilities in \\[0, 1\\]"):
        weighted_log_loss([0, 1], [-0.5, 2.0])


def test_operating_points_lie_on_the_sklearn_roc_curve():
    # Prepare
    y, score = _scores(250, 1.0, seed=8)
    fpr, tpr, thresholds = roc_curve(y, score, drop_intermediate=False)

    # Execute
    points = operating_points(y, score)

    # Assert
    assert [p["threshold"] for p in points] == [0.2, 0.4, 0.6, 0.8]
    for point in points:
        k = np.flatnonzero(thresholds >= point["threshold"])[-1]
        assert (point["fpr"], point["tpr"]) == pytest.approx((fpr[k], tpr[k]))
        assert point["sensitivity"] == point["tpr"]
        assert point["specificity"] == pytest.approx(1 - point["fpr"])


def test_classification_metrics_match_sklearn():
    # Prepare
    y, score = _scores(180, 1.5, seed=10)

    # Execute
    metrics = classification_metrics(y, score, threshold=0.4)

    # Assert
    predicted = (score >= 0.4).astype(int)
    assert metrics["accuracy"] == pytest.approx(accuracy_score(y, predicted))
    assert metrics["f1"] == pytest.approx(f1_score(y, predicted))
    assert metrics["auroc"] == pytest.approx(roc_auc_score(y, score))
    assert metrics["auprc"] == pytest.approx(average_precision_score(y, score))
    assert metrics["wll"] == pytest.approx(weighted_log_loss(y, score))
    assert (metrics["n"], metrics["n_pos"]) == (180, y.sum())


def test_classification_metrics_are_nan_where_undefined_without_warnings():
    # Execute
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        metrics = classification_metrics([0, 0, 0], [0.2, 0.7, 0.1])

    # Assert
    assert metrics["accuracy"] == pytest.approx(2 / 3)
    assert all(math.isnan(metrics[k]) for k in ("f1", "auroc", "auprc"))
    assert metrics["n_pos"] == 0 and math.isfinite(metrics["wll"])


def test_metrics_by_segment_records_global_and_local_values():
    # Prepare
    y, score = _scores(160, 1.0, seed=12)
    segments = np.where(np.arange(160) < 100, "S1-Ma", "S2-Ma")

    # Execute
    records = metrics_by_segment(y, score, segments)

    # Assert
    assert {tuple(sorted(r)) for r in records} == {
        ("ci_high", "ci_low", "metric", "segment", "value")
    }
    assert [r["segment"] for r in records if r["metric"] == "auc"] == [None, "S1-Ma", "S2-Ma"]
    by_key = {(r["segment"], r["metric"]): r for r in records}
    local = by_key[("S2-Ma", "auc")]
    assert (local["value"], local["ci_low"], local["ci_high"]) == auc_ci(y[100:], score[100:])
    assert by_key[(None, "wll")]["value"] == pytest.approx(weighted_log_loss(y, score))
    assert by_key[("S1-Ma", "n")]["value"] == 100 and by_key[("S1-Ma", "n")]["ci_low"] is None
    assert by_key[("S1-Ma", "tpr@0.6")]["value"] == operating_points(y[:100], score[:100])[2]["tpr"]
    # with patients: each scope's CI is over the patients of that scope
    patients = np.array([f"p{i // 2}" for i in range(160)])  # two images a patient
    grouped = metrics_by_segment(y, score, segments, groups=patients)
    local = {(r["segment"], r["metric"]): r for r in grouped}[("S2-Ma", "auc")]
    expected = auc_ci(y[100:], score[100:], groups=patients[100:])
    assert (local["value"], local["ci_low"], local["ci_high"]) == expected


def test_zero_bootstraps_give_point_estimates_without_ci():
    # Prepare
    y, score = _scores(80, 1.0, seed=14)

    # Execute
    auc = bootstrap_auc(y, score, n_boot=0)
    delta = delta_auc(y, score, score**2, n_boot=0)
    records = metrics_by_segment(y, score, ["a"] * 80, with_ci=False)

    # Assert
    assert auc[0] == pytest.approx(roc_auc_score(y, score), abs=1e-12)
    assert all(math.isnan(v) for v in auc[1:])
    assert delta[0] == pytest.approx(0.0, abs=1e-12) and all(math.isnan(v) for v in delta[1:])
    assert records[0]["metric"] == "auc" and records[0]["ci_low"] is None


def test_metric_inputs_are_validated():
    with pytest.raises(DataError, match="same length"):
        bootstrap_auc([0, 1, 1], [0.2, 0.3])
    with pytest.raises(DataError, match="0/1 labels only"):
        bootstrap_auc([0, 2], [0.2, 0.3])
    with pytest.raises(DataError, match="NaN or infinite"):
        classification_metrics([0, 1], [0.2, np.nan])
    with pytest.raises(DataError, match="empty"):
        weighted_log_loss([], [])
    with pytest.raises(DataError, match="n_boot must be an integer >= 0"):
        bootstrap_auc([0, 1], [0.2, 0.3], n_boot=-1)


def test_comparison_rows_format_tables_like_seed_000():
    # Prepare
    y, weak = _scores(200, 0.5, seed=13)
    strong = np.clip(weak + 0.3 * y, 0, 1)

    # Execute
    rows = tables.comparison_rows(y, weak, {"P. sampling": strong}, n_boot=100, seed=0)
    text = tables.markdown_table(rows)

    # Assert
    assert rows[0]["significance"] == "increase"
    assert rows[0]["AUC"] == tables.format_auc(
        rows[0]["auc"], rows[0]["auc_low"], rows[0]["auc_high"]
    )
    assert text.splitlines()[0] == "| AUC baseline | Method | AUC | ΔAUC | p-value |"
    assert "| P. sampling |" in text
    assert tables.format_auc(0.8405, 0.82641, 0.85412) == "84.05 (82.64, 85.41)"
    assert tables.format_p_value(0.00004) == "< 0.0001" and tables.format_p_value(0.15) == "0.1500"


def _two_view_patients(malignant: int, benign: int = 6) -> tuple[np.ndarray, np.ndarray, list]:
    """Two views per patient: labels, a perfectly ranking score, patient keys."""
    y = np.repeat([1] * malignant + [0] * benign, 2)
    score = np.linspace(1.0, 0.0, y.size)
    patients = [f"p{i // 2}" for i in range(y.size)]
    return y, score, patients


def test_too_few_patients_of_a_class_give_the_auc_without_a_ci_or_p_value():
    # Prepare: one malignant patient fewer than the minimum (two views each) among 6 benign
    # patients; and exactly the minimum
    few, enough = MIN_UNITS_PER_CLASS - 1, MIN_UNITS_PER_CLASS
    y, score, patients = _two_view_patients(few)
    y2, score2, patients2 = _two_view_patients(enough)

    # Execute
    alone = bootstrap_auc(y, score, n_boot=200, groups=patients)
    paired = delta_auc(y, score[::-1].copy(), score, n_boot=200, groups=patients)
    as_images = bootstrap_auc(y, score, n_boot=200)  # twice as many images as patients
    at_minimum = bootstrap_auc(y2, score2, n_boot=200, groups=patients2)
    paired_at_minimum = delta_auc(y2, score2[::-1].copy(), score2, n_boot=200, groups=patients2)

    # Assert: the point estimates stay; too few patients of a class give no CI and no p
    assert MIN_UNITS_PER_CLASS == 5
    assert alone[0] == 1.0 and np.isnan(alone[1:]).all()
    assert paired[0] == 1.0 and np.isnan(paired[1:]).all()
    assert units_per_class(y, patients) == few and units_per_class(y2, patients2) == enough
    assert units_per_class(y, None) == 2 * few  # images, counted alone
    assert np.isfinite(as_images[1:]).all()
    assert np.isfinite(at_minimum[1:]).all() and np.isfinite(paired_at_minimum[1:]).all()
