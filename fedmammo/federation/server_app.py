"""The orchestrator's ServerApp: connect the centres, run the method's phases, summarise.

Before anything else the server compares the nodes it can reach with the scenario's centres
(:mod:`fedmammo.federation.connect`): a simulation federation too small for the scenario
fails at once with the command that resizes it; real sites get the recipe's
``connect_timeout``, after which the run stops (results.json and results.md written, a
failure per missing centre) or, where the recipe's ``min_centres`` allows, goes on without
them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable
from logging import ERROR, INFO, WARNING
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp
from rich.console import Console

from fedmammo.config import Scenario
from fedmammo.data.prepare import materialise_centre
from fedmammo.errors import ConfigError, FedmammoError
from fedmammo.evaluation.provenance import run_provenance
from fedmammo.evaluation.results import RunRecorder
from fedmammo.federation.connect import (
    ConnectError,
    FederationTooSmall,
    expected_nodes,
    other_profiles,
    say,
    simulated_node_ids,
    simulation_size_fix,
    wait_for_centres,
)
from fedmammo.federation.orchestrator import Orchestrator
from fedmammo.federation.run_log import add_run_log
from fedmammo.federation.runspec import POOLED, RunSpec, load_runspec, scenario_of
from fedmammo.plugins import load_plugins
from fedmammo.run_lock import hold_run_folder

__all__ = ["build_server_app", "is_simulation", "poll_often", "pull_interval", "run_scenario"]

log = logging.getLogger(__name__)

Runner = Callable[[Orchestrator], None]
Section = Callable[[RunRecorder, Console], str]


#: How often the ServerApp asks Flower's in-memory grid (simulation) for replies, up to
#: FEW_NODES nodes; Flower's default, 0.1 s, left every exchange waiting 0.05 s on average
#: after the last reply (BENCHMARKS.md, "Polling for replies"). Each pull walks every
#: outstanding message (measured: 0.33 ms for 100, 3.4 ms for 1000), so beyond FEW_NODES the
#: interval grows with the nodes, back to Flower's 0.1 s at 1000. The orchestrator's own
#: exchanges are windowed (window.py) and pull every 10 ms; this interval paces Flower's
#: ``send_and_receive`` (SecAgg+ stages, exchanges that fit in a window).
PULL_INTERVAL, FEW_NODES = 0.01, 100


def _in_memory(grid: Grid) -> bool:
    """Whether ``grid`` is Flower's in-memory grid (a simulation's)."""
    try:
        from flwr.superlink.grid import InMemoryGrid
    except ImportError:  # a later Flower moved it: treat nodes as real sites
        return False
    return isinstance(grid, InMemoryGrid)


def is_simulation(grid: Grid, spec: RunSpec) -> bool:
    """Whether the nodes are simulated: ``python -m fedmammo.simulate``, or ``flwr run`` on a
    simulation federation (Flower's in-memory grid)."""
    return not spec.deployment or _in_memory(grid)


def pull_interval(nodes: int) -> float:
    """Seconds between the ServerApp's pulls for replies in a simulation of ``nodes`` nodes
    (:data:`PULL_INTERVAL`, growing linearly beyond :data:`FEW_NODES`)."""
    return PULL_INTERVAL * max(1.0, nodes / FEW_NODES)


def poll_often(grid: Grid, nodes: int = 0) -> None:
    """Pull replies every :func:`pull_interval` of ``nodes`` (0: the nodes registered now)
    from Flower's in-memory grid; other grids (real sites over gRPC, the in-process one) are
    left as they are."""
    if _in_memory(grid):
        grid.pull_interval = pull_interval(nodes or len(list(grid.get_node_ids())))


def run_scenario(
    grid: Grid,
    spec: RunSpec,
    run: Runner,
    section: Section,
    *,
    simulated: bool | None = None,
    prepare: bool = False,
) -> RunRecorder:
    """Connect the centres, run the method, keep results.json current, write the summary.

    What the ServerApp does with its grid; tests call it with an in-process grid.
    ``simulated`` (default: :func:`is_simulation`): nodes are all there at once;
    ``prepare``: materialise the simulated centres' data first (``flwr run`` on a local
    simulation federation, where ``python -m fedmammo.simulate`` did not).
    """
    # the report and the run's outputs load matplotlib: imported here, not in every process
    # that imports the apps (a simulated centre imports this module too)
    from fedmammo.evaluation.report import write_summary
    from fedmammo.evaluation.run_outputs import attach_run_outputs

    scenario = scenario_of(spec)
    simulated = is_simulation(grid, spec) if simulated is None else simulated
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
            "backend": None if spec.deployment else spec.backend,
            "centre_order": scenario.centre_names(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "finished": False,  # True once the method returns: a killed run stays False
            **run_provenance(),
        },
    )
    outputs = attach_run_outputs(
        recorder, scenario.model_dump(mode="json", exclude={"source_file"}, exclude_none=True)
    )
    orc = Orchestrator(grid=grid, spec=spec, scenario=scenario, recorder=recorder)
    # a resumed run's wall time adds this process's to the earlier ones' (meta "resumed")
    earlier = float(recorder.meta.get("wall_seconds") or 0) if spec.resume else 0.0
    t0 = time.perf_counter()
    try:
        _connect(orc, simulated=simulated, prepare=prepare)
        recorder.meta["startup_seconds"] = round(time.perf_counter() - t0, 2)
        recorder.meta["centres"] = {
            c: {
                "role": orc.roles[c],
                "node": orc.nodes[c],
                "counts": orc.counts[c],
                "torch_threads": orc.threads[c],
                "brightest_pixel": orc.references.get(c),
            }
            for c in orc.nodes
        }
        recorder.flush()
        _warn_without_test_images(orc)
        if spec.deployment:
            _note_other_thread_counts(orc)
        run(orc)
        recorder.meta["finished"] = True
        _note_faults_that_never_fired(orc)
    except ConnectError as exc:
        say(ERROR, str(exc))
        raise
    finally:
        recorder.meta["wall_seconds"] = round(earlier + time.perf_counter() - t0, 2)
        _final_flush(recorder)
        write_summary(recorder, orc.console, section=section)
        outputs.close()
    return recorder


