"""Recipe parameters: the base model, the blocks several methods share, the kind registry.

A method registers its parameter model under its ``kind`` (``fedmammo.methods.registry``
does it when the method registers); ``strategies/<name>.yaml`` gives ``kind`` and
``params``. The registry is filled by importing :mod:`fedmammo.methods`, which every entry
point does (``python -m fedmammo.simulate``, the Flower apps,
``fedmammo.methods.load_scenario``).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from fedmammo.errors import ConfigError

__all__ = [
    "WEIGHTINGS",
    "WEIGHTING_ALIASES",
    "AveragingParams",
    "CycleGanParams",
    "LocalTrainingParams",
    "ModelParams",
    "RecipeParams",
    "TileGanParams",
    "FedAvgWeighting",
    "Weighting",
    "known_kinds",
    "params_model",
    "power_of_two",
    "register_params",
    "validate_recipe_params",
    "weighting_name",
]

_PARAMS: dict[str, type[BaseModel]] = {}


class RecipeParams(BaseModel):
    """Base of every recipe's parameter model: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


class ModelParams(RecipeParams):
    """A model from the registry (``fedmammo.models.build_model``) and its keyword arguments."""

    name: str = "mammo_cnn"
    options: dict[str, Any] = Field(default_factory=dict)


class LocalTrainingParams(RecipeParams):
    """How a centre trains locally in one round (or one whole local arm)."""

    epochs: int = Field(default=1, ge=1, le=1000)
    batch_size: int = Field(default=16, ge=1, le=4096)
    steps_per_epoch: int | None = Field(default=None, ge=1)
    optimizer: Literal["adam", "sgd"] = "adam"
    lr: float = Field(default=1e-3, gt=0)
    momentum: float = Field(default=0.9, ge=0, lt=1)
    weight_decay: float = Field(default=0.0, ge=0)
    sampler: str = "balanced_labels"  # registry name in fedmammo.data.sampling
    augment: bool = True
    # each centre carries its optimiser's state (Adam's moments) from round to round, kept in
    # its own state folder (paper 000 trains one Adam run; False: a fresh optimiser per round)
    keep_optimizer_state: bool = False


#: How an averaging round weighs each centre's update (recipe key ``weighting``), from the
#: counts the centre reports in its reply: ``images`` its training images, ``labelled`` those
#: labelled for the task being trained, ``quota`` the samples of the round's periodic quota it
#: trained on; ``uniform`` every centre the same.
WEIGHTINGS: tuple[str, ...] = ("images", "labelled", "quota", "uniform")
#: Old names, still accepted: ``num_examples`` was the examples a round saw (steps x batch,
#: equal at every centre with fixed steps), ``num_images`` periodic sampling's image count.
WEIGHTING_ALIASES: dict[str, str] = {
    "num_examples": "images",
    "num_images": "images",
    "equal": "uniform",
}


def power_of_two(value: int, name: str) -> int:
    """``value`` when it is a power of two >= 8 (the GAN generators' patch and tile sizes),
    else a ValueError naming ``name`` (a recipe field validator's check)."""
    if value < 8 or value & (value - 1):
        raise ValueError(f"{name} must be a power of two >= 8 (GAN generators need it)")
    return value


class TileGanParams(RecipeParams):
    """A DCGAN a centre trains on square tiles of its own breast tissue and shares (its
    generator only): how the CycleGAN methods (contrastive_dg, cyclegan_uda) learn another
    centre's style without its pixels. A method subclasses it for its own defaults."""

    tile_size: int = 32
    n_tiles: int = Field(default=512, ge=8)  # real tiles per centre (DCGAN and CycleGAN)
    n_synthetic: int = Field(default=512, ge=8)  # tiles sampled per received generator
    epochs: int = Field(default=200, ge=1)
    batch_size: int = Field(default=16, ge=2)
    width: int = Field(default=32, ge=1)
    latent_dim: int = Field(default=64, ge=1)

    @field_validator("tile_size")
    @classmethod
    def _power_of_two(cls, v: int) -> int:
        return power_of_two(v, "tile_size")

    def gan_kwargs(self) -> dict:
        """Keyword arguments of :func:`fedmammo.training.gan.train_dcgan`."""
        return {
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "width": self.width,
            "latent_dim": self.latent_dim,
            "snapshot_every": None,
            "warmup": 0,
        }


