"""Contrastive pairs from the manifest: same-breast CC/MLO pairs and the batch masks."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fedmammo.data.pairs import breast_keys, contrastive_masks, view_pairs
from fedmammo.errors import DataError


def _frame() -> pd.DataFrame:
    rows = []
    for patient in ("P1", "P2"):
        for side in ("L", "R"):
            for view in ("CC", "MLO"):
                rows.append(
                    {
                        "image_id": f"{patient}{side}{view}",
                        "patient_id": patient,
                        "laterality": side,
                        "view": view,
                    }
                )
    rows.append(
        {"image_id": "P1LCC2", "patient_id": "P1", "laterality": "L", "view": "cc"}
    )  # repeat
    rows.append(
        {"image_id": "P3LMLO", "patient_id": "P3", "laterality": "L", "view": "MLO"}
    )  # no CC
    rows.append(
        {"image_id": "P4X", "patient_id": "P4", "laterality": pd.NA, "view": "CC"}
    )  # no side
    rows.append(
        {"image_id": "P4ML", "patient_id": "P4", "laterality": "L", "view": "ML"}
    )  # other view
    return pd.DataFrame(rows)


def test_view_pairs_join_cc_and_mlo_of_one_breast_only():
    # Prepare
    frame = _frame()
    # Execute
    pairs = view_pairs(frame)
    # Assert: 4 breasts, one with two CCs -> 5 pairs; P3, P4 give none
    assert len(pairs) == 5
    assert set(zip(pairs["cc_image_id"], pairs["mlo_image_id"], strict=True)) == {
        ("P1LCC", "P1LMLO"),
        ("P1LCC2", "P1LMLO"),
        ("P1RCC", "P1RMLO"),
        ("P2LCC", "P2LMLO"),
        ("P2RCC", "P2RMLO"),
    }
    cc, mlo = frame.iloc[pairs["cc"]], frame.iloc[pairs["mlo"]]
    assert (
        cc["patient_id"].to_numpy() == mlo["patient_id"].to_numpy()
    ).all()  # never across patients
    assert (cc["laterality"].to_numpy() == mlo["laterality"].to_numpy()).all()
    assert set(cc["view"].str.upper()) == {"CC"} and set(mlo["view"]) == {"MLO"}


def test_breast_keys_and_missing_columns():
    assert breast_keys(_frame()).iloc[0] == "P1|L"
    with pytest.raises(DataError, match="laterality"):
        view_pairs(pd.DataFrame({"image_id": ["a"], "patient_id": ["p"], "view": ["CC"]}))


def _batch():
    # two style variants of LCC and LMLO of P1, and of LCC and LMLO of P2; P1's RCC once
    patient = ["P1", "P1", "P2", "P2", "P1", "P1", "P2", "P2", "P1"]
    image = ["1c", "1m", "2c", "2m", "1c", "1m", "2c", "2m", "1rc"]
    view = ["CC", "MLO", "CC", "MLO", "CC", "MLO", "CC", "MLO", "CC"]
    breast = ["1L", "1L", "2L", "2L", "1L", "1L", "2L", "2L", "1R"]
    return {"patient": patient, "image": image, "view": view, "breast": breast}


def test_mscl_masks_pair_styles_of_one_image_and_repel_the_same_view_of_other_patients():
    # Execute
    pos, neg = contrastive_masks(**_batch(), scheme="mscl")
    # Assert
    assert {tuple(p) for p in np.argwhere(pos)} == {
        (0, 4),
        (4, 0),
        (1, 5),
        (5, 1),
        (2, 6),
        (6, 2),
        (3, 7),
        (7, 3),
    }
    assert set(np.flatnonzero(neg[0])) == {2, 6}  # P2's CCs; not P1's MLO, not P1's RCC
    assert set(np.flatnonzero(neg[8])) == {2, 6}
    assert not (pos & neg).any() and not np.diag(pos).any() and not np.diag(neg).any()


def test_mvcl_masks_pair_cc_and_mlo_of_one_breast_and_repel_the_other_view_of_other_patients():
    # Execute
    pos, neg = contrastive_masks(**_batch(), scheme="mvcl")
    # Assert: P1's LCC (0) attracts P1's LMLOs (1, 5) but not P1's RCC (8) nor P2
    assert set(np.flatnonzero(pos[0])) == {1, 5}
    assert set(np.flatnonzero(neg[0])) == {3, 7}  # P2's MLOs
    assert not pos[8].any()  # the RCC has no MLO in the batch
    patient = np.array(_batch()["patient"])
    assert not (pos & (patient[:, None] != patient[None, :])).any()  # never across patients
    assert not (neg & (patient[:, None] == patient[None, :])).any()  # same patient never negative


def test_simclr_masks_repel_everything_else():
    pos, neg = contrastive_masks(**_batch(), scheme="simclr")
    assert (pos | neg | np.eye(9, dtype=bool)).all() and not (pos & neg).any()
    assert set(np.flatnonzero(pos[0])) == {4}


def test_bad_batches_are_refused():
    with pytest.raises(DataError, match="scheme"):
        contrastive_masks(**_batch(), scheme="byol")
    bad = _batch() | {"patient": ["P1", "P2"] + ["P1"] * 7, "image": ["x", "x"] + ["y"] * 7}
    with pytest.raises(DataError, match="two patients"):
        contrastive_masks(**bad, scheme="mscl")
