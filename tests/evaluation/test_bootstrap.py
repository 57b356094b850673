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


def test_bad_input_is_refused():
    with pytest.raises(DataError, match="must match"):
        accuracy_ci([0, 1], [0])
    with pytest.raises(DataError, match="n_boot"):
        bootstrap_mean([1.0], n_boot=-1)
