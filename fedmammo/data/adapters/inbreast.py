"""INbreast adapter: INbreast.csv, AllDICOMs/ and the OsiriX ROI plists of AllXML/."""

from __future__ import annotations

import logging
import math
import os
import plistlib
import re
from pathlib import Path
from typing import Any
from xml.parsers.expat import ExpatError

import pandas as pd

from fedmammo.data.adapters._common import (
    WHERE,
    SkipCounter,
    check_options,
    finish_manifest,
    first_file,
    header_age,
    header_manufacturer,
    header_pixel_spacing,
    label_rules,
    malignancy_from_birads,
    option_path,
    read_birads,
    read_image_header,
    read_label,
    read_table,
    text_or_none,
)
from fedmammo.data.manifest import encode_lesions
from fedmammo.errors import DataError

__all__ = ["COLUMNS", "REQUIRED_COLUMNS", "load", "read_rois"]

log = logging.getLogger(__name__)

DATASET = "INbreast"
COLUMNS = [
    "Patient ID",
    "Patient age",
    "Laterality",
    "View",
    "Acquisition date",
    "File Name",
    "ACR",
    "Bi-Rads",
]
#: The published columns the adapter reads ('Patient ID' says "removed": not read).
REQUIRED_COLUMNS = [c for c in COLUMNS if c != "Patient ID"]
LAYOUT = (
    "ROOT/INbreast.csv (';'-separated: " + ";".join(COLUMNS) + ") or the release's "
    "ROOT/INbreast.xls, ROOT/AllDICOMs/"
    "{File Name}_{hash}_MG_{L|R}_{CC|ML}_ANON.dcm and optional ROIs ROOT/AllXML/{File Name}.xml"
)
_DICOM_NAME = re.compile(r"^(\d+)_([0-9A-Za-z]+)_MG_([LR])_(CC|MLO|ML)_ANON\.dcm$", re.IGNORECASE)
_POINT = re.compile(r"\(\s*([-+0-9.eE]+)\s*,\s*([-+0-9.eE]+)")
#: Why a DICOM is skipped when the first by name of its File Name is read already.
SECOND_FILE = "a second DICOM of one File Name (the first by name is read)"
OPTIONS = ("csv", "birads3", "malignancy_uncertainty")
_DENSITY = {str(d): d for d in (1, 2, 3, 4)}


def tables(root: Path, options: dict[str, Any]) -> list[tuple[Path, list[str], str]]:
    """Each table the adapter reads: (path, required columns, separator)."""
    return [(first_file(table_files(root, options)), REQUIRED_COLUMNS, ";")]


def table_files(root: Path, options: dict[str, Any]) -> tuple[Path, ...]:
    """Where the image table may be, first first (``--check`` names them all when none is
    there): option ``csv``, else ``INbreast.csv``, else the release's own ``INbreast.xls``
    (same columns; reading it needs the ``xlsx`` extra)."""
    if (given := option_path(options, "csv", dataset=DATASET)) is not None:
        return (given,)
    return (Path(root) / "INbreast.csv", Path(root) / "INbreast.xls")


