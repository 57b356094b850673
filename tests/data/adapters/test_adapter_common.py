"""The adapter registry, shared helpers (label rules, headers, summaries) and centre profiles."""

from __future__ import annotations

import io
import json
import shutil
import sys
from pathlib import Path

import pandas as pd
import pytest
from pydicom.dataset import Dataset
from rich.console import Console

from fedmammo.config import CentreProfile, load_profile
from fedmammo.data.adapters import ADAPTERS, load_manifest, print_summary, summarise_manifest
from fedmammo.data.adapters._common import (
    header_age,
    header_laterality,
    header_view,
    malignancy_from_birads,
    read_header,
    read_table,
)
from fedmammo.data.adapters.cbis_ddsm import CSV_FILES as CBIS_CSV_FILES
from fedmammo.data.prepare import missing_data_root
from fedmammo.errors import ConfigError, DataError

CENTRES = Path(__file__).resolve().parents[3] / "centres"
PROFILES = {
    "cbis-ddsm": "cbis_ddsm",
    "inbreast": "inbreast",
    "vindr-mammo": "vindr_mammo",
    "rsna": "rsna",
    "cmmd": "cmmd",
    "dicom-folder": "dicom_folder",
}


def test_registry_names_and_unknown_format(tmp_path: Path) -> None:
    # Execute / Assert
    assert set(ADAPTERS) == set(PROFILES)
    with pytest.raises(ConfigError) as err:
        load_manifest("ddsm", tmp_path)
    for name in ADAPTERS:
        assert name in str(err.value)


def test_missing_root_and_unknown_option(tmp_path: Path) -> None:
    # Execute / Assert
    with pytest.raises(DataError, match="is not a directory"):
        load_manifest("rsna", tmp_path / "nowhere")
    with pytest.raises(ConfigError, match=r"unknown option\(s\) 'lesion_box'.*lesion_boxes"):
        load_manifest("cbis-ddsm", tmp_path, lesion_box=False)


@pytest.mark.parametrize(
    ("category", "birads3", "expected"),
    [
        ("1", "benign", (0, 0.0)),
        ("2", "exclude", (0, 0.0)),
        ("3", "benign", (0, 0.02)),
        ("3", "exclude", (None, None)),
        ("4a", "benign", (1, 0.5)),
        ("4B", "benign", (1, 0.3)),
        ("4c", "benign", (1, 0.1)),
        ("4", "benign", (1, 0.3)),
        ("BI-RADS 5", "benign", (1, 0.05)),
        ("6", "benign", (1, 0.0)),
        ("0", "benign", (None, None)),
        (None, "benign", (None, None)),
        ("x", "benign", (None, None)),
    ],
)
def test_malignancy_from_birads(category, birads3, expected) -> None:
    # Execute / Assert
    assert malignancy_from_birads(category, birads3=birads3) == expected


@pytest.mark.filterwarnings("ignore:Invalid value for VR")
def test_header_helpers() -> None:
    # Prepare
    ds = Dataset()
    ds.PatientAge, ds.Laterality = "057Y", "R"
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator = "R-10226", "SRT"
    ds.ViewCodeSequence = [item]

    # Execute / Assert
    assert header_age(ds) == 57.0 and header_laterality(ds) == "R" and header_view(ds) == "MLO"
    ds.PatientAge, ds.ImageLaterality, ds.ViewPosition = "006M", "L", "cc"
    assert header_age(ds) == 0.5 and header_laterality(ds) == "L" and header_view(ds) == "CC"
    ds.PatientAge = "old"
    assert header_age(ds) is None and header_view(None) is None


def test_summary_counts_and_json(tmp_path: Path, builders) -> None:
    # Prepare
    builders["vindr-mammo"](tmp_path / "tree")
    out = tmp_path / "out" / "summary.json"

    # Execute
    df = load_manifest("vindr-mammo", tmp_path / "tree", summary_path=str(out))
    summary = summarise_manifest(df)
    console = Console(file=io.StringIO(), width=120)
    print_summary(summary, title="vindr", console=console)

    # Assert
    assert json.loads(out.read_text()) == summary == df.attrs["summary"]
    assert summary["images"] == 6 and summary["patients"] == 2 and summary["skipped"] == 1
    assert summary["segments"] == {"VinDr-Mammo-Planmed": 2, "VinDr-Mammo-SIEMENS": 4}
    assert summary["labels"]["malignancy"] == {
        "available": 5,
        "fraction": round(5 / 6, 4),
        "counts": {"0": 2, "1": 3},
    }
    assert summary["labels"]["density"]["fraction"] == 1.0
    assert summary["splits"] == {"train": 4, "test": 2} and summary["with_lesion_boxes"] == 2
    text = console.file.getvalue()
    assert "VinDr-Mammo-SIEMENS" in text and "6 images, 2 patients, 1 skipped" in text


