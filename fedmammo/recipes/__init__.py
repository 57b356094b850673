"""Registry of strategy kinds and the pydantic models of their recipe parameters.

Each strategy kind lives in its own module here and registers its parameter model with
``@register_recipe("kind")``; ``strategies/<name>.yaml`` gives ``kind`` and ``params``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict

__all__ = ["RECIPES", "RecipeParams", "register_recipe", "validate_recipe_params"]

RECIPES: dict[str, type[BaseModel]] = {}
T = TypeVar("T", bound=type[BaseModel])


class RecipeParams(BaseModel):
    """Base of every recipe's parameter model: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


def register_recipe(kind: str) -> Callable[[T], T]:
    """Class decorator registering a parameter model under ``kind``."""

    def deco(cls: T) -> T:
        if kind in RECIPES:
            raise ValueError(f"strategy kind {kind!r} registered twice")
        RECIPES[kind] = cls
        return cls

    return deco


def validate_recipe_params(kind: str, params: dict[str, Any]) -> BaseModel:
    """Validate ``params`` with the model registered for ``kind`` (raises ValidationError)."""
    if kind not in RECIPES:
        valid = ", ".join(sorted(RECIPES))
        raise ValueError(f"unknown strategy kind {kind!r}; valid kinds: {valid}")
    return RECIPES[kind].model_validate(params)


# Import the built-in kinds so that they register themselves.
from fedmammo.recipes import fedavg, mtl, periodic, share_gans  # noqa: E402,F401,I001
