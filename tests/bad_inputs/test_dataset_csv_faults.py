"""Bad dataset tables, one row per fault: never a made-up label, never a path out of the root.

Each row builds a small tree in a published layout, changes cells of one of its tables and
loads it with the format's adapter. Either the adapter refuses the table with one line naming
the file and the column (missing columns, invalid labels of a user's labels CSV), or it loads
it: the faulty value is NA (or its row refused), one warning names the file, the line and
the value, the fault is counted, and every other image keeps its labels.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from bad_inputs_builders import cbis_folder_ids, trees

from fedmammo.data.adapters import load_manifest
from fedmammo.errors import DataError

Ids = Callable[[dict[str, dict[str, Any]]], set[str]]
MASS, CALC = "mass_case_description_train_set.csv", "calc_case_description_test_set.csv"
OUTSIDE = "CSV path outside the dataset root (refused)"


@dataclass(frozen=True)
class Fault:
    """One bad table: where to change it, what the message says, what becomes NA."""

    fmt: str
    csv: str  # the table changed, relative to the dataset root
    cells: dict[int, dict[str, str]] = field(default_factory=dict)  # row -> column -> text
    fragment: str = ""  # in the warning (or error) that names the file
    touched: Ids = lambda expected: set()  # images whose ``na`` fields become NA
    na: tuple[str, ...] = ()
    gone: Ids = lambda expected: set()  # images refused with their row
    counted: tuple[str, str] | None = None  # (df.attrs key, its sub-key or "")
    drop: str | None = None  # a column removed from the table: the adapter refuses it


def ids(*image_ids: str) -> Ids:
    return lambda expected: set(image_ids)


def folder(name: str) -> Ids:
    return lambda expected: cbis_folder_ids(expected, name)


def breast(patient: str, side: str) -> Ids:
    return lambda expected: {
        k for k, v in expected.items() if (v["patient_id"], v["laterality"]) == (patient, side)
    }


def _build_folder(root: Path) -> dict[str, dict[str, Any]]:
    """Two DICOMs and a labels CSV keyed by SOPInstanceUID."""
    expected, rows = {}, []
    for i in range(2):
        ds = trees.write_dicom(root / "images" / f"{i}.dcm", PatientID=f"P{i}")
        expected[str(ds.SOPInstanceUID)] = {"malignant": i}
        rows.append({"SOPInstanceUID": str(ds.SOPInstanceUID), "malignant": str(i), "split": ""})
    pd.DataFrame(rows).to_csv(root / "labels.csv", index=False)
    return expected


BUILD: dict[str, Callable[[Path], dict[str, dict[str, Any]]]] = {
    "cbis-ddsm": lambda root: trees.build_cbis(root, "canonical"),
    "inbreast": trees.build_inbreast,
    "vindr-mammo": trees.build_vindr,
    "rsna": trees.build_rsna,
    "cmmd": lambda root: trees.build_cmmd(root, xlsx=False),
    "dicom-folder": _build_folder,
}
OPTIONS: dict[str, Callable[[Path], dict[str, str]]] = {
    "cmmd": lambda root: {"clinical_csv": str(root / "clinical.csv")},
    "dicom-folder": lambda root: {"labels_csv": str(root / "labels.csv")},
}
LABELS = ("malignant", "acr", "density", "age")
CBIS_LEFT_CC, CBIS_LEFT_MLO = "Mass-Training_P_00001_LEFT_CC", "Mass-Training_P_00001_LEFT_MLO"
CBIS_RIGHT_CC, CBIS_RIGHT_MLO = "Calc-Test_P_00002_RIGHT_CC", "Calc-Test_P_00002_RIGHT_MLO"

FAULTS = [
    # --- CBIS-DDSM: unknown labels
    pytest.param(
        Fault(
            "cbis-ddsm",
            MASS,
            {0: {"pathology": "MALIGANT"}},
            "line 2: unreadable pathology value 'MALIGANT'",
            folder(CBIS_LEFT_CC),  # its other abnormality is benign: the image must not be
            ("malignant",),
            counted=("unreadable_labels", "pathology"),
        ),
        id="cbis-misspelled-pathology",
    ),
    pytest.param(
        Fault(
            "cbis-ddsm",
            MASS,
            {2: {"pathology": ""}},
            "line 4: unreadable pathology value ''",
            folder(CBIS_LEFT_MLO),
            ("malignant",),
            counted=("unreadable_labels", "pathology"),
        ),
        id="cbis-empty-pathology",
    ),
    pytest.param(
        Fault(
            "cbis-ddsm",
            CALC,
            {1: {"pathology": "UNPROVEN"}},
            "line 3: unreadable pathology value 'UNPROVEN'",
            folder(CBIS_RIGHT_MLO),
            ("malignant",),
            counted=("unreadable_labels", "pathology"),
        ),
        id="cbis-unknown-pathology",
    ),
    pytest.param(
        Fault(
            "cbis-ddsm",
            MASS,
            {2: {"breast_density": "5"}},
            "line 4: unreadable breast_density value '5'",
            folder(CBIS_LEFT_MLO),
            ("density",),
            counted=("unreadable_labels", "breast_density"),
        ),
        id="cbis-density-out-of-range",
    ),
    pytest.param(
        Fault(
            "cbis-ddsm",
            CALC,
            {0: {"breast density": "B"}},
            "line 2: unreadable breast density value 'B'",
            folder(CBIS_RIGHT_CC),
            ("density",),
            counted=("unreadable_labels", "breast density"),
        ),
        id="cbis-density-letter",
    ),
    pytest.param(
        Fault(
            "cbis-ddsm",
            MASS,
            {2: {"assessment": "4.5"}},
            "line 4: unreadable assessment value '4.5'",
            folder(CBIS_LEFT_MLO),
            ("acr",),
            counted=("unreadable_labels", "assessment"),
        ),
        id="cbis-assessment-not-an-integer",
    ),
    # --- CBIS-DDSM: paths outside the root
    pytest.param(
        Fault(
            "cbis-ddsm",
            MASS,
            {1: {"image file path": "../outside/x/000000.dcm"}},
            "line 3 (image file path '../outside/x/000000.dcm')",
            counted=("skip_reasons", OUTSIDE),
        ),
        id="cbis-image-path-with-dotdot",
    ),
    pytest.param(
        Fault(
            "cbis-ddsm",
            MASS,
            {0: {"image file path": "../x/000000.dcm"}},
            "line 2 (image file path '../x/000000.dcm')",
            folder(CBIS_LEFT_CC),  # its remaining row is benign: the refused one was not
            ("malignant", "acr"),  # the remaining row's assessment is 0 (incomplete)
            counted=("skip_reasons", OUTSIDE),
        ),
        id="cbis-refused-row-held-the-label",
    ),
    pytest.param(
        Fault(
            "cbis-ddsm",
            CALC,
            {1: {"image file path": "/etc/passwd"}},
            "line 3 (image file path '/etc/passwd')",
            gone=folder(CBIS_RIGHT_MLO),
            counted=("skip_reasons", OUTSIDE),
        ),
        id="cbis-absolute-image-path",
    ),
    pytest.param(
        Fault(
            "cbis-ddsm",
            MASS,
            {2: {"image file path": "C:\\CBIS\\x\\000000.dcm"}},
            "line 4 (image file path 'C:\\\\CBIS\\\\x\\\\000000.dcm')",
            gone=folder(CBIS_LEFT_MLO),
            counted=("skip_reasons", OUTSIDE),
        ),
        id="cbis-drive-letter-image-path",
    ),
    pytest.param(
        Fault(
            "cbis-ddsm",
            CALC,
            {0: {"ROI mask file path": "../../etc/passwd"}},
            "line 2: ROI mask file path '../../etc/passwd' leaves the dataset root",
            counted=("paths_outside_root", ""),
        ),
        id="cbis-roi-path-outside",
    ),
    # --- CBIS-DDSM: missing columns
    pytest.param(
        Fault("cbis-ddsm", MASS, fragment="lacks column 'pathology'", drop="pathology"),
        id="cbis-missing-pathology-column",
    ),
    pytest.param(
        Fault("cbis-ddsm", CALC, fragment="lacks column 'image file path'", drop="image file path"),
        id="cbis-missing-image-path-column",
    ),
    # --- INbreast
    pytest.param(
        Fault(
            "inbreast",
            "INbreast.csv",
            {1: {"Bi-Rads": "45"}},
            "line 3: unreadable Bi-Rads value '45'",
            ids("22678646"),
            ("malignant", "acr"),
            counted=("unreadable_labels", "Bi-Rads"),
        ),
        id="inbreast-birads-45",
    ),
    pytest.param(
        Fault(
            "inbreast",
            "INbreast.csv",
            {0: {"Bi-Rads": "x"}},
            "line 2: unreadable Bi-Rads value 'x'",
            ids("22678622"),
            ("malignant", "acr"),
            counted=("unreadable_labels", "Bi-Rads"),
        ),
        id="inbreast-birads-word",
    ),
    pytest.param(
        Fault(
            "inbreast",
            "INbreast.csv",
            {0: {"ACR": "2.7"}},
            "line 2: unreadable ACR value '2.7'",
            ids("22678622"),
            ("density",),
            counted=("unreadable_labels", "ACR"),
        ),
        id="inbreast-acr-not-an-integer",
    ),
    pytest.param(
        Fault("inbreast", "INbreast.csv", fragment="lacks column 'Bi-Rads'", drop="Bi-Rads"),
        id="inbreast-missing-column",
    ),
    # --- VinDr-Mammo
    pytest.param(
        Fault(
            "vindr-mammo",
            "breast-level_annotations.csv",
            {0: {"breast_birads": "BI-RADS 7"}},
            "line 2: unreadable breast_birads value 'BI-RADS 7'",
            ids("d3b8ba4a1e0a2f9e"),
            ("malignant", "acr"),
            counted=("unreadable_labels", "breast_birads"),
        ),
        id="vindr-birads-7",
    ),
    pytest.param(
        Fault(
            "vindr-mammo",
            "breast-level_annotations.csv",
            {2: {"breast_density": "DENSITY E"}},
            "line 4: unreadable breast_density value 'DENSITY E'",
            ids("8c1f2d3e4a5b6c7d"),
            ("density",),
            counted=("unreadable_labels", "breast_density"),
        ),
        id="vindr-density-e",
    ),
    pytest.param(
        Fault(
            "vindr-mammo",
            "finding_annotations.csv",
            {4: {"finding_birads": "BI-RADS X"}},
            "line 6: unreadable finding_birads value 'BI-RADS X'",
            counted=("unreadable_labels", "finding_birads"),
        ),
        id="vindr-finding-birads",
    ),
    pytest.param(
        Fault(
            "vindr-mammo",
            "breast-level_annotations.csv",
            fragment="lacks column 'breast_birads'",
            drop="breast_birads",
        ),
        id="vindr-missing-column",
    ),
    # --- RSNA
    pytest.param(
        Fault(
            "rsna",
            "train.csv",
            {0: {"cancer": "0.7"}},
            "line 2: unreadable cancer value '0.7'",
            ids("462822612"),
            ("malignant",),
            counted=("unreadable_labels", "cancer"),
        ),
        id="rsna-cancer-fraction",
    ),
    pytest.param(
        Fault(
            "rsna",
            "train.csv",
            {2: {"cancer": "yes"}},
            "line 4: unreadable cancer value 'yes'",
            ids("220375232"),
            ("malignant",),
            counted=("unreadable_labels", "cancer"),
        ),
        id="rsna-cancer-word",
    ),
    pytest.param(
        Fault(
            "rsna",
            "train.csv",
            {3: {"BIRADS": "1.5"}},
            "line 5: unreadable BIRADS value '1.5'",
            ids("1031443799"),
            ("acr",),
            counted=("unreadable_labels", "BIRADS"),
        ),
        id="rsna-birads-fraction",
    ),
    pytest.param(
        Fault(
            "rsna",
            "train.csv",
            {2: {"density": "E"}},
            "line 4: unreadable density value 'E'",
            ids("220375232"),
            ("density",),
            counted=("unreadable_labels", "density"),
        ),
        id="rsna-density-e",
    ),
    pytest.param(
        Fault(
            "rsna",
            "train.csv",
            {0: {"age": "sixty"}},
            "line 2: unreadable age value 'sixty'",
            ids("462822612"),
            ("age",),
            counted=("unreadable_labels", "age"),
        ),
        id="rsna-age-word",
    ),
    pytest.param(
        Fault("rsna", "train.csv", fragment="lacks column 'cancer'", drop="cancer"),
        id="rsna-missing-column",
    ),
    # --- CMMD
    pytest.param(
        Fault(
            "cmmd",
            "clinical.csv",
            {1: {"classification": "Malignent"}},
            "line 3: unreadable classification value 'Malignent'",
            breast("D2-0001", "R"),
            ("malignant",),
            counted=("unreadable_labels", "classification"),
        ),
        id="cmmd-classification-typo",
    ),
    pytest.param(
        Fault(
            "cmmd",
            "clinical.csv",
            {0: {"Age": "old"}},
            "line 2: unreadable Age value 'old'",
            breast("D1-0001", "L"),
            ("age",),
            counted=("unreadable_labels", "Age"),
        ),
        id="cmmd-age-word",
    ),
    pytest.param(
        Fault(
            "cmmd", "clinical.csv", fragment="lacks column 'classification'", drop="classification"
        ),
        id="cmmd-missing-column",
    ),
    # --- a user's labels CSV for a DICOM folder: refused whole, naming the line
    pytest.param(
        Fault(
            "dicom-folder",
            "labels.csv",
            {0: {"malignant": "2"}},
            "line 2: column 'malignant' value '2' is not in 0..1",
        ),
        id="folder-malignant-2",
    ),
    pytest.param(
        Fault(
            "dicom-folder",
            "labels.csv",
            {1: {"split": "training"}},
            "line 3: split 'training' not train/val/test",
        ),
        id="folder-split-word",
    ),
    pytest.param(
        Fault("dicom-folder", "labels.csv", fragment="lacks a key column", drop="SOPInstanceUID"),
        id="folder-missing-key-column",
    ),
]


def _same(got: object, want: object) -> bool:
    return bool(pd.isna(got)) if want is None else bool(not pd.isna(got) and got == want)


@pytest.mark.parametrize("fault", FAULTS)
def test_dataset_table_fault(tmp_path: Path, caplog, fault: Fault) -> None:
    # Prepare: a tree in the published layout, then the faulty table
    root = tmp_path / "tree"
    expected = BUILD[fault.fmt](root)
    table = root / fault.csv
    sep = ";" if fault.fmt == "inbreast" else ","
    if fault.drop:
        pd.read_csv(table, sep=sep, dtype=str, keep_default_na=False).drop(
            columns=fault.drop
        ).to_csv(table, sep=sep, index=False)
    trees.edit_csv(table, fault.cells, sep=sep)
    options = OPTIONS.get(fault.fmt, lambda root: {})(root)
    refused = fault.drop is not None or fault.fmt == "dicom-folder"

    # Execute / Assert: a refused table is one line naming the file and what is wrong
    if refused:
        with pytest.raises(DataError) as err:
            load_manifest(fault.fmt, root, **options)
        message = str(err.value)
        assert str(table) in message and fault.fragment in message and "\n" not in message
        return
    with caplog.at_level(logging.WARNING):
        df = load_manifest(fault.fmt, root, **options).set_index("image_id")

    # Assert: the fault is logged naming file, line and value, and counted
    assert any(
        str(table) in r.getMessage() and fault.fragment in r.getMessage() for r in caplog.records
    ), [r.getMessage() for r in caplog.records]
    assert fault.counted is not None
    key, sub = fault.counted
    assert (df.attrs[key][sub] if sub else df.attrs[key]) == 1
    # Assert: NA where the value was unreadable, refused rows gone, every other label kept
    touched, gone = fault.touched(expected), fault.gone(expected)
    assert set(df.index) == set(expected) - gone
    for image_id, want in expected.items():
        if image_id in gone:
            continue
        for column in LABELS:
            if column in fault.na and image_id in touched:
                assert pd.isna(df.loc[image_id, column]), (image_id, column)
            elif column in want:
                assert _same(df.loc[image_id, column], want[column]), (image_id, column)