@pytest.mark.parametrize("fmt", ["cbis-ddsm", "inbreast", "vindr-mammo", "rsna", "cmmd"])
def test_centre_profiles_point_adapters_at_env_roots(
    fmt: str, tmp_path: Path, builders, monkeypatch
) -> None:
    # Prepare
    if fmt == "cmmd":
        pytest.importorskip("openpyxl")
    args = ("canonical",) if fmt == "cbis-ddsm" else ()
    expected = builders[fmt](tmp_path, *args)
    profile_path = CENTRES / f"{PROFILES[fmt]}.yaml"
    env = f"FEDMAMMO_{PROFILES[fmt].upper()}_ROOT"
    monkeypatch.setenv(env, str(tmp_path))

    # Execute
    profile = load_profile(profile_path)
    df = load_manifest(
        profile.data.format,
        profile.data.resolved_root(),
        centre=profile.name,
        source=profile.source,
        **profile.data.options,
    )

    # Assert
    assert profile.data.root == f"${{{env}}}" and profile.data.format == fmt
    assert sorted(df["image_id"]) == sorted(expected)
    assert set(df["centre"]) == {profile.name}
    assert (df["source"] == profile.source).all()
    if fmt != "rsna":
        assert (df["segment"] == profile.source + "-" + df["manufacturer"]).all()


def test_dicom_folder_profile_loads(monkeypatch, tmp_path: Path) -> None:
    # Prepare
    monkeypatch.setenv("FEDMAMMO_DICOM_FOLDER_ROOT", str(tmp_path))

    # Execute
    profile = load_profile(CENTRES / "dicom_folder.yaml")

    # Assert
    assert profile.data.format == "dicom-folder" and profile.data.resolved_root() == tmp_path
    assert "labels_csv" not in profile.data.options


def test_missing_column_lists_the_columns_found(tmp_path: Path) -> None:
    # Prepare: 20 columns, none of them the one required
    path = tmp_path / "t.csv"
    pd.DataFrame({f"c{i}": ["1"] for i in range(20)}).to_csv(path, index=False)

    # Execute / Assert: the first 12 and how many more
    with pytest.raises(DataError) as err:
        read_table(path, dataset="X", expected=["cancer"], layout="L")
    message = str(err.value)
    assert f"{path} lacks column 'cancer'; required columns: cancer; columns found: " in message
    assert "'c0', 'c1'" in message and "'c11' and 8 more;" in message and "'c12'" not in message


@pytest.mark.parametrize(
    ("fmt", "table", "written", "said"),
    [
        ("rsna", "train.csv", ";", "looks separated by ';' (semicolon), not ',' (comma)"),
        ("rsna", "train.csv", "\t", "looks separated by a tab, not ',' (comma)"),
        ("inbreast", "INbreast.csv", ",", "looks separated by ',' (comma), not ';' (semicolon)"),
    ],
)
def test_missing_column_of_a_wrongly_separated_csv_names_the_separator(
    tmp_path: Path, builders, fmt: str, table: str, written: str, said: str
) -> None:
    # Prepare: the table saved with another separator
    builders[fmt](tmp_path)
    path = tmp_path / table
    sep = ";" if fmt == "inbreast" else ","
    pd.read_csv(path, sep=sep, dtype=str).to_csv(path, sep=written, index=False)

    # Execute / Assert
    with pytest.raises(DataError) as err:
        load_manifest(fmt, tmp_path)
    message = str(err.value)
    assert f"{path} lacks column" in message and said in message and "\n" not in message


#: Published columns no adapter reads, per format and table: a table without them loads.
UNREAD = {
    "cbis-ddsm": {
        "mass_case_description_train_set.csv": [
            "abnormality id",
            "abnormality type",
            "mass margins",
            "subtlety",
        ],
        "calc_case_description_test_set.csv": [
            "abnormality id",
            "abnormality type",
            "calc distribution",
            "subtlety",
        ],
    },
    "inbreast": {"INbreast.csv": ["Patient ID"]},
    "vindr-mammo": {
        "breast-level_annotations.csv": ["series_id", "height", "width"],
        "finding_annotations.csv": [
            "study_id",
            "series_id",
            "laterality",
            "view_position",
            "height",
            "width",
            "breast_birads",
            "breast_density",
            "split",
        ],
    },
    "rsna": {"train.csv": ["biopsy", "invasive", "implant", "difficult_negative_case"]},
    "cmmd": {"clinical.csv": ["number", "abnormality", "subtype"]},
}


