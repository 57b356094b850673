"""How the ServerApp and ClientApp of one run find the scenario and the run directory.

``python -m fedmammo.simulate`` writes ``runspec.json`` in the run directory and points the
environment variable FEDMAMMO_RUNSPEC at it (Flower's programmatic simulation passes no run
config); ``flwr run`` passes ``scenario`` and ``run-dir`` through the run config instead.

Under ``flwr run`` both apps derive the same spec from the run config: absolute paths, a
relative ``data_dir`` anchored at the project holding the scenario (as ``python -m
fedmammo.simulate`` run from that project would), and the node order a simulation federation
maps partition ids with (the scenario's centres, then the pooled what-if node when an arm
needs it). Real sites ignore the node order: they name their centre in ``--node-config``.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from fedmammo.config import Scenario, load_scenario
from fedmammo.errors import ConfigError

__all__ = ["ENV_VAR", "POOLED", "RunSpec", "load_runspec", "node_order", "scenario_of"]

ENV_VAR = "FEDMAMMO_RUNSPEC"
POOLED = "__pooled__"


@dataclass
class RunSpec:
    """Everything both apps need to rebuild the same resolved scenario."""

    scenario_file: str
    run_dir: str
    sets: dict[str, Any] = field(default_factory=dict)
    quick: bool = False
    resume: bool = False
    node_order: list[str] = field(default_factory=list)  # simulation: partition-id -> centre
    deployment: bool = False  # real sites (flwr run on a deployment SuperLink)
    backend: str = "ray"  # simulation: Flower's Ray engine, or "inprocess" (no Ray)
    ray_address: str | None = None  # simulation: the --ray-address the run was given
    workers: int = 1  # simulation: centres the engine runs at once (jobs in flight)
    # simulation: every centre's torch threads, floor(client_resources.num_cpus): from the
    # scenario, never an inherited OMP_NUM_THREADS (None: a run folder from before)
    torch_threads: int | None = None

    def save(self) -> Path:
        path = Path(self.run_dir) / "runspec.json"
        path.write_text(json.dumps(asdict(self), indent=2))
        return path


def load_runspec(run_config: dict | None = None) -> RunSpec:
    """The run spec from the Flower run config (``flwr run``) or the environment (simulation)."""
    run_config = dict(run_config or {})
    scenario = str(run_config.get("scenario") or "")
    if scenario:
        spec = _from_run_config(
            scenario, str(run_config.get("run-dir") or ""), bool(run_config.get("quick", False))
        )
        return dataclasses.replace(spec, sets=dict(spec.sets), node_order=list(spec.node_order))
    path = os.environ.get(ENV_VAR)
    if not path or not Path(path).is_file():
        raise ConfigError(
            f"no scenario: run through `python -m fedmammo.simulate SCENARIO.yaml`, or `flwr run` "
            f"with -c \"scenario='/abs/SCENARIO.yaml' run-dir='/abs/RUN_DIR'\" ({ENV_VAR}={path!r})"
        )
    return RunSpec(**json.loads(Path(path).read_text()))


def node_order(scenario: Scenario) -> list[str]:
    """Simulated nodes in partition-id order: the centres, then the pooled what-if node when
    one of the recipe's arms pools the training centres' images."""
    params = scenario.recipe.typed_params()
    return scenario.centre_names() + ([POOLED] if "pooled" in getattr(params, "arms", []) else [])


def _project_of(scenario_file: Path) -> Path:
    """The folder a scenario's relative paths mean under ``flwr run``: the project holding it
    (the folder with ``centres/`` beside ``scenarios/``), else the scenario's own folder."""
    folder = scenario_file.parent
    for candidate in (folder, folder.parent):
        if (candidate / "centres").is_dir():
            return candidate
    return folder


@lru_cache(maxsize=8)
def _from_run_config(scenario_file: str, run_dir: str, quick: bool) -> RunSpec:
    for key, value in (("scenario", scenario_file), ("run-dir", run_dir)):
        if not value or not Path(value).is_absolute():
            raise ConfigError(
                f"flwr run: run config {key!r} must be an absolute path (the ServerApp and the "
                f"ClientApps do not run in your folder), got {value!r}; fix: -c "
                "\"scenario='$PWD/scenarios/NAME.yaml' run-dir='$PWD/runs/NAME'\""
            )
    sets: dict[str, Any] = {}
    data_dir = Path(_load(scenario_file, "{}", quick).data_dir)
    if not data_dir.is_absolute():
        sets["data_dir"] = str(_project_of(Path(scenario_file)) / data_dir)
    spec = RunSpec(scenario_file=scenario_file, run_dir=run_dir, sets=sets, quick=quick)
    spec.deployment = True  # until the ServerApp finds simulated nodes
    spec.node_order = node_order(scenario_of(spec))
    return spec


@lru_cache(maxsize=8)
def _load(scenario_file: str, sets_json: str, quick: bool) -> Scenario:
    return load_scenario(scenario_file, sets=json.loads(sets_json), quick=quick)


def scenario_of(spec: RunSpec) -> Scenario:
    """The resolved scenario of a run spec (cached per process)."""
    return _load(spec.scenario_file, json.dumps(spec.sets, sort_keys=True), spec.quick)
