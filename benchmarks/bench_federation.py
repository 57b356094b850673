"""Flower orchestration overhead, start-up time and memory per simulated centre.

    python benchmarks/bench_federation.py [--centres 20] [--base-ref REV]
                                          [--backends ray inprocess] [--set KEY=VALUE ...]

1. ``scenarios/fedavg_quick.yaml --quick``: wall time of each federated round divided by the
   slowest centre's own compute in that round (measured inside the handlers); start-up time
   (process start to the end of the identify round); peak RSS per simulated centre (Ray
   worker processes, sampled from /proc; only the run's own process tree is counted), and
   its PSS and USS (what a centre adds beside the others: shared library pages split or
   left out).
   ``--base-ref``: the same run first from that git revision (``git archive``), for a
   before / after table in one run. ``--backends``: one column per simulation backend of
   this tree (``--backend`` of fedmammo.simulate), one run after the other. ``--set``: passed
   to every one of these runs. The local arms' rounds (one centre each) show the messaging
   cost alone; the federated arm's also wait for a free actor when the centres outnumber them.
2. A generated scenario with N tiny centres (two rounds, federated arm only): wall time and
   peak memory of the whole process tree.
Prints a markdown section for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]


def _children() -> dict[int, list[int]]:
    """parent pid -> child pids, from /proc."""
    tree: dict[int, list[int]] = {}
    for pid_dir in Path("/proc").iterdir():
        if not pid_dir.name.isdigit():
            continue
        try:
            ppid = int((pid_dir / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        tree.setdefault(ppid, []).append(int(pid_dir.name))
    return tree


def descendants(root: int) -> list[int]:
    """``root`` and every process below it (Ray's gcs, raylet and actors are started by the
    driver, so they are here; another user's Ray on the same machine is not)."""
    tree, found, todo = _children(), [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(tree.get(pid, []))
    return found


def _pss_uss_mb(pid_dir: Path) -> tuple[float, float]:
    """A process's proportional and unique set sizes (MB), from ``smaps_rollup``: what it
    costs beside processes that map the same libraries (PSS shares each shared page among
    them; USS counts only its private pages)."""
    kb = {}
    for line in (pid_dir / "smaps_rollup").read_text().splitlines()[1:]:
        key, value = line.split(":", 1)
        kb[key] = int(value.split()[0])
    return kb["Pss"] / 1024, (kb["Private_Clean"] + kb["Private_Dirty"]) / 1024


def _median(peaks: dict[int, float]) -> str:
    values = sorted(peaks.values())
    return f"{values[len(values) // 2]:.0f}" if values else "-"


class MemorySampler(threading.Thread):
    """Samples the RSS of a process tree every 0.5 s (``root`` set once the process runs);
    Ray actors (``ClientAppActor`` in the command line) are also tracked one by one, with
    their PSS and USS."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.root: int | None = None
        self.peak_by_pid: dict[int, float] = {}
        self.peak_pss_by_pid: dict[int, float] = {}
        self.peak_uss_by_pid: dict[int, float] = {}
        self.peak_total = 0.0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            total = 0.0
            for pid in descendants(self.root) if self.root else []:
                pid_dir = Path("/proc") / str(pid)
                try:
                    cmd = (pid_dir / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                    rss_kb = next(
                        int(line.split()[1])
                        for line in (pid_dir / "status").read_text().splitlines()
                        if line.startswith("VmRSS")
                    )
                except (OSError, StopIteration, ValueError):
                    continue
                mb = rss_kb / 1024
                total += mb
                if "ClientAppActor" in cmd:
                    self.peak_by_pid[pid] = max(self.peak_by_pid.get(pid, 0.0), mb)
                    try:
                        pss, uss = _pss_uss_mb(pid_dir)
                    except (OSError, KeyError, ValueError):
                        continue
                    self.peak_pss_by_pid[pid] = max(self.peak_pss_by_pid.get(pid, 0.0), pss)
                    self.peak_uss_by_pid[pid] = max(self.peak_uss_by_pid.get(pid, 0.0), uss)
            self.peak_total = max(self.peak_total, total)
            time.sleep(0.5)


def export(ref: str, folder: Path) -> Path:
    """The repository at ``ref`` (``git archive``) in ``folder``: a run from there imports
    that revision's fedmammo (PYTHONPATH and the working directory come before the editable
    install), in the driver and in every Ray actor (they inherit the environment)."""
    archive = subprocess.run(["git", "archive", ref], cwd=REPO, capture_output=True, check=True)
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive.stdout, check=True)
    return folder


class Run(NamedTuple):
    """One ``fedmammo.simulate`` process, as :func:`run` measured it."""

    wall: float  # process wall time (s)
    run_dir: Path  # the run folder (results.json, run.log, runspec.json)
    memory: MemorySampler  # RSS / PSS / USS samples of its process tree
    started: float  # when the process was started (seconds since the epoch)


def run(args: list[str], out: Path, source: Path | None = None) -> Run:
    """``fedmammo.simulate args``: its wall time, run folder, memory samples and start time
    (seconds since the epoch), as a :class:`Run`."""
    sampler = MemorySampler()
    sampler.start()
    started = time.time()
    t0 = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": str(source)} if source else None
    proc = subprocess.Popen(
        [sys.executable, "-m", "fedmammo.simulate", *args, "--out", str(out)],
        cwd=source or REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    sampler.root = proc.pid
    _, err = proc.communicate()
    wall = time.perf_counter() - t0
    sampler.stop.set()
    sampler.join()
    if proc.returncode != 0:
        raise SystemExit(f"fedmammo.simulate {' '.join(args)} failed:\n{err[-3000:]}")
    run_dir = sorted(out.glob("*/*/results.json"))[-1].parent
    return Run(wall=wall, run_dir=run_dir, memory=sampler, started=started)


def server_started(run_dir: Path) -> float:
    """When the ServerApp started (seconds since the epoch): its first line in run.log."""
    for line in (run_dir / "run.log").read_text().splitlines():
        if " fedmammo.federation.connect: connecting " in line:
            stamp, ms = line[:23].split(",")
            return time.mktime(time.strptime(stamp, "%Y-%m-%d %H:%M:%S")) + int(ms) / 1000
    raise SystemExit(f"{run_dir / 'run.log'}: the ServerApp's first line is missing")


def many_centres_scenario(n: int, folder: Path) -> Path:
    centres = [{"profile": "tiny", "name": f"c{i:02d}", "role": "train"} for i in range(n)]
    scenario = {
        "name": f"fedavg_{n}_centres",
        "centres": centres,
        "strategy": "fedavg",
        "strategy_overrides": {
            "params.rounds": 2,
            "params.arms": ["federated"],
            "params.bootstrap": 0,
            "params.min_centres": 1,
            "params.model.options": {"width": 4, "depth": 3},
        },
        "image_size": [32, 24],
        "data_dir": str(folder / "data"),
    }
    path = folder / "many.yaml"
    path.write_text(yaml.safe_dump(scenario))
    return path


def round_ratios(metrics: pd.DataFrame, arms: pd.Series) -> pd.DataFrame:
    """Each round of ``arms``: its wall time, the slowest centre's compute and their ratio."""
    timing = metrics[(metrics["split"] == "timing") & arms]
    per_round = timing.pivot_table(index=["arm", "round"], columns="metric", values="value")
    per_round["ratio"] = per_round["round_wall_seconds"] / per_round["centre_compute_seconds_max"]
    return per_round


def quick(
    tmp: Path, source: Path | None = None, backend: str | None = None, sets: Sequence[str] = ()
) -> dict[str, str]:
    """``fedavg_quick --quick`` from ``source`` (default: this tree), on ``backend`` (default:
    the scenario's), with ``sets`` (``--set`` overrides): the table's cells."""
    args = ["scenarios/fedavg_quick.yaml", "--quick"] + (["--backend", backend] if backend else [])
    args += [a for s in sets for a in ("--set", s)]
    done = run(args, tmp, source)
    wall, run_dir, mem = done.wall, done.run_dir, done.memory
    res = json.loads((run_dir / "results.json").read_text())
    df = pd.DataFrame(res["metrics"])
    per_round = round_ratios(df, df["arm"] == "federated")
    ratio = per_round["ratio"]
    local = round_ratios(df, df["arm"].str.startswith("local-"))["ratio"]
    in_app = res["meta"]["wall_seconds"]
    before_app = server_started(run_dir) - done.started
    peaks = sorted(mem.peak_by_pid.values())
    rows = {
        "nodes": str(len(res["meta"]["centres"])),
        "process wall time": f"{wall:.1f} s",
        "of which the ServerApp": f"{in_app:.1f} s",
        f"federated round wall time / slowest centre's compute (median over {len(ratio)} "
        "rounds)": f"{ratio.median():.2f}x",
        f"one-centre rounds (local arms): round wall / the centre's compute (median over "
        f"{len(local)})": f"{local.median():.2f}x",
        "median round wall time": f"{per_round['round_wall_seconds'].median():.2f} s",
        "start-up: CLI start -> ServerApp start (imports, phantom + cache prepared)": (
            f"{before_app:.1f} s"
        ),
        "start-up: identify round (Ray starts, its actors import torch, caches opened)": (
            f"{res['meta']['startup_seconds']:.1f} s"
        ),
        "after the ServerApp: report, Ray's shutdown, exit": (
            f"{wall - before_app - in_app:.1f} s"
        ),
        "peak RSS per simulated centre (Ray actor), median / max": (
            f"{peaks[len(peaks) // 2]:.0f} / {peaks[-1]:.0f} MB" if peaks else "-"
        ),
        "of it, peak PSS / USS per simulated centre (Ray actor), median": (
            f"{_median(mem.peak_pss_by_pid)} / {_median(mem.peak_uss_by_pid)} MB"
        ),
        "peak RSS, whole process tree": f"{mem.peak_total:.0f} MB",
    }
    return rows


def prepare(sets: Sequence[str]) -> None:
    """fedavg_quick's centres prepared (phantom images, caches) with ``sets``, untimed."""
    from fedmammo.config import load_scenario
    from fedmammo.simulate import parse_sets, prepare_data

    overrides = parse_sets(list(sets))  # as the command reads them
    prepare_data(
        load_scenario(REPO / "scenarios" / "fedavg_quick.yaml", sets=overrides, quick=True)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--centres", type=int, default=20, help="0: skip the many-centres run")
    parser.add_argument(
        "--base-ref", help="also run fedavg_quick from this git revision (before / after)"
    )
    parser.add_argument(
        "--backends",
        nargs="+",
        choices=["ray", "inprocess"],
        help="one fedavg_quick column per simulation backend (default: the scenario's)",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="passed to every fedavg_quick run (e.g. simulation.client_resources.num_cpus=0.5)",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        columns = {}
        # one data folder, prepared before any timed run: every column's start-up times the
        # same work (the phantom's images and caches found ready), whatever its revision
        sets = [*args.set, f"data_dir={tmp / 'data'}"]
        prepare(sets)
        if args.base_ref:
            base = export(args.base_ref, tmp / "base")
            columns[f"before ({args.base_ref})"] = quick(tmp / "quick-base", base, sets=sets)
        for backend in args.backends or [None]:
            name = f"--backend {backend}" if backend else ("after" if columns else "value")
            columns[name] = quick(tmp / f"quick-{backend}", backend=backend, sets=sets)
        if args.centres:
            many = many_centres_scenario(args.centres, tmp)
            many_run = run([str(many)], tmp / "many")
            res_n = json.loads((many_run.run_dir / "results.json").read_text())
    print("## Flower orchestration (`benchmarks/bench_federation.py`)\n")
    first = next(iter(columns.values()))
    print(
        f"`{' '.join(['python', *sys.argv])}`: fedavg_quick --quick, {first['nodes']} simulated "
        f"nodes, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f} at the end.\n"
    )
    print("| measurement | " + " | ".join(columns) + " |\n|---|" + "---|" * len(columns))
    for key in first:
        if key != "nodes":
            print(f"| {key} | " + " | ".join(c[key] for c in columns.values()) + " |")
    if args.centres:
        n = args.centres
        print(f"| {n} tiny centres, 2 FedAvg rounds: wall time | {many_run.wall:.1f} s |")
        print(f"| {n} tiny centres: ServerApp time | {res_n['meta']['wall_seconds']:.1f} s |")
        peak = many_run.memory.peak_total
        print(f"| {n} tiny centres: peak RSS, whole process tree | {peak:.0f} MB |")


if __name__ == "__main__":
    main()
