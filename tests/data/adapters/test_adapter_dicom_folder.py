"""dicom-folder adapter: any tree of mammography DICOMs, labels from an optional CSV."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from fedmammo.data.adapters import load_manifest
from fedmammo.errors import DataError


@pytest.fixture
def tree(tmp_path: Path, dicom_writer, garbage_writer) -> dict[str, object]:
    """Nested DICOMs: .dcm, .dicom, a suffix-less file, a CT, a corrupt file, a text file."""
    a = dicom_writer(
        tmp_path / "site" / "p1" / "a.dcm",
        PatientID="P1",
        PatientAge="057Y",
        Manufacturer="HOLOGIC",
        ImageLaterality="L",
        ViewPosition="CC",
        PixelSpacing=[0.07, 0.07],
    )
    b = dicom_writer(
        tmp_path / "site" / "p1" / "b.dicom",
        PatientID="P1",
        Laterality="R",
        view_code="MLO",
        Manufacturer="HOLOGIC",
        ImagerPixelSpacing=[0.1, 0.1],
    )
    c = dicom_writer(
        tmp_path / "p2" / "IM0001",
        PatientID="P2",
        Manufacturer="FUJIFILM",
        ImageLaterality="R",
        ViewPosition="MLO",
    )
    dicom_writer(tmp_path / "p2" / "ct.dcm", Modality="CT", PatientID="P2")
    garbage_writer(tmp_path / "p2" / "broken.dcm")
    (tmp_path / "notes.txt").write_text("not an image")
    return {
        "root": tmp_path,
        "a": str(a.SOPInstanceUID),
        "b": str(b.SOPInstanceUID),
        "c": str(c.SOPInstanceUID),
    }


def test_dicom_folder_everything_from_headers(tree: dict) -> None:
    # Execute
    df = load_manifest("dicom-folder", tree["root"], source="HospX").set_index("image_id")

    # Assert
    assert sorted(df.index) == sorted([tree["a"], tree["b"], tree["c"]])
    assert df.attrs["skip_reasons"] == {"unreadable DICOM header": 1, "modality CT is not MG": 1}
    a, b, c = df.loc[tree["a"]], df.loc[tree["b"]], df.loc[tree["c"]]
    assert (a["patient_id"], a["laterality"], a["view"], a["age"]) == ("P1", "L", "CC", 57.0)
    assert (b["laterality"], b["view"]) == ("R", "MLO")  # Laterality + ViewCodeSequence
    assert (c["patient_id"], c["manufacturer"], c["segment"]) == (
        "P2",
        "FUJIFILM",
        "HospX-FUJIFILM",
    )
    assert a["pixel_spacing"] == pytest.approx(0.07) and b["pixel_spacing"] == pytest.approx(0.1)
    assert Path(c["path"]) == tree["root"] / "p2" / "IM0001"
    assert df["malignant"].isna().all() and df["split"].isna().all()


def test_dicom_folder_labels_csv_by_uid_and_file_name(tree: dict, tmp_path: Path) -> None:
    # Prepare: one key column per CSV; rows for a (by UID) and c (by relative file name)
    by_uid = tmp_path / "uid.csv"
    pd.DataFrame(
        {
            "SOPInstanceUID": [tree["a"], "1.2.3.unknown"],
            "malignant": [1, 0],
            "acr": [5, 1],
            "density": ["C", "2"],
        }
    ).to_csv(by_uid, index=False)
    by_name = tmp_path / "names.csv"
    pd.DataFrame({"file_name": ["p2/IM0001"], "malignant": [0], "split": ["test"]}).to_csv(
        by_name, index=False
    )

    # Execute
    df1 = load_manifest("dicom-folder", tree["root"], labels_csv=str(by_uid)).set_index("image_id")
    df2 = load_manifest("dicom-folder", tree["root"], labels_csv=str(by_name)).set_index("image_id")

    # Assert
    a = df1.loc[tree["a"]]
    assert (a["malignant"], a["acr"], a["density"], a["u_malignancy"]) == (1, 5, 3, 0.0)
    assert df1.loc[tree["b"], ["malignant", "acr", "density"]].isna().all()
    assert df1.attrs["labels_unmatched"] == 1
    assert df2.loc[tree["c"], "malignant"] == 0 and df2.loc[tree["c"], "split"] == "test"
    assert pd.isna(df2.loc[tree["c"], "acr"])


def test_dicom_folder_bad_labels_csv(tree: dict, tmp_path: Path) -> None:
    # Prepare
    no_key = tmp_path / "nokey.csv"
    pd.DataFrame({"patient": ["P1"], "malignant": [1]}).to_csv(no_key, index=False)
    bad_value = tmp_path / "bad.csv"
    pd.DataFrame({"image_id": [tree["a"]], "density": [7]}).to_csv(bad_value, index=False)

    # Execute / Assert
    with pytest.raises(
        DataError, match=f"{no_key} lacks a key column; expected one of SOPInstanceUID"
    ):
        load_manifest("dicom-folder", tree["root"], labels_csv=str(no_key))
    with pytest.raises(DataError, match=r"line 2: column 'density' value '7' is not in 1\.\.4"):
        load_manifest("dicom-folder", tree["root"], labels_csv=str(bad_value))
    with pytest.raises(DataError, match="missing.csv not found"):
        load_manifest("dicom-folder", tree["root"], labels_csv=str(tmp_path / "missing.csv"))


def test_dicom_folder_without_images_is_an_error(tmp_path: Path, garbage_writer) -> None:
    # Prepare
    garbage_writer(tmp_path / "x.dcm")

    # Execute / Assert
    with pytest.raises(DataError, match=r"no readable image found \(1 skipped"):
        load_manifest("dicom-folder", tmp_path)


def test_dicom_folder_duplicate_uid_keeps_the_first_file(tree: dict, dicom_writer, caplog) -> None:
    """Regression: a second file with the same SOPInstanceUID failed the whole adapter."""
    # Prepare: two copies of image a, one sorting before it ('p0/') and one after ('site/p1/z')
    root = tree["root"]
    early = dicom_writer(root / "p0" / "copy.dcm", SOPInstanceUID=tree["a"], PatientID="P9")
    dicom_writer(root / "site" / "p1" / "z.dcm", SOPInstanceUID=tree["a"], PatientID="P9")

    # Execute
    with caplog.at_level("WARNING"):
        df = load_manifest("dicom-folder", root).set_index("image_id")

    # Assert: one row per UID, the first in sorted path order; the others skipped, counted and
    # logged naming both paths
    assert sorted(df.index) == sorted([tree["a"], tree["b"], tree["c"]])
    assert df.loc[tree["a"], "path"] == str(Path(early.filename).resolve())
    assert df.loc[tree["a"], "patient_id"] == "P9"
    key = "duplicate SOPInstanceUID (the first file in path order is kept)"
    assert df.attrs["skip_reasons"][key] == 2
    logged = [
        r.getMessage() for r in caplog.records if "duplicate SOPInstanceUID" in r.getMessage()
    ]
    assert any(
        str(root / "site" / "p1" / "a.dcm") in m and str(early.filename) in m for m in logged
    )
