"""Bootstrap CIs of per-sample statistics share the AUC bootstrap's resamples."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedmammo.errors import DataError
from fedmammo.evaluation.bootstrap import accuracy_ci, bootstrap_mean, bootstrap_statistic
from fedmammo.evaluation.metrics import _bootstrap_indices


def test_accuracy_ci_is_the_percentile_interval_of_resampled_means():
    # Prepare
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    pred = np.where(rng.random(200) < 0.8, y, 1 - y)
    # Execute
    acc, low, high = accuracy_ci(y, pred, n_boot=500, seed=3)
    # Assert: same resamples as a direct loop over the AUC bootstrap's index stream
    correct = (y == pred).astype(float)
    direct = [correct[row].mean() for chunk in _bootstrap_indices(200, 500, 3) for row in chunk]
    assert acc == pytest.approx(correct.mean())
    assert (low, high) == pytest.approx(tuple(np.percentile(direct, [2.5, 97.5])))
    assert low < acc < high


def test_generic_statistic_matches_the_vectorised_mean_and_handles_no_bootstrap():
    values = np.random.default_rng(1).random(50)
    generic = bootstrap_statistic(lambda idx: values[idx].mean(), 50, n_boot=200, seed=0)
    assert generic == pytest.approx(bootstrap_mean(values, n_boot=200, seed=0))
    value, low, high = bootstrap_mean(values, n_boot=0)
    assert value == pytest.approx(values.mean()) and math.isnan(low) and math.isnan(high)


def test_mean_over_patients_equals_the_generic_patient_bootstrap():
    # Prepare: 30 patients of 1-5 samples each
    rng = np.random.default_rng(2)
    groups = np.repeat([f"p{k}" for k in range(30)], rng.integers(1, 6, 30))
    values = rng.random(groups.size)
    # Execute
    vectorised = bootstrap_mean(values, n_boot=300, seed=4, groups=groups)
    generic = bootstrap_statistic(
        lambda idx: values[idx].mean(), values.size, n_boot=300, seed=4, groups=groups
    )
    # Assert: the same resamples of patients, each mean over the samples drawn
    assert vectorised == pytest.approx(generic, rel=1e-12)


def test_copies_of_a_patients_samples_do_not_narrow_the_patient_bootstrap():
    # Prepare: one sample per patient, then every sample four times under its patient
    values = (np.random.default_rng(3).random(40) < 0.7).astype(float)
    patients = np.arange(40)
    # Execute
    once = bootstrap_mean(values, n_boot=400, seed=5, groups=patients)
    copies = bootstrap_mean(np.repeat(values, 4), n_boot=400, seed=5, groups=np.repeat(patients, 4))
    as_images = bootstrap_mean(np.repeat(values, 4), n_boot=400, seed=5)
    # Assert: the same interval by patient; about half as wide counting copies as samples
    assert copies == pytest.approx(once, rel=1e-12)
    assert (as_images[2] - as_images[1]) < 0.7 * (once[2] - once[1])


def test_accuracy_by_patient_is_the_patient_bootstrap_of_the_correct_predictions():
    # Prepare: 25 patients of 2-4 images; a patient's images mostly right or mostly wrong
    rng = np.random.default_rng(6)
    patients = np.repeat(np.arange(25), rng.integers(2, 5, 25))
    y = rng.integers(0, 2, patients.size)
    right = (rng.random(25) < 0.75)[patients]
    pred = np.where(right, y, 1 - y)
    # Execute
    by_patient = accuracy_ci(y, pred, n_boot=400, seed=7, groups=patients)
    by_image = accuracy_ci(y, pred, n_boot=400, seed=7)
    # Assert: the patient bootstrap of the 0/1 correct flags; wider than the image one here
    expected = bootstrap_mean((y == pred).astype(float), n_boot=400, seed=7, groups=patients)
    assert by_patient == pytest.approx(expected, rel=1e-12)
    assert by_patient[0] == by_image[0]
    assert by_patient[2] - by_patient[1] > by_image[2] - by_image[1]


def test_bad_input_is_refused():
    with pytest.raises(DataError, match="must match"):
        accuracy_ci([0, 1], [0])
    with pytest.raises(DataError, match="n_boot"):
        bootstrap_mean([1.0], n_boot=-1)
    with pytest.raises(DataError, match="one key per sample"):
        accuracy_ci([0, 1], [0, 1], groups=["p"])


def test_no_ci_from_fewer_than_five_patients_or_samples():
    # Prepare: correct / wrong per image, 2 images per patient
    values = np.array([1, 0, 1, 1, 0, 1, 1, 1, 0, 1], dtype=float)
    four = np.repeat(np.arange(4), 2)
    five = np.repeat(np.arange(5), 2)
    # Execute / Assert: a mean always; a CI from 5 patients (or 5 samples) up
    mean, low, high = bootstrap_mean(values[:8], n_boot=50, groups=four)
    assert mean == pytest.approx(values[:8].mean()) and math.isnan(low) and math.isnan(high)
    mean, low, high = bootstrap_mean(values, n_boot=50, groups=five)
    assert low <= mean <= high
    assert math.isnan(accuracy_ci([1, 0, 1, 1], [1, 1, 1, 1], n_boot=50)[1])
    assert math.isnan(bootstrap_statistic(lambda i: float(len(i)), 4, n_boot=50)[1])
