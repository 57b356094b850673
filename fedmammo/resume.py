"""``--resume RUN_DIR``: continue a run from what its folder holds, and say what that is.

The run folder is the only source: its ``scenario.resolved.yaml`` (each sweep point's too),
``runspec.json``, ``results.json`` (rounds and arms done), ``privacy.json`` (a report copy
of the centres' ledgers; each centre restores its own from its state folder) and
``checkpoints/``. A scenario argument must be the file the run started from; ``--set`` and a
different ``--quick`` are refused (they would make the resumed run a different one), and so
is ``--out`` (the run goes on in its folder). Damaged files give one line, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import shlex
from collections import Counter
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from fedmammo.config import Scenario, load_scenario
from fedmammo.config.loading import RESOLVED, edited_resolved
from fedmammo.errors import ConfigError
from fedmammo.evaluation.results import results_problem
from fedmammo.federation.checkpoints import checkpoint_problem, sidecar_path
from fedmammo.federation.console import safe
from fedmammo.federation.runspec import RunSpec
from fedmammo.methods.planning import plan_scenario
from fedmammo.methods.registry import PlanRow
from fedmammo.sweep import Point, resolved_points

__all__ = ["INVOCATION", "open_run", "print_restore", "read_json", "read_runspec"]

#: How the run was started (original scenario file, --set keys, --quick, argv).
INVOCATION = "invocation.json"


def read_json(path: Path, *, run_dir: Path, required: bool = False) -> Any:
    """A run folder's JSON file; ConfigError (one line) when it is damaged."""
    if not path.is_file():
        if required:
            raise ConfigError(
                f"--resume {run_dir}: no {path.name} there (not a run folder, or one whose "
                "start was interrupted before it was written); start a new run"
            )
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"--resume {run_dir}: {path.relative_to(run_dir)} is damaged (line {exc.lineno}: "
            f"{exc.msg}); restore it from a backup or start a new run"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--resume {run_dir}: cannot read {path.name} ({exc})") from None


def read_runspec(run_dir: Path) -> RunSpec:
    """The run folder's runspec.json as a RunSpec (ConfigError when damaged)."""
    data = read_json(run_dir / "runspec.json", run_dir=run_dir, required=True)
    try:
        if not isinstance(data, dict):
            raise TypeError(f"expected an object, got {type(data).__name__}")
        return RunSpec(**data)
    except TypeError as exc:
        raise ConfigError(
            f"--resume {run_dir}: runspec.json is damaged ({exc}); start a new run"
        ) from None


def _progress(folder: Path, run_dir: Path) -> dict[str, dict]:
    results = read_json(folder / "results.json", run_dir=run_dir)
    if results is None:
        return {}
    if problem := results_problem(results):
        raise ConfigError(
            f"--resume {run_dir}: {(folder / 'results.json').relative_to(run_dir)} is damaged "
            f"({problem}); restore it from a backup or start a new run"
        )
    return results.get("progress", {})


def _same_file(a: str | Path, b: str | Path) -> bool:
    try:
        return Path(a).resolve() == Path(b).resolve() or Path(a).samefile(b)
    except OSError:
        return False


def _check_arguments(args: argparse.Namespace, run_dir: Path, spec: RunSpec, original: str) -> None:
    if args.scenario and not _same_file(args.scenario, original):
        raise ConfigError(
            f"--resume {run_dir}: that run is of {original}, not {args.scenario}; drop the "
            "scenario argument (a resumed run uses the run folder's scenario.resolved.yaml)"
        )
    if args.quick and not spec.quick:
        raise ConfigError(
            f"--resume {run_dir}: the run started without --quick; drop --quick to resume it"
        )
    if getattr(args, "out", None):
        raise ConfigError(
            f"--resume {run_dir}: --out would not move the run (it goes on in its own "
            "folder); drop --out, or start a new run there"
        )


def _finished(run_dir: Path, points: list[Point]) -> bool:
    """Every unit of the run done (a sweep point's DONE, or its results.json progress)."""
    for point in points:
        folder = run_dir / "points" / point.name if point.name else run_dir
        if point.name and (folder / "DONE").is_file():
            continue
        progress = _progress(folder, run_dir)
        if not all(progress.get(f"{r.arm}|{r.seed}", {}).get("done") for r in point.rows):
            return False
    return True


