"""Shared pieces of the downstream tasks: result record, optimiser, backbone copy, records."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from fedmammo.errors import ConfigError, DataError
from fedmammo.training.state import StateDict, cpu_state


@dataclass
class DownstreamResult:
    """A fine-tuned downstream model with what its training did."""

    task: str
    model: nn.Module = field(repr=False)
    steps: int
    num_examples: int
    loss: float
    seconds: float
    epsilon: float | None = None
    history: list[dict[str, float]] = field(default_factory=list)

    @property
    def state(self) -> StateDict:
        """The model's weights (CPU copies)."""
        return cpu_state(self.model)


def backbone_of(encoder: nn.Module) -> tuple[nn.Module, int]:
    """A trainable copy of a contrastive encoder's backbone and its feature size."""
    if not hasattr(encoder, "backbone") or not hasattr(encoder, "feature_dim"):
        raise ConfigError(
            f"downstream tasks start from a ContrastiveEncoder, got {type(encoder).__name__}"
        )
    return copy.deepcopy(encoder.backbone), int(encoder.feature_dim)


def make_optimizer(
    params: Any, *, optimizer: str, lr: float, weight_decay: float, momentum: float = 0.9
) -> torch.optim.Optimizer:
    """SGD with momentum (the paper's) or Adam."""
    params = [p for p in params if p.requires_grad]
    if optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    raise ConfigError(f"downstream optimizer must be 'sgd' or 'adam', got {optimizer!r}")


def as_images(images: Any, name: str) -> torch.Tensor:
    """(N, H, W) float images in [0, 1] -> (N, 1, H, W) float32 tensor."""
    arr = np.asarray(images, dtype=np.float32)
    if arr.ndim != 3 or arr.shape[0] == 0:
        raise DataError(f"{name}: expected images (N, H, W), got {arr.shape}")
    if float(arr.min()) < 0.0 or float(arr.max()) > 1.0:
        raise DataError(f"{name}: images must be in [0, 1]")
    return torch.from_numpy(arr)[:, None]


def keys_or_none(keys: Any, n: int, name: str = "segments") -> np.ndarray | None:
    """One key per sample (its segment, its patient) as text, or None."""
    if keys is None:
        return None
    out = np.asarray([str(k) for k in keys], dtype=object)
    if out.shape != (n,):
        raise DataError(f"{name} has {out.shape[0]} keys for {n} samples")
    return out


def scoped_records(
    metric: str,
    compute: Any,
    n: int,
    segments: np.ndarray | None,
    patients: np.ndarray | None = None,
) -> list[dict[str, Any]]:
    """Records ``{segment, metric, value, ci_low, ci_high}``: all samples (None), then each
    segment; ``compute(index, groups)`` returns (value, low, high) on the samples at ``index``,
    ``groups`` being their ``patients`` (what a bootstrap resamples; None: the samples)."""
    scopes: list[tuple[str | None, np.ndarray]] = [(None, np.arange(n))]
    if segments is not None:
        scopes += [(s, np.flatnonzero(segments == s)) for s in sorted(set(segments))]
    out = []
    for segment, index in scopes:
        value, low, high = compute(index, None if patients is None else patients[index])
        out.append(
            {
                "segment": segment,
                "metric": metric,
                "value": value,
                "ci_low": None if math.isnan(low) else low,
                "ci_high": None if math.isnan(high) else high,
            }
        )
    return out
