"""Any folder of mammography DICOMs: everything from headers, labels from an optional CSV."""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

import pandas as pd

from fedmammo.data.adapters._common import (
    SkipCounter,
    check_options,
    finish_manifest,
    format_columns,
    header_age,
    header_laterality,
    header_manufacturer,
    header_pixel_spacing,
    header_view,
    image_header_problem,
    iter_dicom_files,
    option_path,
    read_header,
    read_table,
    separator_hint,
    text_or_none,
)
from fedmammo.errors import DataError

__all__ = ["KEY_COLUMNS", "LABEL_COLUMNS", "load", "table_problem"]

log = logging.getLogger(__name__)

DATASET = "dicom-folder"
#: Columns a labels CSV may key its rows by (the first present is used).
KEY_COLUMNS = ("SOPInstanceUID", "sop_instance_uid", "image_id", "file_name", "filename", "file")
#: Optional label columns of a labels CSV (``patient_id`` replaces the PatientID header: the
#: grouping that keeps a patient's images in one split).
LABEL_COLUMNS = (
    "malignant",
    "acr",
    "density",
    "u_malignancy",
    "u_acr",
    "u_density",
    "split",
    "patient_id",
)
#: At least this many images, each with a PatientID of its own: warned (one per image is what
#: an anonymiser writing a new ID per file gives).
PER_IMAGE_PATIENTS_WARN = 8
LAYOUT = (
    "any tree of mammography DICOMs under ROOT (*.dcm, *.dicom or files with the DICM "
    "preamble); optional labels CSV with a key column (one of " + ", ".join(KEY_COLUMNS) + ") "
    "and any of " + ", ".join(LABEL_COLUMNS)
)
OPTIONS = ("labels_csv", "modalities")
_DUPLICATE = (
    "duplicate SOPInstanceUID (the largest file is kept, as a smaller copy may be truncated; "
    "the first in path order among equal sizes)"
)
_KEYS_HINT = (
    "keys are SOPInstanceUIDs, or file names relative to the data root (e.g. 'p1/a.dcm'), "
    "or bare file names"
)


def load(root: Path, **options: Any) -> pd.DataFrame:
    """Read every mammography DICOM under ``root`` into the canonical manifest.

    Files whose Modality is not in ``modalities`` (default ``["MG"]``; a missing Modality
    tag is accepted) are skipped and counted; so is a file repeating another's
    SOPInstanceUID (the largest is kept, a smaller copy may be truncated; among equal sizes the
    first in sorted path order). Option ``labels_csv`` adds labels by SOPInstanceUID or file
    name (name relative to ``root`` or bare); a bare name of several files, or a CSV none of
    whose rows matches a file, is a DataError; rows that match no file are logged.
    """
    check_options(options, OPTIONS, DATASET)
    root = Path(root)
    labels_csv = option_path(options, "labels_csv", dataset=DATASET)
    labels = _labels(labels_csv) if labels_csv else {}
    modalities = {str(m).upper() for m in options.get("modalities") or ["MG"]}
    skips = SkipCounter(DATASET)
    rows, used = [], set()
    by_bare_name: dict[str, list[Path]] = defaultdict(list)  # key -> files it labels by name
    images = []  # (path, header) of the readable mammograms, in sorted path order
    for path in iter_dicom_files(root):
        ds = read_header(path)
        modality = (text_or_none(ds.get("Modality")) or "").upper() if ds is not None else ""
        if modality and modality not in modalities:
            skips.skip(path, f"modality {modality} is not {'/'.join(sorted(modalities))}")
            continue
        if problem := image_header_problem(ds):  # after the modality: a report has no Rows
            skips.skip(path, problem)
            continue
        images.append((path, ds))
    for path, ds in _drop_duplicates(images, skips):
        sop = text_or_none(ds.get("SOPInstanceUID"))
        rel = path.relative_to(root).as_posix()
        key = next((k for k in (sop, rel, path.name) if k and k in labels), None)
        if key is not None:
            used.add(key)
            if key == path.name and key not in (sop, rel):
                by_bare_name[key].append(path)
        lab = labels.get(key, {}) if key else {}
        view = header_view(ds)
        study = text_or_none(ds.get("StudyInstanceUID"))
        row = {
            "image_id": sop or rel,
            "patient_id": lab.get("patient_id")
            or text_or_none(ds.get("PatientID"))
            or study
            or sop
            or rel,
            "study_id": study,
            "manufacturer": header_manufacturer(ds),
            "laterality": header_laterality(ds),
            "view": view,
            "path": os.path.abspath(path),
            "age": header_age(ds),
            "u_view": 0.0 if view else None,
            "pixel_spacing": header_pixel_spacing(ds),
            "split": None,
        }
        for task, col in (("malignancy", "malignant"), ("acr", "acr"), ("density", "density")):
            row[col] = lab.get(col)
            row[f"u_{task}"] = lab.get(f"u_{task}", 0.0 if lab.get(col) is not None else None)
        if lab.get("split"):
            row["split"] = lab["split"]
        rows.append(row)
    unmatched = [k for k in labels if k not in used]
    if labels_csv is not None and rows:
        _check_matches(labels_csv, root, len(labels), unmatched, by_bare_name)
    _warn_per_image_patients(rows, root, from_csv=any("patient_id" in v for v in labels.values()))
    return finish_manifest(
        rows,
        dataset=DATASET,
        fmt="dicom-folder",
        options=options,
        skips=skips,
        root=root,
        extra_attrs={"labels_unmatched": len(unmatched)},
    )


