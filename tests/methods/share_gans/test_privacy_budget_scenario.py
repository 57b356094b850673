"""scenarios/privacy_budget.yaml: generator sharing with DP discriminators, swept over epsilon.

The real sweep loop and share_gans runner on an in-process grid (no Ray), shrunk with --set.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from flwr.supercore.task_identity import TaskIdentity
from helpers.gan_runs import run_spec_in_process

from fedmammo.config import load_scenario
from fedmammo.federation.runspec import ENV_VAR, RunSpec
from fedmammo.sweep import point_name, run_sweep

ROOT = Path(__file__).resolve().parents[3]
SCENARIO = ROOT / "scenarios" / "privacy_budget.yaml"
TINY = {
    "sweep": {"privacy.target_epsilon": [1.0, None]},
    "image_size": [64, 48],
    "centres.A.data.synthetic.image_height": 64,
    # 7-8 cancer patients among 15 in test: CIs (metrics.MIN_UNITS_PER_CLASS)
    "centres.A.data.synthetic.segments.0.patients": 40,
    "centres.A.data.synthetic.segments.0.prevalence": 0.5,
    "centres.A.split": {"train": 0.5, "val": 0.125, "test": 0.375},
    "centres.B.data.synthetic.image_height": 64,
    "centres.B.data.synthetic.segments.0.patients": 8,
    "centres.B.data.synthetic.segments.1.patients": 8,
    "centres.C.data.synthetic.image_height": 64,
    "centres.C.data.synthetic.segments.0.patients": 12,
    "strategy.params.patches.size": 16,
    "strategy.params.n_synthetic": 8,
    "strategy.params.frechet_samples": 16,
    "strategy.params.bootstrap": 50,
    "strategy.params.gans.dcgan": {
        "epochs": 2,
        "width": 4,
        "batch_size": 8,
        "snapshot_every": 1,
        "warmup": 1,
    },
    "strategy.params.classifier.epochs": 2,
    "strategy.params.classifier.model.options": {"width": 4, "hidden": 8},
}


def test_quick_scenario_makes_only_the_sharing_centres_private():
    # Execute
    scenario = load_scenario(SCENARIO, quick=True)
    params = scenario.recipe.typed_params(quick=True)
    profiles = scenario.resolved_profiles
    # Assert: B and C take the swept scenario default, A keeps its own (empty) privacy block;
    # the scenario's DP-friendly DCGAN settings win over the recipe's quick block
    assert not profiles["A"].privacy.enabled
    assert profiles["B"].privacy.target_epsilon == profiles["C"].privacy.target_epsilon == 8.0
    assert scenario.sweep == {"privacy.target_epsilon": [1.0, 8.0, 100.0, None]}
    assert (params.gans["dcgan"].batch_size, params.gans["dcgan"].epochs) == (64, 40)
    assert all("synth_" in a or a == "A" for a in params.arms)


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("privacy_budget")
    sets = {**TINY, "data_dir": str(tmp / "data")}
    spec = RunSpec(scenario_file=str(SCENARIO), run_dir=str(tmp / "run"), sets=sets, quick=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(ENV_VAR, "")
        for attr in ("_run_id", "_node_id", "_task_id"):  # what a server-side Message() reads
            mp.setattr(TaskIdentity, attr, 1)
        scenario = load_scenario(SCENARIO, sets=sets, quick=True)
        run_sweep(spec, scenario, lambda s, sc: Path(run_spec_in_process(s, sc)[0].spec.run_dir))
    return tmp / "run"


def test_each_budget_point_spends_only_the_sharers_epsilon(sweep_dir):
    # Prepare
    dp = json.loads(
        (
            sweep_dir / "points" / point_name({"privacy.target_epsilon": 1.0}) / "privacy.json"
        ).read_text()
    )
    no_dp = sweep_dir / "points" / point_name({"privacy.target_epsilon": None}) / "privacy.json"
    # Assert: at epsilon 1 B's and C's generators spent at most 1; without DP nothing is spent
    spent = {(r["centre"], r["arm"]): r["epsilon"] for r in dp["records"]}
    assert set(spent) == {("B", "B_dcgan_all"), ("C", "C_dcgan_all")}
    assert all(0.5 < e <= 1.0 * 1.01 for e in spent.values())
    assert not no_dp.is_file() or not json.loads(no_dp.read_text())["records"]


def test_sweep_table_and_plot_hold_utility_and_attack_per_budget(sweep_dir):
    # Prepare
    table = pd.read_csv(sweep_dir / "sweep.csv")
    final = table[table["round"].isna() & table["segment"].isna()]
    auc = final[(final["split"] == "test") & (final["metric"] == "auc")]
    attack = final[(final["split"] == "audit") & (final["metric"] == "attack_auc")]
    # Assert: A's AUROC (with a bootstrap CI) for every arm at both points, the GAN-Leaks
    # attack AUC of both generators at both points, and the plot at the sweep's root
    assert len(auc) == 4 * 2 and set(auc["centre"]) == {"A"}
    assert auc["ci_low"].notna().all() and (auc["ci_low"] <= auc["value"]).all()
    assert len(attack) == 2 * 2 and attack["value"].between(0, 1).all()
    assert (sweep_dir / "privacy_utility.png").stat().st_size > 1000


def test_the_sweep_leaves_a_comparison_page_with_one_column_per_point(sweep_dir):
    page = (sweep_dir / "report.html").read_text()
    assert page.startswith("<!DOCTYPE html>")
    for value in ("1.0", "none (no DP)"):  # a column per point, named by its value
        assert value in page
