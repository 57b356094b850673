"""Recipe parameters of ``kind: contrastive_dg``: the contrastive domain-generalisation paper
(Li et al.) as a federation.

Arms (rows of the paper's Tables II-III; every arm ends with the same downstream protocol):

- ``random``: no pre-training, the downstream tasks start from a random encoder;
- ``supervised``: FedAvg pre-training of the encoder on whole-image malignancy labels (the
  stand-in for the paper's supervised ImageNet row: no weights can be downloaded here);
- ``simclr``, ``mscl``, ``mvcl``, ``msvcl``: federated contrastive pre-training with that
  scheme (:mod:`fedmammo.training.contrastive`), encoder and projection head averaged;
- ``pooled``: MSVCL on the training centres' images pooled in one place (simulation-only
  upper reference: pixels move), with CycleGANs trained between the real vendors.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BeforeValidator, Field, field_validator, model_validator

from fedmammo.config.recipe import (
    AveragingParams,
    CycleGanParams,
    RecipeParams,
    TileGanParams,
    weighting_name,
)
from fedmammo.models.contrastive_losses import DEFAULT_MARGIN, DEFAULT_TAU

__all__ = [
    "ARMS",
    "SCHEMES",
    "TASKS",
    "ContrastiveDgParams",
    "CycleGanParams",
    "EncoderParams",
    "FinetuneParams",
    "PretrainParams",
    "StyleParams",
    "TaskParams",
    "TileGanParams",
    "metric_name",
    "parse_metric",
    "round_epochs",
]

Arm = Literal["random", "supervised", "simclr", "mscl", "mvcl", "msvcl", "pooled"]
Task = Literal["detection", "matching", "birads", "density"]

#: The arms in the paper's row order.
ARMS: tuple[str, ...] = ("random", "supervised", "simclr", "mscl", "mvcl", "msvcl", "pooled")
#: The four downstream tasks (paper III-C).
TASKS: tuple[str, ...] = ("detection", "matching", "birads", "density")
#: Pre-training objective of each arm (``random`` has none).
SCHEMES: dict[str, str] = {
    "supervised": "supervised",
    "simclr": "simclr",
    "mscl": "mscl",
    "mvcl": "mvcl",
    "msvcl": "msvcl",
    "pooled": "msvcl",
}

#: Metric of each task: AP at IoU 0.5 for detection (mAP with one class), accuracy otherwise.
TASK_METRICS: dict[str, str] = {
    "detection": "ap50",
    "matching": "accuracy",
    "birads": "accuracy",
    "density": "accuracy",
}


def metric_name(task: str, fraction: float = 1.0) -> str:
    """Recorded name of a task's test metric: ``detection_ap50@0.05``, ``density_accuracy``."""
    name = f"{task}_{TASK_METRICS[task]}"
    return f"{name}@{fraction:g}" if task == "detection" else name


def parse_metric(name: str) -> tuple[str, float] | None:
    """(task, fraction) of a name made by :func:`metric_name`; None for other metrics."""
    base, _, fraction = name.partition("@")
    task = base.split("_", 1)[0]
    if task not in TASK_METRICS or base != f"{task}_{TASK_METRICS[task]}":
        return None
    return task, float(fraction) if fraction else 1.0


def round_epochs(epochs: int, rounds: int, server_round: int) -> int:
    """Local epochs of round ``server_round`` (1-based) of ``rounds`` federated rounds that
    share out ``epochs``: the first ``epochs % rounds`` rounds take one more."""
    return epochs // rounds + (1 if server_round <= epochs % rounds else 0)


class EncoderParams(RecipeParams):
    """The encoder (:func:`fedmammo.models.contrastive.build_contrastive_encoder`)."""

    arch: Literal["resnet50", "resnet18", "resnet_slim"] = "resnet50"
    width: int = Field(default=16, ge=1, le=256)  # resnet_slim only
    blocks: list[int] = Field(default=[1, 1, 1, 1], min_length=4, max_length=4)
    norm: Literal["batch", "group"] = "batch"
    projection_dim: int = Field(default=128, ge=2)

    def spec(self, *, classes: int | None = None) -> dict:
        """Model-registry spec; ``classes``: a supervised head of that many logits."""
        options: dict = {"norm": self.norm, "projection_dim": classes or self.projection_dim}
        if self.arch == "resnet_slim":
            options |= {"width": self.width, "blocks": list(self.blocks)}
        return {"name": f"contrastive_{self.arch}", "options": options}


class PretrainParams(RecipeParams):
    """Local pre-training of one round (``fedmammo.training.contrastive.pretrain_contrastive``).

    ``tau``: NT-Xent temperature (the paper gives none; 0.2, see ``DEFAULT_TAU``; sweep it).
    """

    tau: float = Field(default=DEFAULT_TAU, gt=0)
    epochs: int = Field(default=1, ge=1, le=1000)
    batch_size: int = Field(default=32, ge=2, le=4096)
    steps_per_epoch: int | None = Field(default=None, ge=1)
    optimizer: Literal["adam", "sgd"] = "adam"
    lr: float = Field(default=1e-3, gt=0)
    weight_decay: float = Field(default=1e-6, ge=0)
    mvcl_weight: float = Field(default=1.0, ge=0)
    augment: bool = True


class StyleParams(RecipeParams):
    """Style diversification without moving pixels (see :mod:`.styles`)."""

    tiles: TileGanParams = TileGanParams()
    cyclegan: CycleGanParams = CycleGanParams()
    grid_images: int = Field(default=4, ge=1, le=16)  # rows of the style sample grid


