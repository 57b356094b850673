"""RSNA Screening Mammography adapter on a small published-layout tree."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
import pytest

from fedmammo.data.adapters import load_manifest
from fedmammo.errors import DataError


def test_rsna_manifest_row_by_row(tmp_path: Path, builders) -> None:
    # Prepare
    expected = builders["rsna"](tmp_path)

    # Execute
    df = load_manifest("rsna", tmp_path)

    # Assert: image 999.dcm is on disk but not in train.csv -> ignored, not skipped
    assert sorted(df["image_id"]) == sorted(expected)
    assert df.attrs["skipped"] == 1 and df.attrs["skip_reasons"] == {"image file not found": 1}
    for _, row in df.set_index("image_id").iterrows():
        exp = expected[row.name]
        for key in ("patient_id", "laterality", "view", "malignant", "segment"):
            assert row[key] == exp[key], (row.name, key)
        for key in ("acr", "density", "age"):
            assert pd.isna(row[key]) if exp[key] is None else row[key] == exp[key], key
        assert row["u_malignancy"] == 0.0
        assert row["path"] == str(tmp_path / "train_images" / exp["patient_id"] / f"{row.name}.dcm")
        assert row["manufacturer"] == "unknown"  # no Manufacturer tag written
        assert row["pixel_spacing"] == pytest.approx(0.1)
    assert sorted(df["segment"].unique()) == ["site1-machine49", "site2-machine29"]
    assert list(df.columns[-2:]) == ["site_id", "machine_id"]  # kept for segment_key


def test_rsna_reads_jpeg2000_headers(tmp_path: Path, builders) -> None:
    # Prepare: the builder writes every other image with a JPEG 2000 transfer syntax
    builders["rsna"](tmp_path)

    # Execute
    df = load_manifest("rsna", tmp_path)

    # Assert: listed with its header fields although its pixel stream is not decodable
    import pydicom

    path = tmp_path / "train_images" / "10006" / "462822612.dcm"
    assert pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID == (
        "1.2.840.10008.1.2.4.90"
    )
    row = df.set_index("image_id").loc["462822612"]
    assert row["laterality"] == "L" and row["pixel_spacing"] == pytest.approx(0.1)


def test_rsna_missing_csv_and_column(tmp_path: Path, builders) -> None:
    # Prepare
    builders["rsna"](tmp_path)
    csv = tmp_path / "train.csv"
    pd.read_csv(csv).drop(columns="machine_id").to_csv(csv, index=False)

    # Execute / Assert
    with pytest.raises(DataError) as err:
        load_manifest("rsna", tmp_path)
    assert f"{csv} lacks column 'machine_id'" in str(err.value)
    assert "train_images/<patient_id>/<image_id>.dcm" in str(err.value)
    csv.unlink()
    with pytest.raises(DataError, match="train.csv not found"):
        load_manifest("rsna", tmp_path)


def test_rsna_corrupt_image_is_skipped_and_counted(
    tmp_path: Path, builders, garbage_writer
) -> None:
    # Prepare
    builders["rsna"](tmp_path)
    garbage_writer(tmp_path / "train_images" / "10011" / "220375232.dcm")

    # Execute
    df = load_manifest("rsna", tmp_path)

    # Assert
    assert "220375232" not in set(df["image_id"])
    assert df.attrs["skip_reasons"] == {"image file not found": 1, "unreadable DICOM header": 1}


def test_rsna_empty_site_or_machine_is_unknown_with_a_warning(
    tmp_path: Path, builders, csv_editor, caplog
) -> None:
    """Regression: an empty site_id made the segment 'siteNone-machine29', silently."""
    # Prepare: line 2 without its site_id, line 4 without its machine_id
    builders["rsna"](tmp_path)
    csv = csv_editor(tmp_path / "train.csv", {0: {"site_id": ""}, 2: {"machine_id": " "}})

    # Execute
    with caplog.at_level(logging.WARNING):
        df = load_manifest("rsna", tmp_path).set_index("image_id")

    # Assert
    assert df.loc["462822612", "segment"] == "siteunknown-machine29"
    assert df.loc["462822612", "site_id"] == "unknown"
    assert df.loc["220375232", "segment"] == "site1-machineunknown"
    assert df.loc["220375232", "machine_id"] == "unknown"
    assert df.loc["1459541791", "segment"] == "site2-machine29"
    assert not any("None" in s for s in df["segment"])
    messages = [r.getMessage() for r in caplog.records]
    assert f"RSNA: {csv} line 2: empty site_id; the image's segment uses 'unknown'" in messages
    assert f"RSNA: {csv} line 4: empty machine_id; the image's segment uses 'unknown'" in messages


@pytest.mark.parametrize("fmt", ["rsna", "vindr-mammo", "inbreast"])
def test_an_image_listed_twice_is_refused_naming_both_lines(tmp_path: Path, builders, fmt) -> None:
    # Prepare: the table's first row repeated at its end
    builders[fmt](tmp_path)
    table, sep = {
        "rsna": ("train.csv", ","),
        "vindr-mammo": ("breast-level_annotations.csv", ","),
        "inbreast": ("INbreast.csv", ";"),
    }[fmt]
    path = tmp_path / table
    frame = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False)
    pd.concat([frame, frame.iloc[:1]]).to_csv(path, sep=sep, index=False)

    # Execute / Assert: the file and both lines, and the fix
    with pytest.raises(DataError, match="appears twice in the manifest") as err:
        load_manifest(fmt, tmp_path)
    assert f"({path} line 2, {path} line {len(frame) + 2}); fix: keep one row per image" in str(
        err.value
    )


def test_a_malignancy_column_of_which_no_value_reads_is_an_error(tmp_path: Path, builders) -> None:
    # Prepare: every `cancer` value written as True / False instead of 1 / 0
    builders["rsna"](tmp_path)
    path = tmp_path / "train.csv"
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    frame["cancer"] = frame["cancer"].map({"1": "True", "0": "False"})
    frame.to_csv(path, index=False)

    # Execute / Assert: not a centre with no labels, a table in another layout
    with pytest.raises(DataError, match="RSNA: no image has a readable malignancy label: ") as e:
        load_manifest("rsna", tmp_path)
    read = len(frame) - 1  # (the builder lists one image that is not there)
    assert f"{read} unreadable 'cancer' values (each warned above" in str(e.value)
