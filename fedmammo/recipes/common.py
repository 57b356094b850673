"""Parameter blocks shared by several strategy kinds."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from fedmammo.recipes import RecipeParams

__all__ = ["LocalTrainingParams", "ModelParams"]


class ModelParams(RecipeParams):
    """A model from the registry (``fedmammo.models.build_model``) and its keyword arguments."""

    name: str = "mammo_cnn"
    options: dict[str, Any] = Field(default_factory=dict)


class LocalTrainingParams(RecipeParams):
    """How a centre trains locally in one round (or one whole local arm)."""

    epochs: int = Field(default=1, ge=1, le=1000)
    batch_size: int = Field(default=16, ge=1, le=4096)
    steps_per_epoch: int | None = Field(default=None, ge=1)
    optimizer: Literal["adam", "sgd"] = "adam"
    lr: float = Field(default=1e-3, gt=0)
    momentum: float = Field(default=0.9, ge=0, lt=1)
    weight_decay: float = Field(default=0.0, ge=0)
    sampler: str = "balanced_labels"  # registry name in fedmammo.data.sampling
    augment: bool = True
