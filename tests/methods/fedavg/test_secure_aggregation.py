"""``secure_aggregation: true``: the tiny FedAvg scenario under SecAgg+ gives the plain run's
model and metrics (within quantisation error), and the server never holds an unmasked update.

Both runs go through the real ClientApp (its mods: consent, DP guard, egress guard, SecAgg+)
in process, as tests/test_methods_e2e.py does.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord
from helpers.flower_messages import InProcessGrid, in_process_identity

from fedmammo.config import load_scenario
from fedmammo.errors import ConfigError
from fedmammo.federation.rounds import CentreFedAvg
from fedmammo.federation.runspec import ENV_VAR, RunSpec
from fedmammo.federation.secagg import MASKED_RECORD
from fedmammo.federation.server_app import run_scenario
from fedmammo.methods import METHODS
from fedmammo.methods.fedavg.messages import TrainClassifier

TINY = Path(__file__).resolve().parent / "tiny.yaml"
C, Q = 8.0, 1 << 22  # SecAggParams defaults: clipping range, quantisation range


REQUIRE = {"sharing": {"require_secure_aggregation": True}}


def _run(tmp_path: Path, name: str, monkeypatch, *, secure: bool, rounds: int = 1, **more):
    sets = {
        "data_dir": str(tmp_path / "data"),
        "strategy.params.arms": ["federated"],
        "strategy.params.rounds": rounds,
        "strategy.params.secure_aggregation": secure,
        **more,
    }
    scenario = load_scenario(TINY, sets=sets)
    spec = RunSpec(
        scenario_file=str(TINY),
        run_dir=str(tmp_path / name),
        sets=sets,
        node_order=scenario.centre_names(),
    )
    Path(spec.run_dir).mkdir()
    monkeypatch.setenv(ENV_VAR, str(spec.save()))
    method = METHODS["fedavg"]
    with in_process_identity():
        grid = InProcessGrid(spec.node_order, strict=True)
        run_scenario(grid, dataclasses.replace(spec), method.run, method.report)
    results = json.loads((Path(spec.run_dir) / "results.json").read_text())
    assert results["failures"] == []
    return scenario, grid, results, Path(spec.run_dir)


def _arrays(run_dir: Path, seed: int, rnd: int) -> dict[str, np.ndarray]:
    path = run_dir / "checkpoints" / "federated" / f"seed{seed}_round{rnd:03d}.pt"
    state = torch.load(path, weights_only=True)
    return {k: v.numpy() for k, v in state.items() if v.is_floating_point()}


def _final_auroc(results) -> dict:
    return {
        (r["centre"], r.get("segment")): r["value"]
        for r in results["metrics"]
        if r["split"] == "test" and r["round"] is None and r["metric"] in ("auc", "auroc")
    }


def _assert_only_masked_updates(grid: InProcessGrid, rounds: int) -> None:
    """Every train reply the server received carries at most the masked uint32 vector."""
    train = [content for _, kind, content in grid.replies if kind == TrainClassifier.KIND]
    assert len(train) == rounds * 4 * 2  # 4 SecAgg+ stages x 2 centres per round
    masked = 0
    for content in train:
        records = {k for k, v in content.items() if isinstance(v, ArrayRecord)}
        assert records <= {MASKED_RECORD}, records
        if records:
            masked += 1
            assert all(a.dtype == "uint32" for a in content[MASKED_RECORD].values())
    assert masked == rounds * 2


@pytest.mark.usefixtures("one_torch_thread")
def test_secure_fedavg_equals_plain_fedavg_and_the_server_sees_only_masked_updates(
    tmp_path, monkeypatch
):
    # Prepare / Execute: the tiny FedAvg scenario (one round), plain and secure
    scenario, _, plain, plain_dir = _run(tmp_path, "plain", monkeypatch, secure=False)
    _, grid, secure, secure_dir = _run(tmp_path, "secure", monkeypatch, secure=True)

    # Assert: the averaged model within the quantisation bound (at most one quantisation
    # step per centre, scaled by max_weight / total weight; the total is > 1/10 here)
    seed = scenario.seeds[0]
    got, want = _arrays(secure_dir, seed, 1), _arrays(plain_dir, seed, 1)
    # integer buffers (BatchNorm's counters) are not aggregated under secure aggregation
    assert got and got.keys() <= want.keys()
    bound = 2 * (2 * C / Q) * 10
    for k in got:
        np.testing.assert_allclose(got[k], want[k], atol=bound, rtol=0, err_msg=k)
        assert np.abs(got[k] - want[k]).max() < bound
    # the final federated test AUROC at every centre agrees (the model differs by quantisation
    # noise, which may swap the ranks of two nearly tied test images: within 0.05 here, far
    # below the CIs of a test set this small)
    a, b = _final_auroc(plain), _final_auroc(secure)
    assert a and a.keys() == b.keys()
    for key, value in a.items():
        assert (b[key] is None) == (value is None), key
        if value is not None:
            assert b[key] == pytest.approx(value, abs=0.05), key
    _assert_only_masked_updates(grid, rounds=1)


@pytest.mark.usefixtures("one_torch_thread")
def test_secure_rounds_follow_each_other(tmp_path, monkeypatch):
    # Two rounds: the centre's SecAgg+ state goes from unmask back to setup; both training
    # centres require secure aggregation in their profiles, so any plain round would fail
    more = {"centres.0.overrides": REQUIRE, "centres.1.overrides": REQUIRE}
    _, grid, secure, _ = _run(tmp_path, "secure", monkeypatch, secure=True, rounds=2, **more)
    assert [r["round"] for r in secure["metrics"] if r["metric"] == "train_loss"] == [1, 2]
    _assert_only_masked_updates(grid, rounds=2)


def test_weights_the_server_chooses_are_refused():
    with pytest.raises(ConfigError, match="valid are images, labelled, quota, uniform"):
        CentreFedAvg({"a": 1, "b": 2}, message=TrainClassifier, weighting={"a": 0.9})


@pytest.mark.parametrize(
    ("secure", "arms", "refused", "why"),
    [
        (False, ["federated"], "federated", "fix: set strategy.params.secure_aggregation: true"),
        (True, ["federated", "local"], "local-a", "it trains one centre alone: drop the arm"),
    ],
)
def test_check_refuses_plain_rounds_at_a_centre_requiring_secure_aggregation(
    tmp_path, secure, arms, refused, why
):
    # Prepare: centre a requires secure aggregation; the recipe sends it a plain round (a
    # plain recipe, or a local arm: one centre, nothing to sum)
    from fedmammo.methods.planning import plan_scenario

    sets = {
        "data_dir": str(tmp_path / "data"),
        "strategy.params.arms": arms,
        "strategy.params.secure_aggregation": secure,
        "centres.0.overrides": REQUIRE,
    }
    # Execute / Assert: refused before anything runs, naming the centre, the arm and the fix
    with pytest.raises(ConfigError) as err:
        plan_scenario(load_scenario(TINY, sets=sets), quick=False)
    text = str(err.value)
    assert "centre 'a' sends model weights only in secure-aggregation rounds" in text
    assert f"but {refused!r} asks for them in the clear ('train.classifier'); {why}" in text
    assert "require_secure_aggregation: false" in text and "centre 'b'" not in text
    # the secure federated arm alone passes
    sets.update({"strategy.params.arms": ["federated"], "strategy.params.secure_aggregation": True})
    assert plan_scenario(load_scenario(TINY, sets=sets), quick=False)


@pytest.mark.parametrize(
    ("scenario", "sets", "said"),
    [
        (  # contrastive_dg's local fine-tuning is never averaged, even under the switch
            "contrastive_dg.yaml",
            {"strategy.params.secure_aggregation": True},
            "('train.downstream'); its replies are never averaged: drop the arm or lift",
        ),
        (  # cyclegan_uda has no switch: the hint must not name one
            "cyclegan_uda.yaml",
            {},
            "('train.uda_classifier'); this recipe has no secure aggregation: drop the arm or",
        ),
    ],
)
def test_check_names_the_fix_that_exists_for_each_recipe(scenario, sets, said):
    from fedmammo.methods.planning import plan_scenario

    path = TINY.parents[3] / "scenarios" / scenario
    n = len(load_scenario(path, sets=sets).centre_names())
    sets = {**sets, **{f"centres.{i}.overrides": REQUIRE for i in range(n)}}
    with pytest.raises(ConfigError) as err:
        plan_scenario(load_scenario(path, sets=sets), quick=True)
    assert said in str(err.value)
