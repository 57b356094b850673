"""VinDr-Mammo adapter: breast-level and finding annotations plus images/<study>/<image>.dicom."""

from __future__ import annotations

import ast
import logging
import math
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

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
    read_birads,
    read_image_header,
    read_label,
    read_table,
    text_or_none,
)
from fedmammo.data.manifest import encode_lesions

__all__ = [
    "BREAST_COLUMNS",
    "BREAST_REQUIRED",
    "FINDING_COLUMNS",
    "FINDING_REQUIRED",
    "load",
]

log = logging.getLogger(__name__)

DATASET = "VinDr-Mammo"
BREAST_COLUMNS = [
    "study_id",
    "series_id",
    "image_id",
    "laterality",
    "view_position",
    "height",
    "width",
    "breast_birads",
    "breast_density",
    "split",
]
FINDING_COLUMNS = [
    *BREAST_COLUMNS[:9],
    "finding_categories",
    "finding_birads",
    "xmin",
    "ymin",
    "xmax",
    "ymax",
    "split",
]
#: The published columns the adapter reads (the others may be absent).
BREAST_REQUIRED = [c for c in BREAST_COLUMNS if c not in ("series_id", "height", "width")]
FINDING_REQUIRED = [c for c in FINDING_COLUMNS if c == "image_id" or c not in BREAST_COLUMNS]
LAYOUT = (
    "ROOT/breast-level_annotations.csv (" + ", ".join(BREAST_COLUMNS) + "), "
    "ROOT/finding_annotations.csv (" + ", ".join(FINDING_COLUMNS) + ") and "
    "ROOT/images/<study_id>/<image_id>.dicom"
)
_SPLITS = {"TRAINING": "train", "TRAIN": "train", "TEST": "test"}
_DENSITY = {f"{prefix}{x}": i + 1 for i, x in enumerate("ABCD") for prefix in ("", "DENSITY ")}
OPTIONS = ("birads3", "malignancy_uncertainty")


def tables(root: Path, options: dict[str, Any]) -> list[tuple[Path, list[str], str]]:
    """Each table the adapter reads: (path, required columns, separator)."""
    return [
        (first_file(table_files(root, options)), BREAST_REQUIRED, ","),
        (Path(root) / "finding_annotations.csv", FINDING_REQUIRED, ","),
    ]


def table_files(root: Path, options: dict[str, Any]) -> tuple[Path, ...]:
    """Where the breast-level table may be (``--check`` names it when it is not there); the
    finding table beside it is optional."""
    return (Path(root) / "breast-level_annotations.csv",)