def _drop_duplicates(images: list[tuple[Path, Any]], skips: SkipCounter) -> list[tuple[Path, Any]]:
    """``images`` (in path order) with one file per SOPInstanceUID: the largest, as a smaller
    copy may be truncated (the first in path order among equal sizes). The others are skipped,
    the warning naming the file kept and why."""
    size = {path: path.stat().st_size for path, _ in images}
    best: dict[str, Path] = {}  # SOPInstanceUID -> the file kept
    for path, ds in images:
        sop = text_or_none(ds.get("SOPInstanceUID"))
        if sop is not None and (sop not in best or size[path] > size[best[sop]]):
            best[sop] = path
    kept = []
    for path, ds in images:
        sop = text_or_none(ds.get("SOPInstanceUID"))
        keep = best[sop] if sop is not None else path
        if keep == path:
            kept.append((path, ds))
            continue
        why = (
            f"larger: {size[keep]} vs {size[path]} bytes"
            if size[keep] > size[path]
            else "same size, first in path order"
        )
        skips.skip(f"{path} (SOPInstanceUID {sop}; kept {keep}, {why})", _DUPLICATE)
    return kept


def _warn_per_image_patients(rows: list[dict[str, Any]], root: Path, *, from_csv: bool) -> None:
    """Warn when every image is its own patient: splits are patient-wise, so a patient's other
    views (an anonymiser's new PatientID per file) could be trained on and tested on."""
    patients = {r["patient_id"] for r in rows}
    if len(rows) >= PER_IMAGE_PATIENTS_WARN and len(patients) == len(rows):
        source, fix = (
            ("the labels CSV's patient_id", "give each of a patient's images its patient_id")
            if from_csv
            else ("PatientID", "give the labels CSV a patient_id column")
        )
        log.warning(
            "%s: every one of the %d images under %s has a patient of its own (%s); images "
            "are split patient-wise, so if a patient has several images here they may land in "
            "different splits; fix: %s",
            DATASET,
            len(rows),
            root,
            source,
            fix,
        )


