"""Grid sweeps: a scenario's ``sweep:`` runs every combination in one run directory.

``sweep: {privacy.target_epsilon: [1, 3, 8, null], seed: [0, 1, 2]}`` makes 12 points, each
in ``<run_dir>/points/<key=value,...>/`` with its own ``scenario.resolved.yaml`` (written when
the run starts, after every point loaded and passed the plan checks); finished points are
skipped on ``--resume``, and ``sweep.csv`` gathers every point's metric records with one
column per swept key.

A swept scenario-level ``privacy.*`` key reaches only the centres without a privacy block of
their own (a profile's own wins): :func:`shadowed_privacy` names the centres it reaches at no
point, warned about when the points are loaded (``--check``, run start), in the run logs of
the sweep and of each point, and under the privacy-utility plot.
"""

from __future__ import annotations

import itertools
import json
import logging
import re
from collections.abc import Callable, Mapping, Sequence
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
    "shadowed_privacy",
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
    error names the point. Warns (once per process) of each centre a swept privacy key
    never reaches (:func:`shadowed_privacy`)."""
    points = []
    by_set = any(k == "sweep" or k.startswith("sweep.") for k in sets)  # who made the sweep
    given = "--set sweep" if by_set else str(scenario_file)
    for values in sweep_points(scenario.sweep):
        name = point_name(values)
        extra = point_sets(values)
        labels = {k: f"{given} sweep point {name}" for k in extra}
        point, origins = load_scenario_traced(
            scenario_file, sets={**sets, **extra}, quick=quick, labels=labels
        )
        points.append(Point(name, values, point, origins))
    specs = [_privacy_view(p.scenario) for p in points]
    for line in shadowed_privacy(list(scenario.sweep), specs).values():
        _tell_console(line)
    return points


# --------------------------------------------------------------------------- shadowed keys
#: Lines this process printed already (--check loads the points in both modes).
_SHOWN: set[str] = set()
#: What a shadowed centre without DP trains at: a note, not a warning (an opt-out such as
#: privacy_budget.yaml's receiver, ``privacy: {}``, is deliberate and changes no budget).
NO_DP_THERE = "it trains without DP at every point"


def _level(line: str) -> int:
    return logging.INFO if NO_DP_THERE in line else logging.WARNING


def _privacy_view(scenario: Scenario) -> dict[str, Any]:
    """What :func:`shadowed_privacy` reads of a point, as its scenario.resolved.yaml has it."""
    return scenario.model_dump(mode="json", include={"privacy", "centres", "resolved_profiles"})


def _text(value: Any) -> str:
    if value is None:
        return "null"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _reaches(own: Mapping[str, Any], default: Mapping[str, Any]) -> bool:
    return all(own.get(k) == v for k, v in default.items())


def shadowed_privacy(keys: Sequence[str], specs: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """The training centres that the sweep's scenario-level ``privacy`` keys reach at no
    point, each with one line saying so: ``{centre: line}``.

    ``specs``: each point's resolved scenario as a mapping (``scenario.resolved.yaml``,
    or :func:`_privacy_view`). The scenario's ``privacy`` block is a default that a centre
    whose profile or overrides hold a privacy block of their own never takes (README:
    "a profile's own wins"), so its budget stays at its own value at every point while the
    sweep (and its plot) says otherwise. Test-only centres train nothing and are left out.
    """
    swept = [k for k in keys if k.split(".")[0] == "privacy"]
    several = len(swept) > 1
    return {
        name: (
            f"sweep key{'s' if several else ''} {', '.join(swept)} "
            f"reach{'' if several else 'es'} centre {name} at no point: its own privacy block "
            f"(in its profile or overrides) wins over the scenario's ({there}); fix: remove "
            "that block if the sweep should reach it"
        )
        for name, there in _shadowed(swept, specs).items()
    }


def _shadowed(swept: list[str], specs: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """{centre: what it trains at instead} for :func:`shadowed_privacy`."""
    if not swept or not specs:
        return {}
    out: dict[str, str] = {}
    for entry in specs[0].get("centres") or []:
        name = entry.get("name") or ""
        if entry.get("role", "train") == "test":
            continue
        own = []
        for spec in specs:
            default = spec.get("privacy")
            profile = (spec.get("resolved_profiles") or {}).get(name) or {}
            privacy = profile.get("privacy") or {}
            if default is None or _reaches(privacy, default):
                break
            own.append(privacy)
        else:
            out[name] = _trained_at(swept, own)
    return out


def _trained_at(swept: list[str], own: list[Mapping[str, Any]]) -> str:
    if not any(
        p.get("target_epsilon") is not None or p.get("noise_multiplier") is not None for p in own
    ):
        return NO_DP_THERE
    fields = [k.split(".", 1)[1] for k in swept if "." in k] or ["target_epsilon"]
    values = [f"{f} {' / '.join(dict.fromkeys(_text(p.get(f)) for p in own))}" for f in fields]
    return f"its own {', '.join(values)} at every point"


def _tell_console(line: str) -> None:
    """``warning: line`` (``note:`` for a centre without DP), once per process."""
    if line not in _SHOWN:
        _SHOWN.add(line)
        what = "[yellow]warning:[/]" if _level(line) == logging.WARNING else "note:"
        console.print(f"{what} {safe(line)}", highlight=False, soft_wrap=True)


def _log_line(line: str, handlers: Sequence[logging.Handler]) -> None:
    """``line`` as a WARNING record (INFO for a centre without DP) to ``handlers`` (run logs)."""
    record = log.makeRecord(log.name, _level(line), __file__, 0, "%s", (line,), None)
    for handler in handlers:
        handler.handle(record)


def _point_specs(root: Path, names: list[str]) -> list[dict[str, Any]]:
    """Each sweep point's scenario.resolved.yaml as a mapping (the points that have one)."""
    import yaml

    paths = [root / "points" / name / RESOLVED for name in names]
    return [yaml.safe_load(p.read_text()) or {} for p in paths if p.is_file()]


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
    names = [point_name(values) for values in points]
    for values, name in zip(points, names, strict=True):
        resolved = root / "points" / name / RESOLVED
        if not resolved.is_file():
            extra = point_sets(values)
            fresh, _ = load_scenario_traced(
                spec.scenario_file,
                sets={**spec.sets, **extra},
                quick=spec.quick,
                labels={k: f"sweep point {name}" for k in extra},
            )
            write_resolved(resolved.parent, fresh, quick=spec.quick)
    specs = _point_specs(root, names)
    shadowed = shadowed_privacy(list(scenario.sweep), specs)
    run_logs = [h for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)]
    for line in shadowed.values():
        _tell_console(line)  # (once: the points' loading said it already)
        _log_line(line, run_logs)  # the sweep's run.log
    frames = []
    for i, (values, name) in enumerate(zip(points, names, strict=True), start=1):
        sub = root / "points" / name
        resolved = sub / RESOLVED
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
            with run_log(sub) as handler:  # the point's own records too, for its report
                for line in shadowed.values():
                    _log_line(line, [handler])
                run_fn(point_spec, load_scenario(resolved, quick=spec.quick))
        results = json.loads((sub / "results.json").read_text())
        if not done.is_file() and not _ended_early(results):  # else --resume runs it again
            done.write_text("ok\n")
        frame = pd.DataFrame(results["metrics"])
        for key, value in values.items():
            frame[key] = json.dumps(value) if isinstance(value, list | dict) else value
        frame["point"] = name
        frames.append(frame)
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    table.to_csv(root / "sweep.csv", index=False)
    _privacy_utility_plot(root, scenario, table, specs)
    _comparison_page(root)
    return root


