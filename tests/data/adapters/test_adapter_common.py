"""The adapter registry, shared helpers (label rules, headers, summaries) and centre profiles."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from rich.console import Console

from fedmammo.config import load_profile
from fedmammo.data.adapters import ADAPTERS, load_manifest, print_summary, summarise_manifest
from fedmammo.data.adapters._common import (
    header_age,
    header_laterality,
    header_view,
    malignancy_from_birads,
)
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
