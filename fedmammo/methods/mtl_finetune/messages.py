"""The multi-task method's messages: ``train.mtl``, ``evaluate.mtl``, ``evaluate.mtl_audit``
and ``query.latent`` (its models in ``arrays-<k>``)."""

from __future__ import annotations

from fedmammo.federation.messages import (
    AuditMetrics,
    CentreConfig,
    Config,
    EvaluationMetrics,
    LedgerFields,
    MessageError,
    ModelConfig,
    PhaseFields,
    PlotInfo,
    TrainConfig,
    TrainMetrics,
    fields_of,
    message,
    wire,
)
from fedmammo.federation.privacy.phases import PARENT_LEDGER_KEY

__all__ = [
    "FINETUNE",
    "EvaluateMtl",
    "EvaluateMtlAudit",
    "LabelDropFields",
    "QueryLatent",
    "TrainMtl",
    "TrainMtlMetrics",
]

FINETUNE = "finetune"  # the phase of fine-tuning rounds (else "pretrain")


@fields_of
class LabelDropFields(Config):
    """An arm's label drop (sent only for such arms): ``drop_fraction`` of the malignancy
    labels (``drop_all``: of the images, with all their labels), the same every round, seeded
    by ``drop_seed`` and the centre. None: no drop."""

    drop_fraction: float | None = wire("drop-fraction", None)
    drop_all: bool | None = wire("drop-all", None)
    drop_seed: int | None = wire("drop-seed", None)


@message("train.mtl reply")
class TrainMtlMetrics(TrainMetrics):
    """A multi-task round's reply: also the examples seen, each loss part and labelled counts."""

    examples_seen: int | None = wire("examples-seen", None)
    losses: dict[str, float] = wire("loss-*", {})  # loss-<part>: recon, malignancy, ...
    labelled: dict[str, int] = wire("labelled-*", {})  # labelled-<task>: labels present


@message("train.mtl", reply=TrainMtlMetrics)
class TrainMtl(TrainConfig, PhaseFields, LabelDropFields):
    """Train the received multi-task net on the centre's training split with ``train``.

    ``phase``: ``pretrain`` (the manifest's labels) or ``finetune`` (ACR-derived malignancy
    labels of uncertainty ``u1``, others ``u_other`` (None: 0.5), ACR 4-5 up-weighted by
    ``class_weight_high`` (None: 20)); ``recon_weight`` weighs the reconstruction loss;
    ``augmentation``: :func:`fedmammo.training.mtl.mtl_augmentation` options.
    """

    train: dict = wire("train", as_json=True)
    phase: str = wire("phase", "pretrain")
    recon_weight: float = wire("recon-weight", 1.0)
    u1: float | None = wire("u1", None)
    u_other: float | None = wire("u-other", None)
    class_weight_high: float | None = wire("class-weight-high", None)
    # the paper's translation / zoom / vertical flip (MtlAugmentParams) when train.augment is
    # on; None: the shared flips and shifts (training.classifier.augment_batch)
    augmentation: dict | None = wire("augmentation", None, as_json=True)

    def check(self) -> None:
        if self.phase == FINETUNE and self.u1 is None:
            raise MessageError(f"message {self.KIND!r}: a {FINETUNE} round needs 'u1'")


@message("evaluate.mtl", reply=EvaluationMetrics)
class EvaluateMtl(ModelConfig):
    """Multi-task metric records of the received net on one split (``n_boot`` bootstraps).

    With ``reference_model`` (a model spec; its weights in ``arrays-0``), the reference arm
    ``reference_arm`` is evaluated on the same images and the records add the paired
    permutation p-value of the two AUCs (image- and breast-wise); only the numbers leave the centre.
    """

    split: str = wire("split")
    n_boot: int = wire("n-boot", 0)
    reference_arm: str | None = wire("reference-arm", None)
    reference_model: dict | None = wire("reference-model", None, as_json=True)


@message("evaluate.mtl_audit", reply=AuditMetrics)
class EvaluateMtlAudit(ModelConfig, LedgerFields, LabelDropFields):
    """Loss-threshold audit of a shared multi-task net's malignancy task on the images and
    labels the arm trained on (its label drop); ``parent_ledger``: the ledger a fine-tuning
    arm continues (its epsilon where the centre did not fine-tune)."""

    parent_ledger: str | None = wire(PARENT_LEDGER_KEY, None)


@message("query.latent", reply=PlotInfo)
class QueryLatent(CentreConfig):
    """Draw the latent map of the models ``arrays-<k>`` (arms ``arms``, specs ``models``:
    arm -> spec) on one split inside the centre, into ``plot_dir`` (simulation)."""

    arms: list[str] = wire("arms")
    models: dict = wire("models", as_json=True)
    split: str = wire("split", "test")
    seed: int = wire("seed", 0)
    method: str = wire("method", "pca")
    plot_dir: str | None = wire("plot-dir", None)
