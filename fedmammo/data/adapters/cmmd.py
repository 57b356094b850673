"""CMMD adapter: the clinical-data spreadsheet plus DICOMs in one folder per patient."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

import pandas as pd

from fedmammo.data.adapters._common import (
    SkipCounter,
    check_options,
    finish_manifest,
    first_file,
    header_age,
    header_laterality,
    header_manufacturer,
    header_pixel_spacing,
    header_view,
    iter_dicom_files,
    option_path,
    read_age,
    read_image_header,
    read_label,
    read_table,
    text_or_none,
)
from fedmammo.errors import DataError

log = logging.getLogger(__name__)

__all__ = ["COLUMNS", "REQUIRED_COLUMNS", "load"]

DATASET = "CMMD"
COLUMNS = ["ID1", "LeftRight", "Age", "number", "abnormality", "classification", "subtype"]
#: The published columns the adapter reads (the others may be absent).
REQUIRED_COLUMNS = ["ID1", "LeftRight", "Age", "classification"]
CLINICAL_XLSX = "CMMD_clinicaldata_revision.xlsx"
LAYOUT = (
    f"ROOT/{CLINICAL_XLSX} (columns " + ", ".join(COLUMNS) + "; or a CSV export given as option "
    "clinical_csv) and DICOMs per patient folder, e.g. ROOT/CMMD/D1-0001/<study>/<series>/1-1.dcm"
)
_PATIENT = re.compile(r"^D\d-\d{4}$")
_CLASSES = {"MALIGNANT": 1, "BENIGN": 0}
_SIDES = {"L": "L", "R": "R", "LEFT": "L", "RIGHT": "R"}
OPTIONS = ("clinical_csv", "clinical_xlsx")


def load(root: Path, **options: Any) -> pd.DataFrame:
    """Read a CMMD download into the canonical manifest.

    Labels are per breast (ID1 + LeftRight, biopsy-confirmed: u = 0); images of a breast
    absent from the clinical table (the contralateral breast) get NA. Laterality from
    ImageLaterality, view from ViewCodeSequence, manufacturer from the headers.
    """
    check_options(options, OPTIONS, DATASET)
    root = Path(root)
    clinical, table_path = _clinical(root, options)
    skips = SkipCounter(DATASET)
    labels: dict[tuple[str, str], int | None] = {}
    first_line: dict[tuple[str, str], int] = {}
    ages: dict[str, float] = {}
    for line, rec in enumerate(clinical.to_dict("records"), start=2):
        pid = text_or_none(rec["ID1"])
        if not pid:
            continue
        where = f"{table_path} line {line}"
        side = read_label(rec["LeftRight"], _SIDES, skips=skips, where=where, column="LeftRight")
        label = read_label(
            rec["classification"], _CLASSES, skips=skips, where=where, column="classification"
        )
        key = (pid, side or "")
        if side is None:
            pass  # (counted and warned: the row labels no breast)
        elif key not in labels:
            labels[key], first_line[key] = label, line
        elif labels[key] != label:
            log.warning(
                "%s: lines %d and %d label breast %s %s differently (%s, %s); its label is "
                "left missing (NA)",
                table_path,
                first_line[key],
                line,
                pid,
                side,
                labels[key],
                label,
            )
            labels[key] = None
        age = read_age(rec["Age"], skips=skips, where=where, column="Age")
        if age is not None:
            ages[pid] = age
    rows = []
    for path in iter_dicom_files(root):
        ds = read_image_header(path, skips)
        if ds is None:
            continue
        pid = text_or_none(ds.get("PatientID")) or next(
            (p for p in reversed(path.parts) if _PATIENT.match(p)), None
        )
        if pid is None:
            skips.skip(path, "no PatientID in header or CMMD patient folder (D1-0001) in path")
            continue
        laterality = header_laterality(ds)
        view = header_view(ds)
        malignant = labels.get((pid, laterality or ""))
        rows.append(
            {
                "image_id": text_or_none(ds.get("SOPInstanceUID")) or str(path.relative_to(root)),
                "patient_id": pid,
                "study_id": text_or_none(ds.get("StudyInstanceUID")) or pid,
                "manufacturer": header_manufacturer(ds),
                "laterality": laterality,
                "view": view,
                "path": os.path.abspath(path),
                "malignant": malignant,
                "age": ages.get(pid, header_age(ds)),
                "u_malignancy": 0.0 if malignant is not None else None,
                "u_view": 0.0 if view else None,
                "pixel_spacing": header_pixel_spacing(ds),
                "split": None,
            }
        )
    unmatched = sorted({pid for pid, _ in labels} - {r["patient_id"] for r in rows})
    return finish_manifest(
        rows,
        dataset=DATASET,
        fmt="cmmd",
        options=options,
        skips=skips,
        root=root,
        extra_attrs={"clinical_without_images": len(unmatched)},
    )


def tables(root: Path, options: dict[str, Any]) -> list[tuple[Path, list[str], str]]:
    """Each table the adapter reads: (path, required columns, separator)."""
    return [(first_file(table_files(root, options)), REQUIRED_COLUMNS, ",")]


def table_files(root: Path, options: dict[str, Any]) -> tuple[Path, ...]:
    """Where the clinical table may be, first first (``--check`` names them all when none
    is there): option ``clinical_csv``, else ``clinical_xlsx`` (default
    ROOT/CMMD_clinicaldata_revision.xlsx) or a CSV export beside it."""
    if (given := option_path(options, "clinical_csv", dataset=DATASET)) is not None:
        return (given,)
    xlsx = option_path(options, "clinical_xlsx", dataset=DATASET) or Path(root) / CLINICAL_XLSX
    return (xlsx, xlsx.with_suffix(".csv"))


def _clinical(root: Path, options: dict[str, Any]) -> tuple[pd.DataFrame, Path]:
    path = first_file(table_files(root, options))
    if not path.is_file():
        raise DataError(f"{DATASET}: {path} not found; expected layout: {LAYOUT}")
    return read_table(path, dataset=DATASET, expected=REQUIRED_COLUMNS, layout=LAYOUT), path
