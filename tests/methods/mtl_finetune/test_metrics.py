"""The multi-task paper's fine-tuning metrics: paired p, operating points, breast-wise AUC."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import matthews_corrcoef, roc_auc_score

from fedmammo.errors import DataError
from fedmammo.evaluation.metrics import (
    auc_ci,
    best_mcc,
    breast_level,
    mcc_at_threshold,
    paired_permutation_p,
    specificity_at_sensitivity,
)
from fedmammo.evaluation.paired import delong_test
from fedmammo.evaluation.results import RECORD_FIELDS
from fedmammo.methods.mtl_finetune.params import reference_arm
from fedmammo.methods.mtl_finetune.report import build_mtl_tables, mtl_records

# 3 malignant, 5 benign; at p > 0.5: TP 2 (0.9, 0.6), FN 1 (0.4), FP 1 (0.7), TN 4
Y = np.array([1, 1, 1, 0, 0, 0, 0, 0])
SCORE = np.array([0.9, 0.6, 0.4, 0.7, 0.2, 0.1, 0.3, 0.5])


def test_delong_hand_computed_example():
    # Prepare: five copies of a: positives 0.9, 0.6, negatives 0.7, 0.1 (AUC 0.75); b
    # separates (AUC 1); ten images of each class (five are the fewest given a p). Components
    # of a: V10 = [1, 0.5] x 5, V01 = [0.5, 1] x 5, each sample variance 10 x 0.0625 / 9; b's
    # are constant, so var(AUC_a - AUC_b) = 2 x 0.0625 / 9 and z = 0.25 / sqrt(0.125 / 9)
    y = [1, 1, 0, 0] * 5
    a, b = [0.9, 0.6, 0.7, 0.1] * 5, [0.8, 0.5, 0.4, 0.2] * 5
    # Execute
    auc_a, auc_b, p = delong_test(y, a, b)
    # Assert: z = 3 / sqrt(2), p = 2 (1 - Phi(z)) = erfc(1.5)
    assert (auc_a, auc_b) == pytest.approx((0.75, 1.0))
    assert p == pytest.approx(math.erfc(1.5)) and p == pytest.approx(0.03389, abs=1e-5)
    assert math.isnan(delong_test(y[:8], a[:8], b[:8])[2])  # four of each: too few


def test_delong_identical_large_and_clearly_better():
    # Prepare
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    good = y + rng.normal(0, 0.5, 300)
    poor = rng.random(300)
    tied = np.round(good, 1)  # ties count one half, as in sklearn's AUC
    # Execute
    same = delong_test(y, good, good)
    better = delong_test(y, good, poor)
    ties = delong_test(y, tied, poor)
    # Assert
    assert same[2] == 1.0 and same[0] == same[1] == pytest.approx(roc_auc_score(y, good))
    assert better[0] > 0.85 and better[2] < 1e-6
    assert ties[0] == pytest.approx(roc_auc_score(y, tied))
    assert all(math.isnan(v) for v in delong_test([0, 0, 0], [0.1, 0.2, 0.3], [0.3, 0.2, 0.1]))
    with pytest.raises(DataError, match="labels"):
        delong_test([0, 1], [0.1], [0.2, 0.3])


def test_operating_point_at_p_over_half_hand_computed():
    # Execute
    point = mcc_at_threshold(Y, SCORE)
    # Assert: MCC = (2*4 - 1*1) / sqrt(3*3*5*5) = 7/15; 0.5 is not > 0.5 (negative)
    assert point["mcc"] == pytest.approx(7 / 15)
    assert point["sensitivity"] == pytest.approx(2 / 3)
    assert point["specificity"] == pytest.approx(4 / 5)
    assert point["mcc"] == pytest.approx(matthews_corrcoef(Y, SCORE > 0.5))


def test_best_mcc_and_triage_specificity_hand_computed():
    # Execute
    mcc, sens, spec = best_mcc(Y, SCORE)
    triage = specificity_at_sensitivity(Y, SCORE, 0.95)
    # Assert: score >= 0.4 gives TP 3, FP 2, TN 3: MCC 9/15, the highest of every threshold
    assert (mcc, sens, spec) == pytest.approx((0.6, 1.0, 0.6))
    brute = max(matthews_corrcoef(Y, SCORE >= t) for t in np.unique(SCORE))
    assert mcc == pytest.approx(brute)
    assert triage == pytest.approx(0.6)  # sensitivity 1 first reached at 0.4
    assert math.isnan(best_mcc([0, 0], [0.1, 0.2])[0])


def test_breast_level_takes_the_highest_probability_of_each_breast():
    # Prepare: p1|L two views (one unlabelled), p1|R two benign views, p2|L unlabelled
    keys = ["p1|L", "p1|L", "p1|R", "p1|R", "p2|L"]
    y = [1, -1, 0, 0, -1]
    score = [0.2, 0.9, 0.3, 0.1, 0.8]
    # Execute
    yb, sb = breast_level(keys, y, score)
    # Assert
    assert yb.tolist() == [1, 0] and sb.tolist() == [0.9, 0.3]


def _evaluation(n=80, seed=0):
    rng = np.random.default_rng(seed)
    y = np.repeat(rng.integers(0, 2, n // 2), 2)  # both views of a breast share the label
    breasts = np.repeat([f"p{i}|L" for i in range(n // 2)], 2)
    views = np.tile([0, 1], n // 2)
    labels = {"malignancy": y, "view": views}
    good = np.clip(0.5 + 0.4 * (y - 0.5) + rng.normal(0, 0.1, n), 0, 1)
    poor = rng.random(n)
    as_probs = lambda p: {"malignancy": np.c_[1 - p, p]}  # noqa: E731
    return labels, breasts, as_probs(good), as_probs(poor)


def _get(records, metric, segment=None):
    found = [r for r in records if r["segment"] == segment and r["metric"] == metric]
    assert len(found) == 1, (metric, segment)
    return found[0]["value"]


def test_records_have_p_values_breast_auc_and_operating_points():
    # Prepare
    labels, breasts, good, poor = _evaluation()
    # Execute
    vs_poor = mtl_records(good, labels, breasts=breasts, reference=poor, n_boot=1999, seed=3)
    vs_self = mtl_records(good, labels, breasts=breasts, reference=good, n_boot=1999)
    no_resamples = mtl_records(good, labels, breasts=breasts, reference=poor)
    alone = mtl_records(good, labels)
    # Assert: the paired permutation p, whole patients swapped, the run's seed
    patients = np.asarray([b.split("|")[0] for b in breasts], dtype=object)
    y, worse, better = labels["malignancy"], poor["malignancy"][:, 1], good["malignancy"][:, 1]
    expected = paired_permutation_p(y, worse, better, 1999, 3, groups=patients)
    assert _get(vs_poor, "auc_p") == expected == 1 / 2000
    assert _get(vs_poor, "breast_auc_p") < 0.01
    assert _get(vs_self, "auc_p") == 1.0 and _get(vs_self, "breast_auc_p") == 1.0
    assert math.isnan(_get(no_resamples, "auc_p"))  # n_boot 0: no p, as no CI
    assert _get(vs_poor, "auc_p", "view=CC") < 0.05  # strata are tested too
    assert _get(vs_poor, "reference_auc") == pytest.approx(
        roc_auc_score(labels["malignancy"], poor["malignancy"][:, 1])
    )
    assert _get(vs_poor, "n_breasts") == 40
    yb, sb = breast_level(breasts, labels["malignancy"], good["malignancy"][:, 1])
    assert _get(vs_poor, "breast_auc") == pytest.approx(roc_auc_score(yb, sb))
    point = mcc_at_threshold(labels["malignancy"], good["malignancy"][:, 1])
    assert _get(alone, "mcc") == pytest.approx(point["mcc"]) and point["mcc"] > 0.5
    assert not [r for r in alone if r["metric"] in ("auc_p", "breast_auc", "breast_auc_p")]


def test_reference_arms():
    arms = ["single_task", "mtl", "mtl_acr", "finetune_u1_0.5"]
    assert reference_arm("finetune_u1_0.5", arms) == "mtl"
    assert reference_arm("mtl", arms) == reference_arm("mtl_acr", arms) == "single_task"
    assert reference_arm("single_task", arms) is None
    assert reference_arm("mtl", ["mtl", "single_task_fusion"]) == "single_task_fusion"
    assert reference_arm("mtl", ["mtl"]) is None


def test_tables_show_p_values_and_the_operating_point_table():
    # Prepare: one seed, records as a centre sends them
    labels, breasts, good, poor = _evaluation()
    rows = []
    for arm, pred, ref in (("single_task", poor, None), ("mtl", good, poor)):
        for r in mtl_records(pred, labels, breasts=breasts, reference=ref, n_boot=200):
            rows.append({**r, "arm": arm, "seed": 0, "centre": "c", "split": "test", "round": None})
    df = pd.DataFrame(rows, columns=list(RECORD_FIELDS))
    # Execute
    tables = {t.title: t for t in build_mtl_tables(df)}
    # Assert
    strata = next(t for k, t in tables.items() if "Tables 2-3" in k)
    assert " p=" in strata.frame.loc["overall", "mtl"] and "permutation" in strata.note
    assert " p=" not in strata.frame.loc["overall", "single_task"]
    ops = next(t for k, t in tables.items() if "operating points" in k).frame
    assert ops.loc["mtl", "reference"] == "single_task"
    assert ops.loc["mtl", "p (AUC)"] == f"{_get(rows_of(rows, 'mtl'), 'auc_p'):.4f}" == "0.0050"
    assert ops.loc["single_task", "p (AUC)"] == "-"
    assert ops.loc["mtl", "MCC"] == f"{_get(rows_of(rows, 'mtl'), 'mcc'):.2f}"


def rows_of(rows, arm):
    return [r for r in rows if r["arm"] == arm]


def test_breast_and_image_auc_cis_resample_patients():
    # Prepare: 30 patients, both breasts, two views each; right breasts malignant for 10
    rng = np.random.default_rng(4)
    patients = np.repeat([f"p{i}" for i in range(30)], 4)
    sides = np.tile(["L", "L", "R", "R"], 30)
    breasts = np.array([f"{p}|{s}" for p, s in zip(patients, sides, strict=True)])
    y = np.array([int(s == "R" and int(p[1:]) < 10) for p, s in zip(patients, sides, strict=True)])
    score = np.clip(0.3 + 0.3 * y + rng.normal(0, 0.15, y.size), 0, 1)
    # Execute
    records = mtl_records(
        {"malignancy": np.c_[1 - score, score]}, {"malignancy": y}, breasts=breasts, n_boot=200
    )
    # Assert: the image AUC's CI over patients; the breast AUC's over the breasts' patients
    image = [r for r in records if r["segment"] is None and r["metric"] == "auc"][0]
    expected = auc_ci(y, score, groups=patients)
    assert (image["value"], image["ci_low"], image["ci_high"]) == expected
    yb, sb = breast_level(breasts, y, score)
    breast = [r for r in records if r["segment"] is None and r["metric"] == "breast_auc"][0]
    of_breast = [key.split("|")[0] for key in sorted(set(breasts))]  # breast_level's order
    by_breast = auc_ci(yb, sb, groups=of_breast)
    assert (breast["value"], breast["ci_low"], breast["ci_high"]) == by_breast


def test_a_stratum_with_one_malignant_patient_shows_no_p_value_or_ci():
    # Prepare: density A holds one malignant patient (both views) and 4 benign ones
    labels, breasts, good, poor = _evaluation()
    density = np.full(len(breasts), 2)  # density B (index 1) for everyone but ...
    y = labels["malignancy"]
    malignant = np.flatnonzero(y == 1)[:2]  # ... one malignant breast's two views
    benign = np.flatnonzero(y == 0)[:8]  # ... and four benign breasts
    density[np.r_[malignant, benign]] = 0
    labels = {**labels, "density": density}
    rows = []
    for arm, pred, ref in (("single_task", poor, None), ("mtl", good, poor)):
        for r in mtl_records(pred, labels, breasts=breasts, reference=ref, n_boot=50):
            rows.append({**r, "arm": arm, "seed": 0, "centre": "c", "split": "test", "round": None})
    # Execute
    strata = next(t for t in build_mtl_tables(pd.DataFrame(rows)) if "Tables 2-3" in t.title)
    mine = rows_of(rows, "mtl")
    # Assert: the AUC stands alone; before, p came from the benign side's variance only
    assert _get(mine, "n_malignant", "density=A") == 2
    assert np.isnan(_get(mine, "auc_p", "density=A"))
    auc = next(r for r in mine if r["segment"] == "density=A" and r["metric"] == "auc")
    assert np.isnan([auc["ci_low"], auc["ci_high"]]).all()
    assert strata.frame.loc["density=A", "mtl"].endswith(" p=n/a")
    assert "(" not in strata.frame.loc["density=A", "mtl"]
    assert "fewer than 5 malignant or 5 benign patients" in strata.note