def _refuse_sets(
    args: argparse.Namespace,
    run_dir: Path,
    spec: RunSpec,
    original: str,
    invocation: dict,
    points: list[Point],
) -> None:
    """--set is refused: a resumed run must stay the run it was; a finished run has nothing
    left to resume, so the change is a new run's (the command to start it)."""
    if not _finished(run_dir, points):
        raise ConfigError(
            f"--resume {run_dir}: --set would change a run half done; resume it as it "
            "started, or start a new run with the change"
        )
    started = invocation.get("sets") if isinstance(invocation.get("sets"), dict) else {}
    sets = {k: json.dumps(v) for k, v in started.items()}  # the run's own, then the change
    for item in args.sets:
        key, _, value = item.partition("=")
        sets[key.strip()] = value
    command = ["python", "-m", "fedmammo.simulate", original] + ["--quick"] * spec.quick
    command += [a for k, v in sets.items() for a in ("--set", f"{k}={v}")]
    raise ConfigError(
        f"--resume {run_dir}: that run is finished (every unit done), so --set cannot change "
        f"it; to change a setting, start a new run (without --resume): {shlex.join(command)}"
    )


def _state(entry: dict | None, row: PlanRow) -> tuple[str, str]:
    if not entry:
        return "", "not started"
    if entry.get("done"):
        return str(entry.get("round", "")), "done: kept"
    done, first, last = int(entry.get("round", 0)), row.first_round, row.last_round
    if last is not None and done >= last:  # cut after its last round: its test remains
        trained = f"{done - first + 1} of {row.rounds} rounds"
        return str(done), f"training done ({trained}); resumes at its test evaluation"
    if done < first:
        return str(done), f"resumes at round {first}" + (f" of {first}..{last}" if last else "")
    of = f" of {last}" if last is not None else ""
    return str(done), f"rounds {first}..{done} kept, resumes at {done + 1}{of}"


def print_restore(console: Console, run_dir: Path, points: list[Point]) -> None:
    """What the resumed run keeps: rounds and arms done, ledgers, checkpoints, local state."""
    table = Table(title=f"restored from {safe(run_dir)}", title_justify="left")
    swept = any(p.name for p in points)
    for col in (["point"] if swept else []) + ["arm", "seed", "rounds done", "state"]:
        table.add_column(col, overflow="fold")
    totals = Counter()
    for point in points:
        folder = run_dir / "points" / point.name if point.name else run_dir
        progress = _progress(folder, run_dir)
        if point.name and (folder / "DONE").is_file():
            table.add_row(safe(point.name), "(every arm)", "", "", "point done: kept")
            totals["done"] += len(point.rows)
            continue
        for row in point.rows:
            entry = progress.get(f"{row.arm}|{row.seed}")
            done, state = _state(entry, row)
            totals["done" if entry and entry.get("done") else "partial" if entry else "todo"] += 1
            cells = [row.arm, "" if row.seed is None else str(row.seed), done, state]
            table.add_row(*(safe(c) for c in ([point.name] if swept else []) + cells))
    console.print(table)
    console.print(
        f"units: {totals['done']} done (kept), {totals['partial']} part done (resume where "
        f"they stopped), {totals['todo']} not started"
    )
    _print_ledgers(console, run_dir, points)
    damaged = _print_checkpoints(console, run_dir)
    ledgers = sorted(run_dir.glob("**/centres/*/privacy-ledger-*.json"))
    # per round, per seed where the messages carry one: fedbn/<arm>-<hash>/[seed<S>/]round<R>.pt
    rounds = sorted(run_dir.glob("**/centres/*/fedbn/**/*.pt"))
    rounds += sorted(run_dir.glob("**/centres/*/optimizer/**/*.pt"))
    local = ledgers + rounds
    if local:
        owners = sorted({_owner(p, run_dir) for p in local})
        console.print(
            f"per-centre local state: {len(local)} files kept by the centres themselves "
            f"(privacy ledgers, FedBN BatchNorm and optimiser state per round) for "
            f"{safe(', '.join(owners))}",
            soft_wrap=True,
        )
    else:
        console.print("per-centre local state: none (no DP ledger, FedBN or optimiser state)")
    if damaged:
        raise ConfigError(
            "\n".join(
                f"--resume {run_dir}: checkpoint {path.relative_to(run_dir)}: {problem}; the run "
                "cannot be resumed as is: restore it from a backup, or start a new run"
                for path, problem in damaged
            )
        )


def _owner(path: Path, run_dir: Path) -> str:
    """The centre whose state folder (``centres/<centre>/...``) holds ``path``."""
    parts = path.relative_to(run_dir).parts
    return parts[len(parts) - parts[::-1].index("centres")]


def _print_checkpoints(console: Console, run_dir: Path) -> list[tuple[Path, str]]:
    """Say how many checkpoints the run has and how many match the sha256 of their sidecar;
    return the damaged ones (sweep points' too), each with why: bytes that are not the ones
    recorded, a damaged sidecar, a sidecar without its checkpoint. A checkpoint without a
    sidecar (from before fedmammo wrote them) is not checked."""
    ckpts = sorted(run_dir.glob("**/checkpoints/*/*.pt"))
    sidecars = {sidecar_path(p) for p in ckpts} | set(run_dir.glob("**/checkpoints/*/*.json"))
    damaged = []
    for sidecar in sorted(sidecars):
        path = sidecar.with_suffix(".pt")
        if sidecar.is_file() and (problem := checkpoint_problem(path)):
            damaged.append((path, problem))
    checked = [p for p in ckpts if sidecar_path(p).is_file()]
    line = f"checkpoints: {len(ckpts)} model files (every completed round of each arm and seed)"
    if checked:
        intact = len(checked) - sum(path.is_file() for path, _ in damaged)
        line += f"; {intact} of {len(checked)} with a sidecar match the sha256 it recorded"
    console.print(line, soft_wrap=True)
    return damaged


