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


def comparable_metrics(res: dict) -> dict:
    """Every metric of a run but its timings, keyed by what names it (arm, seed, centre,
    segment, split, metric, round), valued (value, CI low, CI high): equal for two runs of
    one scenario and seed, whatever the backend."""
    key = ("arm", "seed", "centre", "segment", "split", "metric", "round")
    return {
        tuple(str(m[k]) for k in key): (m["value"], m["ci_low"], m["ci_high"])
        for m in res["metrics"]
        if m["split"] != "timing"
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
