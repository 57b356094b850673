"""Builders of the CLI bad-input suite: a small project tree per case, the cases, and an
in-process runner of ``python -m fedmammo.simulate`` that captures its console.

A case is one row: the input (scenario text, extra profile / recipe files, CLI arguments,
damage done to a run folder), the fragments its one-line error must hold (what, where, how to
fix) and what must survive it (no run folder left behind, no data made, a run folder
untouched).
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console

__all__ = [
    "PROFILE",
    "RECIPE",
    "SCENARIO",
    "Case",
    "Outcome",
    "folder_digest",
    "make_run_folder",
    "run_cli_in_process",
    "write_tree",
]

PROFILE = """\
source: T
data:
  synthetic:
    image_height: 64
    segments:
      - {manufacturer: Ma, patients: 6, prevalence: 0.34}
      - {manufacturer: Mb, patients: 6, prevalence: 0.34}
"""

RECIPE = """\
kind: fedavg
params:
  model: {name: mammo_cnn, options: {width: 4, depth: 3, norm: batch}}
  train: {epochs: 1, batch_size: 4, sampler: balanced_labels}
  rounds: 2
  arms: [federated, local]
  bootstrap: 10
quick:
  rounds: 1
"""

SCENARIO = """\
centres:
  - {profile: centres/site.yaml, name: a, role: train}
  - {profile: centres/site.yaml, name: b, role: train}
  - {profile: centres/site.yaml, name: t, role: test}
strategy: strategies/fa.yaml
image_size: [32, 24]
data_dir: {tmp}/data
output_dir: {tmp}/runs
quick: {image_size: [16, 16]}
"""

#: A GAN-sharing scenario on the shipped profiles (only loaded and planned, never run).
GANS = """\
centres:
  - {profile: inbreast_gan, name: A, role: receiver}
  - {profile: bcdr, name: B, role: sharer, overrides: {sharing.real_patches_in_simulation: true}}
  - {profile: optimam, name: C, role: sharer}
strategy: share_gans
strategy_overrides:
  params.arms: [A, A+real_B, A+synth_B_dcgan, A+synth_C_dcgan]
  params.subsets: [all]
  params.fractions: [1.0]
data_dir: {tmp}/data
output_dir: {tmp}/runs
"""


@dataclass(frozen=True)
class Case:
    """One row of the suite; ``{tmp}`` / ``{scen}`` / ``{run}`` in texts and arguments are the
    case's folder, its scenario file and its run folder (made by :func:`make_run_folder`)."""

    id: str
    args: tuple[str, ...]
    expect: tuple[str, ...]
    scenario: str = SCENARIO
    files: dict[str, str] = field(default_factory=dict)  # extra files relative to the tree
    damage: Callable[[Path], None] | None = None  # applied to the run folder ({run})
    survives: tuple[str, ...] = ("no run folder", "no data")
    lines: int = 1  # error lines expected (one per problem)


@dataclass
class Outcome:
    code: int
    text: str

    @property
    def errors(self) -> list[str]:
        return [line for line in self.text.splitlines() if line.startswith("error:")]


def write_tree(tmp: Path, case: Case) -> Path:
    """The case's project tree (a profile, a recipe, its files) and scenario; returns it."""
    (tmp / "centres").mkdir(parents=True, exist_ok=True)
    (tmp / "strategies").mkdir(exist_ok=True)
    (tmp / "centres" / "site.yaml").write_text(PROFILE)
    (tmp / "strategies" / "fa.yaml").write_text(RECIPE)
    for rel, text in case.files.items():
        path = tmp / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text.replace("{tmp}", str(tmp)))
    scen = tmp / "scen.yaml"
    scen.write_text(case.scenario.replace("{tmp}", str(tmp)))
    return scen


def make_run_folder(scen: Path, *, quick: bool = False, progress: dict | None = None) -> Path:
    """A run folder as ``python -m fedmammo.simulate`` leaves it when killed after its start:
    the resolved scenario, invocation.json, runspec.json and (optionally) results.json."""
    from fedmammo.config.loading import RESOLVED, write_resolved
    from fedmammo.federation.runspec import RunSpec
    from fedmammo.resume import INVOCATION
    from fedmammo.simulate import plan_run

    base, points = plan_run(scen, sets={}, quick=quick)
    run_dir = Path(base.output_dir) / base.name / "20260101-000000"
    write_resolved(run_dir, base, quick=quick)
    for point in points:
        if point.name:
            write_resolved(run_dir / "points" / point.name, point.scenario, quick=quick)
    invocation = {"scenario": str(scen.resolve()), "sets": {}, "quick": quick}
    (run_dir / INVOCATION).write_text(json.dumps(invocation))
    RunSpec(scenario_file=str(run_dir / RESOLVED), run_dir=str(run_dir), quick=quick).save()
    if progress is not None:
        results = {"meta": {}, "metrics": [], "failures": [], "notes": [], "progress": progress}
        (run_dir / "results.json").write_text(json.dumps(results))
    return run_dir


def folder_digest(folder: Path) -> dict[str, str]:
    """relative path -> sha256 of every file under ``folder``."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def run_cli_in_process(args: list[str], monkeypatch) -> Outcome:
    """``fedmammo.simulate.main(args)`` with a wide, plain console captured; starting a run
    (Ray, data) fails the test instead."""
    from fedmammo import simulate

    buf = io.StringIO()
    console = Console(file=buf, width=400, color_system=None, force_terminal=False)
    monkeypatch.setattr(simulate, "console", console)

    def no_run(spec, base, args):
        raise AssertionError(f"the CLI started a run in {spec.run_dir}")

    monkeypatch.setattr(simulate, "execute", no_run)
    code = simulate.main(args)
    return Outcome(code, buf.getvalue())


def capture_console(monkeypatch) -> io.StringIO:
    """The buffer that ``simulate``'s and ``interrupt``'s console write to, plain and wide."""
    from fedmammo import interrupt, simulate

    buf = io.StringIO()
    console = Console(file=buf, width=400, color_system=None, force_terminal=False)
    monkeypatch.setattr(simulate, "console", console)
    monkeypatch.setattr(interrupt, "console", console)
    return buf
