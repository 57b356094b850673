"""A tiny DP-compatible CNN and a fixed-noise budget, shared by the DP session tests."""

from __future__ import annotations

import torch
from torch import nn

from fedmammo.privacy.accounting import PrivacyBudget


def tiny_cnn() -> nn.Module:
    """A seeded GroupNorm CNN for 1 x 8 x 8 inputs and 2 classes."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.GroupNorm(2, 4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 2)
    )


def budget(**kw) -> PrivacyBudget:
    """Noise multiplier 1, delta 1e-5, clipping norm 1, no target; ``kw`` overrides."""
    base = {"target_epsilon": None, "noise_multiplier": 1.0, "delta": 1e-5, "max_grad_norm": 1.0}
    return PrivacyBudget(**{**base, **kw})
