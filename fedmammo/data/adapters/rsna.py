"""RSNA Screening Mammography adapter: train.csv plus train_images/<patient>/<image>.dcm."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pandas as pd

from fedmammo.data.adapters._common import (
    SkipCounter,
    check_options,
    finish_manifest,
    header_manufacturer,
    header_pixel_spacing,
    read_header,
    read_table,
    text_or_none,
)

__all__ = ["COLUMNS", "load"]

DATASET = "RSNA"
COLUMNS = [
    "site_id",
    "patient_id",
    "image_id",
    "laterality",
    "view",
    "age",
    "cancer",
    "biopsy",
    "invasive",
    "BIRADS",
    "implant",
    "density",
    "machine_id",
    "difficult_negative_case",
]
LAYOUT = (
    "ROOT/train.csv (" + ", ".join(COLUMNS) + ") and ROOT/train_images/<patient_id>/<image_id>.dcm"
)
OPTIONS = ("csv", "images_dir")


def load(root: Path, **options: Any) -> pd.DataFrame:
    """Read the RSNA Screening Mammography training set into the canonical manifest.

    malignant = ``cancer`` (biopsy-proven or follow-up, u = 0); density A-D -> 1-4; BIRADS
    1 / 2 -> acr 1 / 2 and 0 ("recall": incomplete assessment) -> NA; segment =
    ``site<site_id>-machine<machine_id>``. Images on disk but not in the CSV are ignored.
    Options: ``csv`` (default ROOT/train.csv), ``images_dir`` (default ROOT/train_images).
    """
    check_options(options, OPTIONS, DATASET)
    root = Path(root)
    table = read_table(
        Path(options.get("csv") or root / "train.csv"),
        dataset=DATASET,
        expected=COLUMNS,
        layout=LAYOUT,
    )
    images = Path(options.get("images_dir") or root / "train_images")
    skips = SkipCounter(DATASET)
    rows = []
    for rec in table.to_dict("records"):
        patient, image = text_or_none(rec["patient_id"]), text_or_none(rec["image_id"])
        if not patient or not image:
            continue
        path = images / patient / f"{image}.dcm"
        if not path.is_file():
            skips.skip(path, "image file not found")
            continue
        ds = read_header(path)
        if ds is None:
            skips.skip(path, "unreadable DICOM header")
            continue
        cancer = _int(rec["cancer"])
        birads = _int(rec["BIRADS"])
        acr = birads if birads in (1, 2, 3, 4, 5, 6) else None
        letter = (text_or_none(rec["density"]) or "").upper()
        density = "ABCD".index(letter) + 1 if letter in ("A", "B", "C", "D") else None
        view = (text_or_none(rec["view"]) or "").upper() or None
        site, machine = text_or_none(rec["site_id"]), text_or_none(rec["machine_id"])
        age = text_or_none(rec["age"])
        rows.append(
            {
                "image_id": image,
                "patient_id": patient,
                "study_id": text_or_none(ds.get("StudyInstanceUID")) or patient,
                "manufacturer": header_manufacturer(ds),
                "segment": f"site{site}-machine{machine}",
                "laterality": (text_or_none(rec["laterality"]) or "").upper() or None,
                "view": view,
                "path": os.path.abspath(path),
                "malignant": cancer if cancer in (0, 1) else None,
                "acr": acr,
                "density": density,
                "age": float(age) if age else None,
                "u_malignancy": 0.0 if cancer in (0, 1) else None,
                "u_acr": 0.0 if acr is not None else None,
                "u_density": 0.0 if density is not None else None,
                "u_view": 0.0 if view else None,
                "pixel_spacing": header_pixel_spacing(ds),
                "split": None,
                "site_id": site,
                "machine_id": machine,
            }
        )
    return finish_manifest(rows, dataset=DATASET, fmt="rsna", options=options, skips=skips)


def _int(value: object) -> int | None:
    text = text_or_none(value)
    try:
        return int(float(text)) if text else None
    except ValueError:
        return None
