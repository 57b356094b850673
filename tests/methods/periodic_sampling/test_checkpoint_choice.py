"""Paper 000's training: an arm is tested with the round of best validation WLL, and with the
exponential moving average of its weights when ``ema_decay`` is set."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers.flower_messages import run_tiny_in_process

from fedmammo.config import load_scenario
from fedmammo.federation.rounds import initial_arrays
from fedmammo.methods.periodic_sampling.checkpoints import selected_round
from fedmammo.methods.periodic_sampling.messages import EvaluatePeriodic, PeriodicPlots

TINY = Path(__file__).resolve().parent / "tiny.yaml"


def _val(rnd, wll, *, centre="pooled", n=10.0, segment=None, arm="a", seed=0):
    base = {"arm": arm, "seed": seed, "centre": centre, "split": "val", "segment": segment}
    return [
        {**base, "round": rnd, "metric": "wll", "value": wll},
        {**base, "round": rnd, "metric": "n", "value": n},
    ]


def test_the_round_of_lowest_validation_wll_is_chosen():
    # Prepare: one global validation set; rounds 1-4, round 3 is best; a segment's record and
    # another arm's better round must not count
    records = [*_val(1, 0.70), *_val(2, 0.55), *_val(3, 0.50), *_val(4, 0.52)]
    records += _val(2, 0.10, segment="S1-Ma") + _val(4, 0.01, arm="b")
    # Execute / Assert
    assert selected_round(records, "a", 0, 4, "best_val_wll") == 3
    assert selected_round(records, "a", 0, 4, "last") == 4
    assert selected_round(records, "a", 0, 2, "best_val_wll") == 2  # rounds after the last
    assert selected_round(records, "a", 1, 4, "best_val_wll") == 4  # no records: the last
    assert selected_round([*_val(1, 0.5), *_val(2, 0.5)], "a", 0, 2, "best_val_wll") == 1


def test_several_validation_centres_are_weighted_by_their_images():
    # Prepare: round 1 is better at the big centre, round 2 at the small one
    records = _val(1, 0.40, centre="big", n=90) + _val(1, 0.90, centre="small", n=10)
    records += _val(2, 0.50, centre="big", n=90) + _val(2, 0.10, centre="small", n=10)
    # Execute / Assert: 0.45 vs 0.46 (a plain mean would pick round 2: 0.65 vs 0.30)
    assert selected_round(records, "a", 0, 2, "best_val_wll") == 1


@pytest.mark.usefixtures("one_torch_thread")
def test_a_run_tests_each_arm_with_its_best_validation_round(tmp_path, monkeypatch):
    # Prepare / Execute: the tiny study over 3 rounds, under FedBN, with its figures
    sets = {
        "strategy.params.rounds": 3,
        "strategy.params.batchnorm": "local",
        "strategy.params.plots": True,
    }
    results, grid = run_tiny_in_process(
        TINY, tmp_path, monkeypatch, "periodic_sampling", sets, with_pooled=True
    )
    # Assert: every arm's chosen round (results.json meta) is its round of lowest validation
    # WLL on the pooled node's global set
    chosen = results["meta"]["selected_round"]
    # (and each training centre kept its Adam state per arm and round, keep_optimizer_state;
    # its BatchNorm state of every round, to test an arm with the chosen round's)
    centres = tmp_path / "run" / "centres"
    saved = list(centres.glob("*/optimizer/*/seed0/round*.pt"))
    assert {p.parts[-5] for p in saved} == {"s1", "s2", "pooled"}
    assert {p.name for p in saved} == {"round2.pt", "round3.pt"}  # older rounds pruned
    bn = {p.name for p in centres.glob("*/fedbn/*/seed0/round*.pt")}
    assert bn == {"round1.pt", "round2.pt", "round3.pt"}
    # the test messages name the chosen round of the arm and of each baseline it is compared
    # with, and so do the figures' (each centre uses its BatchNorm state of those rounds)
    tests = [
        EvaluatePeriodic.from_config(c) for _, kind, c in grid.log if kind == EvaluatePeriodic.KIND
    ]
    tests = [m for m in tests if m.split == "test"]
    assert {m.arm for m in tests} == {k.split("|")[0] for k in chosen}
    for m in tests:
        assert m.batchnorm == "local" and m.model_round == chosen[f"{m.arm}|0"]
        assert all(b["round"] == chosen[f"{b['name']}|0"] for b in m.baselines or [])
    assert any(m.baselines for m in tests)
    figures = [
        PeriodicPlots.from_config(c) for _, kind, c in grid.log if kind == PeriodicPlots.KIND
    ]
    assert figures and all(len(f.fedbn) == len(f.arms) for f in figures)
    assert all(b["round"] == chosen[f"{b['arm']}|0"] for f in figures for b in f.fedbn)
    assert chosen and set(chosen) == set(results["progress"])
    for key, rnd in chosen.items():
        arm, seed = key.split("|")
        val = {
            r["round"]: r["value"]
            for r in results["metrics"]
            if r["arm"] == arm and r["split"] == "val" and r["metric"] == "wll"
            and r["segment"] is None and r["seed"] == int(seed)
        }  # fmt: skip
        assert set(val) == {1, 2, 3}
        assert rnd == min(val, key=lambda r: (val[r], r)), (key, val)
    # every federated round records each centre's share of the average: the shares sum to 1,
    # and a pooled arm (one node) records none
    shares = [r for r in results["metrics"] if r["metric"] == "fedavg_share"]
    by_round: dict = {}
    for r in shares:
        by_round.setdefault((r["arm"], r["round"]), []).append(r["value"])
    assert by_round and {arm for arm, _ in by_round} == {
        k.split("|")[0] for k in chosen if "-federated-" in k
    }
    assert all(len(v) == 2 and abs(sum(v) - 1) < 1e-9 for v in by_round.values())


@pytest.mark.usefixtures("one_torch_thread")
def test_the_moving_average_checkpoints_follow_the_per_round_update(tmp_path, monkeypatch):
    # Prepare / Execute: decay 0.5 per step, 2 steps per round: 0.25 per round
    sets = {"strategy.params.ema_decay": 0.5}
    results, _ = run_tiny_in_process(TINY, tmp_path, monkeypatch, "periodic_sampling", sets)
    # Assert: for every arm, the EMA checkpoints follow ema_r = 0.25 ema_{r-1} + 0.75 w_r from
    # the initial model, for every floating tensor
    ckpt = tmp_path / "run" / "checkpoints"
    params = load_scenario(TINY).recipe.typed_params()
    init = initial_arrays(params.model.model_dump(), 0).to_torch_state_dict()
    arms = [a for a in results["progress"] if a.endswith("|0")]
    assert arms
    for key in arms:
        arm = key.split("|")[0]
        ema = init
        for rnd in (1, 2):
            w = torch.load(ckpt / arm / f"seed0_round{rnd:03d}.pt")
            got = torch.load(ckpt / f"{arm}.ema" / f"seed0_round{rnd:03d}.pt")
            ema = {
                k: 0.25 * ema[k] + 0.75 * v if v.is_floating_point() else v for k, v in w.items()
            }
            for k, v in ema.items():
                torch.testing.assert_close(got[k], v, rtol=0, atol=1e-6, msg=f"{arm} {k}")
            assert not torch.equal(got["head.weight"], w["head.weight"])