@pytest.mark.parametrize("fmt", sorted(UNREAD))
def test_tables_with_only_the_read_columns_load(tmp_path: Path, builders, fmt: str) -> None:
    """Regression: RSNA required biopsy, invasive, ...; CMMD number, abnormality, subtype."""
    # Prepare
    args = {"cbis-ddsm": ("canonical",)}.get(fmt, ())
    kwargs = {"xlsx": False} if fmt == "cmmd" else {}
    builders[fmt](tmp_path, *args, **kwargs)
    options = {"clinical_csv": str(tmp_path / "clinical.csv")} if fmt == "cmmd" else {}
    full = load_manifest(fmt, tmp_path, **options)
    sep = ";" if fmt == "inbreast" else ","
    for name, unread in UNREAD[fmt].items():
        path = tmp_path / name
        table = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False)
        table.drop(columns=unread).to_csv(path, sep=sep, index=False)

    # Execute
    trimmed = load_manifest(fmt, tmp_path, **options)

    # Assert: the same manifest
    pd.testing.assert_frame_equal(trimmed, full)


@pytest.mark.parametrize("images_dir", [None, "elsewhere"])
def test_no_readable_image_names_the_folder(tmp_path: Path, builders, images_dir) -> None:
    # Prepare: RSNA's CSV without its images
    builders["rsna"](tmp_path)
    shutil.rmtree(tmp_path / "train_images")
    options = {"images_dir": str(tmp_path / images_dir)} if images_dir else {}

    # Execute / Assert
    with pytest.raises(DataError) as err:
        load_manifest("rsna", tmp_path, **options)
    folder = tmp_path / (images_dir or "train_images")
    assert f"RSNA: no readable image found in {folder} (5 skipped" in str(err.value)


#: (format, path option, what it names relative to the tree, builder keyword arguments)
PATH_OPTIONS = [
    ("cbis-ddsm", "csv_dir", None, {"layout": "canonical"}),
    ("inbreast", "csv", "INbreast.csv", {}),
    ("rsna", "csv", "train.csv", {}),
    ("rsna", "images_dir", "train_images", {}),
    ("cmmd", "clinical_csv", "clinical.csv", {"xlsx": False}),
    ("cmmd", "clinical_xlsx", "CMMD_clinicaldata_revision.xlsx", {}),
]


@pytest.mark.parametrize("spelling", ["${FEDMAMMO_TEST_ELSEWHERE}", "~"])
@pytest.mark.parametrize(("fmt", "option", "name", "kwargs"), PATH_OPTIONS)
def test_path_options_expand_env_and_home(
    tmp_path: Path, builders, monkeypatch, fmt, option, name, kwargs, spelling
) -> None:
    # Prepare: the file (or the CSVs) moved out of the tree, named through $VAR or ~
    if option == "clinical_xlsx":
        pytest.importorskip("openpyxl")
    tree, elsewhere = tmp_path / "tree", tmp_path / "elsewhere"
    tree.mkdir()
    elsewhere.mkdir()
    expected = builders[fmt](tree, **kwargs)
    monkeypatch.setenv("FEDMAMMO_TEST_ELSEWHERE", str(elsewhere))
    monkeypatch.setenv("HOME", str(elsewhere))
    moved = [p.name for p in tree.glob("*.csv")] if name is None else [name]
    for item in moved:
        shutil.move(tree / item, elsewhere / item)

    # Execute
    value = spelling if name is None else f"{spelling}/{name}"
    df = load_manifest(fmt, tree, **{option: value})

    # Assert
    assert sorted(df["image_id"]) == sorted(expected)


def test_path_option_with_an_unset_variable_names_it(tmp_path: Path, builders, monkeypatch) -> None:
    # Prepare
    builders["rsna"](tmp_path)
    monkeypatch.delenv("FEDMAMMO_TEST_UNSET", raising=False)

    # Execute / Assert
    with pytest.raises(DataError) as err:
        load_manifest("rsna", tmp_path, images_dir="${FEDMAMMO_TEST_UNSET}/imgs")
    message = str(err.value)
    assert "RSNA: option images_dir '${FEDMAMMO_TEST_UNSET}/imgs'" in message
    assert "FEDMAMMO_TEST_UNSET which is not set" in message


