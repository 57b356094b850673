"""Model registry: builders registered by name, selected by name in strategy recipes."""

from __future__ import annotations

from fedmammo.models.registry import (
    build_model,
    build_model_to_load,
    has_model,
    list_models,
    register_model,
)

__all__ = ["build_model", "build_model_to_load", "has_model", "list_models", "register_model"]

# Importing the families registers their builders; those that import torchvision
# (registry.LAZY_FAMILIES) are imported when one of their names is first asked for.
from fedmammo.models import classifiers as _classifiers  # noqa: E402,F401
from fedmammo.models import mtl as _mtl  # noqa: E402,F401
