"""Patient-wise train/val/test splits, stratified by patient label and data segment."""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np
import pandas as pd

from fedmammo.errors import ConfigError, DataError

__all__ = ["SPLITS", "assign_splits"]

logger = logging.getLogger(__name__)

SPLITS: tuple[str, ...] = ("train", "val", "test")
_DEFAULT_FRACTIONS: dict[str, float] = {"train": 0.6, "val": 0.2, "test": 0.2}


def _check_fractions(fractions: Mapping[str, float]) -> np.ndarray:
    unknown = sorted(set(fractions) - set(SPLITS))
    if unknown:
        raise ConfigError(f"split fractions: unknown split(s) {unknown}; allowed {list(SPLITS)}")
    f = np.array([float(fractions.get(s, 0.0)) for s in SPLITS])
    if (f < 0).any() or not np.isfinite(f).all() or abs(f.sum() - 1.0) > 1e-6:
        raise ConfigError(
            f"split fractions {dict(fractions)} must be >= 0 and sum to 1 (e.g. {{'test': 1.0}})"
        )
    return f


def _patient_table(
    manifest: pd.DataFrame, label: str | None, stratify_segment: bool
) -> pd.DataFrame:
    """One row per patient: its stratum key (patient label x main segment)."""
    if "patient_id" not in manifest.columns or manifest["patient_id"].isna().any():
        raise DataError(
            "manifest: column 'patient_id' is missing or has empty values; patient-wise splits "
            "need a patient for every image (use the image_id when patients are unknown)"
        )
    patients = manifest["patient_id"].astype(str)
    table = pd.DataFrame(index=pd.Index(sorted(patients.unique()), name="patient_id"))
    key = pd.Series("", index=table.index)
    if label is not None:
        if label not in manifest.columns:
            raise DataError(f"manifest: no label column {label!r} to stratify on")
        values = pd.to_numeric(manifest[label], errors="coerce")
        per_patient = values.groupby(patients).max()  # any positive -> positive; all NA -> NA
        key += per_patient.reindex(table.index).map(lambda v: "NA" if pd.isna(v) else f"{v:g}")
    if stratify_segment:
        if "segment" not in manifest.columns:
            raise DataError("manifest: no 'segment' column (pass stratify_segment=False)")
        pairs = pd.DataFrame(
            {
                "p": patients.to_numpy(),
                "s": manifest["segment"].astype("string").fillna("NA").to_numpy(str),
            }
        )
        counts = pairs.value_counts().rename("n").reset_index()
        counts = counts.sort_values(["p", "n", "s"], ascending=[True, False, True])
        main = counts.drop_duplicates("p").set_index("p")["s"]  # most images, then by name
        key += "|" + main.reindex(table.index).astype(str)
    table["stratum"] = key
    return table


def _allocate(n_per_stratum: list[int], f: np.ndarray) -> np.ndarray:
    """Counts per stratum and split: each within 2 of n*f, totals within 1 of N*f."""
    counts = np.zeros((len(n_per_stratum), len(f)), dtype=np.int64)
    carry = np.zeros(len(f))
    active = f > 0
    for s, n in enumerate(n_per_stratum):
        target = n * f + carry
        c = np.floor(np.clip(target, 0, None)).astype(np.int64)
        c[~active] = 0
        while c.sum() > n:  # clip of carries can overshoot by one
            c[np.argmax(np.where(c > 0, c - target, -np.inf))] -= 1
        frac = np.where(active, target - c, -np.inf)
        for j in np.argsort(-frac, kind="stable")[: n - c.sum()]:
            c[j] += 1
        counts[s] = c
        carry = target - c
    return counts


def assign_splits(
    manifest: pd.DataFrame,
    fractions: Mapping[str, float] | None = None,
    *,
    seed: int = 0,
    label: str | None = "malignant",
    stratify_segment: bool = True,
) -> pd.DataFrame:
    """Return a copy of ``manifest`` with ``split`` filled patient-wise and stratified.

    Strata are the patient label (any positive image; all-NA is its own stratum) crossed with
    the patient's main segment. Splits with fraction 0 stay empty; every other split gets at
    least one patient when there are enough patients.
    """
    f = _check_fractions(_DEFAULT_FRACTIONS if fractions is None else fractions)
    table = _patient_table(manifest, label, stratify_segment)
    rng = np.random.default_rng(seed)
    strata = sorted(table["stratum"].unique())
    strata = [strata[i] for i in rng.permutation(len(strata))]  # no stratum always goes first
    members = [rng.permutation(table.index[table["stratum"] == s].to_numpy()) for s in strata]
    counts = _allocate([len(m) for m in members], f)
    _ensure_nonempty(counts, f)
    assignment: dict[str, str] = {}
    for patients, c in zip(members, counts):
        bounds = np.cumsum(c)
        for k, patient in enumerate(patients):
            assignment[patient] = SPLITS[int(np.searchsorted(bounds, k, side="right"))]
    out = manifest.copy()
    out["split"] = manifest["patient_id"].astype(str).map(assignment).astype("string")
    totals = dict(zip(SPLITS, counts.sum(axis=0).tolist()))
    logger.info("patients per split: %s (%d strata, seed %d)", totals, len(strata), seed)
    return out


def _ensure_nonempty(counts: np.ndarray, f: np.ndarray) -> None:
    """Move one patient into each wanted but empty split, from the fullest split."""
    for j in np.flatnonzero(f > 0):
        totals = counts.sum(axis=0)
        if totals[j] > 0:
            continue
        donor = int(np.argmax(totals))
        if totals[donor] <= 1:
            return  # too few patients for every split
        s = int(np.argmax(counts[:, donor]))
        counts[s, donor] -= 1
        counts[s, j] += 1
