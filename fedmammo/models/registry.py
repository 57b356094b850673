"""A name -> builder registry for models, like torchvision's ``get_model``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from fedmammo.errors import ConfigError

__all__ = ["build_model", "list_models", "register_model"]

_BUILDERS: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator registering a keyword-only model builder under ``name``."""

    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _BUILDERS:
            raise ValueError(f"model {name!r} registered twice")
        _BUILDERS[name] = fn
        return fn

    return deco


def list_models() -> list[str]:
    """Names of every registered model."""
    return sorted(_BUILDERS)


def build_model(name: str, **options: Any) -> nn.Module:
    """Build the model registered as ``name`` with keyword ``options``."""
    if name not in _BUILDERS:
        raise ConfigError(f"unknown model {name!r}; valid models: {', '.join(list_models())}")
    try:
        return _BUILDERS[name](**options)
    except TypeError as exc:
        raise ConfigError(f"model {name!r}: bad options {options}: {exc}") from exc
