"""Recipe parameters of ``kind: periodic_sampling``: the periodic-sampling paper's arms, pooled and
federated."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from fedmammo.config.recipe import (
    AveragingParams,
    FedAvgWeighting,
    LocalTrainingParams,
    ModelParams,
    Weighting,
)

__all__ = ["METHOD_LABELS", "PeriodicSamplingParams"]

#: Sampler registry name -> the method's name in the periodic-sampling paper's tables.
METHOD_LABELS: dict[str, str] = {
    "balanced_labels": "Bal. labels",
    "balanced_segments": "Bal. segments",
    "periodic": "P. sampling",
}

Method = Literal["balanced_labels", "balanced_segments", "periodic"]
Setting = Literal["pooled", "federated"]


def _default_experiments() -> dict[str, list[str]]:
    return {"exp1": ["S1-Ma", "S2-Ma"], "exp2": ["S1-Ma", "S1-Mb", "S2-Ma", "S2-Mb"]}


def _default_baselines() -> dict[str, list[str]]:
    return {"S1-Ma": ["S3-Ma", "S4-Mc", "S4-Md", "S5-Mc"], "S1-Mb": ["S3-Mb"]}


class PeriodicSamplingParams(AveragingParams):
    """Baselines, Bal. labels, Bal. segments and P. sampling per experiment, pooled and federated.

    ``experiments`` maps a name to the training segments it uses (the rest of each centre's
    data is filtered out). ``baselines`` maps a training segment to the test segments whose
    delta-AUC it is the reference for (a baseline trains on that segment alone, with
    ``baseline_sampler``). Every arm trains ``rounds`` rounds of ``batches_per_round`` batches
    of ``train.batch_size``: pooled arms take that many optimiser steps on the pooled data with
    the method's sampler; federated Bal. labels / Bal. segments arms are FedAvg (weighted by
    ``fedavg_weighting``, default ``labelled``: each centre's labelled training images in the
    experiment's segments, the examples it trains on) with each centre taking that many
    steps with the method's sampler on its own segments; the federated P. sampling arm gives
    each centre its quota of the round's window of the global pattern and averages by quota
    (which reduces to the centralised step); ``periodic_weightings`` adds arms that train the
    same quotas but average by images, labelled images or uniformly. Every weight is the
    count the centre reports in its reply.
    """

    model: ModelParams = ModelParams(options={"width": 8, "depth": 4, "norm": "batch"})
    train: LocalTrainingParams = LocalTrainingParams()
    rounds: int = Field(default=10, ge=1, le=10_000)
    batches_per_round: int = Field(default=8, ge=1, le=100_000)
    experiments: dict[str, list[str]] = Field(default_factory=_default_experiments)
    methods: list[Method] = ["balanced_labels", "balanced_segments", "periodic"]
    settings: list[Setting] = ["pooled", "federated"]
    baselines: dict[str, list[str]] = Field(default_factory=_default_baselines)
    baseline_sampler: Method = "balanced_labels"
    fedavg_weighting: FedAvgWeighting = "labelled"  # Bal. labels / segments: sampler steps
    periodic_weightings: list[Weighting] = ["quota", "images", "uniform"]
    batchnorm: Literal["average", "local"] = "average"
    min_centres: int = Field(default=1, ge=1)
    bootstrap: int = Field(default=2000, ge=0, le=100_000)
    plots: bool = True
    # the model an arm is tested with: the round with the best validation WLL (the paper keeps
    # "the checkpoint achieving the best WLL / image on the validation set"), or the last
    checkpoint: Literal["best_val_wll", "last"] = "best_val_wll"
    # validate and test an exponential moving average of the weights (the paper: decay 0.99 per
    # step, TensorFlow's EMA); kept by the server over rounds, one update per round with decay
    # ema_decay ** batches_per_round (the steps of a round); None: the weights themselves
    ema_decay: float | None = Field(default=None, gt=0, lt=1)

    @field_validator("experiments")
    @classmethod
    def _experiments(cls, v: dict[str, list[str]]) -> dict[str, list[str]]:
        if not v:
            raise ValueError("give at least one experiment: name -> list of training segments")
        for name, segments in v.items():
            if not name.replace("_", "").replace("-", "").isalnum():
                raise ValueError(f"experiment name {name!r}: use letters, digits, '-' or '_'")
            if not segments or len(set(segments)) != len(segments):
                raise ValueError(f"experiment {name!r}: list distinct training segments")
        return v

    @field_validator("methods", "settings", "periodic_weightings")
    @classmethod
    def _distinct(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError(f"entries must be distinct, got {v}")
        return v

    @model_validator(mode="after")
    def _baseline_targets(self) -> PeriodicSamplingParams:
        seen: dict[str, str] = {}
        for base, targets in self.baselines.items():
            for t in targets:
                if t in seen:
                    raise ValueError(f"test segment {t!r} has two baselines ({seen[t]}, {base})")
                seen[t] = base
        if "periodic" in self.methods and "federated" in self.settings:
            if not self.periodic_weightings:
                raise ValueError("periodic_weightings is empty; give at least 'quota'")
        return self

    @property
    def arms(self) -> list[str]:
        """The settings, under the name ``fedmammo.simulate`` checks to start a pooled node."""
        return list(self.settings)

    def baseline_of(self, test_segment: str) -> str | None:
        """The training segment whose baseline is the reference on ``test_segment``."""
        for base, targets in self.baselines.items():
            if test_segment in targets:
                return base
        return None
