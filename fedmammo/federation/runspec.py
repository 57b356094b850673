"""How the ServerApp and ClientApp of one run find the scenario and the run directory.

``python -m fedmammo.simulate`` writes ``runspec.json`` in the run directory and points the
environment variable FEDMAMMO_RUNSPEC at it (Flower's programmatic simulation passes no run
config); ``flwr run`` passes ``scenario`` and ``run-dir`` through the run config instead.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from fedmammo.config import Scenario, load_scenario
from fedmammo.errors import ConfigError

__all__ = ["ENV_VAR", "POOLED", "RunSpec", "load_runspec", "scenario_of"]

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
    deployment: bool = False

    def save(self) -> Path:
        path = Path(self.run_dir) / "runspec.json"
        path.write_text(json.dumps(asdict(self), indent=2))
        return path


def load_runspec(run_config: dict | None = None) -> RunSpec:
    """The run spec from the Flower run config (deployment) or the environment (simulation)."""
    run_config = dict(run_config or {})
    scenario = str(run_config.get("scenario") or "")
    if scenario:
        run_dir = str(run_config.get("run-dir") or "")
        if not run_dir:
            raise ConfigError("flwr run: set run config 'run-dir' (an absolute path) too")
        return RunSpec(
            scenario_file=scenario,
            run_dir=run_dir,
            quick=bool(run_config.get("quick", False)),
            deployment=True,
        )
    path = os.environ.get(ENV_VAR)
    if not path or not Path(path).is_file():
        raise ConfigError(
            f"no scenario: run through `python -m fedmammo.simulate SCENARIO.yaml`, or `flwr run` "
            f'with -c \'scenario="..." run-dir="..."\' ({ENV_VAR}={path!r})'
        )
    return RunSpec(**json.loads(Path(path).read_text()))


@lru_cache(maxsize=8)
def _load(scenario_file: str, sets_json: str, quick: bool) -> Scenario:
    return load_scenario(scenario_file, sets=json.loads(sets_json), quick=quick)


def scenario_of(spec: RunSpec) -> Scenario:
    """The resolved scenario of a run spec (cached per process)."""
    return _load(spec.scenario_file, json.dumps(spec.sets, sort_keys=True), spec.quick)
