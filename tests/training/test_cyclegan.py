"""Tests for fedmammo.models.cyclegan and fedmammo.training.cyclegan."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedmammo.errors import ConfigError, DataError
from fedmammo.models.cyclegan import CycleGanDescription, build_cyclegan
from fedmammo.training.cyclegan import train_cyclegan, translate

TINY = {"width": 8, "n_blocks": 1, "d_width": 8}


def _blobs(n: int, size: int, seed: int) -> np.ndarray:
    """Grey patches (0.2) with one bright Gaussian blob each (peak 0.7)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    out = np.empty((n, size, size), dtype=np.float32)
    for i in range(n):
        cx, cy = rng.uniform(4, size - 4, 2)
        radius = rng.uniform(2, 5)
        out[i] = 0.2 + 0.5 * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * radius**2))
    return out


@pytest.mark.parametrize(("size", "layers", "score"), [(16, 2, 2), (32, 3, 2), (64, 3, 6)])
def test_networks_keep_patch_shape_and_give_patch_scores(size, layers, score):
    g_ab, g_ba, d_a, _ = build_cyclegan(CycleGanDescription(size, 8, 1, 8, layers))
    x = torch.rand(2, 1, size, size) * 2 - 1
    assert g_ab(x).shape == g_ba(x).shape == (2, 1, size, size)
    assert g_ab(x).abs().max() <= 1.0
    assert d_a(x).shape == (2, 1, score, score)


def test_bad_geometry_is_a_config_error():
    with pytest.raises(ConfigError, match="multiple of 4"):
        build_cyclegan(CycleGanDescription(18))
    with pytest.raises(ConfigError, match="use at most 2"):
        build_cyclegan(CycleGanDescription(16, d_layers=3))


def test_translation_moves_b_towards_a_and_cycle_error_falls():
    # Prepare: domain B is domain A with inverted intensities (mean 0.34 vs 0.66)
    domain_a = _blobs(16, 16, seed=0)
    domain_b = 1.0 - _blobs(16, 16, seed=1)
    # Execute: 10 epochs x 4 steps
    result = train_cyclegan(domain_a, domain_b, epochs=10, batch_size=4, lr=5e-4, seed=0, **TINY)
    translated = translate(result.generator("ba"), domain_b)
    # Assert: B -> A translation lands near A's intensities (mean and histogram)
    gap_before = abs(domain_b.mean() - domain_a.mean())
    gap_after = abs(translated.mean() - domain_a.mean())
    assert translated.shape == domain_b.shape and translated.dtype == np.float32
    assert 0.0 <= translated.min() and translated.max() <= 1.0
    assert gap_after < 0.3 * gap_before
    quantiles = np.linspace(0.05, 0.95, 19)
    hist_before = np.abs(np.quantile(domain_b, quantiles) - np.quantile(domain_a, quantiles))
    hist_after = np.abs(np.quantile(translated, quantiles) - np.quantile(domain_a, quantiles))
    assert hist_after.mean() < 0.5 * hist_before.mean()
    # cycle reconstruction error falls
    assert result.steps == 40
    assert result.history[-1]["cycle_loss"] < 0.6 * result.history[0]["cycle_loss"]


def test_training_is_reproducible_and_inputs_are_checked():
    a, b = _blobs(4, 16, 0), _blobs(4, 16, 1)
    r1 = train_cyclegan(a, b, epochs=1, batch_size=2, seed=3, **TINY)
    r2 = train_cyclegan(a, b, epochs=1, batch_size=2, seed=3, **TINY)
    for key, value in r1.g_ba_state.items():
        assert torch.equal(value, r2.g_ba_state[key])
    with pytest.raises(DataError, match="differ in patch size"):
        train_cyclegan(a, _blobs(4, 32, 1), epochs=1)
    with pytest.raises(DataError, match=r"in \[0, 1\]"):
        train_cyclegan(a * 3, b, epochs=1)
    with pytest.raises(DataError, match="'ab' or 'ba'"):
        r1.generator("ac")
