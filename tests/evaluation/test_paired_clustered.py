"""DeLong's paired AUC test with images grouped by patient (Obuchowski 1997): equal to DeLong
with one image per patient, blind to copies of a patient's images, equal to a literal
transcription of the paper's sums, and calibrated where the per-image test is not."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedmammo.errors import DataError
from fedmammo.evaluation.metrics import MIN_UNITS_PER_CLASS
from fedmammo.evaluation.paired import delong_test


def _psi(x: float, y: float) -> float:
    return 1.0 if x > y else 0.5 if x == y else 0.0


def _obuchowski_p(y, a, b, groups) -> float:
    """The paper's sums, one cluster and one pair at a time (no midranks, no matrices)."""
    y, groups = np.asarray(y), np.asarray(groups)
    clusters = list(dict.fromkeys(groups.tolist()))
    pos, neg = y == 1, y == 0
    big_m, big_n = int(pos.sum()), int(neg.sum())
    i10 = len({g for g, t in zip(groups, y, strict=True) if t == 1})
    i01 = len({g for g, t in zip(groups, y, strict=True) if t == 0})
    i = len(clusters)
    stats = {}
    for name, s in (("a", np.asarray(a, float)), ("b", np.asarray(b, float))):
        auc = sum(_psi(x, v) for x in s[pos] for v in s[neg]) / (big_m * big_n)
        xs, ys = [], []
        for c in clusters:
            here = groups == c
            xs.append(sum(np.mean([_psi(x, v) for v in s[neg]]) for x in s[here & pos]))
            ys.append(sum(np.mean([_psi(x, v) for x in s[pos]]) for v in s[here & neg]))
        m_i = np.array([int((groups[pos] == c).sum()) for c in clusters])
        n_i = np.array([int((groups[neg] == c).sum()) for c in clusters])
        stats[name] = (auc, np.array(xs) - m_i * auc, np.array(ys) - n_i * auc)

    def cov(r: str, s: str) -> float:
        _, dx_r, dy_r = stats[r]
        _, dx_s, dy_s = stats[s]
        s10 = i10 / ((i10 - 1) * big_m) * float(dx_r @ dx_s)
        s01 = i01 / ((i01 - 1) * big_n) * float(dy_r @ dy_s)
        s11_rs = i / (i - 1) * float(dx_r @ dy_s)
        s11_sr = i / (i - 1) * float(dx_s @ dy_r)
        return s10 / big_m + s01 / big_n + (s11_rs + s11_sr) / (big_m * big_n)

    var = cov("a", "a") + cov("b", "b") - 2 * cov("a", "b")
    z = abs(stats["a"][0] - stats["b"][0]) / math.sqrt(var)
    return math.erfc(z / math.sqrt(2))


def _patients(rng, n: int, images: int, *, shift: float = 1.0):
    """``n`` patients of ``images`` images each; scores share a per-patient effect."""
    y = np.repeat(rng.random(n) < 0.3, images).astype(int)
    groups = np.repeat(np.arange(n), images)
    latent = np.repeat(rng.normal(0, 1, n), images) + shift * y

    def score():
        return latent + rng.normal(0, 0.3, y.size) + np.repeat(rng.normal(0, 0.7, n), images)

    return y, score(), score(), groups


def test_one_image_per_patient_is_delongs_test_exactly():
    rng = np.random.default_rng(0)
    y, a, b, _ = _patients(rng, 60, 1)
    plain = delong_test(y, a, b)
    grouped = delong_test(y, a, b, [f"p{k}" for k in range(y.size)])
    assert grouped[:2] == plain[:2]
    assert grouped[2] == pytest.approx(plain[2], rel=1e-12)


def test_copies_of_a_patients_images_change_nothing_with_groups():
    # Prepare: one image per patient, then every image twice under its patient
    rng = np.random.default_rng(1)
    y, a, b, groups = _patients(rng, 50, 1)
    y2, a2, b2, groups2 = (np.repeat(v, 2) for v in (y, a, b, groups))
    # Execute
    original = delong_test(y, a, b, groups)[2]
    grouped = delong_test(y2, a2, b2, groups2)[2]
    per_image = delong_test(y2, a2, b2)[2]
    # Assert: grouped, the copies add no evidence; per image, they look like new patients
    assert grouped == pytest.approx(original, rel=1e-10)
    assert per_image < original


def test_matches_the_papers_sums_with_mixed_patients():
    # Prepare: patients of 1-4 images with both labels inside some, tied scores included
    rng = np.random.default_rng(2)
    sizes = rng.integers(1, 5, 25)
    groups = np.repeat(np.arange(25), sizes)
    y = (rng.random(groups.size) < 0.4).astype(int)
    a = np.round(rng.normal(0, 1, groups.size) + y, 1)
    b = np.round(rng.normal(0, 1, groups.size) + 0.5 * y, 1)
    assert any(len(set(y[groups == g])) == 2 for g in range(25))
    # Execute / Assert
    assert delong_test(y, a, b, groups)[2] == pytest.approx(
        _obuchowski_p(y, a, b, groups), rel=1e-10
    )


def test_calibrated_under_the_null_where_the_per_image_test_is_not():
    # Prepare: 300 studies of 40 patients x 4 correlated images; both models equally good
    rng = np.random.default_rng(3)
    grouped = per_image = 0
    for _ in range(300):
        y, a, b, groups = _patients(rng, 40, 4)
        grouped += delong_test(y, a, b, groups)[2] < 0.05
        per_image += delong_test(y, a, b)[2] < 0.05
    # Assert: near the nominal 5% by patient (about 0.05 measured over 1,000 studies); about
    # a third of the studies "significant" when each image counts as a patient
    assert 0.01 <= grouped / 300 <= 0.10
    assert per_image / 300 >= 0.2


def test_groups_must_name_every_image():
    with pytest.raises(DataError, match="one key per sample"):
        delong_test([0, 1, 1], [0.1, 0.8, 0.7], [0.2, 0.3, 0.9], groups=["p1", "p2"])
    with pytest.raises(DataError, match="missing keys"):
        delong_test([0, 1, 1], [0.1, 0.8, 0.7], [0.2, 0.3, 0.9], groups=["p1", None, "p2"])


def test_too_few_malignant_patients_give_no_p_value_where_it_was_significant_by_chance():
    # Prepare: 200 studies of two equally uninformative models on one malignant patient
    # (two views) and 10 benign images; on one malignant patient fewer than the minimum; and
    # on the minimum (metrics.MIN_UNITS_PER_CLASS)
    rng = np.random.default_rng(5)
    benign = [f"b{i}" for i in range(10)]

    def study(malignant: int) -> tuple[np.ndarray, list[str]]:
        groups = [f"m{i // 2}" for i in range(2 * malignant)] + benign
        return np.array([1] * (2 * malignant) + [0] * 10), groups

    runs = {}
    for k in (1, MIN_UNITS_PER_CLASS - 1, MIN_UNITS_PER_CLASS):
        y, groups = study(k)
        runs[k] = [
            delong_test(y, rng.random(y.size), rng.random(y.size), groups) for _ in range(200)
        ]
    # Assert: below the minimum the AUCs, never a p-value (with one patient, 44% of such
    # studies came out p < 0.05 when S10 was taken as 0); at the minimum a p-value every time
    for k in (1, MIN_UNITS_PER_CLASS - 1):
        assert all(np.isfinite(r[:2]).all() and math.isnan(r[2]) for r in runs[k])
    assert all(np.isfinite(r[2]) for r in runs[MIN_UNITS_PER_CLASS])
