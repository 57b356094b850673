"""Dataset adapters: published mammography datasets (and any DICOM folder) -> manifest.

Each adapter module exposes ``load(root, **options) -> pd.DataFrame`` returning the
canonical manifest (fedmammo.data.manifest); this package registers them by format name.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from fedmammo.data.adapters import cbis_ddsm, cmmd, dicom_folder, inbreast, rsna, vindr
from fedmammo.data.adapters._common import (
    COMMON_OPTIONS,
    LABEL_RULE_OPTIONS,
    label_rule_problem,
    option_path,
    print_summary,
    read_table,
    summarise_manifest,
)
from fedmammo.errors import ConfigError, DataError

__all__ = [
    "ADAPTERS",
    "PATH_OPTIONS",
    "list_formats",
    "load_manifest",
    "missing_table",
    "option_values_problem",
    "table_problem",
    "options_of",
    "print_summary",
    "summarise_manifest",
]

_MODULES = {
    "cbis-ddsm": cbis_ddsm,
    "inbreast": inbreast,
    "vindr-mammo": vindr,
    "rsna": rsna,
    "cmmd": cmmd,
    "dicom-folder": dicom_folder,
}
#: Format name (the ``data.format`` of a centre profile) -> adapter.
ADAPTERS: dict[str, Callable[..., pd.DataFrame]] = {n: m.load for n, m in _MODULES.items()}


def list_formats() -> list[str]:
    """Names of the registered dataset formats."""
    return sorted(ADAPTERS)


def options_of(fmt: str) -> frozenset[str]:
    """The options the adapter of format ``fmt`` accepts (its own and the common ones)."""
    return frozenset(_MODULES[fmt].OPTIONS) | COMMON_OPTIONS


#: The options naming a file or folder (expanded by ``_common.option_path``).
PATH_OPTIONS = ("labels_csv", "csv_dir", "csv", "images_dir", "clinical_csv", "clinical_xlsx")


def option_values_problem(fmt: str, options: Mapping[str, Any]) -> str | None:
    """What is wrong with the values of the options of format ``fmt`` that can be checked
    without reading the data (one line starting with the option's name), or None: the label
    rule (``birads3``, ``malignancy_uncertainty``) of the formats taking it, and each path
    option: its environment variables set, the file or folder there."""
    if set(LABEL_RULE_OPTIONS) & set(_MODULES[fmt].OPTIONS):
        if problem := label_rule_problem(options):
            return problem
    for key in PATH_OPTIONS:
        try:
            path = option_path(options, key, dataset=fmt)
        except DataError as exc:  # a variable not set
            return str(exc).removeprefix(f"{fmt}: option ")
        if path is not None and not path.exists():
            return f"{key} {options[key]!r}: {path.absolute()} not found"
    return None


def missing_table(fmt: str, root: Path, options: Mapping[str, Any]) -> str | None:
    """Format ``fmt``'s label table missing from ``root`` (one line naming every file that
    would do, and the published layout), or None: checked by ``--check``, before the run
    lists the data. A format without a table (dicom-folder) is never missing one."""
    module = _MODULES.get(fmt)
    if not hasattr(module, "table_files"):
        return None
    candidates = module.table_files(root, dict(options))
    if any(path.is_file() for path in candidates):
        return None
    names = " or ".join(map(str, candidates))
    return f"{fmt}: {names} not found; expected layout: {module.LAYOUT}"


def table_problem(fmt: str, root: Path, options: Mapping[str, Any]) -> str | None:
    """What is wrong with the tables format ``fmt`` reads (one line), or None: checked by
    ``--check``, before a run makes its folder. A dataset's tables: a required column missing
    (their header rows read, with the separator the format uses); a dicom-folder labels CSV:
    its columns and values."""
    module = _MODULES.get(fmt)
    for path, expected, sep in getattr(module, "tables", lambda *_: [])(Path(root), dict(options)):
        if not path.is_file():
            continue  # (a missing table is missing_table's to say; an optional one is fine)
        try:
            read_table(
                path,
                dataset=module.DATASET,
                expected=expected,
                layout=module.LAYOUT,
                sep=sep,
                header_only=True,
            )
        except DataError as exc:
            return str(exc)
    check = getattr(module, "table_problem", None)
    return None if check is None else check(dict(options))


def load_manifest(fmt: str, root: str | Path, **options: Any) -> pd.DataFrame:
    """Read the dataset at ``root`` laid out as format ``fmt`` into the canonical manifest.

    Options common to every format: ``centre`` (default: the format name), ``source``
    (default: the dataset's name) and ``summary_path`` (write the summary there as JSON).
    Skipped images are counted in ``df.attrs["skipped"]``; the summary is in
    ``df.attrs["summary"]``.
    """
    if fmt not in ADAPTERS:
        raise ConfigError(
            f"unknown data format {fmt!r} (data.format); valid formats: {', '.join(list_formats())}"
        )
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(
            f"{fmt}: data root {root} is not a directory; fix: set data.root (or the environment "
            "variable it names) to the dataset's top folder; see docs/datasets.md"
        )
    return ADAPTERS[fmt](root, **options)
