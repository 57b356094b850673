"""Flower orchestration overhead, start-up time and memory per simulated centre.

    python benchmarks/bench_federation.py [--centres 20]

1. ``scenarios/fedavg_quick.yaml --quick``: wall time of each federated round divided by the
   slowest centre's own compute in that round (measured inside the handlers); start-up time
   (process start to the end of the identify round); peak RSS per simulated centre (Ray
   worker processes, sampled from /proc).
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
from pathlib import Path

import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]


class MemorySampler(threading.Thread):
    """Samples RSS of every process whose command line matches, every 0.5 s."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak_by_pid: dict[int, float] = {}
        self.peak_total = 0.0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            total = 0.0
            for pid_dir in Path("/proc").iterdir():
                if not pid_dir.name.isdigit():
                    continue
                try:
                    cmd = (pid_dir / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                    if not any(
                        k in cmd
                        for k in ("ClientAppActor", "fedmammo", "ray::", "raylet", "gcs_server")
                    ):
                        continue
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
                    pid = int(pid_dir.name)
                    self.peak_by_pid[pid] = max(self.peak_by_pid.get(pid, 0.0), mb)
            self.peak_total = max(self.peak_total, total)
            time.sleep(0.5)


def run(args: list[str], out: Path) -> tuple[float, Path, MemorySampler]:
    sampler = MemorySampler()
    sampler.start()
    t0 = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "fedmammo.simulate", *args, "--out", str(out)],
        cwd=REPO,
        check=True,
        capture_output=True,
    )
    wall = time.perf_counter() - t0
    sampler.stop.set()
    sampler.join()
    run_dir = sorted(out.glob("*/*/results.json"))[-1].parent
    return wall, run_dir, sampler


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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--centres", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        wall, run_dir, mem = run(["scenarios/fedavg_quick.yaml", "--quick"], tmp / "quick")
        res = json.loads((run_dir / "results.json").read_text())
        df = pd.DataFrame(res["metrics"])
        timing = df[(df["split"] == "timing") & (df["arm"] == "federated")]
        per_round = timing.pivot_table(index="round", columns="metric", values="value")
        ratio = per_round["round_wall_seconds"] / per_round["centre_compute_seconds_max"]
        startup = res["meta"]["startup_seconds"]
        in_app = res["meta"]["wall_seconds"]
        centre_peaks = sorted(mem.peak_by_pid.values())
        wall_n, run_n, mem_n = run([str(many_centres_scenario(args.centres, tmp))], tmp / "many")
        res_n = json.loads((run_n / "results.json").read_text())
    print("## Flower orchestration (`benchmarks/bench_federation.py`)\n")
    print(
        f"fedavg_quick --quick: {len(res['meta']['centres'])} simulated nodes, "
        f"{os.cpu_count()} CPUs; process wall {wall:.1f} s, of which the ServerApp ran "
        f"{in_app:.1f} s.\n"
    )
    print("| measurement | value |\n|---|---|")
    print(
        f"| federated round wall time / slowest centre's compute (median over "
        f"{len(ratio)} rounds) | {ratio.median():.2f}x |"
    )
    print(f"| median round wall time | {per_round['round_wall_seconds'].median():.2f} s |")
    print(
        f"| start-up: CLI start -> ServerApp start (imports, phantom + cache prepared, Ray "
        f"start) | {wall - in_app:.1f} s |"
    )
    print(
        f"| start-up: identify round (Ray actors start, import torch, open caches) | "
        f"{startup:.1f} s |"
    )
    if centre_peaks:
        print(
            f"| peak RSS per simulated centre (Ray actor), median / max | "
            f"{centre_peaks[len(centre_peaks) // 2]:.0f} / {centre_peaks[-1]:.0f} MB |"
        )
    print(f"| peak RSS, whole process tree | {mem.peak_total:.0f} MB |")
    print(f"| {args.centres} tiny centres, 2 FedAvg rounds: wall time | {wall_n:.1f} s |")
    print(
        f"| {args.centres} tiny centres: ServerApp time | {res_n['meta']['wall_seconds']:.1f} s |"
    )
    print(
        f"| {args.centres} tiny centres: peak RSS, whole process tree | {mem_n.peak_total:.0f} MB |"
    )


if __name__ == "__main__":
    main()
