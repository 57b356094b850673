"""Shared helpers of the dataset adapters: headers, tables, label rules, skips and summaries."""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
import re
import struct
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from fedmammo.data.manifest import LABEL_TASKS, make_segment, normalise_manifest
from fedmammo.errors import ConfigError, DataError

__all__ = [
    "BIRADS3_RULES",
    "BIRADS_MALIGNANCY_UNCERTAINTY",
    "COMMON_OPTIONS",
    "LABEL_RULE_OPTIONS",
    "TRUNCATED_HEADER",
    "UNREADABLE_HEADER",
    "SkipCounter",
    "check_options",
    "finish_manifest",
    "WHERE",
    "first_file",
    "format_columns",
    "header_age",
    "header_laterality",
    "header_manufacturer",
    "header_pixel_spacing",
    "header_view",
    "image_header_problem",
    "image_size",
    "is_dicom_file",
    "iter_dicom_files",
    "label_rule_problem",
    "label_rules",
    "malignancy_from_birads",
    "option_path",
    "print_summary",
    "read_age",
    "read_birads",
    "read_header",
    "read_image_header",
    "read_label",
    "read_table",
    "summarise_manifest",
    "text_or_none",
]

log = logging.getLogger(__name__)

#: Options every adapter accepts (besides its own).
COMMON_OPTIONS: frozenset[str] = frozenset({"centre", "print_summary", "source", "summary_path"})

DICOM_SUFFIXES = (".dcm", ".dicom")

#: SNOMED CT (and legacy SRT) codes of ViewCodeSequence -> view name.
VIEW_CODES: dict[str, str] = {
    "399162004": "CC",
    "R-10242": "CC",
    "399368009": "MLO",
    "R-10226": "MLO",
    "399260004": "ML",
    "R-10224": "ML",
    "399352003": "LM",
    "R-10228": "LM",
    "399099002": "LMO",
    "R-10230": "LMO",
}
_VIEW_MEANINGS = {"cranio-caudal": "CC", "medio-lateral oblique": "MLO", "medio-lateral": "ML"}

#: Uncertainty of a malignancy label derived from a BI-RADS assessment category (no biopsy).
#: Categories 1-2 (negative / benign) are near certain; 3 (probably benign, <= 2 % malignant
#: per the ACR BI-RADS Atlas 5th ed.) gets 0.02; 4a/4b/4c (2-10 %, 10-50 %, 50-95 %) follow
#: the literature in being called malignant, with the doubt expressed as 0.5 / 0.3 / 0.1
#: (0.3 for an undivided 4); 5 (>= 95 %) 0.05; 6 (biopsy-proven) 0. Override per dataset with
#: the adapter option ``malignancy_uncertainty``.
BIRADS_MALIGNANCY_UNCERTAINTY: dict[str, float] = {
    "1": 0.0,
    "2": 0.0,
    "3": 0.02,
    "4": 0.3,
    "4a": 0.5,
    "4b": 0.3,
    "4c": 0.1,
    "5": 0.05,
    "6": 0.0,
}
#: Values of the option ``birads3`` (read case-insensitively): BI-RADS 3 counted benign, or
#: left out (malignancy NA).
BIRADS3_RULES: tuple[str, ...] = ("benign", "exclude")
#: The options that set the BI-RADS label rule of an adapter deriving malignancy from BI-RADS.
LABEL_RULE_OPTIONS: tuple[str, ...] = ("birads3", "malignancy_uncertainty")


def check_options(options: Mapping[str, Any], allowed: Iterable[str], dataset: str) -> None:
    """Raise ConfigError if ``options`` has a key the adapter does not know."""
    valid = set(allowed) | COMMON_OPTIONS
    unknown = sorted(set(options) - valid)
    if unknown:
        raise ConfigError(
            f"{dataset} adapter: unknown option(s) {', '.join(map(repr, unknown))} in "
            f"data.options; valid options: {', '.join(sorted(valid))}"
        )


def option_path(options: Mapping[str, Any], key: str, *, dataset: str) -> Path | None:
    """The path option ``key`` with ``~`` and ``${ENV}`` expanded like ``data.root``, or None
    when unset; a relative path stays relative to the working directory.

    A variable left unexpanded (not set) in a path that does not exist is a DataError naming
    the variable and the option.
    """
    value = options.get(key)
    if not value:
        return None
    text = os.path.expandvars(os.path.expanduser(str(value)))
    unset = re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)", text)
    if unset and not Path(text).exists():
        raise DataError(
            f"{dataset}: option {key} {str(value)!r} names the environment variable "
            f"{unset[0]} which is not set ({text} not found); fix: export {unset[0]} or give "
            "the path itself in data.options"
        )
    return Path(text)


