"""What rewriting report.html costs as the number of centres grows.

    python benchmarks/bench_report.py [--centres 10 100 300] [--base-ref REV] [--repeats 1]

For each N a run folder of N evaluating centres is written from scratch (two arms, a FedAvg
and a local one, 2 seeds x 3 rounds of validation AUROC and weighted log loss per centre,
final test AUROC with a CI, round timings: what a tiny-centre scale run records), then
``write_report`` runs on it in a fresh interpreter. ``--base-ref`` times the same folders
with that git revision's fedmammo (``git archive`` into a temporary folder) in the same run,
for before / after ratios. The live report of a run is rewritten from its folder like this
(fedmammo.evaluation.run_outputs), so this time is what the ServerApp spends per rewrite.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]
ARMS = ("federated", "local")
PROBE = """
import sys, time
from fedmammo.evaluation.html_report import write_report
t = time.perf_counter()
write_report(sys.argv[1])
print(time.perf_counter() - t)
"""


def run_folder(root: Path, n: int, seeds: int = 2, rounds: int = 3) -> Path:
    """A finished fedavg run folder of ``n`` evaluating centres under ``root``."""
    from fedmammo.evaluation.results import RECORD_FIELDS

    rng = np.random.default_rng(n)
    centres = [f"c{i:04d}" for i in range(n)]
    metrics = []

    def record(arm, seed, centre, split, metric, value, rnd=None, lo=None, hi=None):
        fields = (arm, seed, centre, None, split, metric, value, lo, hi, rnd)
        metrics.append(dict(zip(RECORD_FIELDS, fields, strict=True)))

    for arm in ARMS:
        for seed in range(seeds):
            for rnd in range(1, rounds + 1):
                record(arm, seed, "all", "timing", "round_wall_seconds", 0.1 * n, rnd)
                for c in centres:
                    record(arm, seed, c, "val", "auc", float(rng.uniform(0.5, 0.9)), rnd)
                    record(arm, seed, c, "val", "wll", float(rng.uniform(0.4, 0.7)), rnd)
            for c in centres:
                auc = float(rng.uniform(0.55, 0.9))
                record(arm, seed, c, "test", "auc", auc, None, auc - 0.1, min(1.0, auc + 0.1))
    run = root / f"scale{n}" / "20260101-000000"
    run.mkdir(parents=True)
    meta = {
        "scenario": f"scale{n}",
        "kind": "fedavg",
        "seeds": list(range(seeds)),
        "centre_order": centres,
        "centres": {c: {"role": "train", "counts": {"n-images": 16}} for c in centres},
    }
    progress = {f"{a}|{s}": {"round": rounds, "done": True} for a in ARMS for s in range(seeds)}
    results = {"meta": meta, "metrics": metrics, "failures": [], "notes": [], "progress": progress}
    (run / "results.json").write_text(json.dumps(results))
    pd.DataFrame(metrics, columns=list(RECORD_FIELDS)).to_csv(run / "metrics.csv", index=False)
    scenario = {"name": f"scale{n}", "centres": [{"name": c, "role": "train"} for c in centres]}
    (run / "scenario.resolved.yaml").write_text(yaml.safe_dump(scenario))
    return run


def export(ref: str, folder: Path) -> Path:
    """``fedmammo`` of git revision ``ref``, extracted under ``folder``."""
    archive = subprocess.run(
        ["git", "archive", ref, "fedmammo"], cwd=REPO, capture_output=True, check=True
    ).stdout
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    return folder


def time_report(run: Path, code: Path, repeats: int) -> float:
    """Median seconds of ``write_report(run)`` with the fedmammo found in ``code``."""
    env = {**os.environ, "PYTHONPATH": str(code)}
    times = [
        float(
            subprocess.run(
                [sys.executable, "-c", PROBE, str(run)],
                cwd=code,  # `python -c` puts the working folder first on sys.path
                env=env,
                capture_output=True,
                text=True,
                check=True,
            ).stdout.split()[-1]
        )
        for _ in range(repeats)
    ]
    return statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--centres", type=int, nargs="+", default=[10, 100, 300])
    parser.add_argument("--base-ref", help="git revision to time in the same run (before)")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        base = export(args.base_ref, root / "base") if args.base_ref else None
        head = "| centres |" + (f" before ({args.base_ref}) |" if base else "") + " after |"
        print(head + (" after / before |" if base else ""))
        print("|---:" * (head.count("|") - 1 + bool(base)) + "|")
        for n in args.centres:
            run = run_folder(root / "runs", n)
            after = time_report(run, REPO, args.repeats)
            cells = [str(n)]
            if base:
                before = time_report(run, base, args.repeats)
                cells.append(f"{before:.2f} s")
            cells.append(f"{after:.2f} s")
            if base:
                cells.append(f"{after / before:.3f}x")
            print("| " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
