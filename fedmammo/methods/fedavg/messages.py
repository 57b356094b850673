"""FedAvg's messages: ``train.classifier`` and ``evaluate.classifier``."""

from __future__ import annotations

from fedmammo.federation.messages import (
    EvaluationMetrics,
    ModelConfig,
    TrainConfig,
    TrainMetrics,
    message,
    wire,
)

__all__ = ["BASELINE", "EvaluateClassifier", "TrainClassifier"]

#: Record of an ``evaluate.classifier`` message holding the baseline arm's weights.
BASELINE = "baseline"


@message("train.classifier", reply=TrainMetrics)
class TrainClassifier(TrainConfig):
    """Train the received classifier on the centre's training split with ``train``
    (:class:`~fedmammo.config.recipe.LocalTrainingParams`); ``batchnorm: local`` keeps the
    centre's own BatchNorm state for the arm (FedBN)."""

    train: dict = wire("train", as_json=True)
    batchnorm: str = wire("batchnorm", "local")


@message("evaluate.classifier", reply=EvaluationMetrics)
class EvaluateClassifier(ModelConfig):
    """Metrics of the received classifier on one split, with ``n_boot`` bootstrap samples
    (over patients).

    ``baseline``: the name of another arm whose weights the message carries in its
    ``baseline`` record (:data:`BASELINE`; its own BatchNorm state, as trained). The reply then
    holds only the comparison of the two models on the same images, made inside the centre:
    ``baseline_auc``, ``delta_auc`` (received - baseline, paired bootstrap CI) and
    ``p_value``, over all the images and per segment."""

    split: str = wire("split")
    n_boot: int = wire("n-boot", 0)
    batchnorm: str = wire("batchnorm", "local")
    baseline: str = wire("baseline", "", omit_default=True)
