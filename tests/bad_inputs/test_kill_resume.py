"""A run killed (SIGKILL, the whole process tree: Ray included) during training, then resumed
with ``--resume RUN_DIR``, ends with the same results as the run that was never killed. The
killed and the resumed runs use Ray; the unbroken reference runs in process (one Ray start
fewer: the two backends give the same numbers, tests/federation/test_inprocess.py, and this
test checks it once more with FedBN's per-centre state)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from helpers.processes import kill_tree, simulate_process

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "tests" / "methods" / "fedavg" / "tiny.yaml"
# FedBN: each centre's own BatchNorm state lives in its state folder (centres/<name>/fedbn).
SETS = [
    "--set", "strategy.params.arms=[federated]",
    "--set", "strategy.params.rounds=3",
    "--set", "strategy.params.batchnorm=local",
]  # fmt: skip


def _progress(out: Path) -> dict:
    for results in out.glob("*/*/results.json"):
        try:
            return json.loads(results.read_text()).get("progress", {})
        except (OSError, ValueError):
            return {}
    return {}


def _records(run_dir: Path) -> list[tuple]:
    res = json.loads((run_dir / "results.json").read_text())
    keys = ("arm", "seed", "centre", "split", "segment", "round", "metric", "value")
    rows = [r for r in res["metrics"] if r["split"] != "timing"]  # wall-clock seconds differ
    return sorted((tuple(str(r.get(k)) for k in keys) for r in rows), key=str)


def test_killed_during_training_then_resumed_equals_the_unbroken_run(tmp_path):
    data = ["--set", f"data_dir={tmp_path / 'data'}"]
    # Prepare: the unbroken run (in process)
    unbroken = tmp_path / "unbroken"
    args = [str(TINY), *SETS, *data, "--backend", "inprocess", "--out", str(unbroken)]
    proc = simulate_process(args, tmp_path / "unbroken.log")
    assert proc.wait(timeout=900) == 0, (tmp_path / "unbroken.log").read_text()[-3000:]
    # Execute: the same run, killed (process tree, SIGKILL) once round 1 is recorded
    broken = tmp_path / "broken"
    proc = simulate_process(
        [str(TINY), *SETS, *data, "--out", str(broken)], tmp_path / "broken.log"
    )
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline and proc.poll() is None:
        state = _progress(broken).get("federated|0", {})
        if state.get("round", 0) >= 1 and not state.get("done"):
            break
        time.sleep(0.2)
    assert proc.poll() is None, "the run ended before it could be killed"
    kill_tree(proc.pid)
    proc.wait(timeout=60)
    (run_dir,) = broken.glob("*/*/results.json")
    run_dir = run_dir.parent
    killed_at = _progress(broken)["federated|0"]
    resumed = simulate_process(["--resume", str(run_dir)], tmp_path / "resume.log")
    assert resumed.wait(timeout=900) == 0, (tmp_path / "resume.log").read_text()[-3000:]
    # Assert: it was killed part way; after the resume, the same records as the unbroken run
    log = (tmp_path / "resume.log").read_text()
    assert not killed_at.get("done") and killed_at["round"] < 3
    assert f"rounds 1..{killed_at['round']} kept, resumes at {killed_at['round'] + 1} of 3" in log
    (reference,) = unbroken.glob("*/*/results.json")
    assert _records(run_dir) == _records(reference.parent)
