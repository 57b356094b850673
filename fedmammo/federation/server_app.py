"""The orchestrator's ServerApp: identify the centres, run the method's phases, summarise."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp
from rich.console import Console

from fedmammo.evaluation.provenance import run_provenance
from fedmammo.evaluation.report import write_summary
from fedmammo.evaluation.results import RunRecorder
from fedmammo.evaluation.run_outputs import attach_run_outputs
from fedmammo.federation.orchestrator import Orchestrator
from fedmammo.federation.runspec import RunSpec, load_runspec, scenario_of

__all__ = ["build_server_app", "run_scenario"]

log = logging.getLogger(__name__)

Runner = Callable[[Orchestrator], None]
Section = Callable[[RunRecorder, Console], str]


def run_scenario(grid: Grid, spec: RunSpec, run: Runner, section: Section) -> RunRecorder:
    """Identify the centres, run the method, keep results.json current, write the summary.

    What the ServerApp does with its grid; tests call it with an in-process grid.
    """
    scenario = scenario_of(spec)
    recorder = RunRecorder(
        spec.run_dir,
        resume=spec.resume,
        meta={
            "scenario": scenario.name,
            "strategy": scenario.recipe.name,
            "kind": scenario.recipe.kind,
            "seeds": scenario.seeds,
            "quick": spec.quick,
            "deployment": spec.deployment,
            "centre_order": scenario.centre_names(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            **run_provenance(),
        },
    )
    outputs = attach_run_outputs(
        recorder, scenario.model_dump(mode="json", exclude={"source_file"}, exclude_none=True)
    )
    orc = Orchestrator(grid=grid, spec=spec, scenario=scenario, recorder=recorder)
    expected = len(spec.node_order) or len(scenario.centres)
    t0 = time.perf_counter()
    orc.identify(expected)
    recorder.meta["startup_seconds"] = round(time.perf_counter() - t0, 2)
    recorder.meta["centres"] = {
        c: {"role": orc.roles[c], "counts": orc.counts[c]} for c in orc.nodes
    }
    recorder.flush()
    try:
        run(orc)
    finally:
        recorder.meta["wall_seconds"] = round(time.perf_counter() - t0, 2)
        recorder.flush()
        write_summary(recorder, orc.console, section=section)
        outputs.close()
    return recorder


def build_server_app(method_of: Callable[[str], tuple[Runner, Section]]) -> ServerApp:
    """A ServerApp running, for the scenario's strategy kind, ``method_of(kind)``'s runner and
    report section."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        """Run the scenario the run config (or the simulation's run spec) names."""
        spec = load_runspec(context.run_config)
        run_scenario(grid, spec, *method_of(scenario_of(spec).recipe.kind))

    return app
