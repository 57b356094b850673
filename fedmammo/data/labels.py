"""Multi-task targets from a manifest: class indices (-1 = missing) and label uncertainties."""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from fedmammo.data.manifest import LABEL_TASKS
from fedmammo.errors import ConfigError, DataError

__all__ = [
    "MISSING",
    "TASK_COLUMNS",
    "acr_to_malignancy",
    "drop_labels",
    "finetune_targets",
    "manifest_targets",
]

#: Target value of a missing label.
MISSING = -1

#: Task -> manifest label column.
TASK_COLUMNS: dict[str, str] = {
    "malignancy": "malignant",
    "acr": "acr",
    "density": "density",
    "view": "view",
}

# Numeric tasks: task -> (lowest label value, number of classes); class = value - lowest.
_NUMERIC: dict[str, tuple[int, int]] = {"malignancy": (0, 2), "acr": (1, 6), "density": (1, 4)}
# The seed merges ML into CC (both show little pectoral muscle, section 2.3).
_VIEW_CLASSES: dict[str, int] = {"CC": 0, "ML": 0, "MLO": 1}


def _check_tasks(tasks: Iterable[str]) -> tuple[str, ...]:
    tasks = tuple(tasks)
    unknown = [t for t in tasks if t not in TASK_COLUMNS]
    if unknown:
        raise ConfigError(f"unknown label task(s) {unknown}; valid tasks: {', '.join(LABEL_TASKS)}")
    return tasks


def _numeric_target(manifest: pd.DataFrame, task: str) -> np.ndarray:
    col = TASK_COLUMNS[task]
    low, n = _NUMERIC[task]
    try:
        values = pd.to_numeric(manifest[col], errors="raise").astype("Float64")
    except (TypeError, ValueError) as exc:
        raise DataError(f"manifest column {col!r} is not numeric: {exc}") from exc
    arr = values.to_numpy(dtype=np.float64, na_value=np.nan)
    present = ~np.isnan(arr)
    bad = present & ((arr != np.round(arr)) | (arr < low) | (arr > low + n - 1))
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise DataError(
            f"manifest column {col!r}: value {arr[row]} at row {row} (image_id "
            f"{_image_id(manifest, row)}) outside {low}..{low + n - 1}; fix it or set it to NA"
        )
    out = np.full(len(arr), MISSING, dtype=np.int64)
    out[present] = arr[present].astype(np.int64) - low
    return out


def _view_target(manifest: pd.DataFrame) -> np.ndarray:
    views = manifest["view"].astype("string").str.strip().str.upper()
    mapped = views.map(_VIEW_CLASSES)
    return pd.to_numeric(mapped).fillna(MISSING).to_numpy(dtype=np.int64)


def _image_id(manifest: pd.DataFrame, row: int) -> str:
    return str(manifest["image_id"].iloc[row]) if "image_id" in manifest.columns else "?"


def _uncertainty(manifest: pd.DataFrame, task: str, target: np.ndarray) -> np.ndarray:
    col = f"u_{task}"
    if col not in manifest.columns:
        return np.zeros(len(manifest), dtype=np.float32)
    u = pd.to_numeric(manifest[col], errors="coerce").astype("Float64")
    arr = u.to_numpy(dtype=np.float64, na_value=np.nan)
    bad = ~np.isnan(arr) & ((arr < 0) | (arr > 1))
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise DataError(
            f"manifest column {col!r}: uncertainty {arr[row]} at row {row} (image_id "
            f"{_image_id(manifest, row)}) is outside [0, 1]"
        )
    arr = np.where(np.isnan(arr) | (target == MISSING), 0.0, arr)
    return arr.astype(np.float32)