def first_file(candidates: tuple[Path, ...]) -> Path:
    """The first of ``candidates`` that is a file, else the first (named when not found)."""
    return next((path for path in candidates if path.is_file()), candidates[0])


def format_columns(columns: Iterable[object], limit: int = 12) -> str:
    """Column names for a message: quoted, the first ``limit`` and how many more."""
    names = [str(c) for c in columns]
    if not names:
        return "none"
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(map(repr, names[:limit])) + more


_SEPARATORS = {",": "',' (comma)", ";": "';' (semicolon)", "\t": "a tab"}


#: The pandas engine that reads each spreadsheet format and the module it needs (both in the
#: ``xlsx`` extra; pandas deprecates xlrd for .xls).
_SPREADSHEET_ENGINES = {".xlsx": ("openpyxl", "openpyxl"), ".xls": ("calamine", "python_calamine")}


def _read_spreadsheet(
    path: Path, reader: tuple[str, str], dataset: str, *, nrows: int | None = None
) -> pd.DataFrame:
    """The first sheet of an .xlsx / .xls file as strings, with ``reader`` (pandas engine,
    module it needs); DataError naming the file when the module is not installed or the file
    is not a readable spreadsheet (truncated, another format renamed)."""
    engine, module = reader
    if importlib.util.find_spec(module) is None:
        raise DataError(
            f'{dataset}: reading {path} needs {module}; fix: pip install "fedmammo[xlsx]", '
            "or export the sheet as CSV and name that file instead"
        )
    try:
        return pd.read_excel(path, dtype=str, engine=engine, nrows=nrows)
    except Exception as exc:  # each reader has its own errors; any of them: not a table
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise DataError(f"{dataset}: {path} cannot be read as a spreadsheet: {reason}") from exc


def read_table(
    path: Path,
    *,
    dataset: str,
    expected: Iterable[str],
    layout: str,
    sep: str = ",",
    header_only: bool = False,
) -> pd.DataFrame:
    """Read a CSV/XLSX as strings, checking the file exists and has the ``expected`` columns.

    A missing column is a DataError listing the columns found (and, for a one-column CSV whose
    name holds another separator, which separator the file seems to use). ``header_only``:
    read no row (what ``--check`` reads of a dataset's tables).
    """
    nrows = 0 if header_only else None
    expected = list(expected)
    if not path.is_file():
        raise DataError(f"{dataset}: {path} not found; expected layout: {layout}")
    reader = _SPREADSHEET_ENGINES.get(path.suffix.lower())
    if reader is None:
        try:
            df = pd.read_csv(
                path, sep=sep, dtype=str, keep_default_na=False, na_values=[""], nrows=nrows
            )
        except (OSError, ValueError, pd.errors.ParserError) as exc:
            raise DataError(f"{dataset}: {path} cannot be read as a table: {exc}") from exc
    else:
        df = _read_spreadsheet(path, reader, dataset, nrows=nrows)
    df.columns = [str(c).strip() for c in df.columns]
    for col in expected:
        if col not in df.columns:
            raise DataError(
                f"{dataset}: {path} lacks column {col!r}; required columns: "
                f"{', '.join(expected)}; columns found: {format_columns(df.columns)}"
                f"{separator_hint(df, path, sep)}; expected layout: {layout}"
            )
    for col in df.columns:
        df[col] = df[col].astype("string").str.strip().replace("", pd.NA)
    return df


def separator_hint(df: pd.DataFrame, path: Path, sep: str = ",") -> str:
    """For a CSV read as one column whose name holds another separator: which separator the
    file seems to use and the fix, in parentheses after a leading space; else ''."""
    only = str(df.columns[0]) if len(df.columns) == 1 else ""
    other = [s for s in _SEPARATORS if s != sep and s in only]
    if not other or path.suffix.lower() in _SPREADSHEET_ENGINES:
        return ""
    want = _SEPARATORS.get(sep, repr(sep))
    return (
        f" (the file looks separated by {_SEPARATORS[other[0]]}, not {want}; "
        f"fix: save it with {want} as the separator)"
    )


def text_or_none(value: object) -> str | None:
    """A stripped string, or None for NA / NaN / empty values."""
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return None
    text = str(value).strip()
    return text or None


