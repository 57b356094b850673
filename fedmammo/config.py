"""Pydantic models for centre profiles, strategy recipes and scenarios, and YAML loading.

Every error names the file, the dotted key and what is allowed, in one line.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from fedmammo.errors import ConfigError
from fedmammo.recipes import RECIPES, validate_recipe_params

__all__ = [
    "AgeSpec",
    "CentreEntry",
    "CentreProfile",
    "ComputeSpec",
    "DataSpec",
    "FaultSpec",
    "LabelSpec",
    "PrivacySpec",
    "Scenario",
    "SegmentSpec",
    "SharingSpec",
    "StrategySpec",
    "SyntheticSpec",
    "apply_dotted",
    "load_profile",
    "load_scenario",
    "load_strategy",
    "project_root",
]

TASKS = ("malignancy", "acr", "density", "view")
Fraction = float


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# --------------------------------------------------------------------------- centre profile
class SegmentSpec(_Strict):
    """One data segment of a synthetic centre: a source imaged by one manufacturer's device."""

    manufacturer: str = Field(min_length=1)
    source: str | None = None  # defaults to the centre's source
    style: str | None = None  # phantom vendor style; defaults to manufacturer.lower()
    patients: int = Field(ge=1, le=100_000)
    prevalence: float = Field(ge=0.0, le=1.0, description="fraction of patients with cancer")
    lesion_prevalence: float = Field(
        default=0.0, ge=0.0, le=1.0, description="fraction of healthy patients with benign finding"
    )


class AgeSpec(_Strict):
    mean: float = Field(default=57.0, ge=18, le=100)
    sd: float = Field(default=9.0, ge=0, le=40)
    min: float = Field(default=40.0, ge=18, le=100)
    max: float = Field(default=85.0, ge=18, le=110)


class SyntheticSpec(_Strict):
    """Phantom parameters: the centre's images are generated, not read."""

    segments: list[SegmentSpec] = Field(min_length=1)
    density: list[float] = Field(default=[0.1, 0.4, 0.4, 0.1], min_length=4, max_length=4)
    age: AgeSpec = AgeSpec()
    image_height: int = Field(default=256, ge=64, le=4096)
    calcification_fraction: float = Field(default=0.3, ge=0.0, le=1.0)
    lesion_contrast: float = Field(default=1.0, gt=0.0, le=10.0)

    @field_validator("density")
    @classmethod
    def _density_sums_to_one(cls, v: list[float]) -> list[float]:
        if any(p < 0 for p in v) or abs(sum(v) - 1.0) > 1e-6:
            raise ValueError("density must be 4 non-negative fractions (A, B, C, D) summing to 1")
        return v


class DataSpec(_Strict):
    """Where a centre's images come from: the phantom, or a dataset adapter on a root folder."""

    synthetic: SyntheticSpec | None = None
    format: str | None = None  # adapter name, e.g. "cbis-ddsm", "dicom-folder"
    root: str | None = None  # may use ${ENV_VAR}
    options: dict[str, Any] = Field(default_factory=dict)
    segment_key: list[str] = Field(default=["source", "manufacturer"], min_length=1)
    use_dataset_split: bool = True  # keep a dataset's official train/test split when it has one

    @model_validator(mode="after")
    def _one_source(self) -> DataSpec:
        if (self.synthetic is None) == (self.format is None):
            raise ValueError("give exactly one of 'synthetic' (phantom) or 'format' (+ 'root')")
        return self

    def resolved_root(self) -> Path | None:
        """Return ``root`` with environment variables expanded, or None."""
        if self.root is None:
            return None
        return Path(os.path.expandvars(os.path.expanduser(self.root)))


class LabelSpec(_Strict):
    """Label availability: per task, the fraction missing and the uncertainty of the rest."""

    missing: dict[Literal["malignancy", "acr", "density", "view"], Fraction] = Field(
        default_factory=dict
    )
    uncertainty: dict[Literal["malignancy", "acr", "density", "view"], Fraction] = Field(
        default_factory=dict
    )
    reader_noise: float = Field(default=0.1, ge=0.0, le=1.0)

    @field_validator("missing", "uncertainty")
    @classmethod
    def _fractions(cls, v: dict[str, float]) -> dict[str, float]:
        for k, x in v.items():
            if not 0.0 <= x <= 1.0:
                raise ValueError(f"{k} must be a fraction in [0, 1], got {x}")
        return v


