"""Strategy recipes (``strategies/*.yaml``) and scenarios (``scenarios/*.yaml``)."""

from __future__ import annotations

import copy
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator

from fedmammo.config.dotted import apply_dotted
from fedmammo.config.profile import CentreProfile, ComputeSpec, PrivacySpec, Strict
from fedmammo.config.recipe import known_kinds, validate_recipe_params

__all__ = [
    "MAX_MESSAGE_TIMEOUT",
    "RESERVED_CENTRE_NAMES",
    "CentreEntry",
    "FaultSpec",
    "MessageTimeouts",
    "Scenario",
    "SimulationSpec",
    "StrategySpec",
    "TrackingSpec",
]

#: Flower's default message TTL (12 h): a message still unanswered then expires at the SuperLink.
MAX_MESSAGE_TIMEOUT = 12 * 3600.0


class MessageTimeouts(Strict):
    """Seconds the server waits for the replies to one message round, per phase (Flower's
    message categories: ``query.*``, ``train.*``, ``evaluate.*``). A centre that has not
    replied by then counts as failed for that round."""

    query: float = Field(default=600.0, gt=0)  # identify (loads the centre's image cache)
    train: float = Field(default=7200.0, gt=0)  # one round of local training
    evaluate: float = Field(default=3600.0, gt=0)  # evaluation, audits

    @field_validator("query", "train", "evaluate")
    @classmethod
    def _below_ttl(cls, v: float) -> float:
        if v > MAX_MESSAGE_TIMEOUT:
            raise ValueError(
                f"at most {MAX_MESSAGE_TIMEOUT:.0f} s (12 h): Flower drops a message "
                "unanswered for longer (its TTL)"
            )
        return v

    def of(self, message_type: str) -> float:
        """The timeout of a message type (``train.classifier`` -> ``train``)."""
        phase = message_type.split(".", 1)[0]
        if phase in type(self).model_fields:
            return float(getattr(self, phase))
        return float(max(self.query, self.train, self.evaluate))


class StrategySpec(Strict):
    """A strategy recipe: a registered ``kind`` plus its parameters (validated by the kind)."""

    name: str = ""
    kind: str
    description: str = ""
    params: dict[str, Any] = Field(default_factory=dict)
    quick: dict[str, Any] = Field(default_factory=dict)  # params overridden by --quick
    # Seconds the server waits, before anything else, for every centre's node to connect and
    # identify itself (deployment); then it stops, or goes on without the missing centres
    # where the recipe's min_centres allows. Simulated nodes are all there at once.
    connect_timeout: float = Field(default=300.0, gt=0, le=7 * 24 * 3600)
    message_timeout: MessageTimeouts = MessageTimeouts()

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, v: str) -> str:
        kinds = known_kinds()
        if v not in kinds:
            raise ValueError(f"unknown strategy kind {v!r}; valid kinds: {', '.join(kinds)}")
        return v

    def typed_params(self, *, quick: bool = False) -> BaseModel:
        """Return the params validated by the kind's pydantic model (quick overrides applied)."""
        params = copy.deepcopy(self.params)
        if quick:
            for key, value in self.quick.items():
                apply_dotted(params, key, value)
        return validate_recipe_params(self.kind, params)


class FaultSpec(Strict):
    """A simulated centre failure: the centre's handler raises in that round (for studying
    dropouts and for testing that runs survive them)."""

    centre: str
    round: int = Field(ge=1)
    arm: str = "federated"


#: Names no centre may take: the pooled arm's simulated node (and its id in a run spec) and
#: the ``centre`` of records that belong to no one centre (round timings, the training loss).
RESERVED_CENTRE_NAMES = ("pooled", "__pooled__", "all")


class CentreEntry(Strict):
    """A centre taking part in a scenario: its profile, its role and profile overrides."""

    profile: str
    name: str | None = None
    role: Literal["train", "test", "sharer", "receiver"] = "train"
    overrides: dict[str, Any] = Field(default_factory=dict)


class TensorBoardSpec(Strict):
    """TensorBoard event files (default folder: ``<run dir>/tensorboard``)."""

    log_dir: str | None = None


class MlflowSpec(Strict):
    """A local MLflow store (default: ``sqlite:///<run dir>/mlflow.db``)."""

    tracking_uri: str | None = None
    experiment: str | None = None