def malignancy_from_birads(
    category: object, *, birads3: str = "benign", uncertainty: Mapping[str, float] | None = None
) -> tuple[int | None, float | None]:
    """Map a BI-RADS assessment (1..6, 4a..4c) to (malignant, u_malignancy); None if unknown.

    Rule (Tardy & Mateus 2022, Front. Radiol.): {1, 2} -> 0, {4, 5, 6} -> 1; category 3 is
    benign (``birads3="benign"``, as they count INbreast) or left out (``"exclude"`` -> None).
    ``uncertainty`` overrides BIRADS_MALIGNANCY_UNCERTAINTY per category. A ``birads3`` or
    ``uncertainty`` that :func:`label_rule_problem` refuses is a ConfigError.
    """
    rule = {"birads3": birads3, "malignancy_uncertainty": uncertainty}
    if problem := label_rule_problem(rule):
        raise ConfigError(f"malignancy_from_birads: option {problem}")
    cat = _birads_key(category)
    if cat is None or cat == "0":
        return None, None
    if cat == "3" and _birads3_rule(birads3) == "exclude":
        return None, None
    table = _uncertainty_table(uncertainty)
    label = 0 if cat in ("1", "2", "3") else 1
    return label, float(table.get(cat, table.get(cat[0], 0.0)))


def label_rule_problem(options: Mapping[str, Any]) -> str | None:
    """What is wrong with the label-rule options of ``options`` (one line starting with the
    option's name and saying the allowed values), or None.

    ``birads3`` must be one of BIRADS3_RULES (any case); ``malignancy_uncertainty`` a mapping
    of BI-RADS categories (1, 2, 3, 4, 4a, 4b, 4c, 5, 6) to numbers in [0, 1]: the loss weighs
    a label by ``1 - u``. An option absent (or ``malignancy_uncertainty`` None) is no problem.
    """
    if "birads3" in options and _birads3_rule(options["birads3"]) is None:
        return (
            f"birads3 {options['birads3']!r} is not allowed; allowed values: "
            f"{', '.join(BIRADS3_RULES)} (case-insensitive)"
        )
    return _uncertainty_problem(options.get("malignancy_uncertainty"))


def label_rules(
    options: Mapping[str, Any], *, dataset: str, birads3: str
) -> tuple[str, dict[str, float]]:
    """The label rule ``options`` set: the ``birads3`` rule (``birads3`` when unset) and the
    BI-RADS category -> u_malignancy table (the defaults with the option's overrides).

    An option :func:`label_rule_problem` refuses is a ConfigError naming ``dataset``.
    """
    if problem := label_rule_problem(options):
        raise ConfigError(f"{dataset}: option {problem}")
    rule = _birads3_rule(options.get("birads3", birads3))
    assert rule is not None, f"default birads3 {birads3!r} is not one of {BIRADS3_RULES}"
    return rule, _uncertainty_table(options.get("malignancy_uncertainty"))


def _birads3_rule(value: object) -> str | None:
    """The BIRADS3_RULES entry ``value`` names (any case, spaces around ignored), or None."""
    text = value.strip().lower() if isinstance(value, str) else None
    return text if text in BIRADS3_RULES else None


def _uncertainty_problem(value: object) -> str | None:
    """What is wrong with a ``malignancy_uncertainty`` value (one line), or None."""
    if value is None:
        return None
    categories = ", ".join(BIRADS_MALIGNANCY_UNCERTAINTY)
    if not isinstance(value, Mapping):
        return (
            f"malignancy_uncertainty {value!r} is not a mapping; allowed: "
            f"{{BI-RADS category: number in [0, 1]}} with categories {categories}"
        )
    for key, u in value.items():
        if _birads_key(key) not in BIRADS_MALIGNANCY_UNCERTAINTY:
            return (
                f"malignancy_uncertainty key {key!r} is not a BI-RADS category with a "
                f"malignancy label; allowed keys: {categories}"
            )
        if isinstance(u, bool) or not isinstance(u, int | float) or not 0 <= u <= 1:
            return (
                f"malignancy_uncertainty[{key!r}] {u!r} is not allowed; allowed values: a "
                "number in [0, 1] (0 = certain; the loss weighs a label by 1 - u)"
            )
    return None


def _uncertainty_table(overrides: Mapping[object, float] | None) -> dict[str, float]:
    """BI-RADS category -> u_malignancy: the defaults with ``overrides`` (keys read like
    BI-RADS values, so 4C, 'BI-RADS 5' and 5 name 4c, 5 and 5)."""
    table = dict(BIRADS_MALIGNANCY_UNCERTAINTY)
    for key, u in (overrides or {}).items():
        table[str(_birads_key(key))] = float(u)
    return table


