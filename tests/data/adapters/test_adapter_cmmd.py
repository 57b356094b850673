"""CMMD adapter on a small published-layout tree (clinical XLSX or CSV + patient folders)."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import pytest

from fedmammo.data.adapters import load_manifest
from fedmammo.errors import DataError


def _check_rows(df: pd.DataFrame, expected: dict) -> None:
    assert sorted(df["image_id"]) == sorted(expected)
    for _, row in df.set_index("image_id").iterrows():
        exp = expected[row.name]
        for key in ("patient_id", "laterality", "view", "age", "path"):
            assert row[key] == exp[key], (row.name, key)
        if exp["malignant"] is None:  # contralateral breast, not in the clinical table
            assert pd.isna(row["malignant"]) and pd.isna(row["u_malignancy"])
        else:
            assert row["malignant"] == exp["malignant"] and row["u_malignancy"] == 0.0
        assert row["manufacturer"] == "GE MEDICAL SYSTEMS"
        assert row["segment"] == "CMMD-GE MEDICAL SYSTEMS"
        assert row["pixel_spacing"] == pytest.approx(0.094)


def test_cmmd_manifest_from_xlsx(tmp_path: Path, builders) -> None:
    # Prepare
    pytest.importorskip("openpyxl")
    expected = builders["cmmd"](tmp_path)

    # Execute
    df = load_manifest("cmmd", tmp_path)

    # Assert
    _check_rows(df, expected)
    assert df.attrs["skip_reasons"] == {"unreadable DICOM header": 1}
    assert df["malignant"].isna().sum() == 2


def test_cmmd_manifest_from_csv_export(tmp_path: Path, builders) -> None:
    # Prepare
    expected = builders["cmmd"](tmp_path, xlsx=False)

    # Execute
    df = load_manifest("cmmd", tmp_path, clinical_csv=str(tmp_path / "clinical.csv"))

    # Assert
    _check_rows(df, expected)


def test_cmmd_xlsx_without_openpyxl_names_the_extra(tmp_path: Path, builders, monkeypatch) -> None:
    # Prepare
    pytest.importorskip("openpyxl")
    builders["cmmd"](tmp_path)
    monkeypatch.setitem(sys.modules, "openpyxl", None)

    # Execute / Assert
    with pytest.raises(DataError, match=r'pip install "fedmammo\[xlsx\]"'):
        load_manifest("cmmd", tmp_path)


def test_cmmd_missing_table_and_column(tmp_path: Path, builders) -> None:
    # Prepare
    builders["cmmd"](tmp_path, xlsx=False)
    csv = tmp_path / "clinical.csv"
    pd.read_csv(csv).drop(columns="classification").to_csv(csv, index=False)

    # Execute / Assert
    with pytest.raises(DataError, match="CMMD_clinicaldata_revision.xlsx not found"):
        load_manifest("cmmd", tmp_path)
    with pytest.raises(DataError) as err:
        load_manifest("cmmd", tmp_path, clinical_csv=str(csv))
    assert f"{csv} lacks column 'classification'" in str(err.value)
    assert "required columns: ID1, LeftRight, Age, classification;" in str(err.value)


def _edit_clinical(path: Path, rows: list[list]) -> None:
    table = pd.read_csv(path)
    table = pd.concat([table, pd.DataFrame(rows, columns=table.columns)], ignore_index=True)
    table.to_csv(path, index=False)


def test_cmmd_sides_written_as_words_label_their_breasts(tmp_path: Path, builders) -> None:
    # Prepare: LeftRight "Left" / "right" instead of L / R
    expected = builders["cmmd"](tmp_path, xlsx=False)
    path = tmp_path / "clinical.csv"
    table = pd.read_csv(path)
    table["LeftRight"] = ["Left", "right"]
    table.to_csv(path, index=False)

    # Execute
    df = load_manifest("cmmd", tmp_path, clinical_csv=str(path))

    # Assert: the same labels as with L / R
    _check_rows(df, expected)


def test_cmmd_an_unreadable_side_or_conflicting_rows_leave_the_breast_unlabelled(
    tmp_path: Path, builders, caplog
) -> None:
    # Prepare: D2-0001 R labelled again, Benign (line 4); a row whose side is "both" (line 5)
    builders["cmmd"](tmp_path, xlsx=False)
    path = tmp_path / "clinical.csv"
    _edit_clinical(
        path,
        [
            ["D2-0001", "R", 61, 2, "mass", "Benign", ""],
            ["D2-0001", "both", 61, 2, "mass", "Malignant", ""],
        ],
    )

    # Execute
    with caplog.at_level("WARNING", logger="fedmammo"):
        df = load_manifest("cmmd", tmp_path, clinical_csv=str(path))

    # Assert: no label wins silently; both problems named by file and line
    right = df[(df["patient_id"] == "D2-0001") & (df["laterality"] == "R")]
    assert len(right) == 2 and right["malignant"].isna().all()
    assert f"{path}: lines 3 and 4 label breast D2-0001 R differently (1, 0)" in caplog.text
    assert f"{path} line 5: unreadable LeftRight value 'both'" in caplog.text
    assert df.attrs["unreadable_labels"] == {"LeftRight": 1}
