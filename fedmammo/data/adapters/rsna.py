"""RSNA Screening Mammography adapter: train.csv plus train_images/<patient>/<image>.dcm."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import pandas as pd

from fedmammo.data.adapters._common import (
    WHERE,
    SkipCounter,
    check_options,
    finish_manifest,
    first_file,
    header_manufacturer,
    header_pixel_spacing,
    option_path,
    read_age,
    read_image_header,
    read_label,
    read_table,
    text_or_none,
)

__all__ = ["COLUMNS", "REQUIRED_COLUMNS", "load"]

log = logging.getLogger(__name__)

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
#: The published columns the adapter reads (the others may be absent).
REQUIRED_COLUMNS = [
    c for c in COLUMNS if c not in ("biopsy", "invasive", "implant", "difficult_negative_case")
]
LAYOUT = (
    "ROOT/train.csv (" + ", ".join(COLUMNS) + ") and ROOT/train_images/<patient_id>/<image_id>.dcm"
)
OPTIONS = ("csv", "images_dir")
_CANCER = {"0": 0, "1": 1}
_BIRADS = {"0": None, **{str(b): b for b in range(1, 7)}}  # 0 = recall (incomplete) -> NA
_DENSITY = {"A": 1, "B": 2, "C": 3, "D": 4}
#: What an empty site_id / machine_id cell stands for (as a missing Manufacturer tag does).
UNKNOWN = "unknown"


def tables(root: Path, options: dict[str, Any]) -> list[tuple[Path, list[str], str]]:
    """Each table the adapter reads: (path, required columns, separator)."""
    return [(first_file(table_files(root, options)), REQUIRED_COLUMNS, ",")]


def table_files(root: Path, options: dict[str, Any]) -> tuple[Path, ...]:
    """Where the image table may be, first first (``--check`` names them all when none is
    there): option ``csv``, else ROOT/train.csv."""
    return (option_path(options, "csv", dataset=DATASET) or Path(root) / "train.csv",)


def load(root: Path, **options: Any) -> pd.DataFrame:
    """Read the RSNA Screening Mammography training set into the canonical manifest.

    malignant = ``cancer`` (biopsy-proven or follow-up, u = 0); density A-D -> 1-4; BIRADS
    1 / 2 -> acr 1 / 2 and 0 ("recall": incomplete assessment) -> NA; segment =
    ``site<site_id>-machine<machine_id>`` (an empty cell reads "unknown", with a warning
    naming the line). Images on disk but not in the CSV are ignored.
    Options: ``csv`` (default ROOT/train.csv), ``images_dir`` (default ROOT/train_images).
    """
    check_options(options, OPTIONS, DATASET)
    root = Path(root)
    csv_path = first_file(table_files(root, options))
    table = read_table(csv_path, dataset=DATASET, expected=REQUIRED_COLUMNS, layout=LAYOUT)
    images = option_path(options, "images_dir", dataset=DATASET) or root / "train_images"
    skips = SkipCounter(DATASET)
    rows = []
    for line, rec in enumerate(table.to_dict("records"), start=2):
        where = f"{csv_path} line {line}"
        patient, image = text_or_none(rec["patient_id"]), text_or_none(rec["image_id"])
        if not patient or not image:
            continue
        path = images / patient / f"{image}.dcm"
        if not path.is_file():
            skips.skip(path, "image file not found")
            continue
        ds = read_image_header(path, skips)
        if ds is None:
            continue
        cancer = read_label(rec["cancer"], _CANCER, skips=skips, where=where, column="cancer")
        acr = read_label(rec["BIRADS"], _BIRADS, skips=skips, where=where, column="BIRADS")
        density = read_label(rec["density"], _DENSITY, skips=skips, where=where, column="density")
        view = (text_or_none(rec["view"]) or "").upper() or None
        site = _segment_part(rec["site_id"], where=where, column="site_id")
        machine = _segment_part(rec["machine_id"], where=where, column="machine_id")
        age = read_age(rec["age"], skips=skips, where=where, column="age")
        rows.append(
            {
                WHERE: where,
                "image_id": image,
                "patient_id": patient,
                "study_id": text_or_none(ds.get("StudyInstanceUID")) or patient,
                "manufacturer": header_manufacturer(ds),
                "segment": f"site{site}-machine{machine}",
                "laterality": (text_or_none(rec["laterality"]) or "").upper() or None,
                "view": view,
                "path": os.path.abspath(path),
                "malignant": cancer,
                "acr": acr,
                "density": density,
                "age": age,
                "u_malignancy": 0.0 if cancer is not None else None,
                "u_acr": 0.0 if acr is not None else None,
                "u_density": 0.0 if density is not None else None,
                "u_view": 0.0 if view else None,
                "pixel_spacing": header_pixel_spacing(ds),
                "split": None,
                "site_id": site,
                "machine_id": machine,
            }
        )
    return finish_manifest(
        rows, dataset=DATASET, fmt="rsna", options=options, skips=skips, root=images
    )


def _segment_part(value: object, *, where: str, column: str) -> str:
    """A site_id / machine_id cell as text; an empty one is UNKNOWN, with a warning naming
    ``where`` (the CSV line) and ``column``."""
    text = text_or_none(value)
    if text is None:
        log.warning(
            "%s: %s: empty %s; the image's segment uses %r", DATASET, where, column, UNKNOWN
        )
        return UNKNOWN
    return text