def read_label(
    value: object, table: Mapping[str, int | None], *, skips: SkipCounter, where: str, column: str
) -> int | None:
    """The label ``table`` gives for ``value`` (keys upper case; '2.0' reads as '2').

    An empty value is None; a value the table does not know is None too, counted and logged
    by ``skips`` naming ``where`` and ``column``: an unreadable label never becomes a label.
    """
    text = text_or_none(value)
    if text is None:
        return None
    key = text.upper().removesuffix(".0")
    if key in table:
        return table[key]
    skips.unreadable_label(where, column, text)
    return None


def read_age(value: object, *, skips: SkipCounter, where: str, column: str) -> float | None:
    """An age in years (0-120) or None; a value that is not one is None, counted and logged."""
    text = text_or_none(value)
    if text is None:
        return None
    try:
        age = float(text)
    except ValueError:
        age = math.nan
    if 0 <= age <= 120:
        return age
    skips.unreadable_label(where, column, text)
    return None


def read_birads(value: object, *, skips: SkipCounter, where: str, column: str) -> str | None:
    """A BI-RADS category ('0'..'6', '4a'..'4c'; 'BI-RADS 4' reads as '4') or None.

    Empty is None; an unknown value is None, counted and logged by ``skips``.
    """
    text = text_or_none(value)
    if text is None:
        return None
    key = _birads_key(text)
    if key is None:
        skips.unreadable_label(where, column, text)
    return key


def _birads_key(category: object) -> str | None:
    if category is None or category is pd.NA:
        return None
    text = str(category).strip().lower().removeprefix("bi-rads").strip()
    if not text or text in ("nan", "none", "<na>"):
        return None
    if text.endswith(".0"):
        text = text[:-2]
    return text if text in BIRADS_MALIGNANCY_UNCERTAINTY or text == "0" else None