class SharingSpec(_Strict):
    """What a centre may send out (pixels never, except the simulation-only real-patch arm)."""

    models: bool = True
    generators: bool = True
    real_patches_in_simulation: bool = False


class PrivacySpec(_Strict):
    """Differential-privacy settings of a centre (None = no DP)."""

    target_epsilon: float | None = Field(default=None, gt=0)
    noise_multiplier: float | None = Field(default=None, ge=0)
    delta: float | None = Field(default=None, gt=0, lt=1)
    max_grad_norm: float = Field(default=1.0, gt=0)
    accountant: Literal["rdp", "prv"] = "rdp"

    @property
    def enabled(self) -> bool:
        return self.target_epsilon is not None or self.noise_multiplier is not None


class ComputeSpec(_Strict):
    num_cpus: float = Field(default=1, gt=0)
    num_gpus: float = Field(default=0.0, ge=0)


class CentreProfile(_Strict):
    """A site: its data, label availability, sharing policy, privacy policy and resources."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    description: str = ""
    source: str = Field(default="S", min_length=1)
    data: DataSpec
    labels: LabelSpec = LabelSpec()
    sharing: SharingSpec = SharingSpec()
    privacy: PrivacySpec = PrivacySpec()
    compute: ComputeSpec = ComputeSpec()
    split: dict[Literal["train", "val", "test"], float] = Field(
        default_factory=lambda: {"train": 0.6, "val": 0.2, "test": 0.2}
    )

    @field_validator("split")
    @classmethod
    def _split_sums(cls, v: dict[str, float]) -> dict[str, float]:
        if any(x < 0 for x in v.values()) or abs(sum(v.values()) - 1.0) > 1e-6:
            raise ValueError("split fractions (train, val, test) must be >= 0 and sum to 1")
        return v


# --------------------------------------------------------------------------- strategy recipe
class StrategySpec(_Strict):
    """A strategy recipe: a registered ``kind`` plus its parameters (validated by the kind)."""

    name: str = ""
    kind: str
    description: str = ""
    params: dict[str, Any] = Field(default_factory=dict)
    quick: dict[str, Any] = Field(default_factory=dict)  # params overridden by --quick

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, v: str) -> str:
        if v not in RECIPES:
            raise ValueError(
                f"unknown strategy kind {v!r}; valid kinds: {', '.join(sorted(RECIPES))}"
            )
        return v

    def typed_params(self, *, quick: bool = False) -> BaseModel:
        """Return the params validated by the kind's pydantic model (quick overrides applied)."""
        params = copy.deepcopy(self.params)
        if quick:
            for key, value in self.quick.items():
                apply_dotted(params, key, value)
        return validate_recipe_params(self.kind, params)


# --------------------------------------------------------------------------- scenario
class FaultSpec(_Strict):
    """A simulated centre failure: the centre's handler raises in that round (for studying
    dropouts and for testing that runs survive them)."""

    centre: str
    round: int = Field(ge=1)
    arm: str = "federated"


class CentreEntry(_Strict):
    """A centre taking part in a scenario: its profile, its role and profile overrides."""

    profile: str
    name: str | None = None
    role: Literal["train", "test", "sharer", "receiver"] = "train"
    overrides: dict[str, Any] = Field(default_factory=dict)


