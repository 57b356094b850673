"""A DICOM cut short whose header still parses: skipped and counted at listing time by every
adapter, with its reason, never listed under a made-up 'unknown' manufacturer."""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from fedmammo.data.adapters import load_manifest
from fedmammo.data.adapters._common import TRUNCATED_HEADER, read_header

#: Where each format's tree is built (builder arguments) and the options it is read with.
TREES: dict[str, tuple[dict[str, Any], dict[str, str]]] = {
    "cbis-ddsm": ({"layout": "canonical"}, {}),
    "inbreast": ({}, {}),
    "vindr-mammo": ({}, {}),
    "rsna": ({}, {}),
    "cmmd": ({"xlsx": False}, {"clinical_csv": "clinical.csv"}),
    "dicom-folder": ({}, {}),
}


def _dicom_folder(root: Path, dicom_writer) -> None:
    for i in range(3):
        dicom_writer(root / f"p{i}" / "a.dcm", PatientID=f"p{i}", Manufacturer="GE")


@pytest.mark.filterwarnings("ignore:Invalid value for VR")
@pytest.mark.parametrize("fmt", sorted(TREES))
def test_a_truncated_dicom_is_skipped_with_its_reason(
    tmp_path: Path, builders, dicom_writer, caplog, fmt: str
) -> None:
    """Regression: VinDr, CMMD, RSNA and INbreast listed it with manufacturer 'unknown' (a
    segment such as 'VinDr-Mammo-unknown', '0 skipped'); only the cache dropped it."""
    # Prepare: a listed image cut to 300 bytes (its file meta only: the header still parses)
    kwargs, options = TREES[fmt]
    if fmt == "dicom-folder":
        _dicom_folder(tmp_path, dicom_writer)
    else:
        builders[fmt](tmp_path, **kwargs)
    options = {k: str(tmp_path / v) for k, v in options.items()}
    before = load_manifest(fmt, tmp_path, **options)
    victim = Path(before["path"].iloc[0])
    victim.write_bytes(victim.read_bytes()[:300])
    assert read_header(victim) is not None  # what made it look readable

    # Execute
    with caplog.at_level(logging.WARNING):
        after = load_manifest(fmt, tmp_path, **options)

    # Assert: one image fewer, counted with the reason, the warning naming the file
    assert sorted(after["path"]) == sorted(p for p in before["path"] if p != str(victim))
    expected = Counter(before.attrs["skip_reasons"]) + Counter([TRUNCATED_HEADER])
    assert Counter(after.attrs["skip_reasons"]) == expected
    assert after.attrs["summary"]["skipped"] == before.attrs["summary"]["skipped"] + 1
    assert not any(s.endswith("-unknown") for s in after["segment"] if fmt != "rsna")
    assert any(f"skipping {victim}: {TRUNCATED_HEADER}" in r.getMessage() for r in caplog.records)


@pytest.mark.filterwarnings("ignore:Invalid value for VR")
def test_vindr_truncated_image_makes_no_unknown_segment(tmp_path: Path, builders) -> None:
    # Prepare: a SIEMENS image cut before its Manufacturer
    builders["vindr-mammo"](tmp_path)
    victim = next((tmp_path / "images").rglob("d3b8ba4a1e0a2f9e.dicom"))
    victim.write_bytes(victim.read_bytes()[:300])

    # Execute
    df = load_manifest("vindr-mammo", tmp_path)

    # Assert
    assert df.attrs["summary"]["segments"] == {"VinDr-Mammo-Planmed": 2, "VinDr-Mammo-SIEMENS": 3}
    assert df.attrs["skip_reasons"] == {"image file not found": 1, TRUNCATED_HEADER: 1}
