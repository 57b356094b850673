"""Recipe parameters of ``kind: fedavg``: FedAvg rounds plus local and pooled reference arms."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from fedmammo.config.recipe import (
    AveragingParams,
    FedAvgWeighting,
    LocalTrainingParams,
    ModelParams,
)

__all__ = ["FedAvgParams"]


class FedAvgParams(AveragingParams):
    """FedAvg of an image-level classifier across the training centres.

    ``weighting``: each centre's update counts by its labelled training images (``labelled``,
    the default: the examples it trains on, FedAvg's n_k and pooled training's share of each
    centre), all its training images (``images``, unlabelled ones too) or equally
    (``uniform``); old names ``num_examples`` -> images, ``equal`` -> uniform accepted.
    """

    model: ModelParams = ModelParams()
    train: LocalTrainingParams = LocalTrainingParams()
    rounds: int = Field(default=5, ge=1, le=10_000)
    arms: list[Literal["federated", "local", "pooled"]] = ["federated", "local", "pooled"]
    weighting: FedAvgWeighting = "labelled"
    batchnorm: Literal["average", "local"] = "local"
    min_centres: int = Field(default=1, ge=1)
    bootstrap: int = Field(default=1000, ge=0, le=100_000)
    # Offline LiRA shadow models per audit and centre (even; 0: loss-threshold attack only).
    # Each shadow trains the model locally for rounds x train.epochs epochs: affordable only
    # at small scale.
    audit_shadows: int = Field(default=0, ge=0, le=64, multiple_of=2)
