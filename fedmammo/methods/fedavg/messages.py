"""FedAvg's messages: ``train.classifier`` and ``evaluate.classifier``."""

from __future__ import annotations

from fedmammo.federation.messages import (
    BaselineFields,
    EvaluationMetrics,
    ModelConfig,
    TrainConfig,
    TrainMetrics,
    message,
    wire,
)

__all__ = ["EvaluateClassifier", "TrainClassifier"]


@message("train.classifier", reply=TrainMetrics)
class TrainClassifier(TrainConfig):
    """Train the received classifier on the centre's training split with ``train``
    (:class:`~fedmammo.config.recipe.LocalTrainingParams`); ``batchnorm: local`` keeps the
    centre's own BatchNorm state for the arm (FedBN)."""

    train: dict = wire("train", as_json=True)
    batchnorm: str = wire("batchnorm", "local")


@message("evaluate.classifier", reply=EvaluationMetrics)
class EvaluateClassifier(ModelConfig, BaselineFields):
    """Metrics of the received classifier on one split, with ``n_boot`` bootstrap samples
    (over patients); with a ``baseline`` arm, only its paired comparison with that arm, over
    all the images and per segment."""

    split: str = wire("split")
    n_boot: int = wire("n-boot", 0)
    batchnorm: str = wire("batchnorm", "local")
