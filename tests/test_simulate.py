"""End to end through Flower's simulation engine: results, a centre failure, resume."""

from __future__ import annotations

import json
import shutil

import pytest
from helpers.run_helpers import final_auc, results, run_cli

pytestmark = pytest.mark.slow

TINY = "scenarios/fedavg_tiny.yaml"


def test_tiny_run_survives_a_failing_centre_and_resumes(tmp_path):
    # Prepare: two rounds; tiny_b's handler raises in round 2 (min_centres 1 lets it go on).
    sets = [
        "--set",
        "strategy.params.rounds=2",
        "--set",
        "strategy.params.min_centres=1",
        "--set",
        "faults=[{centre: tiny_b, round: 2}]",
    ]
    # Execute
    proc, run_dir = run_cli([TINY, *sets], out=tmp_path)
    # Assert: the run finished, recorded the failure and carried on with tiny_a.
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = results(run_dir)
    fails = [f for f in res["failures"] if f["phase"] == "train"]
    assert [(f["centre"], f["round"]) for f in fails] == [("tiny_b", 2)]
    assert "injected fault" in fails[0]["reason"]
    assert any("aggregated without ['tiny_b']" in n for n in res["notes"])
    aucs = final_auc(res, "federated")
    assert set(aucs) == {"tiny_a", "tiny_b", "tiny_t"}
    assert all(v is None or 0.0 <= v <= 1.0 for v in aucs.values())
    val_rounds = {r["round"] for r in res["metrics"] if r["split"] == "val"}
    assert val_rounds == {1, 2}
    assert (run_dir / "checkpoints" / "federated" / "seed0_round002.pt").is_file()
    for name in ("scenario.resolved.yaml", "metrics.csv", "results.md", "run.log"):
        assert (run_dir / name).is_file(), name
    assert "Test AUROC" in proc.stdout
    # a quiet console and a useful log: no library deprecation chatter, fedmammo's own lines
    console = proc.stdout + proc.stderr
    assert "DEPRECATED" not in console and "FutureWarning" not in console
    log = (run_dir / "run.log").read_text()
    assert "alembic" not in log and "font_manager" not in log
    assert "fedmammo.data" in log
    assert "federated seed 0 round 2:" in log and "compute tiny_a" in log  # one line a round
    assert (run_dir / "report.html").is_file()

    # Prepare: pretend the run was killed after round 1 (progress and checkpoint rolled back).
    rolled = dict(res)
    rolled["progress"] = {"federated|0": {"round": 1}}
    (run_dir / "results.json").write_text(json.dumps(rolled))
    (run_dir / "checkpoints" / "federated" / "seed0_round002.pt").unlink()
    round1 = [r for r in res["metrics"] if r["round"] == 1]
    shutil.rmtree(tmp_path / "unused", ignore_errors=True)
    # Execute
    proc2, _ = run_cli([TINY, "--resume", str(run_dir)], out=tmp_path / "unused")
    # Assert: round 1 kept as it was, round 2 and the final evaluation redone.
    assert proc2.returncode == 0, proc2.stdout[-3000:] + proc2.stderr[-3000:]
    res2 = results(run_dir)
    assert [r for r in res2["metrics"] if r["round"] == 1] == round1
    assert {r["round"] for r in res2["metrics"] if r["split"] == "val"} == {1, 2}
    assert res2["progress"]["federated|0"] == {"round": 2, "done": True}
    assert set(final_auc(res2, "federated")) == {"tiny_a", "tiny_b", "tiny_t"}


def test_check_reports_bad_scenario_in_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("centres: [{profile: tiny}]\nstrategy: fedavg\nroundz: 2\n")
    proc, _ = run_cli([str(bad), "--check"], out=tmp_path)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stdout + proc.stderr
    assert "key 'roundz': unknown key" in proc.stdout