# --------------------------------------------------------------------------- DICOM headers
def is_dicom_file(path: Path) -> bool:
    """True if ``path`` has a DICOM suffix or the 'DICM' preamble marker."""
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    try:
        with path.open("rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"


def iter_dicom_files(root: Path) -> Iterator[Path]:
    """Every DICOM file under ``root`` (sorted, hidden files skipped)."""
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.name.startswith(".") and is_dicom_file(path):
            yield path


def read_header(path: Path) -> Any | None:
    """Read a DICOM header without pixels; None if the file is missing or unreadable.

    A file truncated between two elements reads as the part before the cut, without error.
    """
    import pydicom
    from pydicom.errors import BytesLengthException, InvalidDicomError

    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except (
        OSError,
        InvalidDicomError,
        BytesLengthException,  # a value cut short
        struct.error,  # a length field cut short
        ValueError,
        EOFError,
        KeyError,
        TypeError,
    ) as exc:
        log.debug("cannot read DICOM header of %s: %s", path, exc)
        return None


#: Skip reason of a file whose DICOM header cannot be read at all.
UNREADABLE_HEADER = "unreadable DICOM header"
#: Skip reason of a file whose header reads but stops before the image size: pydicom reads a
#: file cut short up to the cut without error, so only the missing Rows/Columns tell.
TRUNCATED_HEADER = "DICOM header ends before Rows/Columns (truncated file)"


def image_size(ds: Any) -> tuple[int, int] | None:
    """(Rows, Columns) of a header; None when either is absent or not a number."""
    try:
        return int(ds.Rows), int(ds.Columns)
    except (AttributeError, TypeError, ValueError):
        return None


def image_header_problem(ds: Any) -> str | None:
    """Why a header from :func:`read_header` cannot be listed as an image (UNREADABLE_HEADER,
    TRUNCATED_HEADER), or None when it can."""
    if ds is None:
        return UNREADABLE_HEADER
    if image_size(ds) is None:
        return TRUNCATED_HEADER
    return None


def read_image_header(path: Path, skips: SkipCounter) -> Any | None:
    """The header of the image file ``path``, or None once ``skips`` has counted and logged it
    with the reason :func:`image_header_problem` gives (unreadable, or cut before its size)."""
    ds = read_header(path)
    if problem := image_header_problem(ds):
        skips.skip(path, problem)
        return None
    return ds


def _text(ds: Any, keyword: str) -> str | None:
    value = ds.get(keyword) if ds is not None else None
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def header_manufacturer(ds: Any, default: str = "unknown") -> str:
    """The Manufacturer tag, or ``default`` when absent or empty."""
    return _text(ds, "Manufacturer") or default


def header_laterality(ds: Any) -> str | None:
    """'L' / 'R' from ImageLaterality, else Laterality; None if neither says."""
    for keyword in ("ImageLaterality", "Laterality"):
        text = (_text(ds, keyword) or "").upper()
        if text in ("L", "R"):
            return text
    return None


def header_view(ds: Any) -> str | None:
    """The view from ViewPosition, else ViewCodeSequence (SNOMED codes); None if unknown."""
    text = (_text(ds, "ViewPosition") or "").upper()
    if text:
        return text
    for item in (ds.get("ViewCodeSequence") or []) if ds is not None else []:
        code = str(item.get("CodeValue", "")).strip()
        if code in VIEW_CODES:
            return VIEW_CODES[code]
        meaning = str(item.get("CodeMeaning", "")).strip().lower()
        if meaning in _VIEW_MEANINGS:
            return _VIEW_MEANINGS[meaning]
    return None


def header_pixel_spacing(ds: Any) -> float | None:
    """Row spacing in mm from PixelSpacing, else ImagerPixelSpacing; None if absent."""
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        value = ds.get(keyword) if ds is not None else None
        try:
            spacing = float(value[0]) if value else None
        except (TypeError, ValueError, IndexError):
            spacing = None
        if spacing and math.isfinite(spacing) and spacing > 0:
            return spacing
    return None


def header_age(ds: Any) -> float | None:
    """PatientAge ('057Y', '006M', '020W', '100D') in years; None if absent or malformed."""
    text = (_text(ds, "PatientAge") or "").upper()
    units = {"Y": 1.0, "M": 12.0, "W": 52.1775, "D": 365.25}
    if len(text) >= 2 and text[-1] in units and text[:-1].isdigit():
        return int(text[:-1]) / units[text[-1]]
    return float(text) if text.isdigit() else None


# --------------------------------------------------------------------------- skips, finishing
class SkipCounter:
    """Counts images skipped for a reason and label values left NA, one warning for each."""

    def __init__(self, dataset: str) -> None:
        self.dataset = dataset
        self.reasons: Counter[str] = Counter()
        self.labels: Counter[str] = Counter()

    def skip(self, path: Path | str, reason: str) -> None:
        """Record that ``path`` is skipped because of ``reason``."""
        self.reasons[reason] += 1
        log.warning("%s: skipping %s: %s", self.dataset, path, reason)

    def unreadable_label(self, where: str, column: str, value: object) -> None:
        """Record that ``column`` holds a value no label can be read from (the label is NA)."""
        self.labels[column] += 1
        log.warning(
            "%s: %s: unreadable %s value %r; the label is left missing (NA)",
            self.dataset,
            where,
            column,
            value,
        )

    @property
    def total(self) -> int:
        return sum(self.reasons.values())


#: The table columns each format reads malignancy from (a breast's side too, for CMMD): when
#: every value of them is unreadable, the table is not in the layout read, not unlabelled.
MALIGNANCY_COLUMNS = (
    "pathology",
    "Bi-Rads",
    "breast_birads",
    "cancer",
    "classification",
    "LeftRight",
)
#: A row's optional key naming where the dataset's table gave it ("FILE line N"): named when
#: an image is listed twice, not kept in the manifest.
WHERE = "_where"


def finish_manifest(
    rows: list[dict[str, Any]],
    *,
    dataset: str,
    fmt: str,
    options: Mapping[str, Any],
    skips: SkipCounter,
    root: Path,
    extra_attrs: Mapping[str, Any] | None = None,
) -> pd.DataFrame:
    """Turn adapter rows into the canonical manifest, with centre, source, segment and attrs.

    ``root`` is the folder the images were looked for in (named when none was found).
    """
    source = str(options.get("source") or dataset)
    df = pd.DataFrame(rows)
    if df.empty:
        raise DataError(
            f"{dataset}: no readable image found in {root} ({skips.total} skipped: "
            f"{dict(skips.reasons)}); check the data root and the expected layout"
        )
    df["centre"] = str(options.get("centre") or fmt)
    df["source"] = source
    df["manufacturer"] = df["manufacturer"].fillna("unknown").replace("", "unknown")
    if "segment" not in df.columns:
        df["segment"] = [make_segment(source, m) for m in df["manufacturer"]]
    where = df.pop(WHERE) if WHERE in df.columns else None
    df = normalise_manifest(df, where=f"{dataset} manifest")
    dup = df["image_id"][df["image_id"].duplicated()]
    if len(dup):
        lines = [] if where is None else where[df["image_id"] == dup.iloc[0]].tolist()
        raise DataError(
            f"{dataset}: image_id {dup.iloc[0]!r} appears twice in the manifest"
            + (f" ({', '.join(lines)})" if lines else "")
            + "; fix: keep one row per image in the dataset's table"
        )
    df.attrs["skipped"] = skips.total
    df.attrs["skip_reasons"] = dict(skips.reasons)
    df.attrs["unreadable_labels"] = dict(skips.labels)
    df.attrs.update(extra_attrs or {})
    summary = summarise_manifest(df)
    df.attrs["summary"] = summary
    available = ", ".join(f"{t} {v['fraction']:.0%}" for t, v in summary["labels"].items())
    log.info(
        "%s: %d images of %d patients in %d segments, %d skipped; labels: %s",
        dataset,
        len(df),
        summary["patients"],
        len(summary["segments"]),
        skips.total,
        available,
    )
    if skips.labels:
        log.warning(
            "%s: %d unreadable label values left missing (NA): %s",
            dataset,
            sum(skips.labels.values()),
            dict(skips.labels),
        )
    unread = {c: n for c, n in skips.labels.items() if c in MALIGNANCY_COLUMNS}
    if unread and summary["labels"]["malignancy"]["available"] == 0:
        raise DataError(
            f"{dataset}: no image has a readable malignancy label: "
            + ", ".join(f"{n} unreadable {c!r} values" for c, n in unread.items())
            + " (each warned above with its file and line); fix: correct the table's values "
            "(docs/datasets.md, 'Label rules'), or leave unknown labels empty"
        )
    if options.get("print_summary"):
        print_summary(summary, title=f"{dataset} ({df['centre'].iloc[0]})")
    if options.get("summary_path"):
        out = Path(str(options["summary_path"]))
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(summary, indent=2))
    return df


