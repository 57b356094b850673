"""Frechet distance between real and synthetic patches in a fixed, documented feature space.

No pretrained weights can be downloaded, so this is NOT the published FID (Inception-v3):
values are comparable between fedmammo runs only. Feature networks (``FEATURE_NETS``):

- ``"random_cnn_v1"`` (default): patches resized to 64x64 (area / anti-aliased bilinear),
  scaled to [-1, 1], then three 3x3 convolutions (1->16->32->64 channels, ReLU, 2x2 average
  pooling after the first two) with fixed random weights ``N(0, 2 / fan_in)`` and zero biases,
  drawn from ``numpy.random.default_rng(0)`` (PCG64, stable across numpy and torch versions);
  the feature vector is the global average of each of the 16 + 32 + 64 channel maps (112
  dimensions). A random-feature ("random projection") Frechet distance.
- ``"pixel_stats_v1"``: the patch area-resized to 8x8 (64 dimensions): low-frequency pixel
  statistics, the fallback when a learned-feature-free figure is wanted.

The distance between Gaussians fitted to the two feature sets is
``||mu_1 - mu_2||^2 + tr(C_1) + tr(C_2) - 2 tr((C_1 C_2)^(1/2))``; the trace of the matrix
square root is computed as ``sum sqrt(eig(C_1^(1/2) C_2 C_1^(1/2)))`` (symmetric, real), which
equals ``tr(scipy.linalg.sqrtm(C_1 @ C_2))`` without its complex round-off.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache

import numpy as np
import torch
import torch.nn.functional as F

from fedmammo.errors import ConfigError, DataError

__all__ = [
    "FEATURE_NETS",
    "extract_features",
    "feature_statistics",
    "frechet_distance",
    "frechet_distance_from_stats",
]

_RANDOM_CNN_CHANNELS = (1, 16, 32, 64)


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    if x.shape[-1] >= size:
        return F.interpolate(x, size=(size, size), mode="area")
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


@cache
def _random_cnn_weights() -> tuple[torch.Tensor, ...]:
    rng = np.random.default_rng(0)
    weights = []
    for c_in, c_out in zip(_RANDOM_CNN_CHANNELS[:-1], _RANDOM_CNN_CHANNELS[1:], strict=True):
        std = np.sqrt(2.0 / (c_in * 9))
        weights.append(torch.from_numpy(rng.standard_normal((c_out, c_in, 3, 3)) * std).float())
    return tuple(weights)


def _random_cnn_v1(x: torch.Tensor) -> torch.Tensor:
    h = _resize(x, 64) * 2.0 - 1.0
    pooled = []
    for i, weight in enumerate(_random_cnn_weights()):
        h = F.relu(F.conv2d(h, weight, padding=1))
        pooled.append(h.mean(dim=(-2, -1)))
        if i < 2:
            h = F.avg_pool2d(h, 2)
    return torch.cat(pooled, dim=1)


def _pixel_stats_v1(x: torch.Tensor) -> torch.Tensor:
    return _resize(x, 8).flatten(1)


#: Feature network name -> function ``(B, 1, S, S) in [0, 1] -> (B, D)``.
FEATURE_NETS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "pixel_stats_v1": _pixel_stats_v1,
    "random_cnn_v1": _random_cnn_v1,
}


def extract_features(
    patches: np.ndarray, *, feature_net: str = "random_cnn_v1", batch_size: int = 256
) -> np.ndarray:
    """Return float64 features ``(N, D)`` of patches ``(N, S, S)`` in [0, 1]."""
    if feature_net not in FEATURE_NETS:
        raise ConfigError(
            f"unknown feature_net {feature_net!r}; valid names: {sorted(FEATURE_NETS)}"
        )
    arr = np.asarray(patches, dtype=np.float32)
    if arr.ndim != 3:
        raise DataError(f"Frechet distance expects patches shaped (N, S, S), got {arr.shape}")
    net = FEATURE_NETS[feature_net]
    out = []
    with torch.no_grad():
        for start in range(0, len(arr), batch_size):
            batch = torch.from_numpy(arr[start : start + batch_size]).unsqueeze(1)
            out.append(net(batch).double().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0))


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return the mean and covariance (rows are samples) of a feature matrix."""
    if features.ndim != 2 or features.shape[0] < 2:
        raise DataError(f"Frechet distance needs at least 2 samples, got {features.shape[0]}")
    return features.mean(axis=0), np.atleast_2d(np.cov(features, rowvar=False))


def _sqrt_psd(matrix: np.ndarray) -> np.ndarray:
    import scipy.linalg  # here: a centre that scores no generator does not load SciPy

    values, vectors = scipy.linalg.eigh(matrix)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def frechet_distance_from_stats(
    mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray
) -> float:
    """Return the Frechet distance between N(mu1, cov1) and N(mu2, cov2)."""
    mu1, mu2 = np.atleast_1d(mu1).astype(float), np.atleast_1d(mu2).astype(float)
    cov1, cov2 = np.atleast_2d(cov1).astype(float), np.atleast_2d(cov2).astype(float)
    if mu1.shape != mu2.shape or cov1.shape != cov2.shape or cov1.shape[0] != mu1.shape[0]:
        raise DataError(
            f"Frechet distance: inconsistent shapes mu {mu1.shape}/{mu2.shape}, "
            f"cov {cov1.shape}/{cov2.shape}"
        )
    import scipy.linalg

    root1 = _sqrt_psd((cov1 + cov1.T) / 2.0)
    middle = root1 @ cov2 @ root1
    eigen = scipy.linalg.eigvalsh((middle + middle.T) / 2.0)
    trace_sqrt = float(np.sqrt(np.clip(eigen, 0.0, None)).sum())
    diff = mu1 - mu2
    value = float(diff @ diff + np.trace(cov1) + np.trace(cov2) - 2.0 * trace_sqrt)
    return max(value, 0.0)


def frechet_distance(
    real: np.ndarray, fake: np.ndarray, *, feature_net: str = "random_cnn_v1"
) -> float:
    """Return the Frechet distance between two patch sets ``(N, S, S)`` in [0, 1]."""
    stats_real = feature_statistics(extract_features(real, feature_net=feature_net))
    stats_fake = feature_statistics(extract_features(fake, feature_net=feature_net))
    return frechet_distance_from_stats(*stats_real, *stats_fake)