def _check_matches(
    path: Path, root: Path, n_keys: int, unmatched: list[str], by_bare_name: dict[str, list[Path]]
) -> None:
    """Refuse a labels CSV whose bare file name labels several files or that matches no file;
    warn about its rows that match no file."""
    for key, paths in by_bare_name.items():
        if len(paths) > 1:
            raise DataError(
                f"{DATASET}: {path}: key {key!r} is the bare name of {len(paths)} files under "
                f"{root} (e.g. {paths[0]} and {paths[1]}) and would label them all; fix: key "
                "those rows by SOPInstanceUID or by the file name relative to the data root "
                f"(e.g. {paths[0].relative_to(root).as_posix()!r})"
            )
    examples = ", ".join(map(repr, unmatched[:3]))
    if unmatched and len(unmatched) == n_keys:
        raise DataError(
            f"{DATASET}: no row of {path} matches an image under {root} ({n_keys} keys, e.g. "
            f"{examples}), so the labels cannot be meant for this folder; "
            f"{_KEYS_HINT}"
        )
    if unmatched:
        log.warning(
            "%s: %d row(s) of %s match no image under %s (e.g. %s); their labels are unused; %s",
            DATASET,
            len(unmatched),
            path,
            root,
            examples,
            _KEYS_HINT,
        )


def table_problem(options: dict[str, Any]) -> str | None:
    """What is wrong with the labels CSV's columns or values (the CSV read whole, as a run
    reads it), or None: checked by ``--check``, before a run makes its folder."""
    path = option_path(options, "labels_csv", dataset=DATASET)
    if path is None or not path.is_file():
        return None  # (said by the path check)
    try:
        _labels(path)
    except DataError as exc:
        return str(exc)
    return None


def _labels(path: Path) -> dict[str, dict[str, Any]]:
    """Labels CSV -> {key: {column: value}} with values checked and converted."""
    table = read_table(path, dataset=DATASET, expected=[], layout=LAYOUT)
    key_col = next((c for c in KEY_COLUMNS if c in table.columns), None)
    if key_col is None:
        raise DataError(
            f"{DATASET}: {path} lacks a key column; expected one of {', '.join(KEY_COLUMNS)} "
            f"and any of {', '.join(LABEL_COLUMNS)}; columns found: "
            f"{format_columns(table.columns)}{separator_hint(table, path)}"
        )
    if not any(c in table.columns for c in LABEL_COLUMNS):
        raise DataError(
            f"{DATASET}: {path} has no label column (columns found: "
            f"{format_columns(table.columns)}); fix: name the label columns as expected: any "
            f"of {', '.join(LABEL_COLUMNS)} next to the key column {key_col!r}"
        )
    ignored = [c for c in table.columns if c != key_col and c not in LABEL_COLUMNS]
    if ignored:
        log.warning(
            "%s: %s: column(s) %s ignored (label columns: %s)",
            DATASET,
            path,
            format_columns(ignored),
            ", ".join(LABEL_COLUMNS),
        )
    out: dict[str, dict[str, Any]] = {}
    first_line: dict[str, int] = {}
    for line, rec in enumerate(table.to_dict("records"), start=2):
        key = text_or_none(rec[key_col])
        if key is None:
            continue
        values: dict[str, Any] = {}
        for col in LABEL_COLUMNS:
            text = text_or_none(rec.get(col))
            if text is not None:
                values[col] = _convert(col, text, path, line)
        if key in out:
            if out[key] != values:
                raise DataError(
                    f"{DATASET}: {path} lines {first_line[key]} and {line} label {key_col} "
                    f"{key!r} differently; fix: keep one row per key"
                )
            continue  # an identical duplicate
        out[key], first_line[key] = values, line
    return out


_RANGES = {"malignant": (0, 1), "acr": (1, 6), "density": (1, 4)}


def _convert(col: str, text: str, path: Path, line: int) -> Any:
    if col == "patient_id":
        return text
    if col == "split":
        if text not in ("train", "val", "test"):
            raise DataError(f"{DATASET}: {path} line {line}: split {text!r} not train/val/test")
        return text
    if col == "density" and text.upper() in ("A", "B", "C", "D"):
        return "ABCD".index(text.upper()) + 1
    try:
        number = float(text)
    except ValueError:
        number = float("nan")
    lo, hi = _RANGES.get(col, (0, 1))
    if not lo <= number <= hi or (col in _RANGES and number != int(number)):
        raise DataError(
            f"{DATASET}: {path} line {line}: column {col!r} value {text!r} is not in "
            f"{lo}..{hi}{' (or A..D)' if col == 'density' else ''}"
        )
    return int(number) if col in _RANGES else number
