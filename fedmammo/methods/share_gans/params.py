"""Recipe parameters of ``kind: share_gans``: the GAN-sharing paper's generator sharing, the
CycleGAN-UDA paper's translation.

Arms are strings: the receiving centre's name, then ``+``-joined additions, e.g.

- ``A``: the receiver's own patches only;
- ``A+real_B``: plus B's real lesion patches (simulation-only upper bound: pixels move);
- ``A+synth_B_dcgan``: plus synthetic lesion patches from B's DCGAN (``wgan_gp`` likewise);
- ``A+synth_B_dcgan+synth_C_dcgan``: half from each generator;
- ``A+harmonised_B_dcgan``: B's synthetic patches translated into A's style by a CycleGAN that
  A trains between its own lesion patches and B's synthetic ones (CycleGAN-UDA paper);
- ``A+untrained_dcgan``: a negative control, built like ``A+synth_B_dcgan`` but from a
  generator of the recipe's architecture that never trained (the server initialises it; no
  centre's data, no privacy cost): what an arm gains without any generator's content;
- ``A+own_lesions``: a second control, the added lesion patches drawn again from A's own
  (with replacement; augmented as every training patch), with as many of A's healthy
  patches: what an arm gains from its size and A's extra healthy patches alone.

Every arm runs for each lesion subset (``all``, ``masses``), each fraction of the receiver's
training images and each scenario seed; results are recorded under
:func:`fedmammo.methods.share_gans.report.record_arm` names such as ``A+synth_B_dcgan@masses-50``.
``classifier.extra_models`` trains some or all arms with further classifiers too (the paper's
Swin transformer beside its CNN), recorded as ``A+synth_B_dcgan~swin@masses-50``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from fedmammo.config import recipe as shared
from fedmammo.config.recipe import ModelParams, RecipeParams

__all__ = [
    "OWN_LESIONS",
    "UNTRAINED",
    "ArmSpec",
    "ClassifierParams",
    "CycleGanParams",
    "ExtraModel",
    "GanParams",
    "PatchParams",
    "ShareGansParams",
    "parse_arm",
]

GAN_NAMES = ("dcgan", "wgan_gp")
#: The "centre" of a control arm's generator (``untrained_<gan>``): none trained it.
UNTRAINED = "untrained"
#: The addition of the second control arm: the receiver's own lesion patches drawn again.
OWN_LESIONS = "own_lesions"
Subset = Literal["all", "masses"]


@dataclass(frozen=True)
class ArmSpec:
    """A parsed arm: the receiver and what it adds to its own patches."""

    name: str
    receiver: str
    real: str | None = None  # centre whose real lesion patches are added (simulation only)
    synthetic: tuple[tuple[str, str], ...] = ()  # (centre or UNTRAINED, gan) generators sampled
    harmonised: bool = False  # translate the (single) generator's patches into A's style
    own_lesions: bool = False  # control: the receiver's own lesion patches drawn again

    @property
    def generators(self) -> tuple[tuple[str, str], ...]:
        return self.synthetic

    @property
    def moves_pixels(self) -> bool:
        return self.real is not None


def _centre_gan(token: str, prefix: str, arm: str) -> tuple[str, str]:
    rest = token.removeprefix(prefix)
    for gan in GAN_NAMES:
        if rest.endswith(f"_{gan}") and len(rest) > len(gan) + 1:
            return rest[: -len(gan) - 1], gan
    raise ValueError(
        f"arm {arm!r}: {token!r} must be {prefix}<centre>_<gan> with gan in {list(GAN_NAMES)}"
    )


def _untrained(token: str, arm: str) -> tuple[str, str]:
    gan = token.removeprefix("untrained_")
    if gan not in GAN_NAMES:
        raise ValueError(f"arm {arm!r}: {token!r} must be untrained_<gan> with gan in {GAN_NAMES}")
    return UNTRAINED, gan


def parse_arm(name: str) -> ArmSpec:
    """Parse an arm string (see the module docstring); ValueError explains a bad one."""
    tokens = name.split("+")
    receiver, additions = tokens[0], tokens[1:]
    if not receiver or any(not t for t in additions) or "@" in name:
        raise ValueError(f"arm {name!r}: expected '<receiver>[+<addition>...]', no '@'")
    real = [t.removeprefix("real_") for t in additions if t.startswith("real_")]
    synth = [_centre_gan(t, "synth_", name) for t in additions if t.startswith("synth_")]
    synth += [_untrained(t, name) for t in additions if t.startswith("untrained_")]
    harm = [_centre_gan(t, "harmonised_", name) for t in additions if t.startswith("harmonised_")]
    own = [t for t in additions if t == OWN_LESIONS]
    prefixes = ("real_", "synth_", "harmonised_", "untrained_")
    unknown = [t for t in additions if not t.startswith(prefixes) and t != OWN_LESIONS]
    if unknown:
        raise ValueError(
            f"arm {name!r}: unknown addition(s) {unknown}; use real_<centre>, "
            f"synth_<centre>_<gan>, harmonised_<centre>_<gan>, untrained_<gan> or {OWN_LESIONS}"
        )
    kinds = sum(bool(x) for x in (real, synth, harm, own))
    if kinds > 1 or len(real) > 1 or len(harm) > 1 or len(own) > 1 or len(set(synth)) != len(synth):
        raise ValueError(
            f"arm {name!r}: combine either one real_<centre>, or distinct synth_ generators, "
            f"or one harmonised_ generator, or {OWN_LESIONS} alone"
        )
    return ArmSpec(
        name=name,
        receiver=receiver,
        real=real[0] if real else None,
        synthetic=tuple(synth or harm),
        harmonised=bool(harm),
        own_lesions=bool(own),
    )


class PatchParams(RecipeParams):
    """Patch geometry (GAN-sharing paper, 2.1): size, margin at the reference spacing, background
    limit."""

    size: int = 64
    margin_px: float = Field(default=60.0, ge=0)
    reference_spacing: float = Field(default=0.07, gt=0)
    max_background: float = Field(default=0.4, ge=0, le=1)
    augment: bool = True  # random zoom and shift of every classifier patch, both classes

    @field_validator("size")
    @classmethod
    def _power_of_two(cls, v: int) -> int:
        return shared.power_of_two(v, "patch size")


class GanParams(RecipeParams):
    """Training of one shared generator (DCGAN or WGAN-GP) at a sharing centre."""

    epochs: int = Field(default=300, ge=1, le=100_000)
    batch_size: int = Field(default=16, ge=2)
    width: int = Field(default=32, ge=1)
    latent_dim: int = Field(default=100, ge=1)
    snapshot_every: int | None = Field(default=25, ge=1)
    warmup: int = Field(default=150, ge=0)
    lr: float | None = Field(default=None, gt=0)  # None: the kind's default
    n_critic: int = Field(default=5, ge=1)  # wgan_gp only
    lambda_gp: float = Field(default=10.0, ge=0)  # wgan_gp only

    def kwargs(self, gan: str) -> dict[str, Any]:
        """Keyword arguments of ``train_dcgan`` / ``train_wgan_gp``."""
        out: dict[str, Any] = self.model_dump(exclude={"lr", "n_critic", "lambda_gp"})
        if self.lr is not None:
            out["lr"] = self.lr
        if gan == "wgan_gp":
            out |= {"n_critic": self.n_critic, "lambda_gp": self.lambda_gp}
        return out


def _default_gans() -> dict[str, GanParams]:
    # GAN-sharing paper: DCGAN snapshots every 50th epoch after 500 of 3000; WGAN-GP last epoch only
    return {"dcgan": GanParams(), "wgan_gp": GanParams(snapshot_every=None, warmup=0)}


class ExtraModel(RecipeParams):
    """A further classifier of the receiver: its model, the arms it trains (those of them the
    run has; None: all) and the training settings it changes (None: the classifier's)."""

    model: ModelParams
    arms: list[str] | None = None
    optimizer: Literal["sgd", "adamw"] | None = None
    lr: float | None = Field(default=None, gt=0)
    weight_decay: float | None = Field(default=None, ge=0)


class ClassifierParams(RecipeParams):
    """The receiver's patch classifier and its loop (GAN-sharing paper, 2.3: SGD 0.001, momentum
    0.9)."""

    model: ModelParams = ModelParams(name="patch_cnn", options={"width": 16, "hidden": 128})
    epochs: int = Field(default=100, ge=1, le=1000)
    batch_size: int = Field(default=16, ge=2)
    lr: float = Field(default=0.001, gt=0)
    momentum: float = Field(default=0.9, ge=0, lt=1)
    weight_decay: float = Field(default=0.0, ge=0)
    patience: int | None = Field(default=None, ge=1)  # None: every epoch, as in the seed
    augment: bool = True  # random flips of training batches
    optimizer: Literal["sgd", "adamw"] = "sgd"  # adamw: lr and weight_decay, no momentum
    # Faster kernels that round differently (train_patch_classifier): off repeats earlier runs
    channels_last: bool = False  # channels_last model and batches: patch CNN ~1.7x on CPU
    fused_optimizer: bool = False  # the optimizer's fused step: Swin's AdamW ~1.18x on CPU
    # label -> a further classifier trained with the same loop (the paper's Swin transformer)
    extra_models: dict[str, ExtraModel] = Field(default_factory=dict)

    @field_validator("extra_models")
    @classmethod
    def _labels(cls, v: dict[str, ExtraModel]) -> dict[str, ExtraModel]:
        bad = [k for k in v if not re.fullmatch(r"[a-z0-9_]+", k)]
        if bad:
            raise ValueError(
                f"extra_models labels must be [a-z0-9_]+ (they end record names), got {bad}"
            )
        return v


class CycleGanParams(shared.CycleGanParams):
    """CycleGAN of the harmonised arm (A's lesion patches <-> B's synthetic patches)."""

    batch_size: int = Field(default=4, ge=1)


def _default_arms() -> list[str]:
    return [
        "A",
        "A+real_B",
        "A+synth_B_dcgan",
        "A+synth_B_wgan_gp",
        "A+synth_C_dcgan",
        "A+synth_B_dcgan+synth_C_dcgan",
        "A+harmonised_B_dcgan",
    ]


class ShareGansParams(RecipeParams):
    """Sharing generators instead of images (GAN-sharing paper) plus the translation arm
    (CycleGAN-UDA paper).

    Sharing centres train one generator per (gan, lesion subset) the arms need, once per run,
    from ``generator_seed`` (whatever the scenario's seeds: a seed's records do not depend on
    the other seeds, and their spread is the receiver's classifiers', not the generators');
    the receiver trains and tests its patch classifier per arm, subset, fraction and seed.
    ``n_synthetic`` lesion patches are added per synthetic arm (real arm: at most that many),
    each with as many healthy patches of the receiver. ``load_generators`` reuses the
    ``generators/`` folder of an earlier run (or the folder itself) instead of training.
    """

    arms: list[str] = Field(default_factory=_default_arms, min_length=1)
    subsets: list[Subset] = ["all", "masses"]
    fractions: list[float] = [1.0, 0.5]
    n_synthetic: int = Field(default=200, ge=1, le=100_000)
    patches: PatchParams = PatchParams()
    gans: dict[Literal["dcgan", "wgan_gp"], GanParams] = Field(default_factory=_default_gans)
    classifier: ClassifierParams = ClassifierParams()
    cyclegan: CycleGanParams = CycleGanParams()
    frechet_samples: int = Field(default=500, ge=4)
    bootstrap: int = Field(default=1000, ge=0)  # paired comparisons' resamples (0: no CIs)
    grid_columns: int = Field(default=12, ge=1, le=64)
    load_generators: str | None = None
    generator_seed: int = Field(default=0, ge=0)  # the shared generators' training seed

    @field_validator("arms")
    @classmethod
    def _arms(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError(f"arms must be distinct, got {v}")
        receivers = {parse_arm(a).receiver for a in v}
        if len(receivers) > 1:
            raise ValueError(
                f"every arm must start with the same receiver, got {sorted(receivers)}"
            )
        return v

    @field_validator("fractions")
    @classmethod
    def _fractions(cls, v: list[float]) -> list[float]:
        if not v or len(set(v)) != len(v) or any(not 0 < f <= 1 for f in v):
            raise ValueError(f"fractions must be distinct values in (0, 1], got {v}")
        percents = [round(f * 100) for f in v]  # the results name each fraction by its percent
        if len(set(percents)) != len(percents) or 0 in percents:
            raise ValueError(
                f"fractions {v} name the same whole percent ({percents}) or 0%: the results "
                "name each by its percent (masses-50); give fractions at least 1% apart"
            )
        return v

    @field_validator("subsets")
    @classmethod
    def _subsets(cls, v: list[str]) -> list[str]:
        if not v or len(set(v)) != len(v):
            raise ValueError(f"subsets must be distinct and not empty, got {v}")
        return v

    @model_validator(mode="after")
    def _extra_model_arms(self) -> ShareGansParams:
        for label, extra in self.classifier.extra_models.items():
            for arm in extra.arms or []:
                try:
                    parse_arm(arm)
                except ValueError as exc:
                    raise ValueError(f"classifier.extra_models.{label}.arms: {exc}") from None
            unknown = [a for a in extra.arms or [] if a not in self.arms]
            if unknown:
                raise ValueError(
                    f"classifier.extra_models.{label}.arms: {unknown} not among params.arms "
                    f"({self.arms}): the extra model trains only arms the run has; fix: list "
                    f"some of those, or [] for no {label} rows"
                )
        return self

    @model_validator(mode="after")
    def _gans_known(self) -> ShareGansParams:
        missing = sorted({g for a in self.arm_specs() for _, g in a.generators} - set(self.gans))
        if missing:
            raise ValueError(f"arms use GAN(s) {missing} without parameters under 'gans'")
        return self

    @property
    def receiver(self) -> str:
        return parse_arm(self.arms[0]).receiver

    def arm_specs(self) -> list[ArmSpec]:
        """The parsed arms, in recipe order."""
        return [parse_arm(a) for a in self.arms]

    def classifier_runs(
        self, specs: list[ArmSpec] | None = None
    ) -> list[tuple[ArmSpec, str, dict[str, Any]]]:
        """(arm, model label, classifier) per classifier run of a cell: every arm of ``specs``
        (None: all; the server passes those its plan check kept) with the classifier's model
        (label ""), then each extra model with those of its arms."""
        specs = self.arm_specs() if specs is None else specs
        base = self.classifier.model_dump(exclude={"extra_models"})
        runs = [(spec, "", base) for spec in specs]
        for label, extra in self.classifier.extra_models.items():
            chosen = self.arms if extra.arms is None else extra.arms
            changed = extra.model_dump(exclude={"model", "arms"}, exclude_none=True)
            clf = {**base, **changed, "model": extra.model.model_dump()}
            runs += [(spec, label, clf) for spec in specs if spec.name in chosen]
        return runs
