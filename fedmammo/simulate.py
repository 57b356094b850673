"""Run a scenario on Flower's simulation engine.

python -m fedmammo.simulate SCENARIO.yaml [--out DIR] [--check] [--set key.path=value ...]
                             [--quick] [--resume RUN_DIR]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import sys
from pathlib import Path

import yaml
from rich.console import Console
from rich.syntax import Syntax

import fedmammo.methods  # noqa: F401  (registers the methods' recipe kinds)
from fedmammo.config import Scenario, load_scenario
from fedmammo.errors import FedmammoError
from fedmammo.federation.console import safe
from fedmammo.federation.run_log import add_run_log, quiet_libraries
from fedmammo.federation.runspec import ENV_VAR, POOLED, RunSpec
from fedmammo.federation.telemetry import quiet_flower

__all__ = ["main", "prepare_data", "run"]

console = Console()
log = logging.getLogger("fedmammo")


def _parse_sets(items: list[str]) -> dict:
    sets = {}
    for item in items:
        if "=" not in item:
            raise FedmammoError(f"--set {item!r}: expected key.path=value")
        key, value = item.split("=", 1)
        sets[key.strip()] = yaml.safe_load(value)
    return sets


def resolved_yaml(scenario: Scenario) -> str:
    """The fully resolved scenario (profiles and recipe inlined) as YAML."""
    data = scenario.model_dump(mode="json", exclude={"source_file"})
    return yaml.safe_dump(data, sort_keys=False)


def prepare_data(scenario: Scenario, *, with_pooled: bool) -> None:
    """Materialise every centre's data once, before the Flower apps start (no races)."""
    from rich.progress import Progress

    from fedmammo.data.prepare import materialise_centre

    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("preparing centres", total=len(scenario.centres))
        for entry in scenario.centres:
            profile = scenario.resolved_profiles[entry.name or ""]
            progress.update(task, description=f"preparing centre {profile.name}")
            data = materialise_centre(
                profile,
                scenario.data_dir,
                image_size=scenario.image_size,
                data_seed=scenario.data_seed,
                test_only=entry.role == "test",
            )
            if with_pooled and entry.role in ("train", "receiver"):
                materialise_centre(
                    profile,
                    scenario.data_dir,
                    image_size=scenario.image_size,
                    data_seed=scenario.data_seed,
                )
            console.print(
                f"  centre [bold]{safe(profile.name)}[/] ({entry.role}): "
                f"{len(data.manifest)} images, {len(data.skipped)} skipped"
            )
            progress.advance(task)


def _wants_pooled(scenario: Scenario) -> bool:
    params = scenario.recipe.typed_params()
    return "pooled" in getattr(params, "arms", [])


def run(spec: RunSpec, scenario: Scenario) -> Path:
    """Run one scenario in a run directory through Flower's simulation engine."""
    from flwr.simulation import run_simulation

    from fedmammo.apps import client_app, server_app

    run_dir = Path(spec.run_dir)
    with_pooled = _wants_pooled(scenario)
    prepare_data(scenario, with_pooled=with_pooled)
    spec.node_order = scenario.centre_names() + ([POOLED] if with_pooled else [])
    os.environ[ENV_VAR] = str(spec.save())
    cpus = max(p.compute.num_cpus for p in scenario.resolved_profiles.values())
    gpus = max(p.compute.num_gpus for p in scenario.resolved_profiles.values())
    run_simulation(
        server_app=server_app,
        client_app=client_app,
        num_supernodes=len(spec.node_order),
        backend_config={
            "client_resources": {"num_cpus": cpus, "num_gpus": gpus},
            "init_args": {
                "num_cpus": os.cpu_count() or 1,
                "include_dashboard": False,
                "log_to_driver": True,
            },
        },
    )
    results = run_dir / "results.json"
    if not results.is_file():
        raise FedmammoError(f"the run wrote no results ({run_dir}); see {run_dir / 'run.log'}")
    return run_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fedmammo.simulate",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("scenario", help="scenario YAML (see scenarios/)")
    parser.add_argument("--out", help="output root (default: the scenario's output_dir)")
    parser.add_argument("--check", action="store_true", help="validate, print, do not run")
    parser.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a dotted key (strategy.rounds=2, centres.A.split.train=0.5)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="apply the scenario's quick: overrides (small images, few rounds)",
    )
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run")
    args = parser.parse_args(argv)
    quiet_flower()  # nothing calls home unless FEDMAMMO_TELEMETRY=1
    quiet_libraries()
    try:
        if args.resume:
            run_dir = Path(args.resume).resolve()
            saved = run_dir / "runspec.json"
            if not saved.is_file():
                raise FedmammoError(f"--resume {run_dir}: no runspec.json there")
            spec = RunSpec(**json.loads(saved.read_text()))
            spec.resume, spec.run_dir = True, str(run_dir)
            scenario = load_scenario(spec.scenario_file, sets=spec.sets, quick=spec.quick)
        else:
            sets = _parse_sets(args.sets)
            scenario = load_scenario(args.scenario, sets=sets, quick=args.quick)
            if args.check:
                console.print(Syntax(resolved_yaml(scenario), "yaml"))
                console.print(f"[green]{safe(args.scenario)}: valid[/]")
                return 0
            stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
            out = Path(args.out or scenario.output_dir)
            run_dir = (out / scenario.name / stamp).resolve()
            run_dir.mkdir(parents=True, exist_ok=True)
            spec = RunSpec(
                scenario_file=str(Path(args.scenario).resolve()),
                run_dir=str(run_dir),
                sets=sets,
                quick=args.quick,
            )
        (run_dir / "scenario.resolved.yaml").write_text(resolved_yaml(scenario))
        add_run_log(run_dir)
        console.print(f"run directory: [bold]{safe(run_dir)}[/]")
        if scenario.sweep:
            from fedmammo.sweep import run_sweep

            run_sweep(spec, scenario, run)
        else:
            run(spec, scenario)
        console.print(f"[green]done[/]: results in {safe(run_dir)}")
        return 0
    except FedmammoError as exc:
        console.print(f"[red]error:[/] {safe(exc)}", highlight=False)
        return 2


if __name__ == "__main__":
    sys.exit(main())
