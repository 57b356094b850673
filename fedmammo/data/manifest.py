"""The canonical manifest: one row per image, the same columns for every data source."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from fedmammo.errors import DataError
from fedmammo.files import replace_whole

__all__ = [
    "LABEL_TASKS",
    "MANIFEST_COLUMNS",
    "MANIFEST_DTYPES",
    "decode_lesions",
    "encode_lesions",
    "make_segment",
    "normalise_manifest",
    "read_manifest",
    "write_manifest",
]

#: Label tasks; each has a label column and an uncertainty column ``u_<task>``.
LABEL_TASKS: tuple[str, ...] = ("malignancy", "acr", "density", "view")

#: Column -> pandas dtype. Missing values are NA, never a magic number.
MANIFEST_DTYPES: dict[str, str] = {
    "image_id": "string",  # unique within a centre (SOPInstanceUID for DICOM sources)
    "patient_id": "string",
    "study_id": "string",
    "centre": "string",
    "source": "string",
    "manufacturer": "string",
    "segment": "string",  # default "<source>-<manufacturer>", see make_segment
    "laterality": "string",  # "L" / "R"
    "view": "string",  # "CC" / "MLO" / other ViewPosition values
    "path": "string",  # absolute path of the DICOM file
    "malignant": "Int8",  # 0 / 1 / NA (the malignancy label)
    "acr": "Int8",  # ACR BI-RADS assessment 1..6 / NA
    "density": "Int8",  # BI-RADS density 1..4 (= A..D) / NA
    "age": "Float32",
    "u_malignancy": "Float32",  # label uncertainty in [0, 1]; 0 = certain
    "u_acr": "Float32",
    "u_density": "Float32",
    "u_view": "Float32",
    "pixel_spacing": "Float32",  # mm per pixel (row spacing) of the stored image
    "lesions": "string",  # JSON list, see encode_lesions
    "split": "string",  # "train" / "val" / "test" / NA before splitting
}
MANIFEST_COLUMNS: tuple[str, ...] = tuple(MANIFEST_DTYPES)


def make_segment(source: str, manufacturer: str) -> str:
    """Return the default data-segment key ``source-manufacturer``."""
    return f"{source}-{manufacturer}"


def encode_lesions(lesions: Iterable[dict]) -> str:
    """Serialise lesion records to the manifest's JSON string.

    Each record: ``{"kind": "mass" | "calcification" | "distortion", "shape": str,
    "malignant": bool, "box": [x0, y0, x1, y1]}`` with box in pixel coordinates (column,
    row, exclusive end) of the stored DICOM image, before any pre-processing.
    """
    return json.dumps(list(lesions), separators=(",", ":"))


def decode_lesions(value: object) -> list[dict]:
    """Parse the manifest's lesions column (NA or empty means no lesion)."""
    if value is None or value is pd.NA or (isinstance(value, float) and value != value):
        return []
    text = str(value).strip()
    return json.loads(text) if text else []


def normalise_manifest(df: pd.DataFrame, *, where: str = "manifest") -> pd.DataFrame:
    """Return ``df`` with every canonical column, in order, with canonical dtypes.

    Missing columns are added as NA; extra columns are kept after the canonical ones.
    Raises DataError naming ``where`` and the column when a value cannot be converted.
    """
    out = df.copy()
    for col, dtype in MANIFEST_DTYPES.items():
        if col not in out.columns:
            out[col] = pd.NA
        try:
            if dtype in ("Int8",):
                out[col] = pd.to_numeric(out[col], errors="raise").astype(dtype)
            elif dtype == "Float32":
                out[col] = pd.to_numeric(out[col], errors="raise").astype(dtype)
            else:
                out[col] = out[col].astype(dtype)
        except (TypeError, ValueError) as exc:
            raise DataError(f"{where}: column {col!r} cannot be read as {dtype}: {exc}") from exc
    if out["image_id"].isna().any():
        raise DataError(f"{where}: column 'image_id' has missing values")
    extra = [c for c in out.columns if c not in MANIFEST_DTYPES]
    return out[list(MANIFEST_COLUMNS) + extra].reset_index(drop=True)


def write_manifest(df: pd.DataFrame, path: str | Path) -> None:
    """Write a manifest as CSV (NA written as empty cells), whole (:func:`replace_whole`): a
    full disk or a kill leaves the old file or none, never part of one (a phantom's manifest
    marks the phantom complete)."""
    table = normalise_manifest(df)
    replace_whole(path, lambda tmp: table.to_csv(tmp, index=False))


def read_manifest(path: str | Path) -> pd.DataFrame:
    """Read a manifest CSV written by write_manifest."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: manifest file not found")
    df = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
    return normalise_manifest(df, where=str(path))