def _final_flush(recorder: RunRecorder) -> None:
    """The run's last results.json; when it cannot be written (a full disk), one line naming
    the run folder before the error goes on: the centre failures and notes the console
    showed since the last write are then nowhere on disk."""
    try:
        recorder.flush()
    except OSError as exc:
        say(
            ERROR,
            f"results.json could not be written in the run folder {recorder.run_dir} "
            f"({exc.strerror or exc}): the centre failures and notes shown above since its "
            "last write are not on disk",
        )
        raise


def _warn_without_test_images(orc: Orchestrator) -> None:
    """Every centre reported its counts and none holds a test image: a warning and a note
    before any training, not a run that ends "done" with no result table."""
    reported = {c: n for c, n in orc.counts.items() if c != "pooled"}
    if not reported or not all(reported.values()):
        return  # a centre that reports no counts may hold test images
    tested = sum(v for n in reported.values() for k, v in n.items() if k.startswith("n|test|"))
    if tested == 0:
        line = (
            f"no centre has test images ({', '.join(reported)}): the run trains but tests "
            "nothing, so it reports no test metric; fix: give a centre role test, or a split "
            "with test > 0"
        )
        say(WARNING, line)
        orc.recorder.note(line)


def _note_other_thread_counts(orc: Orchestrator) -> None:
    """Deployed sites whose torch thread count is not the one ``python -m fedmammo.simulate``
    gives this scenario's centres: a warning and a note (their float sums run in another
    order, which changes training: on ``fedavg_quick --quick`` 2 threads instead of 1 moved
    test AUROCs by up to 0.31), not an error."""
    from fedmammo.federation.ray_cluster import centre_threads, client_resources

    simulated = centre_threads(client_resources(orc.scenario)["num_cpus"])
    other = {c: n for c, n in orc.threads.items() if n is not None and n != simulated}
    if other:
        listed = ", ".join(f"{c} {n}" for c, n in sorted(other.items()))
        line = (
            f"torch threads per centre: {listed}, where the simulation of this scenario gives "
            f"each centre {simulated}: their float sums run in another order, so training and "
            f"every metric can differ from the simulation's, not only in the last digits; for "
            f"the simulation's numbers, start those SuperNodes with OMP_NUM_THREADS={simulated}"
        )
        say(WARNING, line)
        orc.recorder.note(line)