_LABEL_COLUMNS = {"malignancy": "malignant", "acr": "acr", "density": "density", "view": "view"}


def summarise_manifest(df: pd.DataFrame) -> dict[str, Any]:
    """Images, patients, per-segment counts, label availability and skips of a manifest."""
    labels: dict[str, Any] = {}
    for task in LABEL_TASKS:
        col = df[_LABEL_COLUMNS[task]]
        counts = col.dropna().astype(str).value_counts().sort_index()
        labels[task] = {
            "available": int(col.notna().sum()),
            "fraction": round(float(col.notna().mean()), 4) if len(df) else 0.0,
            "counts": {k: int(v) for k, v in counts.items()},
        }
    segments = df["segment"].astype(str).value_counts().sort_index()
    return {
        "images": int(len(df)),
        "patients": int(df["patient_id"].nunique()),
        "segments": {k: int(v) for k, v in segments.items()},
        "labels": labels,
        "with_lesion_boxes": int(df["lesions"].fillna("[]").ne("[]").sum()),
        "splits": {k: int(v) for k, v in df["split"].fillna("none").value_counts().items()},
        "skipped": int(df.attrs.get("skipped", 0)),
        "skip_reasons": dict(df.attrs.get("skip_reasons", {})),
        "unreadable_labels": dict(df.attrs.get("unreadable_labels", {})),
    }


def print_summary(
    summary: Mapping[str, Any], *, title: str = "dataset", console: Any = None
) -> None:
    """Print a summary from summarise_manifest as rich tables."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = console or Console()
    console.print(  # values read from the dataset's files are escaped (rich markup)
        f"[bold]{escape(title)}[/bold]: {summary['images']} images, {summary['patients']} "
        f"patients, {summary['skipped']} skipped {escape(str(summary['skip_reasons'] or ''))}"
    )
    if summary.get("unreadable_labels"):
        console.print(
            f"unreadable label values (left NA): {escape(str(summary['unreadable_labels']))}"
        )
    head = Table(title="segments")
    head.add_column("segment")
    head.add_column("images", justify="right")
    for seg, n in summary["segments"].items():
        head.add_row(escape(str(seg)), str(n))
    console.print(head)
    labels = Table(title="label availability")
    for col in ("task", "available", "fraction", "counts"):
        labels.add_column(col)
    for task, info in summary["labels"].items():
        counts = ", ".join(f"{k}: {v}" for k, v in info["counts"].items())
        labels.add_row(
            escape(task), str(info["available"]), f"{info['fraction']:.0%}", escape(counts)
        )
    console.print(labels)
