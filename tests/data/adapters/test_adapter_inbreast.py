"""INbreast adapter on a small published-layout tree (CSV, AllDICOMs, OsiriX AllXML)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from fedmammo.data.adapters import load_manifest
from fedmammo.data.adapters.inbreast import SECOND_FILE, read_rois
from fedmammo.data.manifest import decode_lesions
from fedmammo.errors import DataError


def test_inbreast_manifest_row_by_row(tmp_path: Path, builders) -> None:
    # Prepare
    expected = builders["inbreast"](tmp_path)

    # Execute
    df = load_manifest("inbreast", tmp_path)

    # Assert
    assert sorted(df["image_id"]) == sorted(expected)
    assert df.attrs["skipped"] == 2  # one corrupt DICOM, one CSV row without a DICOM
    assert df.attrs["skip_reasons"] == {
        "unreadable DICOM header": 1,
        "DICOM for File Name not found": 1,
    }
    assert df.attrs["unreadable_xml"] == 1
    for _, row in df.set_index("image_id").iterrows():
        exp = expected[row.name]
        for key in ("patient_id", "laterality", "view", "malignant", "acr", "density"):
            assert row[key] == exp[key], (row.name, key)
        assert row["u_malignancy"] == pytest.approx(exp["u_malignancy"])
        assert Path(row["path"]).name.startswith(f"{row.name}_{exp['patient_id']}_MG_")
        assert row["manufacturer"] == "SIEMENS" and row["segment"] == "INbreast-SIEMENS"
        assert row["pixel_spacing"] == pytest.approx(0.07)
        assert pd.isna(row["age"]) and pd.isna(row["split"])  # age "removed", no official split
        if exp["lesions"] is None:
            assert pd.isna(row["lesions"])
        else:
            got = [(les["kind"], les["box"]) for les in decode_lesions(row["lesions"])]
            assert got == [(k, list(b)) for k, b in exp["lesions"]]
    lesions = decode_lesions(df.set_index("image_id").loc["22678646", "lesions"])
    assert all(les["malignant"] is True for les in lesions)


def test_inbreast_birads3_exclude_and_custom_uncertainty(tmp_path: Path, builders) -> None:
    # Prepare
    builders["inbreast"](tmp_path)

    # Execute
    df = load_manifest(
        "inbreast", tmp_path, birads3="exclude", malignancy_uncertainty={"4c": 0.25}
    ).set_index("image_id")

    # Assert
    assert pd.isna(df.loc["20586908", "malignant"]) and pd.isna(df.loc["20586908", "u_malignancy"])
    assert df.loc["22678646", "u_malignancy"] == pytest.approx(0.25)
    assert df.loc["20586908", "acr"] == 3  # the assessment itself stays


def test_inbreast_read_rois_boxes_are_point_extremes(tmp_path: Path, builders) -> None:
    # Prepare
    builders["inbreast"](tmp_path)

    # Execute
    rois = read_rois(tmp_path / "AllXML" / "22678646.xml")

    # Assert: min floor .. max floor + 1 of the Point_px strings, exclusive end
    assert rois == [
        {"kind": "mass", "shape": "", "box": [10, 20, 31, 36]},
        {"kind": "calcification", "shape": "", "box": [50, 5, 51, 6]},
    ]


def test_inbreast_missing_csv(tmp_path: Path, builders) -> None:
    # Prepare
    builders["inbreast"](tmp_path)
    (tmp_path / "INbreast.csv").unlink()

    # Execute / Assert
    with pytest.raises(DataError, match=r"INbreast\.csv not found; expected layout: .*AllDICOMs"):
        load_manifest("inbreast", tmp_path)


def test_inbreast_missing_column(tmp_path: Path, builders) -> None:
    # Prepare
    builders["inbreast"](tmp_path)
    csv = tmp_path / "INbreast.csv"
    csv.write_text(csv.read_text().replace("Bi-Rads", "BIRADS", 1))

    # Execute / Assert
    with pytest.raises(DataError) as err:
        load_manifest("inbreast", tmp_path)
    assert f"{csv} lacks column 'Bi-Rads'" in str(err.value)
    assert "required columns: Patient age, Laterality" in str(err.value)


def test_inbreast_a_second_dicom_of_one_file_name_is_skipped_and_named(
    tmp_path: Path, builders, caplog
) -> None:
    # Prepare: a stray copy of one image under another patient hash, sorting after it
    expected = builders["inbreast"](tmp_path)
    name = sorted(expected)[0]
    first = next((tmp_path / "AllDICOMs").glob(f"{name}_*_ANON.dcm"))
    stray = first.with_name(f"{name}_ffffffffffffffff_MG_L_MLO_ANON.dcm")
    stray.write_bytes(first.read_bytes())

    # Execute
    with caplog.at_level("WARNING", logger="fedmammo"):
        df = load_manifest("inbreast", tmp_path)

    # Assert: the image is read from the first file by name, the stray skipped, counted, named
    row = df.set_index("image_id").loc[name]
    assert Path(row["path"]).name == first.name
    assert row["patient_id"] == expected[name]["patient_id"]
    assert df.attrs["skip_reasons"][SECOND_FILE] == 1
    assert f"{stray} (beside {first.name}): {SECOND_FILE}" in caplog.text
