"""scenarios/dp_quick.yaml: the FedAvg runner with DP on an in-process grid (privacy.json
against dp-accounting, a budget overrun that stops cleanly), and the real CLI on Ray (slow).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.dp_reference import independent_epsilon
from helpers.flower_messages import run_strategy_in_process

from fedmammo.config import load_scenario
from fedmammo.federation.privacy.ledger import REFUSAL_MARK
from fedmammo.federation.runspec import RunSpec
from fedmammo.methods.fedavg.server import run as run_fedavg

ROOT = Path(__file__).resolve().parents[3]
SCENARIO = ROOT / "scenarios" / "dp_quick.yaml"


def run_in_process(tmp: Path, **sets) -> Path:
    """dp_quick's federated arm through the real runner, without Ray."""
    sets = {
        "data_dir": str(tmp / "data"),
        "strategy.params.arms": ["federated"],
        "strategy.params.bootstrap": 20,
        **sets,
    }
    scenario = load_scenario(SCENARIO, sets=sets)
    spec = RunSpec(scenario_file=str(SCENARIO), run_dir=str(tmp / "run"), sets=sets)
    run_strategy_in_process(spec, scenario, run_fedavg)
    return tmp / "run"


def check_privacy_json(privacy: dict, targets: dict[str, float], rounds: list[int]) -> None:
    """Every record recomputes within 2% with dp-accounting and stays within its target."""
    records = {(r["centre"], r["arm"]): r for r in privacy["records"]}
    assert {c for c, _ in records} == set(targets)
    for (centre, _arm), r in records.items():
        assert r["accountant"] == "rdp" and r["max_grad_norm"] == 1.0
        assert r["rounds"] == rounds and 0 < r["delta"] < 1 / 20
        assert r["epsilon"] == pytest.approx(
            independent_epsilon(r["history"], r["delta"]), rel=0.02
        )
        assert r["ledger_epsilon"] == pytest.approx(
            independent_epsilon(r["ledger_history"], r["delta"]), rel=0.02
        )
        assert r["epsilon"] <= targets[centre] * 1.01 and r["target_epsilon"] == targets[centre]


def test_dp_quick_privacy_json_matches_dp_accounting_and_audits_are_recorded(tmp_path):
    # Execute (with offline LiRA: 2 shadow models per audit and centre)
    run_dir = run_in_process(tmp_path, **{"strategy.params.audit_shadows": 2})
    privacy = json.loads((run_dir / "privacy.json").read_text())
    results = json.loads((run_dir / "results.json").read_text())
    # Assert: one record per training centre, recomputable, within its own target.
    check_privacy_json(privacy, {"tiny_a": 8.0, "tiny_b": 4.0}, [1, 2, 3])
    assert not privacy["refusals"] and not results["failures"]
    by_centre = {r["centre"]: r for r in privacy["records"]}
    assert privacy["summary"]["tiny_b"]["max_epsilon"] == by_centre["tiny_b"]["ledger_epsilon"]
    # the in-federation audit: scores only, at both training centres, next to epsilon
    audits = [m for m in results["metrics"] if m["split"] == "audit"]
    assert {(m["centre"], m["metric"]) for m in audits} >= {
        ("tiny_a", "attack_auc"),
        ("tiny_b", "attack_auc"),
        ("tiny_b", "attack_tpr_at_1pct_fpr"),
        ("tiny_a", "attack_tpr_bound_at_1pct_fpr"),
        ("tiny_a", "lira_attack_auc"),
        ("tiny_b", "lira_attack_tpr_at_1pct_fpr"),
        ("tiny_a", "attack_epsilon_lower_95"),
        ("tiny_b", "lira_attack_epsilon_lower_95"),
    }
    proved = [m for m in audits if m["metric"].endswith("epsilon_lower_95")]
    assert all(0.0 <= m["value"] <= 1.0 for m in audits if m not in proved)
    # what the attacks prove stays within each centre's spend (no warning note)
    assert all(0.0 <= m["value"] <= by_centre[m["centre"]]["ledger_epsilon"] for m in proved)
    assert not any(n.startswith("WARNING") for n in privacy["notes"])
    assert {a["centre"]: a["epsilon"] for a in privacy["audits"]} == pytest.approx(
        {c: r["ledger_epsilon"] for c, r in by_centre.items()}
    )


def test_budget_overrun_stops_the_arm_cleanly_and_keeps_results(tmp_path):
    # Execute: fixed noise 1.2 at tiny_a with its epsilon-8 cap: round 2 would overrun.
    run_dir = run_in_process(tmp_path, **{"privacy.noise_multiplier": 1.2})
    privacy = json.loads((run_dir / "privacy.json").read_text())
    results = json.loads((run_dir / "results.json").read_text())
    # Assert: tiny_a's refusal recorded; round 1's model tested and audited everywhere.
    [refusal] = privacy["refusals"]
    assert (refusal["centre"], refusal["round"]) == ("tiny_a", 2)
    [failure] = results["failures"]
    assert failure["centre"] == "tiny_a" and REFUSAL_MARK in failure["reason"]
    assert any("refused it (privacy budget)" in n for n in results["notes"])
    assert results["progress"]["federated|0"] == {
        "round": 1,
        "done": True,
        "stopped": "arm federated seed 0: stopped before round 2: centre tiny_a refused it "
        "(privacy budget); the model of the last completed round is final",
    }
    test_auc = [
        m
        for m in results["metrics"]
        if m["split"] == "test" and m["metric"] == "auc" and m["segment"] is None
    ]
    assert {m["centre"] for m in test_auc} == {"tiny_a", "tiny_b", "tiny_t"}
    assert {r["centre"]: r["rounds"] for r in privacy["records"]}["tiny_a"] == [1]
    assert {a["centre"] for a in privacy["audits"]} == {"tiny_a", "tiny_b"}


@pytest.mark.slow
def test_simulate_cli_writes_privacy_json_on_ray(tmp_path):
    # Execute: the real command on Flower's simulation engine.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "fedmammo.simulate",
            str(SCENARIO),
            "--out",
            str(tmp_path / "runs"),
            "--set",
            f"data_dir={tmp_path / 'data'}",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    # Assert
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    [run_dir] = list((tmp_path / "runs" / "dp_quick").iterdir())
    privacy = json.loads((run_dir / "privacy.json").read_text())
    results = json.loads((run_dir / "results.json").read_text())
    check_privacy_json(privacy, {"tiny_a": 8.0, "tiny_b": 4.0}, [1, 2, 3])
    assert {r["arm"] for r in privacy["records"]} == {"federated", "local-tiny_a", "local-tiny_b"}
    assert not results["failures"]
    audit_arms = {m["arm"] for m in results["metrics"] if m["split"] == "audit"}
    assert audit_arms == {"federated", "local-tiny_a", "local-tiny_b"}
