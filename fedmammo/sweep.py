"""Grid sweeps: a scenario's ``sweep:`` runs every combination in one run directory.

``sweep: {privacy.target_epsilon: [1, 3, 8, null], seed: [0, 1, 2]}`` makes 12 points, each
in ``<run_dir>/points/<key=value,...>/`` with its own ``scenario.resolved.yaml`` (written when
the run starts, after every point loaded and passed the plan checks); finished points are
skipped on ``--resume``, and ``sweep.csv`` gathers every point's metric records with one
column per swept key.
"""

from __future__ import annotations

import itertools
import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd
from rich.console import Console

from fedmammo.config import Scenario, load_scenario
from fedmammo.config.loading import (
    RESOLVED,
    Origins,
    load_scenario_traced,
    write_resolved,
)
from fedmammo.errors import ConfigError
from fedmammo.federation.console import safe
from fedmammo.federation.run_log import run_log
from fedmammo.federation.runspec import RunSpec
from fedmammo.methods.registry import PlanRow

__all__ = [
    "Point",
    "load_points",
    "point_name",
    "point_sets",
    "redraw_privacy_utility",
    "resolved_points",
    "run_sweep",
    "sweep_points",
]

log = logging.getLogger(__name__)

console = Console()


@dataclass
class Point:
    """One sweep point (or the whole run when there is no sweep: ``name == ""``)."""

    name: str
    values: dict[str, Any]
    scenario: Scenario
    origins: Origins | None = None
    rows: list[PlanRow] = field(default_factory=list)


def sweep_points(sweep: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Every combination of the swept values, in a stable order."""
    keys = list(sweep)
    return [dict(zip(keys, values, strict=True)) for values in itertools.product(*sweep.values())]


def point_name(point: dict[str, Any]) -> str:
    """A folder-safe name for a sweep point."""
    text = ",".join(f"{k}={json.dumps(v)}" for k, v in point.items())
    return re.sub(r"[^A-Za-z0-9_.,=+-]", "", text.replace('"', ""))


def point_sets(point: dict[str, Any]) -> dict[str, Any]:
    """The ``--set`` keys of a sweep point (``seed: 1`` -> ``seeds: [1]``; no nested sweep)."""
    sets: dict[str, Any] = {}
    for key, value in point.items():
        if key == "seed":
            sets["seeds"] = [value]
        else:
            sets[key] = value
    return {**sets, "sweep": {}}


def load_points(
    scenario_file: str | Path, scenario: Scenario, *, sets: dict[str, Any], quick: bool
) -> list[Point]:
    """Load every sweep point of ``scenario`` from its original file (each validated); an
    error names the point."""
    points = []
    for values in sweep_points(scenario.sweep):
        name = point_name(values)
        extra = point_sets(values)
        labels = {k: f"{scenario_file} sweep point {name}" for k in extra}
        point, origins = load_scenario_traced(
            scenario_file, sets={**sets, **extra}, quick=quick, labels=labels
        )
        points.append(Point(name, values, point, origins))
    return points


def resolved_points(root: Path, scenario: Scenario, *, quick: bool) -> list[Point]:
    """The sweep points of a run folder, each from its own ``scenario.resolved.yaml``."""
    points = []
    for values in sweep_points(scenario.sweep):
        name = point_name(values)
        path = root / "points" / name / RESOLVED
        if not path.is_file():
            raise ConfigError(
                f"{root}: sweep point {name} has no {RESOLVED} (a run folder written by an "
                "older fedmammo, or damaged); start a new run"
            )
        points.append(Point(name, values, load_scenario(path, quick=quick)))
    return points


def run_sweep(
    spec: RunSpec,
    scenario: Scenario,
    run_fn: Callable[[RunSpec, Scenario], Path],
) -> Path:
    """Run (or resume) every point of the scenario's sweep; write sweep.csv.

    Each point runs from its folder's ``scenario.resolved.yaml`` (written here from the run
    spec's scenario and sets when the run did not write it at its start).
    """
    root = Path(spec.run_dir)
    points = sweep_points(scenario.sweep)
    frames = []
    for i, values in enumerate(points, start=1):
        name = point_name(values)
        sub = root / "points" / name
        resolved = sub / RESOLVED
        if not resolved.is_file():
            extra = point_sets(values)
            fresh, _ = load_scenario_traced(
                spec.scenario_file,
                sets={**spec.sets, **extra},
                quick=spec.quick,
                labels={k: f"sweep point {name}" for k in extra},
            )
            write_resolved(sub, fresh, quick=spec.quick)
        done = sub / "DONE"
        console.rule(f"sweep point {i}/{len(points)}: {safe(name)}")
        if not done.is_file():
            point_spec = replace(
                spec,
                run_dir=str(sub),
                scenario_file=str(resolved),
                sets={},
                resume=(sub / "results.json").is_file(),
            )
            with run_log(sub):  # the point's own records too, for its report
                run_fn(point_spec, load_scenario(resolved, quick=spec.quick))
            done.write_text("ok\n")
        results = json.loads((sub / "results.json").read_text())
        frame = pd.DataFrame(results["metrics"])
        for key, value in values.items():
            frame[key] = json.dumps(value) if isinstance(value, list | dict) else value
        frame["point"] = name
        frames.append(frame)
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    table.to_csv(root / "sweep.csv", index=False)
    _privacy_utility_plot(root, scenario, table)
    _comparison_page(root)
    return root


def _comparison_page(root: Path) -> None:
    """SWEEP/report.html: one column per point (the points keep their own report.html)."""
    from fedmammo.evaluation.html_report import write_comparison

    try:
        write_comparison([root], root / "report.html")
    except Exception:  # noqa: BLE001 - a page must never cost the sweep its results
        log.exception("the sweep's comparison page could not be written in %s", root)


def _privacy_utility_plot(root: Path, scenario: Scenario, table: pd.DataFrame) -> None:
    """privacy_utility.png (issue 7) when the sweep varies a privacy target epsilon."""
    roles = {e.name or "": e.role for e in scenario.centres}
    path = _draw_privacy_utility(root, table, list(scenario.sweep), roles)
    if path is not None:
        console.print(f"privacy-utility plot: {safe(path)}")


def redraw_privacy_utility(root: Path) -> Path | None:
    """Draw a finished sweep's privacy_utility.png again from its ``sweep.csv`` and resolved
    scenario (``fedmammo report SWEEP``: an older sweep gets the current figure); None when
    the sweep varies no target epsilon or its files are missing."""
    import yaml

    resolved, csv = root / RESOLVED, root / "sweep.csv"
    if not (resolved.is_file() and csv.is_file()):
        return None
    spec = yaml.safe_load(resolved.read_text()) or {}
    roles = {c.get("name") or "": c.get("role", "train") for c in spec.get("centres") or []}
    return _draw_privacy_utility(root, pd.read_csv(csv), list(spec.get("sweep") or {}), roles)


def _draw_privacy_utility(
    root: Path, table: pd.DataFrame, keys: list[str], roles: dict[str, str]
) -> Path | None:
    """The plot at the first test-only centre (else the first receiver)."""
    from fedmammo.evaluation.privacy_report import sweep_privacy_plot

    centres = [c for r in ("test", "receiver") for c, role in roles.items() if role == r]
    return sweep_privacy_plot(root, table, keys, centre=centres[0] if centres else None)