@pytest.mark.filterwarnings("ignore:Invalid value for VR")
def test_read_header_of_a_truncated_file_never_raises(tmp_path: Path, dicom_writer) -> None:
    """Regression: a file cut inside a length field raised struct.error out of read_header."""
    # Prepare
    whole = tmp_path / "whole.dcm"
    dicom_writer(whole, PatientID="P1")
    data = whole.read_bytes()
    cut = tmp_path / "cut.dcm"

    # Execute / Assert: None, or the part of the header before the cut
    results = []
    for size in range(0, min(len(data), 900)):
        cut.write_bytes(data[:size])
        results.append(read_header(cut))
    assert results[0] is None and results[154] is None  # in the file meta's first length
    assert any(ds is not None for ds in results)


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("clinical.xlsx", b"PK\x03\x04" + bytes(64)),  # a zip cut short: openpyxl's BadZipFile
        ("INbreast.xls", b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(64)),  # OLE2 header, no sheet
    ],
)
def test_a_broken_spreadsheet_is_one_line_naming_the_file(
    tmp_path: Path, name: str, content: bytes
) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError) as err:
        read_table(path, dataset="X", expected=["a"], layout="L")
    message = str(err.value)
    assert message.startswith(f"X: {path} cannot be read as a spreadsheet: ")
    assert "\n" not in message


def test_a_spreadsheet_without_its_reader_names_the_reader_and_the_extra(
    tmp_path: Path, monkeypatch
) -> None:
    path = tmp_path / "INbreast.xls"
    path.write_bytes(b"\xd0\xcf\x11\xe0")
    monkeypatch.setitem(sys.modules, "python_calamine", None)
    with pytest.raises(DataError) as err:
        read_table(path, dataset="X", expected=["a"], layout="L")
    assert str(err.value) == (
        f'X: reading {path} needs python_calamine; fix: pip install "fedmammo[xlsx]", or export '
        "the sheet as CSV and name that file instead"
    )


def test_inbreast_reads_the_releases_xls_when_there_is_no_csv(
    tmp_path: Path, builders, monkeypatch
) -> None:
    # Prepare: the tree with its table as the release ships it, INbreast.xls (pandas' reader
    # stands in for calamine: no .xls writer exists to make one here)
    builders["inbreast"](tmp_path)
    table = pd.read_csv(tmp_path / "INbreast.csv", sep=";", dtype=str)
    (tmp_path / "INbreast.csv").rename(tmp_path / "INbreast.xls")
    read = []

    def read_excel(path, **kwargs):
        read.append((Path(path).name, kwargs["engine"]))
        return table

    monkeypatch.setattr(pd, "read_excel", read_excel)
    # Execute
    df = load_manifest("inbreast", tmp_path)
    # Assert: the same manifest as from the CSV, read from INbreast.xls with calamine
    assert read == [("INbreast.xls", "calamine")]
    (tmp_path / "INbreast.xls").rename(tmp_path / "INbreast.csv")
    monkeypatch.undo()
    from_csv = load_manifest("inbreast", tmp_path)
    pd.testing.assert_frame_equal(df.reset_index(drop=True), from_csv.reset_index(drop=True))


#: (format, the tables its tree holds: removing them all is what --check must name)
DEFAULT_TABLES = [
    ("cbis-ddsm", list(CBIS_CSV_FILES.values())),
    ("inbreast", ["INbreast.csv", "INbreast.xls"]),
    ("vindr-mammo", ["breast-level_annotations.csv"]),
    ("rsna", ["train.csv"]),
    ("cmmd", ["CMMD_clinicaldata_revision.xlsx", "CMMD_clinicaldata_revision.csv"]),
]


@pytest.mark.parametrize(("fmt", "names"), DEFAULT_TABLES)
def test_check_names_a_missing_default_table_before_the_data_is_listed(
    tmp_path: Path, builders, fmt, names
) -> None:
    # Prepare: the published tree, read by a profile with no table option
    if fmt == "cmmd":
        pytest.importorskip("openpyxl")
    builders[fmt](tmp_path)
    profile = CentreProfile.model_validate(
        {"name": "site", "source": "S", "data": {"format": fmt, "root": str(tmp_path)}}
    )
    assert missing_data_root(profile) is None  # the whole tree: nothing to say
    for name in names:
        (tmp_path / name).unlink(missing_ok=True)

    # Execute
    problem = missing_data_root(profile)

    # Assert: one line naming the centre, every file that would do, the layout and the fix
    assert problem is not None and "\n" not in problem
    assert problem.startswith(f"centre 'site': {fmt}: ")
    assert " or ".join(str(tmp_path / n) for n in names) + " not found" in problem
    assert "expected layout: " in problem and "fix: point data.root" in problem


