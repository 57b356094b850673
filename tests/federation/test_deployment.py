"""The same apps at 'separate sites': SuperLink + one SuperNode per centre on 127.0.0.1.

Runs scenarios/fedavg_tiny.yaml with `flwr run` and checks that the results match the
simulation of the same scenario and seed.
"""

from __future__ import annotations

import json
import subprocess

import pytest
from helpers.processes import (
    BIN,
    listening,
    loopback_superlink,
    prepare_sites,
    start,
    stop,
    supernode,
    wait_for,
)
from helpers.run_helpers import REPO, final_auc, results

from fedmammo.config import load_scenario

pytestmark = pytest.mark.slow
SCENARIO = REPO / "scenarios" / "fedavg_tiny.yaml"


def test_loopback_deployment_matches_simulation(tmp_path, fedavg_tiny_simulation):
    # Prepare: each site's data folder, as a hospital would (same profiles and data seed).
    scenario = load_scenario(SCENARIO)
    sites = prepare_sites(scenario, tmp_path / "sites")
    env, link, superlink = loopback_superlink(tmp_path)
    procs = [start(superlink, tmp_path / "superlink.log", env)]
    run_dir = tmp_path / "deployed_run"
    try:
        # `flwr run` does not retry: it needs the SuperLink up (SuperNodes retry by themselves)
        wait_for(lambda: listening(link), 120, "SuperLink listening", tmp_path)
        for name, (data_dir, role) in sites.items():
            cmd = supernode(link, name, data_dir, role)
            procs.append(start(cmd, tmp_path / f"supernode_{name}.log", env))
        # Execute: the ServerApp reads the scenario and writes results to run-dir.
        run = subprocess.run(
            [
                str(BIN / "flwr"),
                "run",
                str(REPO),
                "loopback",
                "--stream",
                "-c",
                f'scenario="{SCENARIO}" run-dir="{run_dir}"',
            ],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=420,
        )
    finally:
        stop(procs)
    logs = run.stdout[-2000:] + run.stderr[-2000:]
    assert (run_dir / "results.json").is_file(), logs
    deployed = results(run_dir)
    assert deployed["meta"]["deployment"] is True
    assert deployed["failures"] == [], deployed["failures"]
    # Simulation of the same scenario and seed.
    simulated = results(fedavg_tiny_simulation)
    # Assert: same centres, same test AUCs (same data, splits, seeds and arithmetic).
    dep_auc, sim_auc = final_auc(deployed, "federated"), final_auc(simulated, "federated")
    assert set(dep_auc) == set(sim_auc) == {"tiny_a", "tiny_b", "tiny_t"}
    for centre, value in sim_auc.items():
        if value is None:
            assert dep_auc[centre] is None
        else:
            assert dep_auc[centre] == pytest.approx(value, abs=1e-3), (centre, dep_auc, sim_auc)
    counts = {c: v["counts"]["n-images"] for c, v in deployed["meta"]["centres"].items()}
    assert counts == {c: v["counts"]["n-images"] for c, v in simulated["meta"]["centres"].items()}
    assert json.loads((run_dir / "results.json").read_text())["progress"]["federated|0"]["done"]
    # the run folder holds what a simulated one does: the scenario as resolved, the run spec
    resolved = (run_dir / "scenario.resolved.yaml").read_text()
    assert "strategy" in resolved and "tiny_a" in resolved
    assert json.loads((run_dir / "runspec.json").read_text())["deployment"] is True