def _print_ledgers(console: Console, run_dir: Path, points: list[Point]) -> None:
    ledgers: dict[tuple[str, str], float] = {}
    for point in points:
        folder = run_dir / "points" / point.name if point.name else run_dir
        privacy = read_json(folder / "privacy.json", run_dir=run_dir) or {}
        records = privacy.get("records", []) if isinstance(privacy, dict) else None
        if not isinstance(records, list):
            raise ConfigError(f"--resume {run_dir}: privacy.json is damaged (no records list)")
        for r in records:
            if isinstance(r, dict) and r.get("ledger") and "ledger_epsilon" in r:
                key = (f"{point.name}/" if point.name else "") + str(r.get("centre"))
                ledgers[(key, str(r["ledger"]))] = float(r["ledger_epsilon"] or 0.0)
    if not ledgers:
        console.print("DP ledgers: none recorded (no centre has spent privacy budget yet)")
        return
    shown = ", ".join(f"{c} {led}: eps {e:.3g}" for (c, led), e in sorted(ledgers.items())[:12])
    more = f" (+{len(ledgers) - 12} more)" if len(ledgers) > 12 else ""
    console.print(
        f"DP ledgers (privacy.json, the server's copy; each centre restores its own from its "
        f"state folder and reports a disagreement): {safe(shown)}{more}",
        soft_wrap=True,
    )


def _points_backend(run_dir: Path, points: list[Point]) -> str | None:
    """The backend the first sweep point that started ran on (its runspec.json), or None."""
    for point in points:
        try:
            data = json.loads((run_dir / "points" / point.name / "runspec.json").read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and data.get("backend") in ("ray", "inprocess"):
            return data["backend"]
    return None


def open_run(args: argparse.Namespace, console: Console) -> tuple[RunSpec, Scenario, list[Point]]:
    """The run spec, scenario and checked plan of ``--resume RUN_DIR`` (ConfigError, one line,
    when the folder cannot be resumed as asked)."""
    run_dir = Path(args.resume).expanduser().resolve()
    if not run_dir.is_dir():
        raise ConfigError(f"--resume {args.resume}: no such run folder")
    spec = read_runspec(run_dir)
    resolved = run_dir / RESOLVED
    if not resolved.is_file():
        raise ConfigError(
            f"--resume {run_dir}: no {RESOLVED} there (the scenario as the run started); "
            "this folder cannot be resumed: start a new run"
        )
    invocation = read_json(run_dir / INVOCATION, run_dir=run_dir)
    invocation = invocation if isinstance(invocation, dict) else {}
    original = str(invocation.get("scenario") or spec.scenario_file)
    _check_arguments(args, run_dir, spec, original)
    for copy in [resolved, *sorted(run_dir.glob(f"points/*/{RESOLVED}"))]:
        if edited_resolved(copy):
            raise ConfigError(
                f"--resume {run_dir}: {copy.relative_to(run_dir)} was edited after the run "
                "wrote it; a resumed run must go on with the settings its finished rounds used "
                "(restore the file, or start a new run with the changed scenario)"
            )
    base = load_scenario(resolved, quick=spec.quick)
    if base.sweep:
        points = resolved_points(run_dir, base, quick=spec.quick)
    else:
        points = [Point("", {}, base)]
    for point in points:
        point.rows = plan_scenario(point.scenario, quick=spec.quick)
    if args.sets:
        _refuse_sets(args, run_dir, spec, original, invocation, points)
    if base.sweep and "ray_address" not in read_json(run_dir / "runspec.json", run_dir=run_dir):
        # a sweep's runspec.json from before it recorded the backend always said "ray"
        spec.backend = _points_backend(run_dir, points) or spec.backend
    sets = invocation.get("sets") if isinstance(invocation.get("sets"), dict) else {}
    started = " ".join(["--quick"] * spec.quick + [f"--set {k}=..." for k in sets])
    console.print(
        f"resuming [bold]{safe(base.name)}[/] from {safe(run_dir)} (started from "
        f"{safe(original)} {safe(started)}; using the folder's {RESOLVED})",
        soft_wrap=True,
    )
    spec.resume, spec.run_dir = True, str(run_dir)
    spec.scenario_file, spec.sets = str(resolved), {}
    return spec, base, points