@pytest.mark.parametrize(
    ("fmt", "table", "column", "sep"),
    [
        ("cbis-ddsm", "calc_case_description_test_set.csv", "pathology", ","),
        ("inbreast", "INbreast.csv", "Bi-Rads", ";"),
        ("vindr-mammo", "finding_annotations.csv", "xmax", ","),
        ("rsna", "train.csv", "cancer", ","),
        ("cmmd", "CMMD_clinicaldata_revision.xlsx", "classification", None),
    ],
)
def test_check_names_a_required_column_missing_before_the_data_is_listed(
    tmp_path: Path, builders, fmt, table, column, sep
) -> None:
    # Prepare: the published tree, one table without a column the adapter reads
    if fmt == "cmmd":
        pytest.importorskip("openpyxl")
    builders[fmt](tmp_path)
    path = tmp_path / table
    if sep is None:
        pd.read_excel(path, dtype=str).drop(columns=column).to_excel(path, index=False)
    else:
        frame = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False)
        frame.drop(columns=column).to_csv(path, sep=sep, index=False)
    profile = CentreProfile.model_validate(
        {"name": "site", "source": "S", "data": {"format": fmt, "root": str(tmp_path)}}
    )

    # Execute
    problem = missing_data_root(profile)

    # Assert: one line naming the centre, the file, the column (the same line a run gives)
    assert problem is not None and "\n" not in problem
    assert problem.startswith("centre 'site': ")
    assert f"{path} lacks column {column!r}; required columns: " in problem
    with pytest.raises(DataError, match=f"lacks column {column!r}"):
        load_manifest(fmt, tmp_path)


def test_a_data_root_naming_an_unset_variable_says_it_is_not_set(tmp_path, monkeypatch):
    # Prepare: the shipped INbreast profile's root, its variable unset, then set to a folder
    monkeypatch.delenv("FEDMAMMO_INBREAST_ROOT", raising=False)
    profile = CentreProfile.model_validate(
        {
            "name": "lisbon",
            "source": "S",
            "data": {"format": "inbreast", "root": "${FEDMAMMO_INBREAST_ROOT}"},
        }
    )
    # Execute / Assert
    assert missing_data_root(profile) == (
        "centre 'lisbon': data root '${FEDMAMMO_INBREAST_ROOT}' names the environment variable "
        "FEDMAMMO_INBREAST_ROOT, not set; fix: export FEDMAMMO_INBREAST_ROOT=/path/to/the/dataset "
        "(docs/datasets.md) or edit data.root"
    )
    monkeypatch.setenv("FEDMAMMO_INBREAST_ROOT", str(tmp_path / "absent"))
    assert "(resolved: " + str(tmp_path / "absent") + ") does not exist" in missing_data_root(
        profile
    )


def test_check_reads_a_dicom_folder_labels_csv_before_the_data_is_listed(tmp_path: Path) -> None:
    # Prepare: a hospital's CSV in its own layout (no key column), then with a bad value
    labels = tmp_path / "labels.csv"
    labels.write_text("accession,pathology\nA1,malignant\n")
    profile = CentreProfile.model_validate(
        {
            "name": "site",
            "source": "S",
            "data": {
                "format": "dicom-folder",
                "root": str(tmp_path),
                "options": {"labels_csv": str(labels)},
            },
        }
    )
    # Execute / Assert: the reader's own line, said before any image is read
    assert missing_data_root(profile) == (
        f"centre 'site': dicom-folder: {labels} lacks a key column; expected one of "
        "SOPInstanceUID, sop_instance_uid, image_id, file_name, filename, file and any of "
        "malignant, acr, density, u_malignancy, u_acr, u_density, split, patient_id; columns "
        "found: 'accession', 'pathology'"
    )
    labels.write_text("file,malignant\na.dcm,malignant\n")
    assert missing_data_root(profile) == (
        f"centre 'site': dicom-folder: {labels} line 2: column 'malignant' value 'malignant' "
        "is not in 0..1"
    )
    labels.write_text("file,malignant\na.dcm,1\n")
    assert missing_data_root(profile) is None
