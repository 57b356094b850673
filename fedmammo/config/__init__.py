"""Configuration: centre profiles, strategy recipes and scenarios as pydantic models, and
their YAML loading (one error line naming file, key and fix)."""

from fedmammo.config.dotted import apply_dotted
from fedmammo.config.loading import load_profile, load_scenario, load_strategy
from fedmammo.config.profile import (
    TASKS,
    AgeSpec,
    CentreProfile,
    ComputeSpec,
    DataSpec,
    LabelSpec,
    PrivacySpec,
    SegmentSpec,
    SharingSpec,
    SyntheticSpec,
)
from fedmammo.config.recipe import LocalTrainingParams, ModelParams, RecipeParams
from fedmammo.config.scenario import CentreEntry, FaultSpec, Scenario, StrategySpec

__all__ = [
    "TASKS",
    "AgeSpec",
    "CentreEntry",
    "CentreProfile",
    "ComputeSpec",
    "DataSpec",
    "FaultSpec",
    "LabelSpec",
    "LocalTrainingParams",
    "ModelParams",
    "PrivacySpec",
    "RecipeParams",
    "Scenario",
    "SegmentSpec",
    "SharingSpec",
    "StrategySpec",
    "SyntheticSpec",
    "apply_dotted",
    "load_profile",
    "load_scenario",
    "load_strategy",
]