def _note_faults_that_never_fired(orc: Orchestrator) -> None:
    """A ``faults:`` entry no round injected (an arm name the method does not use, a round
    past the arm's last, a method whose rounds inject none): a warning and a note, not a
    silent run without the drop-out the user asked for."""
    fired = {
        (f["centre"], f["round"], f["arm"])
        for f in orc.recorder.failures
        if "InjectedFault" in str(f.get("reason"))
    }
    for f in orc.scenario.faults:
        if (f.centre, f.round, f.arm) not in fired:
            line = (
                f"fault {{centre: {f.centre}, round: {f.round}, arm: {f.arm}}} never fired: no "
                f"round {f.round} of an arm named {f.arm!r} trained at {f.centre} (faults are "
                f"injected in the rounds of fedavg, mtl_finetune, contrastive_dg and "
                f"periodic_sampling; arm defaults to 'federated')"
            )
            say(WARNING, line)
            orc.recorder.note(line)


def _connect(orc: Orchestrator, *, simulated: bool, prepare: bool) -> None:
    """Wait for the centres; record the missing ones; stop unless ``min_centres`` allows."""
    spec, scenario, recorder = orc.spec, orc.scenario, orc.recorder
    expected = expected_nodes(spec, scenario, simulated=simulated)
    timeout = scenario.recipe.connect_timeout
    if simulated:
        have = len(simulated_node_ids(orc.grid, len(expected)))
        if have < len(expected):
            line = simulation_size_fix(have, expected, scenario.name)
            recorder.failure(arm="all", seed=None, centre="all", reason=line, phase="connect")
            recorder.note(line)
            raise FederationTooSmall(line)
    if prepare:
        _prepare_centres(scenario, pooled=POOLED in spec.node_order)
    say(INFO, f"connecting {len(expected)} centres: {', '.join(expected)}")
    conn = wait_for_centres(orc, expected, timeout=timeout, simulated=simulated)
    recorder.meta["connect_seconds"] = conn.seconds
    for line in other_profiles(orc, conn.connected):
        say(WARNING, line)
        recorder.note(line)
    if not conn.missing:
        return
    line = conn.missing_line(None if simulated else timeout)
    for centre in conn.missing:
        recorder.failure(arm="all", seed=None, centre=centre, reason=line, phase="connect")
    why = _may_go_on(orc, conn.connected, conn.missing)
    if why:
        recorder.note(f"went on without {', '.join(conn.missing)} ({why}): {line}")
        say(WARNING, f"going on without {', '.join(conn.missing)}: {why}")
        return
    if simulated:
        fix = "fix: check those nodes' errors above"
    elif conn.refusing:
        fix = (
            f"fix: run a scenario with the image size and data seed {', '.join(conn.refusing)} "
            "prepared (their refusals above name them; the scenario's image_size, or its quick "
            "block with quick=true), or prepare those sites again with this run's (deployment "
            "prepare --image-size H W --data-seed N)"
        )
    elif conn.errors:
        fix = (
            "fix: nodes that failed to identify are running but refused: mend what their "
            "errors name at those sites (their SuperNode logs hold the whole messages) and "
            "restart them; start any missing centre's SuperNode (--node-config 'centre=...')"
        )
    else:
        fix = (
            "fix: start their SuperNodes (--node-config 'centre=...'), or give them longer "
            "(the scenario's strategy_overrides: {connect_timeout: SECONDS})"
        )
    recorder.note(f"run stopped before training: {line}")
    raise ConnectError(f"{line}; {fix}")


def _may_go_on(orc: Orchestrator, connected: list[str], missing: list[str]) -> str | None:
    """Why the run may go on without ``missing`` (the recipe's ``min_centres``), or None."""
    minimum = getattr(orc.params, "min_centres", None)
    if minimum is None or "pooled" in missing:
        return None
    trainers = [c for c in connected if c != "pooled" and orc.roles.get(c) in ("train", "receiver")]
    if len(trainers) < minimum:
        return None
    return f"{len(trainers)} training centres connected, the recipe's min_centres is {minimum}"


