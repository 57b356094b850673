"""Data preparation before a simulation: N centres one by one vs in worker processes.

    python benchmarks/bench_prepare.py [--centres 8 64] [--profile tiny] [--repeat 2]

Each N prepares N copies of a centre profile (phantom, splits, cache at 32 x 24) into a fresh
folder with ``materialise_centres(workers=1)`` (the driver alone, as before) and with
``workers=None`` (one process per core, bounded by memory), interleaved, best of
``--repeat``; what ``python -m fedmammo.simulate`` does before Ray starts. Prints a markdown
table for BENCHMARKS.md with the ratio of the two in the same run.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _jobs(n: int, profile_name: str, root: str):
    from fedmammo.config import load_profile
    from fedmammo.data.prepare import CentreJob

    profile = load_profile(REPO / "centres" / f"{profile_name}.yaml")
    return [
        CentreJob(
            profile=profile.model_copy(update={"name": f"c{i:04d}"}),
            data_root=root,
            image_size=(32, 24),
        )
        for i in range(n)
    ]


def _time(n: int, profile: str, workers: int | None) -> float:
    from fedmammo.data.prepare import materialise_centres

    with tempfile.TemporaryDirectory() as root:
        start = time.perf_counter()
        for _ in materialise_centres(_jobs(n, profile, root), workers=workers):
            pass
        return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--centres", type=int, nargs="+", default=[8, 64])
    ap.add_argument("--profile", default="tiny")
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    from fedmammo.data.prepare import preparation_workers

    rows = []
    for n in args.centres:
        best = {1: float("inf"), None: float("inf")}
        for _ in range(args.repeat):
            for workers in best:
                best[workers] = min(best[workers], _time(n, args.profile, workers))
        rows.append((n, preparation_workers(n), best[1], best[None]))
        print(f"{n} centres: {best[1]:.1f} s alone, {best[None]:.1f} s in workers", flush=True)
    load = os.getloadavg()[0]
    print(
        f"\n`python benchmarks/bench_prepare.py --centres {' '.join(map(str, args.centres))} "
        f"--profile {args.profile} --repeat {args.repeat}` ({os.cpu_count()} CPUs, load "
        f"{load:.1f} at the end; best of {args.repeat}, interleaved):\n"
    )
    print("| centres | one by one (s) | workers | in workers (s) | ratio |")
    print("|---:|---:|---:|---:|---:|")
    for n, w, alone, pooled in rows:
        print(f"| {n} | {alone:.1f} | {w} | {pooled:.1f} | {pooled / alone:.2f}x |")


if __name__ == "__main__":
    main()