class CycleGanParams(RecipeParams):
    """One style translator (:func:`fedmammo.training.cyclegan.train_cyclegan` keywords)."""

    epochs: int = Field(default=20, ge=1)
    batch_size: int = Field(default=8, ge=1)
    width: int = Field(default=16, ge=1)
    n_blocks: int = Field(default=3, ge=0)
    d_width: int = Field(default=16, ge=1)
    lambda_cycle: float = Field(default=10.0, ge=0)
    lambda_identity: float = Field(default=0.5, ge=0)


def weighting_name(value: Any) -> Any:
    """The current name of a weighting (old names mapped by ``WEIGHTING_ALIASES``)."""
    return WEIGHTING_ALIASES.get(value, value) if isinstance(value, str) else value


#: A FedAvg weighting of centres' replies (old names num_images, equal accepted): by quota
#: (periodic sampling's own rounds), training images, labelled images, or uniform.
Weighting = Annotated[
    Literal["quota", "images", "labelled", "uniform"], BeforeValidator(weighting_name)
]
#: The weightings of a round without quotas.
FedAvgWeighting = Annotated[
    Literal["images", "labelled", "uniform"], BeforeValidator(weighting_name)
]


class AveragingParams(RecipeParams):
    """Switches every averaging method shares (its rounds run through
    ``fedmammo.federation.rounds``).

    ``secure_aggregation``: every round with two or more centres runs SecAgg+
    (``fedmammo.federation.secagg``): the server learns the weighted average only, never one
    centre's update. Each centre weighs its own update by its own count (``weighting``:
    images, labelled or quota) or equally (uniform). Single-centre arms (local, pooled) have
    nothing to hide from themselves and run as before.

    ``aggregation`` (:mod:`fedmammo.federation.aggregation`): how a round combines the
    updates: ``mean`` (FedAvg, weighted), or ``median`` / ``trimmed_mean`` (robust to a
    centre whose update is far off; every centre counts once, so no weighting applies, and
    each update must be seen: not under ``secure_aggregation``). ``trim_fraction``: the share
    of updates a trimmed mean drops from each end.
    """

    secure_aggregation: bool = False
    aggregation: Literal["mean", "median", "trimmed_mean"] = "mean"
    trim_fraction: float = Field(default=0.2, ge=0, lt=0.5)

    @model_validator(mode="after")
    def _robust_rule_sees_updates(self) -> AveragingParams:
        if self.secure_aggregation and self.aggregation != "mean":
            raise ValueError(
                f"aggregation {self.aggregation} needs every centre's update, and "
                "secure_aggregation shows the server only their sum: set aggregation: mean "
                "or secure_aggregation: false"
            )
        return self


def register_params(kind: str, model: type[BaseModel]) -> None:
    """Register the parameter model of strategy ``kind`` (once)."""
    if kind in _PARAMS and _PARAMS[kind] is not model:
        raise ValueError(f"strategy kind {kind!r} registered twice")
    _PARAMS[kind] = model


def known_kinds() -> list[str]:
    """The registered strategy kinds, sorted (empty until :mod:`fedmammo.methods` is imported)."""
    if not _PARAMS:
        raise ConfigError(
            "no strategy kinds are registered: import fedmammo.methods before loading a "
            "scenario (fedmammo.methods.load_scenario does it for you)"
        )
    return sorted(_PARAMS)


def params_model(kind: str) -> type[BaseModel] | None:
    """The parameter model registered for ``kind`` (None: no such kind)."""
    return _PARAMS.get(kind)


def validate_recipe_params(kind: str, params: dict[str, Any]) -> BaseModel:
    """Validate ``params`` with the model registered for ``kind`` (raises ValidationError)."""
    if kind not in _PARAMS:
        raise ValueError(f"unknown strategy kind {kind!r}; valid kinds: {', '.join(known_kinds())}")
    return _PARAMS[kind].model_validate(params)