class TaskParams(RecipeParams):
    """Fine-tuning of one downstream task (the paper: SGD, 50 epochs)."""

    epochs: int = Field(default=50, ge=1, le=1000)
    batch_size: int = Field(default=8, ge=1)
    optimizer: Literal["adam", "sgd"] = "sgd"
    lr: float = Field(default=1e-3, gt=0)
    weight_decay: float = Field(default=1e-5, ge=0)


def _detection() -> TaskParams:
    return TaskParams(lr=0.005, weight_decay=1e-4)


class FinetuneParams(RecipeParams):
    """The downstream tasks: per-task loops, crops, margin, detector width."""

    detection: TaskParams = Field(default_factory=_detection)
    matching: TaskParams = TaskParams(batch_size=32)
    birads: TaskParams = TaskParams(batch_size=32)
    density: TaskParams = TaskParams(batch_size=16)
    crop_size: int = Field(default=224, ge=16)  # mass crops (matching, BI-RADS)
    margin: float = Field(default=DEFAULT_MARGIN, gt=0)  # matching loss (equation 3)
    fpn_channels: int | None = Field(default=None, ge=32, multiple_of=32)  # FCOS GroupNorm(32)
    density_classes: Literal[2, 4] = 2  # dense / non-dense (the paper) or BI-RADS A-D

    def task(self, name: str) -> TaskParams:
        """The loop parameters of task ``name``."""
        return getattr(self, name)


class ContrastiveDgParams(AveragingParams):
    """Federated multi-style multi-view contrastive pre-training, then the downstream tasks.

    ``rounds`` FedAvg rounds pre-train each arm's encoder at the training centres (under
    ``secure_aggregation: true`` every round of two or more centres runs SecAgg+). The
    labelled centres are ``downstream_centres`` (default: every training centre).
    ``downstream: local`` fine-tunes each task at every labelled centre on its own;
    ``downstream: federated`` trains one task model (pre-trained encoder + task head) by
    ``downstream_rounds`` FedAvg rounds across them, weighted by ``weighting`` (a centre's
    training samples of the task, or uniformly); the task's ``finetune.<task>.epochs`` are
    spread over the rounds (:func:`round_epochs`: the same local epochs as ``local``). Both
    are tested on seen (each labelled centre's test split) and unseen vendors (the test-only
    centres). ``fractions``: labelled fractions of the
    detection training set.
    """

    arms: list[Arm] = Field(default_factory=lambda: list(ARMS), min_length=1)
    encoder: EncoderParams = EncoderParams()
    pretrain: PretrainParams = PretrainParams()
    rounds: int = Field(default=10, ge=1, le=10_000)
    # pre-training rounds weigh a centre by its images (self-supervised: no labels) or
    # uniformly; old names num_examples / equal accepted
    weighting: Annotated[Literal["images", "uniform"], BeforeValidator(weighting_name)] = "images"
    min_centres: int = Field(default=1, ge=1)
    styles: StyleParams = StyleParams()
    downstream: Literal["local", "federated"] = "local"
    downstream_rounds: int = Field(default=10, ge=1, le=1000)  # downstream: federated
    downstream_centres: list[str] = Field(default_factory=list)
    tasks: list[Task] = Field(default_factory=lambda: list(TASKS), min_length=1)
    fractions: list[float] = Field(default_factory=lambda: [0.05, 0.1, 0.2, 0.5, 1.0])
    finetune: FinetuneParams = FinetuneParams()
    embedding_arms: list[Arm] = Field(default_factory=lambda: ["random", "simclr", "msvcl"])
    embedding_method: Literal["tsne", "pca"] = "tsne"
    bootstrap: int = Field(default=1000, ge=0, le=100_000)

    @field_validator("arms", "tasks")
    @classmethod
    def _distinct(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError(f"entries must be distinct, got {v}")
        return v

    @field_validator("fractions")
    @classmethod
    def _fractions(cls, v: list[float]) -> list[float]:
        if not v or len(set(v)) != len(v) or any(not 0 < f <= 1 for f in v):
            raise ValueError(f"fractions must be distinct values in (0, 1], got {v}")
        return sorted(v)

    @model_validator(mode="after")
    def _checks(self) -> ContrastiveDgParams:
        if self.downstream == "federated":
            short = [t for t in self.tasks if self.finetune.task(t).epochs < self.downstream_rounds]
            if short:
                raise ValueError(
                    f"downstream_rounds {self.downstream_rounds} > finetune.<task>.epochs of "
                    f"{short} (federated rounds share out the task's epochs, at least one each): "
                    "lower downstream_rounds or raise those epochs"
                )
        if "embedding_arms" not in self.model_fields_set:  # the defaults that are arms
            self.embedding_arms = [a for a in self.embedding_arms if a in self.arms]
        missing = sorted(set(self.embedding_arms) - set(self.arms))
        if missing:
            raise ValueError(f"embedding_arms {missing} are not in arms {self.arms}")
        return self

    def pretrained_arms(self) -> list[str]:
        """The arms with a pre-training phase, in recipe order."""
        return [a for a in self.arms if a in SCHEMES]

    def needs_styles(self) -> bool:
        """True when some arm trains on style variants (MSCL, MVCL, MSVCL, pooled)."""
        return any(SCHEMES.get(a) in ("mscl", "mvcl", "msvcl") for a in self.arms)
