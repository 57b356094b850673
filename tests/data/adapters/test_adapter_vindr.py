"""VinDr-Mammo adapter on a small published-layout tree (two CSVs, images/<study>/*.dicom)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from fedmammo.data.adapters import load_manifest
from fedmammo.data.manifest import decode_lesions
from fedmammo.errors import DataError


def test_vindr_manifest_row_by_row(tmp_path: Path, builders) -> None:
    # Prepare
    expected = builders["vindr-mammo"](tmp_path)

    # Execute
    df = load_manifest("vindr-mammo", tmp_path)

    # Assert
    assert sorted(df["image_id"]) == sorted(expected)
    assert df.attrs["skip_reasons"] == {"image file not found": 1}
    for _, row in df.set_index("image_id").iterrows():
        exp = expected[row.name]
        for key in ("patient_id", "laterality", "view", "acr", "density", "split", "manufacturer"):
            assert row[key] == exp[key], (row.name, key)
        if exp["malignant"] is None:  # BI-RADS 3 is left out by default
            assert pd.isna(row["malignant"]) and pd.isna(row["u_malignancy"])
        else:
            assert row["malignant"] == exp["malignant"]
            assert row["u_malignancy"] == pytest.approx(exp["u_malignancy"])
        assert row["path"] == str(tmp_path / "images" / row["study_id"] / f"{row.name}.dicom")
        assert row["segment"] == f"VinDr-Mammo-{exp['manufacturer']}"
        assert row["pixel_spacing"] == pytest.approx(0.085)  # from ImagerPixelSpacing
        assert row["age"] == 57.0  # PatientAge '057Y'
        got = [
            (les["kind"], les["box"], les["malignant"]) for les in decode_lesions(row["lesions"])
        ]
        assert got == [(k, list(b), m) for k, b, m in exp["lesions"]]
    assert set(df["split"]) == {"train", "test"}


def test_vindr_without_finding_csv_has_no_boxes(tmp_path: Path, builders) -> None:
    # Prepare
    builders["vindr-mammo"](tmp_path)
    (tmp_path / "finding_annotations.csv").unlink()

    # Execute
    df = load_manifest("vindr-mammo", tmp_path, birads3="benign")

    # Assert
    assert df["lesions"].isna().all()
    assert df.loc[df["acr"] == 3, "malignant"].tolist() == [0]


def test_vindr_missing_breast_csv(tmp_path: Path, builders) -> None:
    # Prepare
    builders["vindr-mammo"](tmp_path)
    (tmp_path / "breast-level_annotations.csv").unlink()

    # Execute / Assert
    with pytest.raises(DataError, match="breast-level_annotations.csv not found; expected layout"):
        load_manifest("vindr-mammo", tmp_path)


def test_vindr_missing_column(tmp_path: Path, builders) -> None:
    # Prepare
    builders["vindr-mammo"](tmp_path)
    path = tmp_path / "finding_annotations.csv"
    pd.read_csv(path).drop(columns="xmax").to_csv(path, index=False)

    # Execute / Assert
    with pytest.raises(DataError) as err:
        load_manifest("vindr-mammo", tmp_path)
    assert f"{path} lacks column 'xmax'" in str(err.value)
    assert "images/<study_id>/<image_id>.dicom" in str(err.value)


def test_vindr_corrupt_image_is_skipped_and_counted(
    tmp_path: Path, builders, garbage_writer
) -> None:
    # Prepare
    expected = builders["vindr-mammo"](tmp_path)
    victim = next(iter(expected))
    garbage_writer(next((tmp_path / "images").rglob(f"{victim}.dicom")))

    # Execute
    df = load_manifest("vindr-mammo", tmp_path)

    # Assert
    assert victim not in set(df["image_id"]) and len(df) == len(expected) - 1
    assert df.attrs["skip_reasons"] == {"image file not found": 1, "unreadable DICOM header": 1}


@pytest.mark.parametrize(("birads3", "expected"), [("exclude", None), ("benign", False)])
def test_vindr_finding_labels_follow_the_birads3_rule(
    tmp_path: Path, builders, csv_editor, birads3: str, expected: bool | None
) -> None:
    """Regression: a BI-RADS 3 finding was benign (malignant False) although the profile's
    default birads3: exclude leaves a BI-RADS 3 breast NA."""
    # Prepare: aa11bb22cc33dd44 is a BI-RADS 3 breast; give it a BI-RADS 3 finding box
    builders["vindr-mammo"](tmp_path)
    path = tmp_path / "finding_annotations.csv"
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    row = table.index[table["image_id"] == "aa11bb22cc33dd44"][0]
    box = {"xmin": "1", "ymin": "2", "xmax": "5", "ymax": "6"}
    csv_editor(
        path, {row: {"finding_categories": "['Mass']", "finding_birads": "BI-RADS 3", **box}}
    )

    # Execute
    df = load_manifest("vindr-mammo", tmp_path, birads3=birads3).set_index("image_id")

    # Assert: the box's label is the breast's
    image = df.loc["aa11bb22cc33dd44"]
    (lesion,) = decode_lesions(image["lesions"])
    assert lesion["malignant"] is expected
    assert (None if pd.isna(image["malignant"]) else bool(image["malignant"])) is expected


def test_vindr_lesion_kind_is_the_first_category_and_shape_no_category(
    tmp_path: Path, builders
) -> None:
    """Regression: ['Suspicious Calcification', 'Mass'] was kind calcification, shape 'Mass'."""
    # Prepare
    builders["vindr-mammo"](tmp_path)

    # Execute
    df = load_manifest("vindr-mammo", tmp_path).set_index("image_id")

    # Assert: VinDr-Mammo's categories are finding types, none a shape descriptor
    lesions = decode_lesions(df.loc["d3b8ba4a1e0a2f9e", "lesions"])
    assert [(les["kind"], les["shape"]) for les in lesions] == [
        ("mass", ""),
        ("calcification", ""),
    ]
    assert all(les["shape"] == "" for v in df["lesions"] for les in decode_lesions(v))


def test_vindr_a_misspelt_split_is_warned_and_left_missing(
    tmp_path: Path, builders, caplog
) -> None:
    # Prepare: one row's split misspelt ("traning"), the rest as published
    builders["vindr-mammo"](tmp_path)
    path = tmp_path / "breast-level_annotations.csv"
    table = pd.read_csv(path)
    victim = table.loc[0, "image_id"]
    table.loc[0, "split"] = "traning"
    table.to_csv(path, index=False)

    # Execute
    with caplog.at_level("WARNING", logger="fedmammo"):
        df = load_manifest("vindr-mammo", tmp_path)

    # Assert: NA (its patients are split by the profile's fractions, said at preparation),
    # warned naming the file, the line and the value; the other rows keep theirs
    row = df.set_index("image_id").loc[victim]
    assert pd.isna(row["split"])
    assert f"{path} line 2: unreadable split value 'traning'" in caplog.text
    assert df.attrs["unreadable_labels"] == {"split": 1}
    assert set(df["split"].dropna()) == {"train", "test"}
