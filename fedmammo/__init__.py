"""fedmammo: multi-centre and federated learning on screening mammograms, on Flower."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fedmammo.config import Scenario

__all__ = ["load_scenario"]


def load_scenario(path: Any, **kwargs: Any) -> Scenario:
    """Load and validate a scenario with every built-in method registered (see
    :func:`fedmammo.config.load_scenario` for the keyword arguments)."""
    import fedmammo.methods  # noqa: F401  (registers the recipe kinds)
    from fedmammo.config import load_scenario as _load

    return _load(path, **kwargs)
