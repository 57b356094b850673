"""Contrastive pairs from the manifest (Li et al.): same-breast CC/MLO pairs and batch masks.

A breast is ``(patient_id, laterality)``. Multi-view pairs (MVCL) join the CC and MLO images
of one breast; multi-style pairs (MSCL) are two styles of one image. Nothing here ever pairs
two patients as a positive.

Negatives follow the paper's domain knowledge (section III-B, "v2"): another image of the same
patient (the other view of the breast, the other breast, another style of the same image) is
never a negative; MSCL repels the *same view* of other patients (CCs of two patients), MVCL
the *other view* of other patients (LCC of patient 1 and LMLO of patient 2). Plain SimCLR
(equation 1) repels every other sample of the batch.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd

from fedmammo.errors import DataError

__all__ = ["SCHEMES", "VIEWS", "breast_keys", "contrastive_masks", "view_pairs"]

logger = logging.getLogger(__name__)

#: The two standard views paired by MVCL.
VIEWS: tuple[str, str] = ("CC", "MLO")
#: Pair schemes of :func:`contrastive_masks`.
SCHEMES: tuple[str, ...] = ("simclr", "mscl", "mvcl")


def _require(frame: pd.DataFrame, columns: Sequence[str], where: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataError(f"{where}: the manifest rows lack column(s) {missing}")


def breast_keys(frame: pd.DataFrame) -> pd.Series:
    """``patient_id|laterality`` of every row (NA where either is missing)."""
    _require(frame, ("patient_id", "laterality"), "breast_keys")
    patient = frame["patient_id"].astype("string")
    side = frame["laterality"].astype("string").str.strip().str.upper()
    return patient + "|" + side


def view_pairs(frame: pd.DataFrame) -> pd.DataFrame:
    """Every (CC, MLO) pair of images of the same breast, one row per pair.

    Columns: ``patient_id``, ``laterality``, ``cc`` and ``mlo`` (row positions in ``frame``),
    ``cc_image_id`` and ``mlo_image_id``. A breast with several CC or MLO images (repeat
    exams) gives every combination; rows with a missing patient, laterality or view, or a view
    other than CC/MLO, are left out (counted in the log).
    """
    _require(frame, ("image_id", "patient_id", "laterality", "view"), "view_pairs")
    view = frame["view"].astype("string").str.strip().str.upper().to_numpy(dtype=object)
    breast = breast_keys(frame).to_numpy(dtype=object)
    usable = np.array(
        [not pd.isna(b) and v in VIEWS for b, v in zip(breast, view, strict=True)], dtype=bool
    )
    if (~usable).any():
        logger.info(
            "view_pairs: %d rows without a breast or a CC/MLO view left out", (~usable).sum()
        )
    ids = frame["image_id"].astype(str).to_numpy()
    patients = frame["patient_id"].astype(str).to_numpy()
    sides = frame["laterality"].astype("string").str.strip().str.upper().to_numpy(dtype=object)
    by_breast: dict[str, dict[str, list[int]]] = {}
    for pos in np.flatnonzero(usable):
        by_breast.setdefault(breast[pos], {"CC": [], "MLO": []})[view[pos]].append(int(pos))
    records = []
    for key in sorted(by_breast):
        views = by_breast[key]
        for cc in views["CC"]:
            for mlo in views["MLO"]:
                records.append(
                    {
                        "patient_id": patients[cc],
                        "laterality": sides[cc],
                        "cc": cc,
                        "mlo": mlo,
                        "cc_image_id": ids[cc],
                        "mlo_image_id": ids[mlo],
                    }
                )
    columns = ["patient_id", "laterality", "cc", "mlo", "cc_image_id", "mlo_image_id"]
    return pd.DataFrame(records, columns=columns)


def _same(keys: Sequence[object]) -> np.ndarray:
    arr = np.asarray([str(k) for k in keys], dtype=object)
    return arr[:, None] == arr[None, :]


def contrastive_masks(
    *,
    patient: Sequence[object],
    image: Sequence[object],
    view: Sequence[object],
    breast: Sequence[object] | None = None,
    scheme: str,
) -> tuple[np.ndarray, np.ndarray]:
    """Return boolean (n, n) ``(positives, negatives)`` for a batch's n samples.

    Each argument gives one key per sample (``breast`` defaults to one breast per patient).
    ``simclr``: positives = other samples of the same image, negatives = everything else.
    ``mscl``: positives = same image (other styles); negatives = same view, other patient.
    ``mvcl``: positives = same breast, other view; negatives = other view, other patient.
    The diagonal is False in both; samples of the same patient that are not positives are
    neither (left out of the loss's denominator).
    """
    if scheme not in SCHEMES:
        raise DataError(f"unknown contrastive scheme {scheme!r}; valid: {', '.join(SCHEMES)}")
    n = len(patient)
    if not (len(image) == len(view) == n and (breast is None or len(breast) == n)):
        raise DataError("contrastive_masks: patient, image, view and breast differ in length")
    off = ~np.eye(n, dtype=bool)
    same_patient = _same(patient)
    same_image = _same(image)
    same_view = _same([str(v).strip().upper() for v in view])
    if (same_image & ~same_patient).any():
        raise DataError("contrastive_masks: one image_id belongs to two patients")
    if scheme == "simclr":
        pos = same_image & off
        return pos, off & ~pos
    if scheme == "mscl":
        return same_image & off, same_view & ~same_patient
    same_breast = same_patient if breast is None else _same(breast) & same_patient
    return same_breast & ~same_view, ~same_view & ~same_patient
