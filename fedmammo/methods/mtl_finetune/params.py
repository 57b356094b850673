"""Recipe parameters of ``kind: mtl_finetune``: federated MTL, fine-tuning rounds, ablation arms."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from pydantic import Field, field_validator, model_validator

from fedmammo.config.recipe import (
    AveragingParams,
    FedAvgWeighting,
    LocalTrainingParams,
    RecipeParams,
)

__all__ = [
    "ARM_NAMES",
    "BASELINE_ARMS",
    "ArmSpec",
    "MtlFinetuneParams",
    "MtlAugmentParams",
    "MtlModelParams",
    "parse_arm",
    "reference_arm",
]

_TASKS: dict[str, int] = {"malignancy": 2, "acr": 6, "density": 4, "view": 2}

#: Fixed arm names (multi-task paper Tables 2-4); ``drop_malignancy_<P>``, ``drop_all_<P>``
# (percent,
#: 1..99) and ``finetune_u1_<u1>`` (u1 in [0, 1]) are parametric.
ARM_NAMES: tuple[str, ...] = (
    "single_task",
    "single_task_fusion",
    "mtl",
    "mtl_rec",
    "mtl_acr",
    "mtl_density",
    "mtl_view",
)
_DROP = re.compile(r"^drop_(malignancy|all)_(\d{1,2})$")
_FINETUNE = re.compile(r"^finetune_u1_(\d+(?:\.\d+)?)$")


@dataclass(frozen=True)
class ArmSpec:
    """What one ablation arm changes relative to the full multi-task model."""

    name: str
    tasks: tuple[str, ...] | None  # None = every task of the model options
    fusion: bool = True
    decoder: bool | None = None  # None = the model options' choice
    drop_fraction: float = 0.0
    drop_all_tasks: bool = False  # False: drop malignancy labels only
    finetune_u1: float | None = None  # not None: pre-train, then fine-tune with this u1


def parse_arm(name: str) -> ArmSpec:
    """Interpret an arm name; raises ValueError listing the valid names."""
    fixed = {
        "single_task": ArmSpec(name, ("malignancy",), fusion=False, decoder=False),
        "single_task_fusion": ArmSpec(name, ("malignancy",), decoder=False),
        "mtl": ArmSpec(name, None),
        "mtl_rec": ArmSpec(name, ("malignancy",), decoder=True),
        "mtl_acr": ArmSpec(name, ("malignancy", "acr"), decoder=False),
        "mtl_density": ArmSpec(name, ("malignancy", "density"), decoder=False),
        "mtl_view": ArmSpec(name, ("malignancy", "view"), decoder=False),
    }
    if name in fixed:
        return fixed[name]
    if m := _DROP.match(name):
        pct = int(m.group(2))
        if 1 <= pct <= 99:
            return ArmSpec(name, None, drop_fraction=pct / 100, drop_all_tasks=m.group(1) == "all")
    if (m := _FINETUNE.match(name)) and 0.0 <= float(m.group(1)) <= 1.0:
        return ArmSpec(name, None, finetune_u1=float(m.group(1)))
    raise ValueError(
        f"unknown arm {name!r}; valid arms: {', '.join(ARM_NAMES)}, drop_malignancy_<P>, "
        "drop_all_<P> (P = 1..99 percent, e.g. drop_all_25), finetune_u1_<u1> (u1 in [0, 1], "
        "e.g. finetune_u1_0.5)"
    )


#: The single-task baselines, in the order a reference is chosen (paper Tables 2-3).
BASELINE_ARMS: tuple[str, ...] = ("single_task", "single_task_fusion")


def reference_arm(arm: str, arms: Sequence[str]) -> str | None:
    """The arm whose AUC ``arm``'s is tested against (paired permutation p, same test images).

    A fine-tuning arm: ``mtl``, the model it starts from (paper Tables 8-9, "Reference
    (MTL)"). Any other arm but a baseline: the first single-task baseline among ``arms``
    (Tables 2-3 compare the baseline with the multi-task model). A baseline: None.
    """
    spec = parse_arm(arm)
    if spec.finetune_u1 is not None:
        return "mtl"
    if arm in BASELINE_ARMS:
        return None
    return next((b for b in BASELINE_ARMS if b in arms), None)


class MtlModelParams(RecipeParams):
    """Options of :class:`fedmammo.models.mtl.MultiTaskNet`."""

    widths: list[int] = Field(default=[16, 32, 64, 128, 256], min_length=1)
    blocks_per_level: int = Field(default=2, ge=1, le=8)
    tasks: dict[str, int] = Field(default_factory=lambda: dict(_TASKS))
    fusion: bool = True
    decoder: bool = True
    dropout: float = Field(default=0.5, ge=0.0, lt=1.0)
    stem_stride: int = 1
    norm: Literal["instance", "group", "batch"] = "instance"  # batch: non-private ablations only

    @field_validator("widths")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        if min(v) < 1:
            raise ValueError(f"widths must be positive, got {v}")
        return v

    @field_validator("tasks")
    @classmethod
    def _known_tasks(cls, v: dict[str, int]) -> dict[str, int]:
        unknown = sorted(set(v) - set(_TASKS))
        if unknown:
            raise ValueError(f"unknown task(s) {unknown}; valid tasks: {', '.join(_TASKS)}")
        wrong = {t: c for t, c in v.items() if c != _TASKS[t]}
        if wrong:
            raise ValueError(f"class counts {wrong} differ from the labels' {_TASKS}")
        return v

    @field_validator("stem_stride")
    @classmethod
    def _stride(cls, v: int) -> int:
        if v not in (1, 2, 4):
            raise ValueError(f"stem_stride must be 1, 2 or 4, got {v}")
        return v


class MtlAugmentParams(RecipeParams):
    """The multi-task paper's training augmentation (section 3.2), used when ``augment`` is on.

    "(i) random horizontal and vertical translation, (ii) random zoom, and (iii) random
    vertical flipping", each applied with probability ``p`` (0.5 in the paper), no shear and
    no horizontal flip. ``translate``: the largest shift as a fraction of the width and of the
    height; ``zoom``: the scale range (> 1 zooms in). The paper gives no ranges; it follows
    its refs. 16-17, and Shen et al. 2019 (ref. 16) zoom by 0.8-1.2 and shift by up to 10 %.
    """

    p: float = Field(default=0.5, ge=0.0, le=1.0)
    zoom: tuple[float, float] = (0.8, 1.2)
    translate: float = Field(default=0.1, ge=0.0, le=0.5)
    vertical_flip: bool = True

    @field_validator("zoom")
    @classmethod
    def _zoom_range(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0.0 < v[0] <= v[1] <= 4.0:
            raise ValueError(f"zoom must be [low, high] with 0 < low <= high <= 4, got {list(v)}")
        return v


class MtlFinetuneParams(AveragingParams):
    """FedAvg rounds of the multi-task net, then uncertainty-weighted fine-tuning rounds.

    ``weighting``: every round weighs a centre by its training images labelled for the arm's
    tasks (``labelled``, the default: a single-task baseline counts its task's labels, as
    pooled training would; an image without any of the arm's labels adds no loss), by all its
    training images (``images``) or equally (``uniform``).
    """

    model: MtlModelParams = MtlModelParams()
    train: LocalTrainingParams = LocalTrainingParams()
    finetune_train: LocalTrainingParams | None = None  # None: same as ``train``
    rounds: int = Field(default=5, ge=1, le=10_000)
    finetune_rounds: int = Field(default=2, ge=0, le=10_000)
    finetune_centres: list[str] = Field(default_factory=list)
    u1: float = Field(default=0.5, ge=0.0, le=1.0)  # fine-tuning u1 of arms without their own
    u_other: float = Field(default=0.5, ge=0.0, le=1.0)
    acr_high_class_weight: float = Field(default=20.0, gt=0.0)
    recon_weight: float = Field(default=1.0, ge=0.0)
    augmentation: MtlAugmentParams = MtlAugmentParams()  # when train.augment is on
    arms: list[str] = Field(default_factory=lambda: ["single_task", "mtl"], min_length=1)
    bootstrap: int = Field(default=1000, ge=0, le=100_000)
    weighting: FedAvgWeighting = "labelled"

    @field_validator("arms")
    @classmethod
    def _valid_arms(cls, v: list[str]) -> list[str]:
        for name in v:
            parse_arm(name)
        dupes = sorted({a for a in v if v.count(a) > 1})
        if dupes:
            raise ValueError(f"arms listed twice: {dupes}")
        return v

    @model_validator(mode="after")
    def _finetune_needs_centres(self) -> MtlFinetuneParams:
        tuning = [a for a in self.arms if parse_arm(a).finetune_u1 is not None]
        if tuning and (not self.finetune_centres or self.finetune_rounds < 1):
            raise ValueError(
                f"arms {tuning} fine-tune: set finetune_centres (centre names) and "
                "finetune_rounds >= 1"
            )
        return self

    def arm_specs(self) -> list[ArmSpec]:
        """The parsed arms, in order."""
        return [parse_arm(a) for a in self.arms]