def _ended_early(results: dict[str, Any]) -> bool:
    """Whether a point's run has a unit that stopped without being done (too few centres
    sent an update; a unit a budget stopped is done)."""
    progress = results.get("progress") or {}
    return any(s.get("stopped") and not s.get("done") for s in progress.values())


def _comparison_page(root: Path) -> None:
    """SWEEP/report.html: one column per point (the points keep their own report.html)."""
    from fedmammo.evaluation.html_report import write_comparison

    try:
        write_comparison([root], root / "report.html")
    except Exception:  # noqa: BLE001 - a page must never cost the sweep its results
        log.exception("the sweep's comparison page could not be written in %s", root)


def _privacy_utility_plot(
    root: Path, scenario: Scenario, table: pd.DataFrame, specs: list[dict[str, Any]]
) -> None:
    """privacy_utility.png (issue 7) when the sweep varies a privacy target epsilon."""
    roles = {e.name or "": e.role for e in scenario.centres}
    path = _draw_privacy_utility(root, table, list(scenario.sweep), roles, specs)
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
    sweep = spec.get("sweep") or {}
    names = [point_name(values) for values in sweep_points(sweep)]
    return _draw_privacy_utility(
        root, pd.read_csv(csv), list(sweep), roles, _point_specs(root, names)
    )


def _draw_privacy_utility(
    root: Path,
    table: pd.DataFrame,
    keys: list[str],
    roles: dict[str, str],
    specs: list[dict[str, Any]],
) -> Path | None:
    """The plot at the first test-only centre (else the first receiver); ``specs``: the
    points' resolved scenarios (which centres the swept epsilon never reached)."""
    from fedmammo.evaluation.privacy_report import sweep_privacy_plot

    centres = [c for r in ("test", "receiver") for c, role in roles.items() if role == r]
    return sweep_privacy_plot(
        root,
        table,
        keys,
        centre=centres[0] if centres else None,
        shadowed=_shadowed([k for k in keys if k.split(".")[0] == "privacy"], specs),
    )
