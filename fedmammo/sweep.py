"""Grid sweeps: a scenario's ``sweep:`` runs every combination in one run directory.

``sweep: {privacy.target_epsilon: [1, 3, 8, null], seed: [0, 1, 2]}`` makes 12 points, each
in ``<run_dir>/points/<key=value,...>/``; finished points are skipped on ``--resume``, and
``sweep.csv`` gathers every point's metric records with one column per swept key.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd
from rich.console import Console

from fedmammo.config import Scenario, load_scenario
from fedmammo.federation.runspec import RunSpec

__all__ = ["point_name", "sweep_points", "run_sweep"]

console = Console()


def sweep_points(sweep: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Every combination of the swept values, in a stable order."""
    keys = list(sweep)
    return [dict(zip(keys, values, strict=True)) for values in itertools.product(*sweep.values())]


def point_name(point: dict[str, Any]) -> str:
    """A folder-safe name for a sweep point."""
    text = ",".join(f"{k}={json.dumps(v)}" for k, v in point.items())
    return re.sub(r"[^A-Za-z0-9_.,=+-]", "", text.replace('"', ""))


def _as_sets(point: dict[str, Any]) -> dict[str, Any]:
    sets = {}
    for key, value in point.items():
        if key == "seed":
            sets["seeds"] = [value]
        else:
            sets[key] = value
    return sets


def run_sweep(
    spec: RunSpec, scenario: Scenario, run_fn: Callable[[RunSpec, Scenario], Path]
) -> Path:
    """Run (or resume) every point of the scenario's sweep; write sweep.csv."""
    root = Path(spec.run_dir)
    points = sweep_points(scenario.sweep)
    frames = []
    for i, point in enumerate(points, start=1):
        name = point_name(point)
        sub = root / "points" / name
        sub.mkdir(parents=True, exist_ok=True)
        done = sub / "DONE"
        sets = {**spec.sets, **_as_sets(point), "sweep": {}}
        console.rule(f"sweep point {i}/{len(points)}: {name}")
        if not done.is_file():
            point_spec = replace(
                spec, run_dir=str(sub), sets=sets, resume=(sub / "results.json").is_file()
            )
            point_scenario = load_scenario(spec.scenario_file, sets=sets, quick=spec.quick)
            run_fn(point_spec, point_scenario)
            done.write_text("ok\n")
        results = json.loads((sub / "results.json").read_text())
        frame = pd.DataFrame(results["metrics"])
        for key, value in point.items():
            frame[key] = json.dumps(value) if isinstance(value, list | dict) else value
        frame["point"] = name
        frames.append(frame)
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    table.to_csv(root / "sweep.csv", index=False)
    _privacy_utility_plot(root, scenario, table)
    return root


def _privacy_utility_plot(root: Path, scenario: Scenario, table: pd.DataFrame) -> None:
    """privacy_utility.png (issue 7) when the sweep varies a privacy target epsilon."""
    from fedmammo.evaluation.privacy_report import sweep_privacy_plot

    centre = (scenario.centre_names("test") or scenario.centre_names("receiver") or [None])[0]
    path = sweep_privacy_plot(root, table, list(scenario.sweep), centre=centre)
    if path is not None:
        console.print(f"privacy-utility plot: {path}")
