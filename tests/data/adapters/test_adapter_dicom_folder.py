"""dicom-folder adapter: any tree of mammography DICOMs, labels from an optional CSV."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest

from fedmammo.data.adapters import load_manifest
from fedmammo.errors import DataError

DUPLICATE = (
    "duplicate SOPInstanceUID (the largest file is kept, as a smaller copy may be truncated; "
    "the first in path order among equal sizes)"
)


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


def test_a_labels_csv_patient_id_replaces_per_image_patient_ids(
    tmp_path: Path, dicom_writer, caplog
) -> None:
    # Prepare: 8 images of 4 patients whose anonymiser wrote a PatientID per file
    root = tmp_path / "site"
    files = [
        dicom_writer(root / f"img{k}.dcm", PatientID=f"ANON-{k}", Manufacturer="GE")
        for k in range(8)
    ]
    labels = tmp_path / "labels.csv"
    pd.DataFrame(
        {
            "SOPInstanceUID": [str(ds.SOPInstanceUID) for ds in files],
            "patient_id": [f"P{k // 2}" for k in range(8)],
            "malignant": [k % 2 for k in range(8)],
        }
    ).to_csv(labels, index=False)
    # Execute
    from_headers = load_manifest("dicom-folder", root)
    warned = caplog.text
    caplog.clear()
    from_csv = load_manifest("dicom-folder", root, labels_csv=str(labels))
    # Assert: the headers' 8 patients are warned about; the CSV's 4 are used, without a warning
    assert from_headers["patient_id"].nunique() == 8
    assert f"every one of the 8 images under {root} has a patient of its own (PatientID)" in warned
    assert "fix: give the labels CSV a patient_id column" in warned
    assert sorted(from_csv.groupby("patient_id").size().to_dict().items()) == [
        ("P0", 2),
        ("P1", 2),
        ("P2", 2),
        ("P3", 2),
    ]
    assert "patient of its own" not in caplog.text and "ignored" not in caplog.text


def test_a_semicolon_labels_csv_without_a_key_column_names_its_separator(
    tree: dict, tmp_path: Path
) -> None:
    labels = tmp_path / "excel.csv"
    labels.write_text(f"SOPInstanceUID;malignant\n{tree['a']};1\n")
    with pytest.raises(DataError) as err:
        load_manifest("dicom-folder", tree["root"], labels_csv=str(labels))
    assert (
        "columns found: 'SOPInstanceUID;malignant' (the file looks separated by ';' "
        "(semicolon), not ',' (comma); fix: save it with ',' (comma) as the separator)"
    ) in str(err.value)


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
    with pytest.raises(DataError) as err:
        load_manifest("dicom-folder", tmp_path)
    assert f"no readable image found in {tmp_path} (1 skipped" in str(err.value)


def test_dicom_folder_duplicate_uid_keeps_the_first_of_equal_copies(tree: dict, caplog) -> None:
    """Regression: a second file with the same SOPInstanceUID failed the whole adapter."""
    # Prepare: two byte-identical copies of image a, one sorting before it ('p0/') and one after
    root = tree["root"]
    original = root / "site" / "p1" / "a.dcm"
    for copy in (root / "p0" / "copy.dcm", root / "site" / "p1" / "z.dcm"):
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(original, copy)

    # Execute
    with caplog.at_level("WARNING"):
        df = load_manifest("dicom-folder", root).set_index("image_id")

    # Assert: one row per UID, the first in sorted path order among equal sizes; the others
    # skipped, counted and logged naming both paths and why
    assert sorted(df.index) == sorted([tree["a"], tree["b"], tree["c"]])
    assert df.loc[tree["a"], "path"] == str((root / "p0" / "copy.dcm").resolve())
    assert df.attrs["skip_reasons"][DUPLICATE] == 2
    logged = [r.getMessage() for r in caplog.records if DUPLICATE in r.getMessage()]
    assert any(
        f"{original} (SOPInstanceUID {tree['a']}; kept {root / 'p0' / 'copy.dcm'}, same size, "
        "first in path order)" in m
        for m in logged
    )


def test_dicom_folder_duplicate_uid_keeps_the_intact_copy(tree: dict, caplog) -> None:
    """Regression: a truncated copy sorting first was kept and the intact file dropped."""
    # Prepare: a copy of image a cut in its pixel data, sorting before the intact file
    root = tree["root"]
    original = root / "site" / "p1" / "a.dcm"
    cut = root / "incoming" / "a.dcm"
    cut.parent.mkdir()
    data = original.read_bytes()
    cut.write_bytes(data[:-1000])

    # Execute
    with caplog.at_level("WARNING"):
        df = load_manifest("dicom-folder", root).set_index("image_id")

    # Assert: the larger (intact) file is kept; the cut one skipped, the warning saying why
    assert df.loc[tree["a"], "path"] == str(original.resolve())
    assert df.attrs["skip_reasons"][DUPLICATE] == 1
    assert any(
        f"skipping {cut} (SOPInstanceUID {tree['a']}; kept {original}, larger: "
        f"{len(data)} vs {len(data) - 1000} bytes)" in r.getMessage()
        for r in caplog.records
    )


def _labels(path: Path, **columns: list) -> str:
    pd.DataFrame(columns).to_csv(path, index=False)
    return str(path)


def test_dicom_folder_labels_csv_without_label_columns_is_an_error(
    tree: dict, tmp_path: Path, caplog
) -> None:
    """Regression: a 'cancer' column instead of 'malignant' loaded with every label NA."""
    # Prepare
    wrong = _labels(tmp_path / "wrong.csv", SOPInstanceUID=[tree["a"]], cancer=[1])
    extra = _labels(
        tmp_path / "extra.csv", SOPInstanceUID=[tree["a"]], malignant=[1], cancer=[1], note=["x"]
    )

    # Execute / Assert: no label column at all -> refused, naming file, found and expected
    with pytest.raises(DataError) as err:
        load_manifest("dicom-folder", tree["root"], labels_csv=wrong)
    message = str(err.value)
    assert f"{wrong} has no label column (columns found: 'SOPInstanceUID', 'cancer')" in message
    assert "any of malignant, acr, density, u_malignancy" in message
    # Execute / Assert: unknown columns beside a label column -> loaded, one warning naming them
    with caplog.at_level("WARNING"):
        df = load_manifest("dicom-folder", tree["root"], labels_csv=extra).set_index("image_id")
    assert df.loc[tree["a"], "malignant"] == 1
    ignored = [r.getMessage() for r in caplog.records if "ignored" in r.getMessage()]
    assert len(ignored) == 1 and "'cancer', 'note'" in ignored[0] and extra in ignored[0]


def test_dicom_folder_unmatched_label_rows_are_logged(tree: dict, tmp_path: Path, caplog) -> None:
    # Prepare: a's row matches; four rows match no file
    keys = [tree["a"], "1.2.3", "1.2.4", "p9/x.dcm", "1.2.6"]
    csv = _labels(tmp_path / "labels.csv", SOPInstanceUID=keys, malignant=[1, 0, 0, 0, 0])

    # Execute
    with caplog.at_level("WARNING"):
        df = load_manifest("dicom-folder", tree["root"], labels_csv=csv).set_index("image_id")

    # Assert: counted, one warning with the count, three example keys and the hint
    assert df.loc[tree["a"], "malignant"] == 1 and df.attrs["labels_unmatched"] == 4
    logged = [r.getMessage() for r in caplog.records if "match no image" in r.getMessage()]
    assert len(logged) == 1
    assert f"4 row(s) of {csv} match no image under {tree['root']}" in logged[0]
    assert "(e.g. '1.2.3', '1.2.4', 'p9/x.dcm')" in logged[0] and "1.2.6" not in logged[0]
    assert "keys are SOPInstanceUIDs, or file names relative to the data root" in logged[0]


def test_dicom_folder_labels_matching_no_file_are_an_error(tree: dict, tmp_path: Path) -> None:
    # Prepare: labels of another folder
    csv = _labels(tmp_path / "other.csv", file_name=["x/1.dcm", "y/2.dcm"], malignant=[1, 0])

    # Execute / Assert
    with pytest.raises(DataError) as err:
        load_manifest("dicom-folder", tree["root"], labels_csv=csv)
    message = str(err.value)
    assert f"no row of {csv} matches an image under {tree['root']} (2 keys" in message
    assert "'x/1.dcm', 'y/2.dcm'" in message and "or bare file names" in message


def test_dicom_folder_bare_name_of_several_files_is_an_error(tmp_path: Path, dicom_writer) -> None:
    """Regression: '1-1.dcm' labelled every file of that name in every sub-folder."""
    # Prepare: TCIA-style trees repeat the file name 1-1.dcm in every series folder
    root = tmp_path / "tree"
    first = dicom_writer(root / "s1" / "1-1.dcm", PatientID="P1")
    dicom_writer(root / "s2" / "1-1.dcm", PatientID="P2")
    bare = _labels(tmp_path / "bare.csv", file_name=["1-1.dcm"], malignant=[1])
    relative = _labels(tmp_path / "rel.csv", file_name=["s1/1-1.dcm"], malignant=[1])

    # Execute / Assert: refused, naming the key, the CSV, two paths and the fix
    with pytest.raises(DataError) as err:
        load_manifest("dicom-folder", root, labels_csv=bare)
    message = str(err.value)
    assert f"{bare}: key '1-1.dcm' is the bare name of 2 files" in message
    assert str(root / "s1" / "1-1.dcm") in message and str(root / "s2" / "1-1.dcm") in message
    assert "key those rows by SOPInstanceUID or by the file name relative" in message
    # Execute / Assert: the relative name labels the one file
    df = load_manifest("dicom-folder", root, labels_csv=relative).set_index("image_id")
    assert df.loc[str(first.SOPInstanceUID), "malignant"] == 1
    assert df["malignant"].notna().sum() == 1


def test_dicom_folder_duplicate_label_keys(tree: dict, tmp_path: Path) -> None:
    # Prepare
    a, c = tree["a"], tree["c"]
    clash = _labels(tmp_path / "clash.csv", SOPInstanceUID=[a, c, a], malignant=[1, 0, 0])
    same = _labels(tmp_path / "same.csv", SOPInstanceUID=[a, c, a], malignant=["1", "0", "1.0"])

    # Execute / Assert: different values -> refused naming both lines and the key
    with pytest.raises(DataError) as err:
        load_manifest("dicom-folder", tree["root"], labels_csv=clash)
    assert f"{clash} lines 2 and 4 label SOPInstanceUID {a!r} differently" in str(err.value)
    # Execute / Assert: identical duplicates are accepted
    df = load_manifest("dicom-folder", tree["root"], labels_csv=same).set_index("image_id")
    assert (df.loc[a, "malignant"], df.loc[c, "malignant"]) == (1, 0)


def test_dicom_folder_labels_csv_expands_env_and_home(
    tree: dict, tmp_path: Path, monkeypatch
) -> None:
    # Prepare
    (tmp_path / "secure").mkdir()
    _labels(tmp_path / "secure" / "labels.csv", SOPInstanceUID=[tree["a"]], malignant=[1])
    monkeypatch.setenv("FEDMAMMO_TEST_LABELS", str(tmp_path / "secure"))
    monkeypatch.setenv("HOME", str(tmp_path / "secure"))
    monkeypatch.delenv("FEDMAMMO_TEST_UNSET", raising=False)

    # Execute / Assert: ${ENV} and ~ are expanded like data.root
    for spelling in ("${FEDMAMMO_TEST_LABELS}/labels.csv", "~/labels.csv"):
        df = load_manifest("dicom-folder", tree["root"], labels_csv=spelling)
        assert df.set_index("image_id").loc[tree["a"], "malignant"] == 1, spelling
    # Execute / Assert: an unset variable is named
    with pytest.raises(DataError) as err:
        load_manifest("dicom-folder", tree["root"], labels_csv="${FEDMAMMO_TEST_UNSET}/l.csv")
    message = str(err.value)
    assert "option labels_csv '${FEDMAMMO_TEST_UNSET}/l.csv'" in message
    assert "environment variable FEDMAMMO_TEST_UNSET which is not set" in message
