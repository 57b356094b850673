"""Periodic sampling's messages: ``train.periodic``, ``evaluate.periodic`` and
``query.periodic_plots`` (the weights they carry: ``arrays``, ``baseline-<j>``, ``arrays-<k>``)."""

from __future__ import annotations

from fedmammo.federation.messages import (
    CentreConfig,
    EvaluationMetrics,
    MessageError,
    ModelConfig,
    PlotInfo,
    TestedRoundFields,
    TrainConfig,
    TrainMetrics,
    message,
    wire,
)

#: Config key (JSON) of a DP quota round: ``{segment: {quota: rounds}}`` of this and every
#: later planned round at the centre, to plan the noise once.
PLANNED_QUOTA_KEY = "dp-planned-quota"

__all__ = [
    "PLANNED_QUOTA_KEY",
    "EvaluatePeriodic",
    "PeriodicPlots",
    "TrainPeriodic",
    "TrainPeriodicMetrics",
    "baseline_record",
]


def baseline_record(j: int) -> str:
    """Record name of the ``j``-th baseline model an ``evaluate.periodic`` message carries."""
    return f"baseline-{j}"


@message("train.periodic reply")
class TrainPeriodicMetrics(TrainMetrics):
    """A periodic round's reply: ``quota`` (-1: sampler steps), ``num_images`` and
    ``num_labelled`` (the arm's training segments) are :class:`TrainMetrics` fields."""


@message("train.periodic", reply=TrainPeriodicMetrics)
class TrainPeriodic(TrainConfig):
    """Train on the named ``segments`` (None: all), one optimiser step per batch of either

    - ``quota`` and ``offsets`` (``{segment: n}``): exactly the quota per segment, continuing
      each segment's stream after ``offsets`` earlier draws (federated periodic sampling); under
      DP ``planned_quota`` (``{segment: {quota: rounds}}``) plans the noise once; or
    - ``sampler`` (a registered name) for ``steps`` batches, its stream continued at epoch
      ``stream_epoch``.

    Streams are seeded by ``stream_seed`` (one per arm), augmentation by ``seed`` (per round).
    """

    train: dict = wire("train", as_json=True)
    batchnorm: str = wire("batchnorm", "average")
    segments: list[str] | None = wire("segments", None)
    sampler: str | None = wire("sampler", None)
    steps: int | None = wire("steps", None)
    stream_seed: int = wire("stream-seed")
    stream_epoch: int = wire("stream-epoch", 0)
    quota: dict | None = wire("quota", None, as_json=True)
    offsets: dict | None = wire("offsets", None, as_json=True)
    planned_quota: dict | None = wire(PLANNED_QUOTA_KEY, None, as_json=True)

    def check(self) -> None:
        if self.quota is None and (self.sampler is None or self.steps is None):
            raise MessageError(
                f"message {self.KIND!r}: without 'quota' it needs 'sampler' and 'steps'"
            )


@message("evaluate.periodic", reply=EvaluationMetrics)
class EvaluatePeriodic(ModelConfig, TestedRoundFields):
    """Metrics of ``arrays`` (the weights of round ``model_round``) on one split (restricted
    to ``segments``); with ``baselines`` (``[{"name", "segments", "round"}]``: the baseline
    arm, its segments and tested round; weights in ``baseline-<j>``) the deltas against each
    on its segments, computed inside the centre. Under FedBN every model is used with the
    centre's BatchNorm state of its arm after its round."""

    split: str = wire("split")
    n_boot: int = wire("n-boot", 0)
    batchnorm: str = wire("batchnorm", "average")
    segments: list[str] | None = wire("segments", None)
    baselines: list[dict] | None = wire("baselines", None, as_json=True)


@message("query.periodic_plots", reply=PlotInfo)
class PeriodicPlots(CentreConfig):
    """Draw ROC curves and prediction histograms of the models ``arrays-<k>`` (labelled
    ``arms``) on one split inside the centre: ``<stem>_roc.png`` and ``<stem>_hist.png`` in
    ``plot_dir`` (simulation; a deployed centre draws into its own output directory).

    ``fedbn`` (FedBN): per model ``{"arm", "seed", "round"}``, whose BatchNorm state at the
    centre (after that round) replaces the received one, as ``evaluate.periodic`` uses it."""

    arms: list[str] = wire("arms")
    model: dict = wire("model", as_json=True)
    split: str = wire("split", "test")
    stem: str = wire("stem")
    title: str = wire("title", "")
    plot_dir: str = wire("plot-dir", "")
    segments: list[str] | None = wire("segments", None)
    fedbn: list[dict] | None = wire("fedbn", None, as_json=True)
