"""An accountant independent of fedmammo and Opacus: Google's dp-accounting (RDP)."""

from __future__ import annotations

import pytest

dp_accounting = pytest.importorskip("dp_accounting")


def independent_epsilon(history: list[list[float]], delta: float) -> float:
    """Epsilon of a ``[[sigma, q, steps], ...]`` Poisson-subsampled Gaussian history."""
    acc = dp_accounting.rdp.RdpAccountant()
    for sigma, q, steps in history:
        acc.compose(
            dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), int(steps)
        )
    return acc.get_epsilon(delta)