class Scenario(_Strict):
    """A scenario: centres (resolved profiles), a strategy recipe, seeds and run settings."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    description: str = ""
    centres: list[CentreEntry] = Field(min_length=1)
    strategy: str | StrategySpec
    strategy_overrides: dict[str, Any] = Field(default_factory=dict)
    seeds: list[int] = Field(default=[0], min_length=1)
    data_seed: int = 0  # seeds the phantom and the splits (kept fixed across training seeds)
    image_size: tuple[int, int] = (256, 192)
    output_dir: str = "runs"
    data_dir: str = "data"  # where phantom centres and caches are materialised
    privacy: PrivacySpec | None = None  # scenario-wide default; a profile's own wins
    sweep: dict[str, list[Any]] = Field(default_factory=dict)
    faults: list[FaultSpec] = Field(default_factory=list)
    quick: dict[str, Any] = Field(default_factory=dict)  # scenario keys overridden by --quick
    # filled by load_scenario:
    resolved_profiles: dict[str, CentreProfile] = Field(default_factory=dict)
    source_file: str | None = None

    @field_validator("image_size")
    @classmethod
    def _size(cls, v: tuple[int, int]) -> tuple[int, int]:
        if not all(16 <= x <= 4096 for x in v):
            raise ValueError("image_size must be [height, width], each in 16..4096")
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


# --------------------------------------------------------------------------- loading
def project_root() -> Path:
    """The directory holding centres/, strategies/ and scenarios/ (cwd, else the checkout)."""
    here = Path.cwd()
    if (here / "centres").is_dir():
        return here
    return Path(__file__).resolve().parent.parent


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"{path}: file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{where}: broken YAML: {problem}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def _format_validation(path: Path | str, exc: ValidationError) -> ConfigError:
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key (check spelling; see README 'Scenario reference')"
        elif err["type"] == "missing":
            msg = "required key is missing"
        lines.append(f"{path}: key '{key}': {msg}")
    return ConfigError("\n".join(lines))


def apply_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``data[a][b][c] = value`` for ``dotted = "a.b.c"`` (list indices allowed)."""
    parts = dotted.split(".")
    node: Any = data
    for i, part in enumerate(parts[:-1]):
        if isinstance(node, list):
            node = node[int(part)]
            continue
        if part not in node or node[part] is None:
            node[part] = {}
        if not isinstance(node[part], dict | list):
            raise ConfigError(f"--set {dotted}: '{'.'.join(parts[: i + 1])}' is not a mapping")
        node = node[part]
    last = parts[-1]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value


def _resolve_ref(ref: str, folder: str, base: Path) -> Path:
    """A bare stem names ``<root>/<folder>/<stem>.yaml``; anything else is a path, relative
    to the referring file (or to the project root)."""
    p = Path(ref)
    if p.suffix not in (".yaml", ".yml") and len(p.parts) == 1:
        candidates = [project_root() / folder / f"{ref}.yaml", base / folder / f"{ref}.yaml"]
    else:
        candidates = [base / p, project_root() / p]
    for c in candidates:
        if c.is_file():
            return c
    return candidates[0]


def load_profile(path: str | Path, overrides: dict[str, Any] | None = None) -> CentreProfile:
    """Load and validate a centre profile YAML, with optional dotted-key overrides."""
    path = Path(path)
    data = _read_yaml(path)
    data.setdefault("name", path.stem)
    for key, value in (overrides or {}).items():
        apply_dotted(data, key, value)
    try:
        return CentreProfile.model_validate(data)
    except ValidationError as exc:
        raise _format_validation(path, exc) from None


def load_strategy(path: str | Path, overrides: dict[str, Any] | None = None) -> StrategySpec:
    """Load and validate a strategy recipe YAML (its params checked by the kind's model)."""
    path = Path(path)
    data = _read_yaml(path)
    data.setdefault("name", path.stem)
    quick = dict(data.get("quick") or {})
    for key, value in (overrides or {}).items():
        apply_dotted(data, key, value)
        if key.startswith("params."):  # a scenario's override wins over the recipe's quick
            quick.pop(key.removeprefix("params."), None)
            quick[key.removeprefix("params.")] = value
    if quick:
        data["quick"] = quick
    try:
        spec = StrategySpec.model_validate(data)
        spec.typed_params()
        spec.typed_params(quick=True)
    except ValidationError as exc:
        raise _format_validation(path, exc) from None
    return spec


