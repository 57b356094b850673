"""Helpers for end-to-end tests: run the CLI in a subprocess and read its run directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run_cli(
    args: list[str], *, out: Path, timeout: float = 600, env: dict | None = None
) -> tuple[subprocess.CompletedProcess, Path | None]:
    """Run ``python -m fedmammo.simulate ARGS --out OUT``; return the process and run dir."""
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run(
        [sys.executable, "-m", "fedmammo.simulate", *args, "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
    )
    runs = sorted(out.glob("*/*/results.json"))
    return proc, (runs[-1].parent if runs else None)


def results(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


def comparable_metrics(res: dict, ignored: tuple[str, ...] = ("timing",)) -> dict[tuple, tuple]:
    """results.json's metric records keyed by what they measure (arm, seed, centre, segment,
    split, metric, round), valued (value, CI low, CI high): what two runs of one scenario and
    seed share to the bit, whatever the backend or the processes (wall-clock seconds aside)."""
    keys = ("arm", "seed", "centre", "segment", "split", "metric", "round")
    return {
        tuple(r[k] for k in keys): (r["value"], r["ci_low"], r["ci_high"])
        for r in res["metrics"]
        if r["split"] not in ignored and not r["metric"].endswith("seconds")
    }


def final_auc(res: dict, arm: str) -> dict[str, float]:
    """Final whole-centre test AUC per centre for one arm."""
    return {
        r["centre"]: r["value"]
        for r in res["metrics"]
        if r["arm"] == arm
        and r["metric"] == "auc"
        and r["split"] == "test"
        and r["segment"] is None
        and r["round"] is None
    }
