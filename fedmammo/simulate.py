"""Run a scenario on Flower's simulation engine.

python -m fedmammo.simulate SCENARIO.yaml [--out DIR] [--check] [--set key.path=value ...]
                             [--quick] [--ray-address ADDRESS] [--backend ray|inprocess]
python -m fedmammo.simulate --resume RUN_DIR [--check] [--ray-address ADDRESS] [--backend ...]

With ``--ray-address`` (or the scenario's ``simulation.ray_address``) the centres run on a
running Ray cluster instead of a private Ray instance; the data and run folders must then be
where every node reads them (docs/deployment.md, "Simulation on a Ray cluster"). With
``--backend inprocess`` (or ``simulation.backend: inprocess``) no Ray is started: every centre
runs in this process, one after another (:mod:`fedmammo.federation.inprocess`).

Before anything is made: the whole plan is loaded and checked (every sweep point, arm and
seed, the quick block, models, samplers, consent, DP), every real-data centre's data root
must exist, and the data and output folders must be writable. Only then is the run folder
created, with the scenario as resolved now (``scenario.resolved.yaml``, each sweep point's
too) and ``runspec.json``; the run and any ``--resume`` of it read that copy, never the
(possibly edited) original files.

Ctrl-C stops a run as a failure would, with one line saying how to resume (exit code 130;
:mod:`fedmammo.interrupt`). A run folder is one process's at a time: a run and its
``--resume`` hold ``RUN_DIR/.lock`` (:mod:`fedmammo.run_lock`), and a second start is refused
in one line naming the process that holds it.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import errno
import functools
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, get_args

import yaml
from rich.console import Console
from rich.syntax import Syntax
from rich.table import Table

import fedmammo.methods  # noqa: F401  (registers the methods' recipe kinds)
from fedmammo.config import Scenario, load_scenario
from fedmammo.config.dotted import split_dotted
from fedmammo.config.loading import (
    RESOLVED,
    load_scenario_traced,
    resolved_mapping,
    write_resolved,
)
from fedmammo.config.scenario import SimulationSpec
from fedmammo.errors import ConfigError, DataError, FedmammoError
from fedmammo.evaluation.tracking import missing_trackers
from fedmammo.federation.console import safe
from fedmammo.federation.ray_cluster import (
    attach_ray,
    backend_config,
    centre_threads,
    check_fits,
    check_reachable,
    client_resources,
    fits_here,
    private_ray,
    ray_address_of,
)
from fedmammo.federation.run_log import RAY_ACCEL_ENV, quiet_libraries, run_log
from fedmammo.federation.runspec import ENV_VAR, POOLED, RunSpec
from fedmammo.federation.telemetry import quiet_flower
from fedmammo.interrupt import STOP, STOP_SECONDS, CtrlC, exit_code, interrupted, stoppable
from fedmammo.methods.planning import fault_problems, plan_scenario
from fedmammo.plugins import load_plugins, plugin_names, require_plugins_of
from fedmammo.resume import INVOCATION, open_run, print_restore
from fedmammo.run_lock import hold_run_folder
from fedmammo.sweep import Point, load_points, run_sweep

__all__ = ["main", "parse_sets", "plan_run", "prepare_data", "run"]

console = Console()
log = logging.getLogger("fedmammo")


def parse_sets(items: list[str]) -> dict:
    """``--set key.path=value`` items as {dotted key: YAML value}; ConfigError naming the item."""
    sets = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(
                f"--set {item}: expected key.path=value (e.g. --set strategy.params.rounds=2)"
            )
        key, value = item.split("=", 1)
        if any("\udc80" <= c <= "\udcff" for c in item):  # bytes the locale could not decode
            raise ConfigError(
                f"--set {ascii(item)}: holds bytes that are not text in this locale "
                f"({sys.getfilesystemencoding()}); fix: run with a UTF-8 locale "
                "(LC_ALL=C.UTF-8) or PYTHONUTF8=1"
            )
        try:
            split_dotted(key.strip())
            sets[key.strip()] = yaml.safe_load(value)
        except ConfigError as exc:
            raise ConfigError(f"--set {item}: {exc}") from None
        except yaml.YAMLError as exc:
            problem = getattr(exc, "problem", None) or "not valid YAML"
            raise ConfigError(
                f"--set {item}: the value is not valid YAML ({problem}); quote text values"
            ) from None
    return sets


def resolved_yaml(scenario: Scenario, *, quick: bool = False, width: int = 80) -> str:
    """The fully resolved scenario (profiles and recipe inlined) as YAML, lines folded at
    spaces to about ``width`` characters."""
    return yaml.safe_dump(resolved_mapping(scenario, quick=quick), sort_keys=False, width=width)


# --------------------------------------------------------------------------- the plan
def _plan_points(points: list[Point], quick: bool) -> list[str]:
    problems = []
    for point in points:
        try:
            point.rows = plan_scenario(point.scenario, quick=quick, origins=point.origins)
        except ConfigError as exc:
            named = f"sweep point {point.name}"  # unless the line names it already
            problems += [
                line if not point.name or named in line else f"{named}: {line}"
                for line in str(exc).splitlines()
            ]
    return problems


def _points(path: str | Path, sets: dict, quick: bool) -> tuple[Scenario, list[Point]]:
    base, origins = load_scenario_traced(path, sets=sets, quick=quick)
    if base.sweep:
        return base, load_points(path, base, sets=sets, quick=quick)
    return base, [Point("", {}, base, origins)]


def plan_run(path: str | Path, *, sets: dict, quick: bool) -> tuple[Scenario, list[Point]]:
    """Load and check everything a run of ``path`` would do: every sweep point, arm and seed
    (and the same in the other mode: with --quick, and without it under ``quick``; faults in
    this mode only). ConfigError lists every problem."""
    base, points = _points(path, sets, quick)
    problems = _plan_points(points, quick) + missing_trackers(base.tracking)
    for point in points:  # in this mode only (fault_problems says why)
        problems += fault_problems(point.scenario, point.rows, point.origins)
    if not problems:  # the other mode too: a scenario is either run's
        other = "without --quick" if quick else "with --quick"
        try:
            _, other_points = _points(path, sets, not quick)
            problems += [f"{other}: {p}" for p in _plan_points(other_points, not quick)]
        except ConfigError as exc:
            problems += [f"{other}: {line}" for line in str(exc).splitlines()]
    if problems:
        raise ConfigError("\n".join(dict.fromkeys(problems)))
    return base, points


def print_plan(base: Scenario, points: list[Point], *, quick: bool) -> None:
    """The plan as a table: one row per unit (arm x seed x sweep point)."""
    swept = bool(base.sweep)
    n = sum(len(p.rows) for p in points)
    title = (
        f"plan of {safe(base.name)}: {base.recipe.kind}, {n} units"
        + (f" in {len(points)} sweep points" if swept else "")
        + (" (--quick)" if quick else "")
    )
    table = Table(title=title, title_justify="left")
    for col in (["point"] if swept else []) + ["arm", "seed", "centres", "rounds", "sends", "note"]:
        table.add_column(col, overflow="fold")
    for point in points:
        for row in point.rows:
            cells = [
                row.arm,
                "" if row.seed is None else str(row.seed),
                ", ".join(row.centres),
                "" if row.rounds is None else str(row.rounds),
                "\n".join(m for m, _ in row.messages),  # one message kind per line
                row.note,
            ]
            table.add_row(*(safe(c) for c in ([point.name] if swept else []) + cells))
    console.print(table)


# --------------------------------------------------------------------------- folders
def check_writable(path: Path, what: str, fix: str, *, create: bool) -> list[Path]:
    """ConfigError (one line) unless ``path`` is (or can be made) a writable folder; returns
    the folders made (``create``), innermost first. Without ``create`` (``--check``) nothing
    is left behind: a file is made and removed in the nearest existing folder."""
    target = path.expanduser()
    probe, missing = target, []  # the folders to make, innermost first
    while not probe.exists() and probe != probe.parent:
        missing.append(probe)
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise ConfigError(f"{what} {path}: {probe} is a file, not a folder; {fix}")
    if not create:  # a file made and removed at once: os.access says yes to root under /proc
        try:
            with tempfile.TemporaryFile(dir=probe):
                pass
        except OSError as exc:
            why = exc.strerror or exc
            raise ConfigError(f"{what} {path}: {probe} is not writable ({why}); {fix}") from None
        return []
    try:
        target.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=target):
            pass
    except OSError as exc:
        _remove_empty(missing)
        raise ConfigError(f"{what} {path} is not writable ({exc.strerror or exc}); {fix}") from None
    return missing


def _remove_empty(folders: list[Path]) -> None:
    """Remove folders this check made (innermost first) that are still empty."""
    for folder in folders:
        with contextlib.suppress(OSError):
            folder.rmdir()


def _check_folders(points: list[Point], out: Path | None, *, create: bool) -> None:
    """Every real-data centre's format and options must be known (ConfigError) and its data
    root exist (DataError), one line per centre; the output folder, then every data_dir, must
    be (made) writable folders (those made are removed again when one is refused)."""
    from fedmammo.data.prepare import data_config_problem, missing_data_root

    profiles = [p for point in points for p in point.scenario.resolved_profiles.values()]
    if problems := dict.fromkeys(filter(None, map(data_config_problem, profiles))):
        raise ConfigError("\n".join(problems))
    problems = dict.fromkeys(
        problem for profile in profiles if (problem := missing_data_root(profile))
    )
    if problems:
        raise DataError("\n".join(problems))
    made: list[Path] = []  # removed again when a later folder is refused: nothing left behind
    try:
        if out is not None:
            made += check_writable(
                out, "output folder", "fix: pass --out DIR, or set output_dir", create=create
            )
        for data_dir in dict.fromkeys(p.scenario.data_dir for p in points):
            made += check_writable(
                Path(data_dir),
                "data_dir",
                "fix: set data_dir in the scenario (or --set data_dir=DIR) to a writable folder",
                create=create,
            )
    except ConfigError:
        _remove_empty(made)
        raise


def _new_run_dir(out: Path, name: str) -> Path:
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = (out / name / stamp).expanduser().resolve()
    for k in range(1, 1000):
        run_dir = base if k == 1 else base.with_name(f"{stamp}-{k}")
        try:
            run_dir.mkdir(parents=True)
            return run_dir
        except FileExistsError:
            continue
    raise ConfigError(f"output folder {out}: cannot make a new run folder under {out / name}")


# --------------------------------------------------------------------------- running
def prepare_data(scenario: Scenario, *, thumbnails: Path | None = None) -> None:
    """Materialise every centre's data once, before the Flower apps start (no races); several
    centres at once in worker processes (fedmammo.data.prepare.materialise_centres).

    With ``thumbnails`` (a folder), a grid of each synthetic centre's first images is written
    there for the report (never of a real dataset's images).
    """
    from rich.progress import Progress

    from fedmammo.data.prepare import CentreJob, materialise_centres

    profiles = [scenario.resolved_profiles[entry.name or ""] for entry in scenario.centres]
    jobs = [
        CentreJob(
            profile=profile,
            data_root=str(scenario.data_dir),
            image_size=tuple(scenario.image_size),
            data_seed=scenario.data_seed,
            test_only=entry.role == "test",
            thumbnail=None if thumbnails is None else str(thumbnails / f"{profile.name}.png"),
        )
        for entry, profile in zip(scenario.centres, profiles, strict=True)
    ]
    # no refresh thread: the workers may be forked from this process (cache_workers)
    with Progress(console=console, transient=True, auto_refresh=False) as progress:
        task = progress.add_task(f"preparing {len(jobs)} centres", total=len(jobs))
        progress.refresh()
        prepared = materialise_centres(jobs)
        for entry, (job, images, skipped) in zip(scenario.centres, prepared, strict=True):
            console.print(
                f"  centre [bold]{safe(job.profile.name)}[/] ({entry.role}): {images} images, "
                f"{skipped} skipped"
            )
            progress.advance(task)
            progress.refresh()


def _wants_pooled(scenario: Scenario) -> bool:
    params = scenario.recipe.typed_params()
    return "pooled" in getattr(params, "arms", [])


def with_command_line_simulation(scenario: Scenario, args: argparse.Namespace) -> Scenario:
    """``scenario`` with ``--backend`` and ``--ray-address`` in its ``simulation`` block, so
    the resolved scenario a run keeps (and --check prints) says where the run went."""
    given = {"backend": args.backend, "ray_address": args.ray_address}
    update = {k: v for k, v in given.items() if v is not None}
    if not update:
        return scenario
    return scenario.model_copy(update={"simulation": scenario.simulation.model_copy(update=update)})


def backend_of(scenario: Scenario, backend: str | None, ray_address: str | None) -> str:
    """The simulation backend: ``--backend``, else the scenario's ``simulation.backend``.
    ConfigError (one line) for ``inprocess`` with a Ray cluster named by ``--ray-address`` or
    the scenario (Ray's own ``RAY_ADDRESS`` is then not used)."""
    chosen = backend or scenario.simulation.backend
    if chosen == "inprocess" and (address := ray_address or scenario.simulation.ray_address):
        where = "--ray-address" if ray_address else "simulation.ray_address"
        raise ConfigError(
            f"backend inprocess runs every centre in this process, so it cannot use the Ray "
            f"cluster of {where} {address}; fix: drop one of them (--backend ray is the default)"
        )
    return chosen


def _run_engine(
    spec: RunSpec, scenario: Scenario, ray_up: Callable[[], None] | None, *, attached: bool
) -> None:
    """The ServerApp and the ClientApps on the run's engine: every centre in this process, or
    Flower's Ray simulation (once ``ray_up``, when given, says the private Ray is up)."""
    from fedmammo.apps import client_app, server_app

    if spec.backend == "inprocess":
        from fedmammo.federation.inprocess import run_in_process

        num_cpus = client_resources(scenario)["num_cpus"]
        run_in_process(server_app, client_app, len(spec.node_order), num_cpus=num_cpus)
        return
    from flwr.simulation import run_simulation  # (imported while Ray may still be starting)

    if ray_up is not None:
        ray_up()
    threads: list[threading.Thread] = []
    try:
        run_simulation(
            server_app=stoppable(server_app, STOP, threads),
            client_app=client_app,
            num_supernodes=len(spec.node_order),
            backend_config=backend_config(scenario, attached=attached),
        )
    except KeyboardInterrupt:
        STOP.set()  # (already set when Ctrl-C came through CtrlC's handler)
        for thread in threads:  # the ServerApp writes the run's results and report
            thread.join(STOP_SECONDS)
        raise


def run(
    spec: RunSpec, scenario: Scenario, *, ray_address: str | None = None, backend: str | None = None
) -> Path:
    """Run one scenario in a run directory through Flower's simulation engine (on the Ray
    cluster at ``ray_address`` when one is given, see :func:`ray_address_of`), or with
    ``backend="inprocess"`` every centre in this process (:mod:`fedmammo.federation.inprocess`)."""
    run_dir = Path(spec.run_dir)
    with_pooled = _wants_pooled(scenario)
    spec.backend = backend_of(scenario, backend, ray_address)
    spec.ray_address = ray_address
    if not spec.resume:  # a resumed run keeps its own (None in a folder from before)
        spec.torch_threads = centre_threads(client_resources(scenario)["num_cpus"])
    spec_file = spec.save()  # before the data: a run killed while preparing it can be resumed
    os.environ[ENV_VAR] = str(spec_file)  # Ray's workers inherit it when Ray starts them
    cluster = None if spec.backend == "inprocess" else ray_address_of(scenario, ray_address)
    if cluster:  # first: a wrong address fails before the data is prepared
        env = {ENV_VAR: str(spec_file), RAY_ACCEL_ENV: "0"}
        address, nodes = attach_ray(cluster[0], env, cluster[1])
        console.print(f"Ray cluster at [bold]{safe(address)}[/]: {len(nodes)} nodes")
        workers = check_fits(client_resources(scenario), nodes, cluster[1])
    else:
        workers = fits_here(scenario)
    spec.workers = workers  # jobs in flight: as many as the engine runs at once
    ray_start: contextlib.AbstractContextManager = contextlib.nullcontext()
    if spec.backend == "inprocess":
        spec.workers = 1
        console.print("backend [bold]inprocess[/]: the centres answer in this process, in turn")
    elif not cluster:  # a private Ray, started while the data is prepared
        init_args = backend_config(scenario, attached=False)["init_args"]
        ray_start = private_ray(init_args, prestart=workers >= (os.cpu_count() or 1))
    with ray_start as ray_up:
        prepare_data(scenario, thumbnails=run_dir / "thumbnails")
        spec.node_order = scenario.centre_names() + ([POOLED] if with_pooled else [])
        spec.save()  # with the node order; ENV_VAR already names this file
        _run_engine(spec, scenario, ray_up, attached=cluster is not None)
    results = run_dir / "results.json"
    if not results.is_file():
        raise FedmammoError(f"the run wrote no results ({run_dir}); see {run_dir / 'run.log'}")
    return run_dir


def execute(spec: RunSpec, base: Scenario, args: argparse.Namespace) -> int:
    """Run (or resume) the run folder ``spec`` names: every sweep point, or the one run.

    A FedmammoError or an OSError (a full disk, a folder made read-only) goes to run.log too
    and carries the run folder (``main`` then says how to resume). A finished run's last line
    says ``done``, and what is missing: units that ended early (a --resume tries them again),
    a report.html that could not be written (exit code 0 all the same: the results are
    there)."""
    run_dir = Path(spec.run_dir)
    where = {"ray_address": args.ray_address, "backend": args.backend}
    with CtrlC(run_dir):
        console.print(f"run directory: [bold]{safe(run_dir)}[/]")
        try:
            with run_log(run_dir) as run_log_file:
                try:
                    if base.sweep:
                        run_sweep(spec, base, functools.partial(run, **where))
                    else:
                        run(spec, load_scenario(spec.scenario_file, quick=spec.quick), **where)
                except (FedmammoError, OSError) as exc:  # in run.log too (the console has it)
                    _mark(exc, run_dir, base)
                    _log_quietly(run_log_file, _error_text(exc))
                    raise
        except (FedmammoError, OSError) as exc:  # resumable (run.log itself may have failed)
            _mark(exc, run_dir, base)
            raise
    lines = _ended_early(run_dir, base) + _reports_not_written(run_dir, base)
    for line in lines or [f"[green]done[/]: results in {safe(run_dir)}"]:
        console.print(line, highlight=False, soft_wrap=True)
    return 0


def _mark(exc: BaseException, run_dir: Path, base: Scenario) -> None:
    """What ``main`` says after an error of the run in ``run_dir``: where, and how to resume."""
    if getattr(exc, "run_dir", None) is None:
        exc.run_dir = run_dir  # type: ignore[attr-defined]
        exc.data_dirs = [Path(base.data_dir)]  # type: ignore[attr-defined]


def _log_quietly(handler: logging.Handler, text: str) -> None:
    """``text`` as an ERROR record of run.log alone; a run.log that cannot be written (the
    full disk that stopped the run) is passed over without logging's traceback block."""
    record = log.makeRecord(log.name, logging.ERROR, __file__, 0, "%s", (text,), None)
    raising, logging.raiseExceptions = logging.raiseExceptions, False
    try:
        handler.handle(record)
    finally:
        logging.raiseExceptions = raising


def _folders(run_dir: Path, base: Scenario) -> list[tuple[str, Path]]:
    """(label, folder) of each run in ``run_dir``: its sweep points, or the run itself."""
    if not base.sweep:
        return [("", run_dir)]
    points = run_dir / "points"
    found = sorted(p for p in points.iterdir() if p.is_dir()) if points.is_dir() else []
    return [(f"point {p.name}: ", p) for p in found]


def _ended_early(run_dir: Path, base: Scenario) -> list[str]:
    """``done, but ...`` for the units that stopped before their last round: without being
    done (too few centres sent an update; a --resume tries them again: a sweep point holding
    one is not marked DONE), and done at a centre's privacy budget (final); or none."""
    units, budget = [], []
    for label, folder in _folders(run_dir, base):
        try:
            progress = json.loads((folder / "results.json").read_text()).get("progress", {})
        except (OSError, ValueError, AttributeError):
            continue
        for key, state in progress.items():
            if isinstance(state, dict) and state.get("stopped"):
                unit = f"{label}arm {key.rpartition('|')[0]} seed {key.rpartition('|')[2]}"
                (budget if state.get("done") else units).append(unit)
    see = (run_dir / "results.md") if not base.sweep else "each point's results.md"
    lines = []
    if units:
        lines.append(
            f"[yellow]done, but {len(units)} unit(s) ended early[/] ({safe('; '.join(units))}; "
            f"see {safe(see)}); --resume tries them again: python -m fedmammo.simulate "
            f"--resume {safe(run_dir)}"
        )
    if budget:  # (a refusal is final: a resumed run does not spend the budget again)
        lines.append(
            f"[yellow]done, but {len(budget)} unit(s) stopped at a centre's privacy budget[/] "
            f"({safe('; '.join(budget))}; see {safe(see)}): their completed rounds are kept"
        )
    return lines


def _reports_not_written(run_dir: Path, base: Scenario) -> list[str]:
    """``done, but ...`` when the final report.html of the run (a sweep point's) failed."""
    from fedmammo.evaluation.run_outputs import final_report_problem

    lines = []
    for label, folder in _folders(run_dir, base):
        if (why := final_report_problem(folder)) is None:
            continue
        if (folder / "report.html").is_file():
            why += "; the report.html there is an older one"
        lines.append(
            f"[yellow]done, but {safe(label)}report.html could not be written[/] ({safe(why)}); "
            f"write it with: fedmammo report {safe(run_dir)}"
        )
    return lines


def _start(args: argparse.Namespace, argv: list[str]) -> int:
    if not args.scenario:
        raise ConfigError(
            "give a scenario (python -m fedmammo.simulate SCENARIO.yaml), or --resume"
        )
    sets = parse_sets(args.sets)
    base, points = plan_run(args.scenario, sets=sets, quick=args.quick)
    base = with_command_line_simulation(base, args)
    points = [
        dataclasses.replace(p, scenario=with_command_line_simulation(p.scenario, args))
        for p in points
    ]
    _check_where(base, points, args)  # a Ray cluster named must answer, first
    if args.check:
        # folded at spaces before the console's edge (PyYAML may pass its width by a word),
        # then wrapped, never cropped, where a line is still longer
        text = resolved_yaml(base, quick=args.quick, width=console.width - 12)
        console.print(Syntax(text, "yaml", word_wrap=True))
    print_plan(base, points, quick=args.quick)
    out = Path(args.out or base.output_dir)
    _check_folders(points, out, create=not args.check)
    if args.check:
        n = sum(len(p.rows) for p in points)
        console.print(f"[green]{safe(args.scenario)}: valid[/] ({n} units planned; nothing run)")
        return 0
    run_dir = _new_run_dir(out, base.name)
    with hold_run_folder(run_dir):  # before anything a --resume would read is there
        try:
            spec = _write_run_folder(run_dir, base, points, args, sets, argv)
        except KeyboardInterrupt:  # Ctrl-C before the run could be resumed: no folder left
            shutil.rmtree(run_dir, ignore_errors=True)
            raise
        return execute(spec, base, args)


def _write_run_folder(
    run_dir: Path,
    base: Scenario,
    points: list[Point],
    args: argparse.Namespace,
    sets: dict[str, Any],
    argv: list[str],
) -> RunSpec:
    """What ``--resume`` needs: the resolved scenario (and each sweep point's), the invocation
    and the run spec, written last."""
    write_resolved(run_dir, base, quick=args.quick)
    for point in points:
        if point.name:
            write_resolved(run_dir / "points" / point.name, point.scenario, quick=args.quick)
    invocation: dict[str, Any] = {
        "scenario": str(Path(args.scenario).resolve()),
        "sets": sets,
        "quick": args.quick,
        "argv": argv,
        "plugins": plugin_names(),  # FEDMAMMO_PLUGINS: --resume refuses to go on without one
        "started": dt.datetime.now().isoformat(timespec="seconds"),
    }
    (run_dir / INVOCATION).write_text(json.dumps(invocation, indent=1, default=str))
    spec = RunSpec(
        scenario_file=str(run_dir / RESOLVED),
        run_dir=str(run_dir),
        quick=args.quick,
        # where it runs, for --resume (a sweep's points record their own too)
        backend=backend_of(base, args.backend, args.ray_address),
        ray_address=args.ray_address,
    )
    spec.save()
    return spec


def _check_where(base: Scenario, points: list[Point], args: argparse.Namespace) -> None:
    """Where the centres will run, before any folder is made: a Ray cluster must answer;
    on this machine each centre's ``num_cpus`` must fit (a cluster's nodes are checked when
    the run attaches)."""
    backend = backend_of(base, args.backend, args.ray_address)
    if backend == "ray" and (cluster := ray_address_of(base, args.ray_address)):
        check_reachable(*cluster)
        return
    for point in points:
        fits_here(point.scenario)


def _resume(args: argparse.Namespace) -> int:
    require_plugins_of(Path(args.resume), INVOCATION)  # the run's FEDMAMMO_PLUGINS, all here
    spec, base, points = open_run(args, console)
    with hold_run_folder(Path(spec.run_dir), probe=args.check):  # one process at a time
        return _resume_held(args, spec, base, points)


def _resume_held(
    args: argparse.Namespace, spec: RunSpec, base: Scenario, points: list[Point]
) -> int:
    print_plan(base, points, quick=spec.quick)
    print_restore(console, Path(spec.run_dir), points)
    if args.backend is None and args.ray_address is None:  # where it ran, unless told
        args.backend, args.ray_address = spec.backend, spec.ray_address
        cluster = f" on the Ray cluster at {spec.ray_address}" if spec.ray_address else ""
        console.print(
            f"backend {safe(spec.backend)}{safe(cluster)}, as the run started (--backend or "
            "--ray-address to choose another)",
            highlight=False,
            soft_wrap=True,
        )
    _check_where(base, points, args)
    _check_folders(points, None, create=not args.check)
    if args.check:
        console.print(f"[green]{safe(spec.run_dir)}: can be resumed[/] (nothing run)")
        return 0
    spec.backend = backend_of(base, args.backend, args.ray_address)  # for the next --resume
    spec.ray_address = args.ray_address
    spec.save()
    return execute(spec, base, args)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, no usage block, no SystemExit in process
        raise ConfigError(f"{message} (see {self.prog} --help)")


def main(argv: list[str] | None = None, *, prog: str = "python -m fedmammo.simulate") -> int:
    """The command line; returns the exit code (0 done, 2 bad input: one line per problem,
    130 interrupted by Ctrl-C: one line saying how to resume). ``prog``: the command's name
    in its help and errors."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _Parser(
        prog=prog,
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("scenario", nargs="?", help="scenario YAML (see scenarios/)")
    parser.add_argument("--out", help="output root (default: the scenario's output_dir)")
    parser.add_argument(
        "--check", action="store_true", help="check everything, print the plan, run nothing"
    )
    parser.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a dotted key (strategy.params.rounds=2, "
        "centres.s1.data.synthetic.lesion_contrast=2); the value is YAML",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="apply the scenario's quick: overrides (small images, few rounds)",
    )
    parser.add_argument(
        "--ray-address",
        metavar="ADDRESS",
        help="run the centres on the running Ray cluster at ADDRESS (HOST:PORT from `ray start "
        "--head`, or auto); see docs/deployment.md, 'Simulation on a Ray cluster'",
    )
    parser.add_argument(
        "--backend",
        choices=get_args(SimulationSpec.model_fields["backend"].annotation),
        help="ray (default): Flower's Ray engine, centres in parallel actors; inprocess: every "
        "centre in this process, one after another, no Ray (starts in seconds; for small and "
        "quick runs); default: the scenario's simulation.backend",
    )
    parser.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue an interrupted run from its folder's scenario.resolved.yaml",
    )
    try:
        args = parser.parse_args(argv)
        quiet_flower()  # nothing calls home unless FEDMAMMO_TELEMETRY=1
        quiet_libraries(flower_info=False)
        load_plugins()  # FEDMAMMO_PLUGINS' models and methods, before anything is checked
        if args.resume:
            return _resume(args)
        return _start(args, argv)
    except KeyboardInterrupt as exc:
        return interrupted(exc)
    except (FedmammoError, OSError) as exc:
        for line in _error_text(exc).splitlines() or [type(exc).__name__]:
            console.print(f"[red]error:[/] {safe(line)}", highlight=False, soft_wrap=True)
        if run_dir := getattr(exc, "run_dir", None):  # the run had started: nothing is lost
            console.print(
                f"the run folder {safe(run_dir)} keeps what was done; after the fix: "
                f"python -m fedmammo.simulate --resume {safe(run_dir)}",
                highlight=False,
                soft_wrap=True,
            )
        return 2


# --------------------------------------------------------------------------- OS errors
_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.\d+\.tmp$")  # fedmammo.files.replace_whole's


def _error_text(exc: BaseException) -> str:
    """The error's line(s): a FedmammoError's message; an OSError's path (the file a hidden
    temporary was to replace), its reason and, for a full disk, the free space where it ran
    out (the file's file system, else the run folder's and the data_dir's)."""
    if not isinstance(exc, OSError):
        return str(exc)
    name = exc.filename
    if name is not None:
        path = Path(os.fsdecode(name))
        if match := _TEMPORARY.match(path.name):
            path = path.with_name(match["name"])
        name = str(path)
    where = f"{name}: " if name else ""
    reason = exc.strerror or str(exc) or type(exc).__name__
    if exc.errno == errno.ENOSPC:
        if name:
            space = _free_space([("its folder", Path(name).parent)])
        else:
            run_dir = getattr(exc, "run_dir", None)
            dirs = [("the run folder", Path(run_dir))] if run_dir else []
            dirs += [("data_dir", Path(d)) for d in getattr(exc, "data_dirs", ())]
            space = _free_space(dirs)
        if not space:
            return f"{where}{reason}; free some space where the run writes (--out, data_dir)"
        return f"{where}{reason}{space}; free some space there"
    return (
        f"{where}{reason} (a file or folder could not be read or written; check the path, its "
        "permissions and free space)"
    )


def _free_space(places: Iterable[tuple[str, Path]]) -> str:
    """`` on the file system of WHAT PATH (N free)`` per file system of ``places`` (those
    that share one are named together), or "" when none can be measured."""
    seen: dict[int, list[str]] = {}
    free: dict[int, int] = {}
    for what, path in places:
        try:
            device = os.stat(path).st_dev
            free.setdefault(device, shutil.disk_usage(path).free)
        except OSError:
            continue
        seen.setdefault(device, []).append(f"{what} {path}")
    parts = [f"{' and '.join(names)} ({_size(free[d])} free)" for d, names in seen.items()]
    return f" on the file system of {'; of '.join(parts)}" if parts else ""


def _size(n: float) -> str:
    """``n`` bytes for a person: 512 bytes, 40.0 KB, 3.1 GB."""
    units = ["bytes", "KB", "MB", "GB", "TB"]
    while n >= 1024 and len(units) > 1:
        n, units = n / 1024, units[1:]
    return f"{int(n)} bytes" if units[0] == "bytes" else f"{n:.1f} {units[0]}"


if __name__ == "__main__":
    sys.exit(exit_code(main()))
