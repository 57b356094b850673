"""Recipe parameters of ``kind: cyclegan_uda``: the CycleGAN-UDA paper's (004) whole-image
experiment between a film centre and a digital centre.

Arms, for every classifier of ``models`` (arm ``<arm>-<model key>``) and every direction
(source centre -> target centre; the test records are the target centre's):

- ``source_only``: trained on the source centre's labelled images, tested at the target;
- ``in_domain``: trained on the target centre's own labelled images (the upper bound);
- ``uda``: trained on the source's images plus the same images translated into the target's
  style by a CycleGAN the target centre trained and shared (its generator only).

``source_only`` and ``uda`` are also tested at their own source centre (records
``<arm>-<model>-same_domain``): the paper's same-domain rows, whether UDA keeps the source's
performance.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from fedmammo.config import recipe as shared
from fedmammo.config.recipe import LocalTrainingParams, ModelParams, RecipeParams

__all__ = [
    "ARMS",
    "DIRECTIONS",
    "CycleGanParams",
    "CycleGanUdaParams",
    "SOURCE_ARMS",
    "TileGanParams",
    "arm_name",
    "same_domain_arm",
]

ARMS = ("source_only", "in_domain", "uda")
DIRECTIONS = ("film_to_digital", "digital_to_film")
SOURCE_ARMS = ("source_only", "uda")  # trained at the source centre, so also tested there


def arm_name(arm: str, model: str) -> str:
    """The record name of ``arm`` with classifier ``model``: ``<arm>-<model>``."""
    return f"{arm}-{model}"


def same_domain_arm(name: str) -> str:
    """The record name of arm record ``name``'s classifier tested at its own training centre
    (the source): a name of its own, as that centre also holds the reverse direction's test."""
    return f"{name}-same_domain"


class TileGanParams(shared.TileGanParams):
    """The source centre's shared tile DCGAN: what the target centre's CycleGAN learns the
    source style from (square tiles of breast tissue; no source pixel leaves the source)."""

    n_tiles: int = Field(default=256, ge=8)
    n_synthetic: int = Field(default=256, ge=8)
    epochs: int = Field(default=100, ge=1)
    width: int = Field(default=16, ge=1)
    # most a tile may hold of background: high, so the CycleGAN also learns the skin line and
    # the background it translates in whole images
    max_background: float = Field(default=0.9, gt=0, le=1)


class CycleGanParams(shared.CycleGanParams):
    """The target centre's CycleGAN (:func:`fedmammo.training.cyclegan.train_cyclegan`)."""

    epochs: int = Field(default=40, ge=1)


def _default_models() -> dict[str, ModelParams]:
    return {
        "alexnet": ModelParams(name="alexnet", options={"input_size": 224}),
        "resnet50": ModelParams(name="resnet50", options={"input_size": 224}),
    }


class CycleGanUdaParams(RecipeParams):
    """Source-only, in-domain and CycleGAN-UDA classifiers between a film and a digital centre.

    ``film`` / ``digital``: the scenario's centres owning each domain. ``models``: key (used
    in arm names) -> registry model. ``train``: how each classifier trains (one local run at
    its training centre). ``bootstrap``: resamples of the paired comparisons' CIs and p-values
    (0: no CIs, no p-values; the test AUROC's own CI needs none but is left out with 0 too).
    """

    film: str = "film"
    digital: str = "digital"
    directions: list[Literal["film_to_digital", "digital_to_film"]] = Field(
        default_factory=lambda: list(DIRECTIONS), min_length=1
    )
    arms: list[Literal["source_only", "in_domain", "uda"]] = Field(
        default_factory=lambda: list(ARMS), min_length=1
    )
    models: dict[str, ModelParams] = Field(default_factory=_default_models, min_length=1)
    train: LocalTrainingParams = LocalTrainingParams(epochs=10, batch_size=16, lr=1e-4)
    tiles: TileGanParams = TileGanParams()
    cyclegan: CycleGanParams = CycleGanParams()
    bootstrap: int = Field(default=1000, ge=0, le=100_000)

    @field_validator("models")
    @classmethod
    def _model_keys(cls, v: dict[str, ModelParams]) -> dict[str, ModelParams]:
        bad = [k for k in v if not k.replace("_", "").isalnum()]
        if bad:
            raise ValueError(f"model keys name arms: letters, digits and '_' only, got {bad}")
        return v

    @model_validator(mode="after")
    def _distinct(self) -> CycleGanUdaParams:
        if self.film == self.digital:
            raise ValueError(f"film and digital must be two centres, both are {self.film!r}")
        for name in ("directions", "arms"):
            values = getattr(self, name)
            if len(set(values)) != len(values):
                raise ValueError(f"{name} lists a value twice: {values}")
        return self

    def pairs(self) -> list[tuple[str, str]]:
        """(source centre, target centre) of every direction, in recipe order."""
        both = {
            "film_to_digital": (self.film, self.digital),
            "digital_to_film": (self.digital, self.film),
        }
        return [both[d] for d in self.directions]

    def arm_names(self) -> list[str]:
        """Every arm's record name, model by model (``source_only-alexnet``, ...)."""
        return [arm_name(a, m) for m in self.models for a in self.arms]