def load(root: Path, **options: Any) -> pd.DataFrame:
    """Read a VinDr-Mammo download into the canonical manifest.

    No biopsy results are published: malignancy is derived from breast_birads as Tardy &
    Mateus (2022) do for screening labels without histology: 1-2 -> 0, 4-5 -> 1, 3 -> NA
    (option ``birads3: benign`` keeps 3 as 0), with u_malignancy from
    ``_common.BIRADS_MALIGNANCY_UNCERTAINTY`` (option ``malignancy_uncertainty``); a lesion's
    ``malignant`` follows its finding_birads by the same rule.
    """
    check_options(options, OPTIONS, DATASET)
    birads3, uncertainty = label_rules(options, dataset=DATASET, birads3="exclude")
    root = Path(root)
    breast_csv = first_file(table_files(root, options))
    breasts = read_table(
        breast_csv,
        dataset=DATASET,
        expected=BREAST_REQUIRED,
        layout=LAYOUT,
    )
    skips = SkipCounter(DATASET)
    findings_path = root / "finding_annotations.csv"
    findings: dict[str, list[dict]] | None = None
    if findings_path.is_file():
        table = read_table(findings_path, dataset=DATASET, expected=FINDING_REQUIRED, layout=LAYOUT)
        findings = _findings(table, findings_path, skips, birads3=birads3)
    else:
        log.warning("%s: %s not found; lesion boxes NA", DATASET, findings_path)
    rows = []
    for line, rec in enumerate(breasts.to_dict("records"), start=2):
        where = f"{breast_csv} line {line}"
        study, image = text_or_none(rec["study_id"]), text_or_none(rec["image_id"])
        if not study or not image:
            continue
        path = root / "images" / study / f"{image}.dicom"
        if not path.is_file():
            skips.skip(path, "image file not found")
            continue
        ds = read_image_header(path, skips)
        if ds is None:
            continue
        birads = read_birads(rec["breast_birads"], skips=skips, where=where, column="breast_birads")
        malignant, u_mal = malignancy_from_birads(birads, birads3=birads3, uncertainty=uncertainty)
        acr = int(birads[0]) if birads and birads != "0" else None
        density = read_label(
            rec["breast_density"], _DENSITY, skips=skips, where=where, column="breast_density"
        )
        view = (text_or_none(rec["view_position"]) or "").upper() or None
        lesions = None if findings is None else encode_lesions(findings.get(image, []))
        rows.append(
            {
                WHERE: where,
                "image_id": image,
                "patient_id": study,  # the CSVs identify studies only; a study stands for a patient
                "study_id": study,
                "manufacturer": header_manufacturer(ds),
                "laterality": (text_or_none(rec["laterality"]) or "").upper() or None,
                "view": view,
                "path": os.path.abspath(path),
                "malignant": malignant,
                "acr": acr,
                "density": density,
                "age": header_age(ds),
                "u_malignancy": u_mal,
                "u_acr": 0.0 if acr is not None else None,
                "u_density": 0.0 if density is not None else None,
                "u_view": 0.0 if view else None,
                "pixel_spacing": header_pixel_spacing(ds),
                "lesions": lesions,
                "split": read_label(
                    rec["split"], _SPLITS, skips=skips, where=where, column="split"
                ),
            }
        )
    return finish_manifest(
        rows, dataset=DATASET, fmt="vindr-mammo", options=options, skips=skips, root=root / "images"
    )


def _findings(
    table: pd.DataFrame, path: Path, skips: SkipCounter, *, birads3: str
) -> dict[str, list[dict]]:
    """image_id -> lesion records (boxes in stored-image pixels), 'No Finding' rows dropped.

    A finding's ``malignant`` follows its ``finding_birads`` by the images' rule (``birads3``:
    a BI-RADS 3 finding is benign or NA like a BI-RADS 3 breast). Its kind is its first
    category; VinDr-Mammo's categories are all finding types (Mass, Suspicious Calcification,
    Asymmetry, Focal / Global Asymmetry, Architectural Distortion, Skin Thickening / Retraction,
    Nipple Retraction, Suspicious Lymph Node), none a shape descriptor: ``shape`` is empty and
    further categories of the same box are not kept.
    """
    out: dict[str, list[dict]] = defaultdict(list)
    for line, rec in enumerate(table.to_dict("records"), start=2):
        categories = _categories(text_or_none(rec["finding_categories"]))
        coords = [_float(rec[k]) for k in ("xmin", "ymin", "xmax", "ymax")]
        if not categories or categories == ["No Finding"] or any(c is None for c in coords):
            continue
        x0, y0, x1, y1 = coords
        birads = read_birads(
            rec["finding_birads"], skips=skips, where=f"{path} line {line}", column="finding_birads"
        )
        malignant, _ = malignancy_from_birads(birads, birads3=birads3)
        out[str(rec["image_id"])].append(
            {
                "kind": _kind(categories[0]),
                "shape": "",
                "malignant": None if malignant is None else bool(malignant),
                "box": [math.floor(x0), math.floor(y0), math.ceil(x1), math.ceil(y1)],
            }
        )
    return out


def _categories(text: str | None) -> list[str]:
    if not text:
        return []
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        value = [text]
    return [str(v).strip() for v in (value if isinstance(value, list | tuple) else [value])]


def _float(value: object) -> float | None:
    text = text_or_none(value)
    try:
        number = float(text) if text else None
    except ValueError:
        return None
    return number if number is not None and math.isfinite(number) else None


def _kind(category: str) -> str:
    low = category.lower()
    if low == "mass":
        return "mass"
    if "calcification" in low:
        return "calcification"
    if "distortion" in low:
        return "distortion"
    if "asymmetry" in low:
        return "asymmetry"
    return low.replace(" ", "_")