def load_scenario(
    path: str | Path,
    *,
    sets: dict[str, Any] | None = None,
    quick: bool = False,
) -> Scenario:
    """Load a scenario, resolve its profiles and recipe, apply overrides, validate it all.

    ``sets`` are dotted keys (``--set``) applied to the scenario mapping; keys starting with
    ``strategy.`` go to the recipe's params, ``centres.<name>.`` to a centre's overrides.
    """
    path = Path(path)
    data = _read_yaml(path)
    data.setdefault("name", path.stem)
    if quick:
        for key, value in dict(data.get("quick") or {}).items():
            _apply_set(data, key, value)
    for key, value in (sets or {}).items():
        _apply_set(data, key, value)
    try:
        scenario = Scenario.model_validate(data)
    except ValidationError as exc:
        raise _format_validation(path, exc) from None
    scenario.source_file = str(path.resolve())

    if isinstance(scenario.strategy, str):
        strategy_path = _resolve_ref(scenario.strategy, "strategies", path.parent)
        if not strategy_path.is_file():
            raise ConfigError(
                f"{path}: key 'strategy': recipe {scenario.strategy!r} not found "
                f"(looked for {strategy_path}); fix: name a file in strategies/"
            )
        scenario.strategy = load_strategy(strategy_path, scenario.strategy_overrides)
    try:
        scenario.recipe.typed_params(quick=quick)
    except ValidationError as exc:
        raise _format_validation(f"{path} (strategy {scenario.recipe.name})", exc) from None

    seen: set[str] = set()
    for i, entry in enumerate(scenario.centres):
        profile_path = _resolve_ref(entry.profile, "centres", path.parent)
        if not profile_path.is_file():
            raise ConfigError(
                f"{path}: key 'centres.{i}.profile': profile {entry.profile!r} not found "
                f"(looked for {profile_path}); fix: name a file in centres/"
            )
        overrides = dict(entry.overrides)
        if entry.name:
            overrides["name"] = entry.name
        if scenario.privacy is not None:
            prof_data = _read_yaml(profile_path)
            if "privacy" not in prof_data and "privacy" not in {k.split(".")[0] for k in overrides}:
                overrides["privacy"] = scenario.privacy.model_dump()
        profile = load_profile(profile_path, overrides)
        entry.name = profile.name
        if profile.name in seen:
            raise ConfigError(
                f"{path}: key 'centres.{i}': centre name {profile.name!r} used twice; "
                "fix: give each entry a distinct 'name'"
            )
        seen.add(profile.name)
        scenario.resolved_profiles[profile.name] = profile
    _check_roles(path, scenario)
    return scenario


def _apply_set(data: dict[str, Any], key: str, value: Any) -> None:
    if key.startswith("strategy."):
        data.setdefault("strategy_overrides", {})
        data["strategy_overrides"][key.removeprefix("strategy.")] = value
        return
    if key.startswith("centres.") and not key.split(".")[1].isdigit():
        _, name, rest = key.split(".", 2)
        for entry in data.get("centres", []):
            if entry.get("name") == name or Path(str(entry.get("profile"))).stem == name:
                entry.setdefault("overrides", {})[rest] = value
                return
        raise ConfigError(f"--set {key}: no centre named {name!r} in the scenario")
    apply_dotted(data, key, value)


def _check_roles(path: Path, scenario: Scenario) -> None:
    for entry in scenario.centres:
        profile = scenario.resolved_profiles[entry.name or ""]
        if entry.role == "sharer" and not (profile.sharing.generators or profile.sharing.models):
            raise ConfigError(
                f"{path}: centre {entry.name!r} has role 'sharer' but its profile shares nothing; "
                "fix: set sharing.generators: true in its profile or change its role"
            )
    names = {e.name for e in scenario.centres}
    for i, fault in enumerate(scenario.faults):
        if fault.centre not in names:
            raise ConfigError(
                f"{path}: key 'faults.{i}.centre': no centre named "
                f"{fault.centre!r}; valid: {', '.join(sorted(names))}"
            )
    if not any(e.role in ("train", "receiver") for e in scenario.centres):
        raise ConfigError(f"{path}: key 'centres': no centre has role 'train' or 'receiver'")