def resumed(spec: RunSpec) -> RunSpec:
    """``flwr run ... -c "... resume=true"``: the same run folder continued (the server was
    killed or restarted): rounds recorded in its results.json and checkpoints are kept, the
    rest run. ConfigError (one line) when the folder holds no run to continue."""
    run_dir = Path(spec.run_dir)
    if not (run_dir / "results.json").is_file():
        raise ConfigError(
            f"flwr run: resume=true but {run_dir} holds no results.json (no run to continue); "
            "drop resume=true to start a new run there"
        )
    return dataclasses.replace(spec, resume=True)


def _start_run_log(run_dir: Path) -> None:
    """run.log in the run directory, fedmammo's records at INFO, without raising other
    libraries' chatter in Flower's own log (the root logger keeps its level)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    level = root.level
    add_run_log(run_dir)
    root.setLevel(level)
    logging.getLogger("fedmammo").setLevel(logging.INFO)


def _prepare_centres(scenario: Scenario, *, pooled: bool) -> None:
    """Materialise every centre's data once before simulated nodes ask for it (no races
    between the pooled node and the centres it pools)."""
    for entry in scenario.centres:
        profile = scenario.resolved_profiles[entry.name or ""]
        say(INFO, f"preparing centre {profile.name} ({entry.role}) in {scenario.data_dir}")
        kwargs = {"image_size": scenario.image_size, "data_seed": scenario.data_seed}
        materialise_centre(profile, scenario.data_dir, test_only=entry.role == "test", **kwargs)
        if pooled and entry.role in ("train", "receiver"):
            materialise_centre(profile, scenario.data_dir, **kwargs)


def _record_run(spec: RunSpec, scenario: Scenario) -> None:
    """A ``flwr run``'s folder gets what ``simulate`` writes for a run (the scenario as
    resolved, the run spec), unless a resume finds them there already."""
    from fedmammo.config.loading import RESOLVED, write_resolved

    run_dir = Path(spec.run_dir)
    if not (run_dir / RESOLVED).exists():
        write_resolved(run_dir, scenario, quick=spec.quick)
    if not (run_dir / "runspec.json").exists():
        spec.save()


def _hold_deployed_folder(spec: RunSpec, run_config) -> contextlib.AbstractContextManager:
    """The run folder of a ``flwr run`` for this ServerApp alone (:func:`hold_run_folder`): a
    second ``flwr run`` of the same folder, a resume among them, is refused in one line. A
    resume of a folder that is not there holds nothing (:func:`resumed` names it)."""
    run_dir = Path(spec.run_dir)
    if not run_config.get("resume"):
        run_dir.mkdir(parents=True, exist_ok=True)
    elif not run_dir.is_dir():
        return contextlib.nullcontext()
    return hold_run_folder(run_dir)


def build_server_app(method_of: Callable[[str], tuple[Runner, Section]]) -> ServerApp:
    """A ServerApp running, for the scenario's strategy kind, ``method_of(kind)``'s runner and
    report section."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        """Run the scenario the run config (``flwr run``) or the simulation's run spec names."""
        with contextlib.ExitStack() as held:
            try:
                spec = load_runspec(context.run_config)
                if spec.deployment:  # no `python -m fedmammo.simulate` around to hold the folder
                    held.enter_context(_hold_deployed_folder(spec, context.run_config))
                if spec.deployment and context.run_config.get("resume"):
                    spec = resumed(spec)
                scenario = scenario_of(spec)
                if spec.deployment and scenario.sweep:
                    raise ConfigError(
                        f"scenario {scenario.name!r} sweeps {', '.join(scenario.sweep)}: one "
                        "run per point, which `flwr run` (one run) cannot start; run it with "
                        f"python -m fedmammo.simulate {spec.scenario_file}"
                    )
            except FedmammoError as exc:
                say(ERROR, str(exc))
                raise
            simulated = is_simulation(grid, spec)
            # simulate.py names its nodes (some may still be registering); flwr run does not
            poll_often(grid, len(spec.node_order))
            prepare = spec.deployment and simulated  # flwr run on a local simulation federation
            if spec.deployment:  # flwr run: no simulate around to set up run.log
                _start_run_log(Path(spec.run_dir))
                _record_run(spec, scenario)
                spec.deployment = not simulated
            runner, section = method_of(scenario.recipe.kind)
            run_scenario(grid, spec, runner, section, simulated=simulated, prepare=prepare)

    return app


load_plugins()  # FEDMAMMO_PLUGINS' models and methods, in every process that runs the server