class TrackingSpec(Strict):
    """Offline experiment tracking of per-round metrics (the ``tracking`` extra)."""

    tensorboard: bool | TensorBoardSpec = False
    mlflow: bool | MlflowSpec = False


class SimulationSpec(Strict):
    """Flower's simulation engine (``python -m fedmammo.simulate``): where the simulated
    centres run and what each Ray actor asks for."""

    # ray: Flower's Ray engine (centres in parallel actors); inprocess: every centre in the
    # simulate process, one after another, no Ray (seconds to start; small and quick runs).
    # --backend wins over it.
    backend: Literal["ray", "inprocess"] = "ray"
    # a running Ray cluster to attach to ("HOST:PORT" printed by `ray start --head`, or
    # "auto"); None: a private Ray instance on this machine. --ray-address wins over it.
    ray_address: str | None = Field(default=None, min_length=1)
    # every simulated centre's Ray resources (num_cpus, num_gpus); None: the largest of the
    # centres' profiles' ``compute`` blocks
    client_resources: ComputeSpec | None = None


class Scenario(Strict):
    """A scenario: centres (resolved profiles), a strategy recipe, seeds and run settings."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    description: str = ""
    centres: list[CentreEntry] = Field(min_length=1)
    strategy: str | StrategySpec
    strategy_overrides: dict[str, Any] = Field(default_factory=dict)
    seeds: list[int] = Field(default=[0], min_length=1)
    # seeds the phantom and the splits (kept fixed across training seeds)
    data_seed: int = Field(default=0, ge=0)
    image_size: tuple[int, int] = (256, 192)
    output_dir: str = "runs"
    data_dir: str = "data"  # where phantom centres and caches are materialised
    privacy: PrivacySpec | None = None  # scenario-wide default; a profile's own wins
    sweep: dict[str, list[Any]] = Field(default_factory=dict)
    faults: list[FaultSpec] = Field(default_factory=list)
    tracking: TrackingSpec | None = None  # TensorBoard / MLflow, files in the run folder
    simulation: SimulationSpec = SimulationSpec()  # Ray: cluster address, client_resources
    quick: dict[str, Any] = Field(default_factory=dict)  # scenario keys overridden by --quick
    # filled by load_scenario:
    resolved_profiles: dict[str, CentreProfile] = Field(default_factory=dict)
    source_file: str | None = None
    source_files: dict[str, str] = Field(default_factory=dict)  # what each part was read from

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v: list[int]) -> list[int]:
        if negative := [s for s in v if s < 0]:
            raise ValueError(f"seeds must be >= 0 (numpy's generators refuse {negative[0]})")
        if repeated := sorted({s for s in v if v.count(s) > 1}):
            raise ValueError(f"seed {repeated[0]} is listed twice; each seed runs once")
        return v

    @field_validator("image_size", mode="before")
    @classmethod
    def _size_pair(cls, v: Any) -> Any:
        if not isinstance(v, (list, tuple)) or len(v) != 2:
            raise ValueError(f"image_size must be [height, width] (e.g. [256, 192]), got {v!r}")
        return v

    @field_validator("image_size")
    @classmethod
    def _size(cls, v: tuple[int, int]) -> tuple[int, int]:
        if not all(16 <= x <= 4096 for x in v):
            raise ValueError("image_size must be [height, width], each in 16..4096")
        return v

    @field_validator("sweep")
    @classmethod
    def _points(cls, v: dict[str, list[Any]]) -> dict[str, list[Any]]:
        if empty := [k for k, values in v.items() if not values]:
            raise ValueError(
                f"sweep {', '.join(map(repr, empty))} has no values (0 points to run); give at "
                "least one, or drop the key"
            )
        return v

    def centre_names(self, role: str | None = None) -> list[str]:
        """Names of the scenario's centres, optionally only those with ``role``."""
        return [e.name or "" for e in self.centres if role is None or e.role == role]

    def entry(self, name: str) -> CentreEntry:
        for e in self.centres:
            if e.name == name:
                return e
        raise KeyError(name)

    @property
    def recipe(self) -> StrategySpec:
        assert isinstance(self.strategy, StrategySpec), "load_scenario resolves the strategy"
        return self.strategy
