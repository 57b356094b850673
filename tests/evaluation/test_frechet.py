"""Tests for fedmammo.evaluation.frechet."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg

from fedmammo.errors import ConfigError, DataError
from fedmammo.evaluation.frechet import (
    FEATURE_NETS,
    extract_features,
    frechet_distance,
    frechet_distance_from_stats,
)


def _textures(n: int, seed: int, *, brightness: float = 0.5, size: int = 32) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.normal(brightness, 0.1, size=(n, size // 4, size // 4))
    smooth = np.kron(base, np.ones((4, 4))) + rng.normal(0, 0.03, size=(n, size, size))
    return np.clip(smooth, 0, 1).astype(np.float32)


def _reference(mu1, cov1, mu2, cov2) -> float:
    """The textbook formula with scipy.linalg.sqrtm."""
    covmean = scipy.linalg.sqrtm(cov1 @ cov2).real
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(cov1) + np.trace(cov2) - 2 * np.trace(covmean))


def test_one_dimensional_gaussians_match_closed_form():
    # W2^2 between N(m1, s1^2) and N(m2, s2^2) is (m1 - m2)^2 + (s1 - s2)^2
    value = frechet_distance_from_stats(
        np.array([1.0]), np.array([[4.0]]), np.array([3.0]), np.array([[9.0]])
    )
    assert value == pytest.approx((1 - 3) ** 2 + (2 - 3) ** 2)


def test_diagonal_gaussians_match_closed_form():
    a, b = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    mu1, mu2 = np.zeros(3), np.array([1.0, -1.0, 0.5])
    value = frechet_distance_from_stats(mu1, np.diag(a), mu2, np.diag(b))
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert value == pytest.approx(expected, rel=1e-10)


def test_full_covariances_match_scipy_sqrtm_reference():
    rng = np.random.default_rng(0)
    m1, m2 = rng.normal(size=(6, 6)), rng.normal(size=(6, 6))
    cov1, cov2 = m1 @ m1.T + 0.1 * np.eye(6), m2 @ m2.T + 0.1 * np.eye(6)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    value = frechet_distance_from_stats(mu1, cov1, mu2, cov2)
    assert value == pytest.approx(_reference(mu1, cov1, mu2, cov2), rel=1e-8)
    assert value == pytest.approx(frechet_distance_from_stats(mu2, cov2, mu1, cov1), rel=1e-8)


@pytest.mark.parametrize("net", sorted(FEATURE_NETS))
def test_identical_sets_are_at_distance_zero(net):
    real = _textures(64, 0)
    assert frechet_distance(real, real.copy(), feature_net=net) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("net", sorted(FEATURE_NETS))
def test_distance_grows_with_distribution_shift_and_is_symmetric(net):
    # Prepare: two samples of one distribution, and increasingly brighter sets
    real = _textures(128, 0)
    same = _textures(128, 1)
    shifted = [_textures(128, 2, brightness=b) for b in (0.6, 0.75)]
    # Execute
    d_same = frechet_distance(real, same, feature_net=net)
    d_small, d_large = (frechet_distance(real, s, feature_net=net) for s in shifted)
    # Assert
    assert d_same < d_small < d_large
    assert frechet_distance(shifted[0], real, feature_net=net) == pytest.approx(d_small, rel=1e-6)


def test_random_cnn_features_are_fixed_and_documented_size():
    x = _textures(5, 3)
    f1 = extract_features(x)
    f2 = extract_features(x.copy())
    assert f1.shape == (5, 16 + 32 + 64)
    np.testing.assert_array_equal(f1, f2)
    assert extract_features(_textures(5, 3, size=64)).shape == (5, 112)  # any patch size


def test_bad_inputs():
    with pytest.raises(ConfigError, match="random_cnn_v1"):
        frechet_distance(_textures(4, 0), _textures(4, 1), feature_net="inception")
    with pytest.raises(DataError, match="at least 2 samples"):
        frechet_distance(_textures(1, 0), _textures(4, 1))
