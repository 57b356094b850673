"""A name -> builder registry for models, like torchvision's ``get_model``.

The families whose modules import torchvision at definition (the contrastive encoders and the
FCOS detector) are imported the first time a name is looked up that the families already
loaded do not register, so that a centre training a plain classifier never imports
torchvision (1.3 s and 155 MB of the import, measured in BENCHMARKS.md).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from torch import nn

from fedmammo.errors import ConfigError

__all__ = ["build_model", "list_models", "register_model"]

_BUILDERS: dict[str, Callable[..., nn.Module]] = {}
#: Families imported on demand (by :func:`build_model` of a name not registered yet, and by
#: :func:`list_models`): they import torchvision at definition.
LAZY_FAMILIES = ("fedmammo.models.contrastive", "fedmammo.models.detection")


def register_model(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator registering a keyword-only model builder under ``name``."""

    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _BUILDERS:
            raise ValueError(f"model {name!r} registered twice")
        _BUILDERS[name] = fn
        return fn

    return deco


def _load_lazy_families() -> None:
    for module in LAZY_FAMILIES:
        importlib.import_module(module)


def list_models() -> list[str]:
    """Names of every registered model."""
    _load_lazy_families()
    return sorted(_BUILDERS)


def build_model(name: str, **options: Any) -> nn.Module:
    """Build the model registered as ``name`` with keyword ``options``."""
    if name not in _BUILDERS:
        _load_lazy_families()
    if name not in _BUILDERS:
        raise ConfigError(f"unknown model {name!r}; valid models: {', '.join(list_models())}")
    try:
        return _BUILDERS[name](**options)
    except TypeError as exc:
        raise ConfigError(f"model {name!r}: bad options {options}: {exc}") from exc