def manifest_targets(
    manifest: pd.DataFrame, tasks: Sequence[str] = LABEL_TASKS
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Class-index targets (int64, -1 = missing) and uncertainties (float32) per task.

    malignancy: ``malignant`` 0/1; acr: 1..6 -> 0..5; density: 1..4 (A..D) -> 0..3; view:
    CC and ML -> 0, MLO -> 1, anything else -> -1. NA -> -1. Uncertainty comes from
    ``u_<task>`` (NA -> 0); it is 0 wherever the target is missing (the weight is 0 anyway).
    """
    tasks = _check_tasks(tasks)
    targets: dict[str, np.ndarray] = {}
    uncertainty: dict[str, np.ndarray] = {}
    for task in tasks:
        col = TASK_COLUMNS[task]
        if col not in manifest.columns:
            raise DataError(
                f"manifest has no column {col!r} for task {task!r}; run normalise_manifest "
                "first (it adds missing label columns as NA)"
            )
        target = _view_target(manifest) if task == "view" else _numeric_target(manifest, task)
        targets[task] = target
        uncertainty[task] = _uncertainty(manifest, task, target)
    return targets, uncertainty


def acr_to_malignancy(
    acr: Iterable[object], *, u1: float, acr6_malignant: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Malignancy targets derived from ACR assessments, with constant uncertainty ``u1``.

    multi-task paper, section 3.3.5: ACR 1-2 -> 0 (benign), ACR 4-5 -> 1 (malignant), ACR 3
    ignored (-1), and "the same uncertainty score u1 for all of the synthetic labels"
    (weight ``1 - u1``, Eq. 2). ACR 6 is not in that rule: section 2.3 defines it as
    "confirmed malignant cases", i.e. a biopsy-confirmed label, not a synthetic one. With
    ``acr6_malignant`` (default) it becomes 1 with uncertainty 0 (full weight, like any
    confirmed label); otherwise it is ignored. NA or missing -> -1. Ignored labels get
    uncertainty 0 (their weight is 0 anyway).
    """
    if not 0.0 <= u1 <= 1.0:
        raise ConfigError(f"u1 must be in [0, 1], got {u1}")
    values = pd.to_numeric(pd.Series(list(acr), dtype="object"), errors="coerce")
    arr = values.to_numpy(dtype=np.float64, na_value=np.nan)
    target = np.full(len(arr), MISSING, dtype=np.int64)
    target[np.isin(arr, (1, 2))] = 0
    target[np.isin(arr, (4, 5))] = 1
    synthetic = target != MISSING
    if acr6_malignant:
        target[arr == 6] = 1  # confirmed: not synthetic, uncertainty 0
    uncertainty = np.where(synthetic, u1, 0.0).astype(np.float32)
    return target, uncertainty


def finetune_targets(
    manifest: pd.DataFrame,
    *,
    u1: float,
    u_other: float = 0.5,
    tasks: Sequence[str] = LABEL_TASKS,
    keep_confirmed: bool = True,
    acr6_malignant: bool = True,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Targets for the seed's fine-tuning rule (section 3.3.5).

    Malignancy comes from :func:`acr_to_malignancy` with uncertainty ``u1``; with
    ``keep_confirmed`` an image that already has a ``malignant`` label keeps it (and its own
    uncertainty) instead. Every other present label gets the constant uncertainty ``u_other``.
    """
    if not 0.0 <= u_other <= 1.0:
        raise ConfigError(f"u_other must be in [0, 1], got {u_other}")
    tasks = _check_tasks(tasks)
    targets, uncertainty = manifest_targets(manifest, tasks)
    for task in tasks:
        if task == "malignancy":
            if "acr" not in manifest.columns:
                raise DataError("fine-tuning derives malignancy from ACR: manifest has no 'acr'")
            derived, u_derived = acr_to_malignancy(
                manifest["acr"], u1=u1, acr6_malignant=acr6_malignant
            )
            confirmed = targets[task] != MISSING if keep_confirmed else np.zeros(len(derived), bool)
            targets[task] = np.where(confirmed, targets[task], derived)
            uncertainty[task] = np.where(confirmed, uncertainty[task], u_derived).astype(np.float32)
        else:
            present = targets[task] != MISSING
            uncertainty[task] = np.where(present, u_other, 0.0).astype(np.float32)
    return targets, uncertainty


def drop_labels(
    targets: Mapping[str, np.ndarray], fraction: float, *, tasks: Iterable[str], seed: int
) -> dict[str, np.ndarray]:
    """Copy of ``targets`` with ``fraction`` of each named task's present labels set to -1.

    Each task draws its own permutation from ``(seed, task)``, so with one seed the labels
    dropped at 25% are a subset of those dropped at 50%, and dropping malignancy alone or
    with every task removes the same malignancy labels (Table-5 ablations).
    """
    if not 0.0 <= fraction <= 1.0:
        raise ConfigError(f"drop fraction must be in [0, 1], got {fraction}")
    out = {t: np.array(v, dtype=np.int64, copy=True) for t, v in targets.items()}
    for task in tasks:
        if task not in out:
            raise ConfigError(f"cannot drop labels of task {task!r}: targets have {sorted(out)}")
        present = np.flatnonzero(out[task] != MISSING)
        rng = np.random.default_rng([int(seed), zlib.crc32(task.encode())])
        k = int(round(fraction * len(present)))
        out[task][rng.permutation(present)[:k]] = MISSING
    return out
