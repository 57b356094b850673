"""Read a finished (or interrupted) run folder: results, scenario, privacy report, plots, log.

Works from the folder alone (no scenario re-validation, no package state), so a report can be
regenerated anywhere, years later, from what the run left behind.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from fedmammo.errors import DataError
from fedmammo.evaluation.claims import finite_number
from fedmammo.evaluation.results import RECORD_FIELDS, results_problem

__all__ = [
    "RunFolder",
    "expand_run_dirs",
    "final_records",
    "is_sweep",
    "load_run",
    "log_warnings",
]

logger = logging.getLogger(__name__)

#: Log levels kept from run.log for the audit trail.
_WARNING_LINE = re.compile(r"^\S+ \S+ (WARNING|ERROR|CRITICAL) ")


@dataclass
class RunFolder:
    """What one run folder holds; missing files are empty values, never errors."""

    path: Path
    results: dict[str, Any]
    scenario: dict[str, Any] = field(default_factory=dict)
    privacy: dict[str, Any] | None = None
    runspec: dict[str, Any] = field(default_factory=dict)
    results_md: str | None = None
    plots: list[Path] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    warnings_source: str = "run.log"  # a sweep point's: the sweep's run.log, every point's
    settings: list[str] = field(default_factory=list)  # its --set keys and sweep point

    @property
    def meta(self) -> dict[str, Any]:
        return self.results.get("meta", {}) or {}

    @property
    def name(self) -> str:
        """``scenario/timestamp`` (or ``scenario/point`` for a sweep point)."""
        scenario = self.meta.get("scenario") or self.scenario.get("name") or self.path.parent.name
        label = self.path.name
        return f"{scenario}/{label}" if label != scenario else label

    def frame(self) -> pd.DataFrame:
        """The metric records as a DataFrame with the columns of ``RECORD_FIELDS``."""
        return pd.DataFrame(self.results.get("metrics", []), columns=list(RECORD_FIELDS))


def is_sweep(path: str | Path) -> bool:
    """True for a sweep folder: ``points/<point>/`` sub-folders and no results.json of its own."""
    p = Path(path)
    return (p / "points").is_dir() and not (p / "results.json").is_file()


def expand_run_dirs(paths: list[str | Path]) -> list[Path]:
    """Replace each sweep folder by its points (in sweep order); keep run folders as given."""
    out: list[Path] = []
    for path in map(Path, paths):
        if is_sweep(path):
            points = _sweep_order(path, [p for p in (path / "points").iterdir() if p.is_dir()])
            out += [p for p in points if (p / "results.json").is_file()]
            if not any((p / "results.json").is_file() for p in points):
                raise DataError(f"{path}: sweep folder without any point's results.json yet")
        else:
            out.append(path)
    return out


def _natural(name: str) -> list[Any]:
    parts = re.split(r"(\d+(?:\.\d+)?)", name)
    return [(0, float(p), "") if i % 2 else (1, 0.0, p) for i, p in enumerate(parts)]


def _sweep_order(root: Path, points: list[Path]) -> list[Path]:
    """Points in the order the sweep ran them (sweep.csv), else in natural order (1, 8, 100)."""
    ran: list[str] = []
    if (root / "sweep.csv").is_file():
        try:
            ran = list(dict.fromkeys(pd.read_csv(root / "sweep.csv", usecols=["point"])["point"]))
        except (ValueError, pd.errors.ParserError, pd.errors.EmptyDataError):
            ran = []
    rank = {name: i for i, name in enumerate(ran)}
    return sorted(points, key=lambda p: (rank.get(p.name, len(rank)), _natural(p.name)))


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        logger.warning("%s is not valid JSON (%s); ignored", path, exc)
        return None


def _sweep_root(path: Path) -> Path | None:
    return path.parent.parent if path.parent.name == "points" else None


def log_warnings(path: Path, *, limit: int = 200) -> list[str]:
    """Return the WARNING / ERROR / CRITICAL lines of a run.log (first line of each record)."""
    if not path.is_file():
        return []
    lines = [ln.rstrip() for ln in path.read_text(errors="replace").splitlines()]
    return [ln for ln in lines if _WARNING_LINE.match(ln)][:limit]


def load_run(run_dir: str | Path) -> RunFolder:
    """Read a run folder; raise DataError when it or its results.json is missing or unreadable."""
    path = Path(run_dir)
    if not path.is_dir():
        raise DataError(f"{path}: no such run folder")
    results_path = path / "results.json"
    if not results_path.is_file():
        hint = " (a sweep folder: pass it to the comparison page)" if is_sweep(path) else ""
        raise DataError(f"{path}: no results.json in this folder{hint}")
    try:
        results = json.loads(results_path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"{results_path}: not valid JSON ({exc})") from exc
    if problem := results_problem(results):
        raise DataError(f"{results_path}: damaged ({problem})")
    root = _sweep_root(path)
    scenario_file = path / "scenario.resolved.yaml"
    if not scenario_file.is_file() and root is not None:
        scenario_file = root / "scenario.resolved.yaml"
    scenario = yaml.safe_load(scenario_file.read_text()) if scenario_file.is_file() else {}
    log, source = path / "run.log", "run.log"
    if not log.is_file() and root is not None:
        log, source = root / "run.log", "the sweep's run.log (every point's lines)"
    md = path / "results.md"
    plots_dir = path / "plots"
    runspec = _read_json(path / "runspec.json") or {}
    return RunFolder(
        path=path,
        results=results,
        scenario=scenario or {},
        privacy=_read_json(path / "privacy.json"),
        runspec=runspec,
        results_md=md.read_text() if md.is_file() else None,
        plots=sorted(plots_dir.glob("*.png")) if plots_dir.is_dir() else [],
        warnings=log_warnings(log),
        warnings_source=source,
        settings=_settings(path, root, runspec),
    )


def _settings(path: Path, root: Path | None, runspec: dict[str, Any]) -> list[str]:
    """``key=value`` of each ``--set`` the run was started with (invocation.json: the run's,
    or its sweep's) and of what its run spec set (``flwr run``'s data_dir), then a sweep
    point's own values (its folder's name); the sweep itself is left out."""
    invocation = _read_json((root or path) / "invocation.json") or {}
    sets = {**(invocation.get("sets") or {}), **(runspec.get("sets") or {})}
    listed = [f"{k}={v}" for k, v in sets.items() if k != "sweep" and not k.startswith("sweep.")]
    return listed + ([path.name] if root is not None else [])


def final_records(
    frame: pd.DataFrame, *, split: str = "test", by_segment: bool = False
) -> pd.DataFrame:
    """Final (round None) records of a split, averaged over seeds per arm, centre and metric.

    Columns: arm, centre, segment, metric, value, ci_low, ci_high, std, n_seeds. With one seed
    the CI is the record's own; with several, the CI is dropped and ``std`` says the spread.
    """
    sel = frame[(frame["split"] == split) & frame["round"].isna()]
    sel = sel[sel["segment"].notna()] if by_segment else sel[sel["segment"].isna()]
    cols = ["arm", "centre", "segment", "metric"]
    if sel.empty:
        return pd.DataFrame(columns=[*cols, "value", "ci_low", "ci_high", "std", "n_seeds"])
    sel = sel.assign(segment=sel["segment"].fillna(""))
    rows = []
    for key, g in sel.groupby(cols, sort=False):
        values = pd.to_numeric(g["value"], errors="coerce").dropna()
        one = len(g) == 1
        rows.append(
            {
                **dict(zip(cols, key)),
                "value": float(values.mean()) if len(values) else None,
                "ci_low": finite_number(g["ci_low"].iloc[0]) if one else None,
                "ci_high": finite_number(g["ci_high"].iloc[0]) if one else None,
                "std": float(values.std(ddof=1)) if len(values) > 1 else None,
                "n_seeds": int(g["seed"].nunique()),
            }
        )
    return pd.DataFrame(rows)
