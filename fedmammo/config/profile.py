"""Centre profiles (``centres/*.yaml``): a site's data, labels, consent, privacy, resources."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = [
    "TASKS",
    "AgeSpec",
    "CentreProfile",
    "ComputeSpec",
    "DataSpec",
    "LabelSpec",
    "PrivacySpec",
    "SegmentSpec",
    "SharingSpec",
    "Strict",
    "SyntheticSpec",
]

TASKS = ("malignancy", "acr", "density", "view")
Fraction = float


class Strict(BaseModel):
    """Base of every configuration model: unknown keys are errors, assignments validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class SegmentSpec(Strict):
    """One data segment of a synthetic centre: a source imaged by one manufacturer's device."""

    manufacturer: str = Field(min_length=1)
    source: str | None = None  # defaults to the centre's source
    style: str | None = None  # phantom vendor style; defaults to manufacturer.lower()
    patients: int = Field(ge=1, le=100_000)
    prevalence: float = Field(ge=0.0, le=1.0, description="fraction of patients with cancer")
    lesion_prevalence: float = Field(
        default=0.0, ge=0.0, le=1.0, description="fraction of healthy patients with benign finding"
    )


class AgeSpec(Strict):
    mean: float = Field(default=57.0, ge=18, le=100)
    sd: float = Field(default=9.0, ge=0, le=40)
    min: float = Field(default=40.0, ge=18, le=100)
    max: float = Field(default=85.0, ge=18, le=110)


class SyntheticSpec(Strict):
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


class DataSpec(Strict):
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


class LabelSpec(Strict):
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


class SharingSpec(Strict):
    """What a centre consents to send out, per reply kind; enforced at the centre whatever the
    server asks (pixels never, except the simulation-only real-patch arm)."""

    models: bool = True  # trained model weights (FedAvg, periodic sampling, multi-task)
    generators: bool = True  # trained GAN generator weights
    metrics: bool = True  # evaluation metrics and counts (AUROC, CIs, plot counts)
    audits: bool = True  # membership-inference audit results (attack AUC, TPR)
    real_patches_in_simulation: bool = False
    # model weights leave only masked, in a secure-aggregation round of two or more centres
    require_secure_aggregation: bool = False


class PrivacySpec(Strict):
    """Differential-privacy settings of a centre (None = no DP)."""

    target_epsilon: float | None = Field(default=None, gt=0)
    noise_multiplier: float | None = Field(default=None, ge=0)
    delta: float | None = Field(default=None, gt=0, lt=1)
    max_grad_norm: float = Field(default=1.0, gt=0)
    accountant: Literal["rdp", "prv"] = "rdp"
    # what one budget covers: every DP release from this data (site), or each what-if arm and
    # seed of a study (arm); auto: site at a real site, arm in simulation
    ledger_scope: Literal["auto", "site", "arm"] = "auto"
    # under DP, also send statistics of the training images computed without noise (training
    # losses, a generator's Frechet distances to the real training patches): outside epsilon
    release_training_statistics: bool = False

    @property
    def enabled(self) -> bool:
        return self.target_epsilon is not None or self.noise_multiplier is not None


class ComputeSpec(Strict):
    num_cpus: float = Field(default=1, gt=0)
    num_gpus: float = Field(default=0.0, ge=0)


class CentreProfile(Strict):
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

    def digest(self) -> str:
        """A short hash of what the profile says about the centre's data, labels, splits,
        consent and privacy: everything but where its data lives (``data.root``), its
        description and its machine (``compute``). A site and a coordinator holding the same
        profile and overrides get the same digest on different machines."""
        import hashlib

        kept = self.model_dump(mode="json", exclude={"description": True, "compute": True})
        kept["data"].pop("root", None)
        text = json.dumps(kept, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @field_validator("split")
    @classmethod
    def _split_sums(cls, v: dict[str, float]) -> dict[str, float]:
        if any(x < 0 for x in v.values()) or abs(sum(v.values()) - 1.0) > 1e-6:
            got = ", ".join(f"{k} {x:g}" for k, x in v.items())
            raise ValueError(
                f"split fractions (train, val, test) must be >= 0 and sum to 1, got {got} (sum "
                f"{sum(v.values()):g}); fix: give all three, e.g. split: "
                "{train: 0.5, val: 0.25, test: 0.25}"
            )
        return v