def load(root: Path, **options: Any) -> pd.DataFrame:
    """Read an INbreast folder into the canonical manifest.

    Malignancy is derived from Bi-Rads as Tardy & Mateus (2022) count INbreast:
    1-3 -> benign, 4a-6 -> malignant, with u_malignancy from
    ``_common.BIRADS_MALIGNANCY_UNCERTAINTY`` (options ``birads3: exclude`` and
    ``malignancy_uncertainty: {category: u}`` change that). ACR (density 1-4) -> density,
    Bi-Rads -> acr (4a/4b/4c -> 4).
    """
    check_options(options, OPTIONS, DATASET)
    birads3, uncertainty = label_rules(options, dataset=DATASET, birads3="benign")
    root = Path(root)
    csv_path = first_file(table_files(root, options))
    table = read_table(csv_path, dataset=DATASET, expected=REQUIRED_COLUMNS, layout=LAYOUT, sep=";")
    dicom_dir = root / "AllDICOMs"
    if not dicom_dir.is_dir():
        raise DataError(f"{DATASET}: folder {dicom_dir} not found; expected layout: {LAYOUT}")
    files: dict[str, tuple[Path, re.Match]] = {}
    skips = SkipCounter(DATASET)
    for path in sorted(dicom_dir.iterdir()):
        match = _DICOM_NAME.match(path.name)
        if not match:
            continue
        if (kept := files.get(match.group(1))) is not None:  # one File Name, two files
            skips.skip(f"{path} (beside {kept[0].name})", SECOND_FILE)
            continue
        files[match.group(1)] = (path, match)
    rows, bad_xml = [], 0
    for line, rec in enumerate(table.to_dict("records"), start=2):
        where = f"{csv_path} line {line}"
        name = text_or_none(rec["File Name"])
        if name is None:
            continue
        name = name.removesuffix(".0")
        if name not in files:
            skips.skip(f"{dicom_dir}/{name}_*_MG_*_ANON.dcm", "DICOM for File Name not found")
            continue
        path, match = files[name]
        ds = read_image_header(path, skips)
        if ds is None:
            continue
        birads = read_birads(rec["Bi-Rads"], skips=skips, where=where, column="Bi-Rads")
        malignant, u_mal = malignancy_from_birads(birads, birads3=birads3, uncertainty=uncertainty)
        acr = int(birads[0]) if birads and birads != "0" else None  # 4a/4b/4c -> 4
        density = read_label(rec["ACR"], _DENSITY, skips=skips, where=where, column="ACR")
        xml = root / "AllXML" / f"{name}.xml"
        lesions: list[dict] | None = []
        if xml.is_file():
            try:
                lesions = [
                    dict(les, malignant=None if malignant is None else bool(malignant))
                    for les in read_rois(xml)
                ]
            except DataError as exc:
                log.warning("%s", exc)
                bad_xml, lesions = bad_xml + 1, None
        view = (text_or_none(rec["View"]) or match.group(4)).upper()
        age = _int(rec["Patient age"])
        rows.append(
            {
                WHERE: where,
                "image_id": name,
                "patient_id": match.group(2),
                "study_id": text_or_none(ds.get("StudyInstanceUID"))
                or f"{match.group(2)}-{text_or_none(rec['Acquisition date']) or ''}",
                "manufacturer": header_manufacturer(ds),
                "laterality": (text_or_none(rec["Laterality"]) or match.group(3)).upper(),
                "view": "MLO" if view == "ML" else view,
                "path": os.path.abspath(path),
                "malignant": malignant,
                "acr": acr,
                "density": density,
                "age": float(age) if age is not None else header_age(ds),
                "u_malignancy": u_mal,
                "u_acr": 0.0 if acr is not None else None,
                "u_density": 0.0 if density is not None else None,
                "u_view": 0.0,
                "pixel_spacing": header_pixel_spacing(ds),
                "lesions": None if lesions is None else encode_lesions(lesions),
                "split": None,
            }
        )
    return finish_manifest(
        rows,
        dataset=DATASET,
        fmt="inbreast",
        options=options,
        skips=skips,
        root=dicom_dir,
        extra_attrs={"unreadable_xml": bad_xml},
    )


def _int(value: object) -> int | None:
    text = text_or_none(value)
    try:
        return int(float(text)) if text else None
    except ValueError:
        return None


def read_rois(path: Path) -> list[dict[str, Any]]:
    """Lesions of an INbreast OsiriX ROI plist: kind, shape and the box of its Point_px."""
    try:
        with path.open("rb") as fh:
            plist = plistlib.load(fh)
    except (OSError, ValueError, ExpatError, plistlib.InvalidFileException) as exc:
        raise DataError(f"{DATASET}: ROI file {path} unreadable ({exc}); lesions NA") from exc
    lesions = []
    for image in plist.get("Images", []) if isinstance(plist, dict) else []:
        for roi in image.get("ROIs", []):
            points = [_POINT.match(str(p)) for p in roi.get("Point_px", [])]
            xy = [(float(m.group(1)), float(m.group(2))) for m in points if m]
            if not xy:
                continue
            xs, ys = zip(*xy)
            kind, shape = _kind(str(roi.get("Name", "")))
            box = [
                math.floor(min(xs)),
                math.floor(min(ys)),
                math.floor(max(xs)) + 1,
                math.floor(max(ys)) + 1,
            ]
            lesions.append({"kind": kind, "shape": shape, "box": box})
    return lesions


def _kind(name: str) -> tuple[str, str]:
    low = name.strip().lower()
    if "calcification" in low:
        return "calcification", ""
    if "cluster" in low:
        return "calcification", "cluster"
    if "spiculated" in low:
        return "mass", "spiculated"
    if "mass" in low:
        return "mass", ""
    if "distortion" in low:
        return "distortion", ""
    if "asymmetry" in low or "assymetry" in low:
        return "asymmetry", ""
    return low.replace(" ", "_") or "unknown", ""
