"""share_gans with DP discriminators at the sharing centres (in-process grid, no Ray)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from flwr.supercore.task_identity import TaskIdentity
from helpers.dp_reference import independent_epsilon
from helpers.gan_runs import run_in_process, tiny_gan_scenario

from fedmammo.federation.runspec import ENV_VAR
from fedmammo.methods.share_gans.generators import load_shared_generator

GENERATORS = ("B_dcgan_all", "B_wgan_gp_all", "C_dcgan_all")
ARMS = ["A", "A+synth_B_dcgan", "A+synth_B_wgan_gp", "A+synth_C_dcgan"]
NO_DP = {"privacy": {}}  # the receiver keeps its own (empty) privacy block: no DP


@pytest.fixture(autouse=True)
def _server_messages(monkeypatch):
    monkeypatch.setenv(ENV_VAR, "")
    for attr in ("_run_id", "_node_id", "_task_id"):  # what a server-side Message() reads
        monkeypatch.setattr(TaskIdentity, attr, 1)


def _run(tmp: Path, privacy: dict, name: str):
    scenario = tiny_gan_scenario(
        tmp,
        centres={"A": NO_DP},
        scenario={"privacy": privacy, "seeds": [0]},
        arms=ARMS,
        fractions=[1.0],
    )
    return run_in_process(scenario, tmp / name)


@pytest.fixture(scope="module")
def dp_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gans_dp")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(ENV_VAR, "")
        for attr in ("_run_id", "_node_id", "_task_id"):
            mp.setattr(TaskIdentity, attr, 1)
        orc, grid = _run(tmp, {"target_epsilon": 3.0, "max_grad_norm": 1.0}, "dp")
    return orc, grid


def test_each_generator_spends_its_own_budget_and_it_recomputes_independently(dp_run):
    # Prepare
    orc, grid = dp_run
    run_dir = Path(orc.spec.run_dir)
    privacy = json.loads((run_dir / "privacy.json").read_text())
    records = {r["arm"]: r for r in privacy["records"]}
    sent = {c["gan"]: json.loads(c["gan-params"]) for _, k, c in grid.log if k == "train.generator"}
    # Assert: one ledger per generator, phase gan, all planned steps at q = 1/steps_per_epoch
    assert set(records) == set(GENERATORS)
    for name, rec in records.items():
        assert rec["phase"] == "gan" and rec["centre"] == name[0]
        ((sigma, q, steps),) = rec["history"]
        epochs = sent[name.split("_", 1)[1].rsplit("_", 1)[0]]["epochs"]
        assert steps == round(1 / q) * epochs
        assert rec["epsilon"] <= 3.0 * 1.01
        assert rec["epsilon"] == pytest.approx(
            independent_epsilon(rec["history"], rec["delta"]), rel=0.02
        )
        desc = load_shared_generator(run_dir / "generators" / name).description
        assert desc.extra["privacy"]["epsilon"] == pytest.approx(rec["epsilon"])
        assert desc.d_norm == ("group" if "dcgan" in name else "none")
    assert orc.recorder.failures == []


PREFIX = {"gan_leaks": "attack", "logan": "logan_attack"}  # the records' metric prefix


def test_generator_audits_run_at_the_sharing_centre_and_only_scores_leave(dp_run):
    # Prepare
    orc, grid = dp_run
    audits = [r for r in orc.recorder.metrics if r["split"] == "audit"]
    by_key = {(r["arm"], r["metric"]): r["value"] for r in audits}
    privacy = json.loads((Path(orc.spec.run_dir) / "privacy.json").read_text())
    # Assert: GAN-Leaks (attack_*) and LOGAN per generator, with the bound epsilon implies
    for name in GENERATORS:
        assert 0.0 <= by_key[(name, "attack_auc")] <= 1.0
        assert 0.0 <= by_key[(name, "logan_attack_auc")] <= 1.0
        eps = next(r["epsilon"] for r in privacy["records"] if r["arm"] == name)
        bound = by_key[(name, "attack_tpr_bound_at_1pct_fpr")]
        assert bound == pytest.approx(min(1.0, math.exp(eps) * 0.01), abs=1e-3)
        for prefix in ("attack", "logan_attack"):  # what each attack proves, within the spend
            assert 0.0 <= by_key[(name, f"{prefix}_epsilon_lower_95")] <= eps
    for a in privacy["audits"]:  # privacy.json: the operating point's FPR, and the same bound
        assert 0.0 <= a["fpr_reached"] <= 0.01
        assert (
            a["epsilon_lower_95"] == by_key[(a["arm"], f"{PREFIX[a['attack']]}_epsilon_lower_95")]
        )
    attacks = {(a["arm"], a["attack"]) for a in privacy["audits"]}
    assert attacks == {(g, a) for g in GENERATORS for a in ("gan_leaks", "logan")}
    replies = [c for centre, k, c in grid.replies if k == "train.generator"]
    assert all(
        set(c)
        <= {"description", "metrics", "privacy", "audit"} | {k for k in c if k.startswith("gen-e")}
        for c in replies
    )


def test_a_generator_over_budget_is_refused_and_its_arms_skip(tmp_path):
    # Prepare: a fixed noise of 0.3 overruns a target epsilon of 1 at B and C
    orc, _ = _run(tmp_path, {"target_epsilon": 1.0, "noise_multiplier": 0.3}, "over")
    privacy = json.loads((tmp_path / "over" / "privacy.json").read_text())
    done = {r["arm"] for r in orc.recorder.metrics if r["split"] == "test"}
    # Assert: every generator refused before training (recorded), only the arm without one ran
    assert {r["arm"] for r in privacy["refusals"]} == set(GENERATORS)
    assert all("privacy budget refusal" in r["reason"] for r in privacy["refusals"])
    assert done == {"A@all-100"}
    notes = " ".join(orc.recorder.notes)
    assert "A+synth_B_dcgan@all-100 seed 0: skipped" in notes


def test_a_sharer_that_keeps_its_audits_refuses_an_audited_generator_request(tmp_path, monkeypatch):
    # Prepare: B keeps its audit results (sharing.audits: false); a server that asks every
    # generator for an audit anyway (the shipped server asks only where the profile allows)
    from fedmammo.methods.share_gans import server

    ask_all = server.generator_privacy_config
    monkeypatch.setattr(
        server,
        "generator_privacy_config",
        lambda *a, **k: {**ask_all(*a, **k), "audit": True},
    )
    scenario = tiny_gan_scenario(
        tmp_path,
        centres={"A": NO_DP, "B": {"sharing.audits": False}},
        scenario={"privacy": {"target_epsilon": 3.0}, "seeds": [0]},
        arms=["A", "A+synth_B_dcgan", "A+synth_C_dcgan"],
        fractions=[1.0],
    )
    # Execute
    orc, _ = run_in_process(scenario, tmp_path / "run")
    # Assert: B refused before training, naming the rule; C trained and audited its generator
    privacy = json.loads((tmp_path / "run" / "privacy.json").read_text())
    (failure,) = orc.recorder.failures
    assert failure["arm"] == "B_dcgan_all", failure
    assert "consent: ConsentRefusal" in failure["reason"]
    assert "sharing.audits: false" in failure["reason"]
    assert {r["arm"] for r in privacy["records"]} == {"C_dcgan_all"}  # B spent nothing
    assert {a["arm"] for a in privacy["audits"]} == {"C_dcgan_all"}
    # and the shipped server does not ask B for one
    monkeypatch.setattr(server, "generator_privacy_config", ask_all)
    assert ask_all(orc, "B", "B_dcgan_all", 0)["audit"] is False
    assert ask_all(orc, "C", "C_dcgan_all", 0)["audit"] is True
