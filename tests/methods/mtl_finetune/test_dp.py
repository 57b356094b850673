"""DP for the multi-task method: train.mtl with Opacus at a centre whose profile sets
``privacy``, one composed budget per ledger over rounds and phases (pre-training ``mtl``,
fine-tuning ``finetune``), refusals before any step; and the mtl_finetune runner on an
in-process grid (privacy.json against dp-accounting, a refusal that stops one arm cleanly).
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from flwr.app import ConfigRecord, Context, RecordDict
from helpers.centre_nodes import current_state_dir, ledger_file, node_context, prepared_centre
from helpers.centre_nodes import use_privacy as set_privacy
from helpers.dp_reference import independent_epsilon
from helpers.flower_messages import InProcessGrid, make_incoming, run_strategy_in_process

from fedmammo.apps import DP_CAPABLE  # noqa: E402
from fedmammo.config import load_scenario
from fedmammo.federation.codec import put_json, state_to_arrays
from fedmammo.federation.egress import egress_mod
from fedmammo.federation.privacy.codec import decode_privacy
from fedmammo.federation.privacy.ledger import (
    LEDGER_KEY,
    PLANNED_ROUNDS_KEY,
    REFUSAL_MARK,
    BudgetRefusal,
    dp_guard_mod,
)
from fedmammo.federation.privacy.phases import LATER_PHASES_KEY, PARENT_LEDGER_KEY
from fedmammo.federation.runspec import RunSpec
from fedmammo.methods.mtl_finetune import client as handlers
from fedmammo.methods.mtl_finetune.server import run as run_mtl_finetune
from fedmammo.models import build_model
from fedmammo.privacy.accounting import epsilon_of
from fedmammo.privacy.engine import DPIncompatibleModelError

DP_GUARD = dp_guard_mod(DP_CAPABLE)
ROOT = Path(__file__).resolve().parents[3]
SIZE = (32, 24)
MODEL = {"name": "multitask", "options": {"widths": [4, 4, 8, 8, 8], "dropout": 0.0}}
TRAIN = {"epochs": 1, "batch_size": 8, "lr": 0.001, "augment": False}
TRAIN_FT = {**TRAIN, "batch_size": 6, "lr": 0.0005}
TARGET = 6.0

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# --------------------------------------------------------------------------- one centre
@pytest.fixture(scope="module")
def centre(tmp_path_factory):
    labels = {"missing": {"malignancy": 0.3}, "uncertainty": {"acr": 0.2}}
    return prepared_centre(tmp_path_factory.mktemp("dpmtl"), "dpm", SIZE, labels=labels)


def new_context(data_dir: Path, state_dir: Path | None = None) -> Context:
    return node_context("dpm", data_dir, state_dir=state_dir)


def use_privacy(data_dir: Path, **privacy) -> None:
    """The centre's DP settings; each arm a what-if ledger (``ledger_scope: arm``), as in
    simulation (a site's one ledger for everything: tests/federation/privacy/)."""
    set_privacy(data_dir, ledger_scope="arm", **privacy)


def steps(data, train=TRAIN) -> int:
    return math.ceil(len(data.rows("train", label=None)) / train["batch_size"])


def send(context: Context, *, model=MODEL, train=TRAIN, seed: int = 0, **config) -> RecordDict:
    """One train.mtl message through the ClientApp's DP guard and egress guard."""
    torch.manual_seed(0)
    net = build_model(model["name"], **model["options"])
    cfg = ConfigRecord({"image-size": list(SIZE), "data-seed": 0, "arm": "mtl", "seed": seed})
    put_json(cfg, "model", model)
    put_json(cfg, "train", train)
    for key, value in config.items():
        if isinstance(value, dict):
            put_json(cfg, key, value)
        else:
            cfg[key] = value
    content = RecordDict({"config": cfg, "arrays": state_to_arrays(net.state_dict())})
    out = DP_GUARD(
        make_incoming(content, "train.mtl"),
        context,
        lambda m, c: egress_mod(m, c, handlers.train),
    )
    assert not out.has_error()
    return out.content


def pretrain(context: Context, *, planned: int = 2, seed: int = 0, **config) -> dict:
    content = send(
        context, seed=seed, **{LEDGER_KEY: "mtl|3", PLANNED_ROUNDS_KEY: planned, **config}
    )
    return decode_privacy(content["privacy"])


def finetune(context: Context, *, arm: str = "finetune_u1_0.5", seed: int = 0, **config) -> dict:
    content = send(
        context,
        train=TRAIN_FT,
        seed=seed,
        **{
            LEDGER_KEY: f"{arm}|3",
            PLANNED_ROUNDS_KEY: 1,
            PARENT_LEDGER_KEY: "mtl|3",
            "phase": "finetune",
            "u1": 0.5,
            **config,
        },
    )
    return decode_privacy(content["privacy"])


def ledger(data_dir: Path, name: str) -> dict:
    """A ledger in the centre's own file (its state folder of this test)."""
    return json.loads(ledger_file(current_state_dir(data_dir)).read_text())["ledgers"][name]


LATER = {"finetune": {"rounds": 1, "train": TRAIN_FT, "centres": ["dpm"]}}


def test_rounds_compose_one_budget_and_epsilon_matches_the_accountants(centre, tmp_path):
    # Prepare: 2 planned pre-training rounds of one epoch, target epsilon 6.
    data, data_dir = centre
    use_privacy(data_dir, target_epsilon=TARGET)
    context = new_context(data_dir)
    k = steps(data)
    # Execute: two rounds on one ledger, round 1 again on another ledger, then a third.
    first, second = pretrain(context, seed=0), pretrain(context, seed=1)
    fresh = pretrain(new_context(data_dir, tmp_path / "fresh"), seed=0)
    before = ledger(data_dir, "mtl|3")
    with pytest.raises(BudgetRefusal) as refused:
        pretrain(context, seed=2)
    # Assert: the noise is planned once for the 2k steps at rate 1/k ...
    sigma, q = first["noise_multiplier"], first["sample_rate"]
    assert first["phase"] == "mtl" and q == pytest.approx(1 / k)
    assert first["planned_steps"] == 2 * k and second["noise_multiplier"] == sigma
    # ... the reported epsilon is the accountant's epsilon of the recorded history ...
    for r in (first, second):
        assert r["epsilon"] == pytest.approx(epsilon_of(r["history"], r["delta"], "rdp"))
        assert r["epsilon"] == pytest.approx(independent_epsilon(r["history"], r["delta"]), 0.02)
        assert r["ledger_epsilon"] == r["epsilon"]  # one phase only
    # ... composed over rounds (not fresh per round) and spending the target at the end
    assert first["history"] == [[sigma, q, k]] and second["history"] == [[sigma, q, 2 * k]]
    assert first["epsilon"] < second["epsilon"] <= TARGET * 1.01
    assert second["epsilon"] == pytest.approx(TARGET, rel=0.02)
    assert fresh["epsilon"] == pytest.approx(first["epsilon"])
    # a round beyond the plan is refused before any step: the ledger is unchanged
    assert str(refused.value).startswith(REFUSAL_MARK) and "planned steps" in str(refused.value)
    assert ledger(data_dir, "mtl|3") == before


def test_pretraining_and_finetuning_share_one_budget_with_one_planned_noise(centre):
    # Prepare: 2 pre-training rounds announcing 1 fine-tuning round at this centre.
    data, data_dir = centre
    use_privacy(data_dir, target_epsilon=TARGET)
    context = new_context(data_dir)
    k, k_ft = steps(data), steps(data, TRAIN_FT)
    # Execute
    pre = [pretrain(context, seed=s, **{LATER_PHASES_KEY: LATER}) for s in (0, 1)][-1]
    tuned = finetune(context)
    other = finetune(context, arm="finetune_u1_0")  # a second fine-tuning arm (what-if)
    # Assert: pre-training stops below the target, leaving the rest for fine-tuning ...
    sigma = pre["noise_multiplier"]
    assert pre["epsilon"] < 0.9 * TARGET
    # ... with the same noise multiplier, each phase at its own sample rate, one ledger
    assert tuned["phase"] == "finetune" and tuned["noise_multiplier"] == sigma
    assert tuned["history"] == [[sigma, pytest.approx(1 / k_ft), k_ft]]
    assert tuned["ledger_history"] == [[sigma, pytest.approx(1 / k), 2 * k], *tuned["history"]]
    assert tuned["ledger_epsilon"] == pytest.approx(TARGET, rel=0.02)
    assert tuned["ledger_epsilon"] == pytest.approx(
        independent_epsilon(tuned["ledger_history"], tuned["delta"]), rel=0.02
    )
    assert tuned["epsilon"] < pre["epsilon"] < tuned["ledger_epsilon"]  # phases alone
    # each fine-tuning arm continues the same pre-training ledger, which stays as it was
    assert other["ledger_history"] == tuned["ledger_history"]
    assert ledger(data_dir, "mtl|3")["history"] == pre["ledger_history"]


def test_pretraining_planned_alone_leaves_finetuning_only_noise(centre):
    # Prepare: no fine-tuning announced: pre-training plans the whole target for itself.
    _, data_dir = centre
    use_privacy(data_dir, target_epsilon=TARGET)
    context = new_context(data_dir)
    pre = pretrain(context, planned=1)
    # Execute
    tuned = finetune(context)
    # Assert: still one budget, but fine-tuning gets what remains: (almost) only noise
    assert pre["epsilon"] == pytest.approx(TARGET, rel=0.02)
    assert tuned["ledger_epsilon"] <= TARGET * 1.01
    assert tuned["noise_multiplier"] > 5 * pre["noise_multiplier"]


def test_fixed_noise_with_a_cap_refuses_the_round_that_would_overrun(centre):
    # Prepare: sigma 0.8 and a cap between the epsilons of one and two rounds.
    data, data_dir = centre
    k = steps(data)
    one, two = (epsilon_of([[0.8, 1 / k, r * k]], 1e-5) for r in (1, 2))
    use_privacy(data_dir, noise_multiplier=0.8, target_epsilon=round((one + two) / 2, 2))
    context = new_context(data_dir)
    first = pretrain(context, planned=0)  # a fixed noise needs no planned rounds
    before = ledger(data_dir, "mtl|3")
    # Execute / Assert: round 2 is refused naming what was spent and what it would reach
    with pytest.raises(
        BudgetRefusal,
        match=rf"spent so far {one:.4g}; the requested steps would bring it to {two:.4g} > target",
    ):
        pretrain(context, planned=0, seed=1)
    assert first["epsilon"] == pytest.approx(one) and ledger(data_dir, "mtl|3") == before


def test_finetuning_without_a_record_of_its_pretraining_is_refused(centre):
    _, data_dir = centre
    use_privacy(data_dir, target_epsilon=TARGET)
    with pytest.raises(BudgetRefusal, match="'mtl\\|3', of which this centre has no record"):
        finetune(new_context(data_dir))


def test_batchnorm_net_is_refused_naming_its_layers(centre):
    _, data_dir = centre
    use_privacy(data_dir, target_epsilon=TARGET)
    batchnorm = {"name": "multitask", "options": {**MODEL["options"], "norm": "batch"}}
    context = new_context(data_dir)
    with pytest.raises(DPIncompatibleModelError, match=r"stem\.1 \(BatchNorm2d\)"):
        send(context, model=batchnorm, **{LEDGER_KEY: "mtl|3", PLANNED_ROUNDS_KEY: 1})
    assert ledger_file(current_state_dir(data_dir)) is None  # nothing planned, nothing spent


def test_group_norm_net_trains_with_dp(centre):
    _, data_dir = centre
    use_privacy(data_dir, target_epsilon=TARGET)
    group = {"name": "multitask", "options": {**MODEL["options"], "norm": "group"}}
    content = send(
        new_context(data_dir), model=group, **{LEDGER_KEY: "mtl|3", PLANNED_ROUNDS_KEY: 1}
    )
    assert 0 < decode_privacy(content["privacy"])["epsilon"] <= TARGET * 1.01


def test_non_dp_centre_trains_as_before_without_a_privacy_record(centre):
    data, data_dir = centre
    use_privacy(data_dir)  # no target, no noise: DP off
    content = send(new_context(data_dir), **{LATER_PHASES_KEY: LATER})
    assert "train.mtl" in DP_CAPABLE
    assert "privacy" not in content
    assert content["metrics"]["steps"] == steps(data)
    assert content["metrics"]["examples-seen"] == len(data.rows("train", label=None))


# --------------------------------------------------------------------------- the runner
ARMS = ["mtl", "finetune_u1_0.5"]


def _scenario(tmp: Path, privacy_a: dict, privacy_b: dict) -> Path:
    tiny = str(ROOT / "centres" / "tiny.yaml")
    data = {
        "name": "mtl_dp_tiny",
        "centres": [
            {"profile": tiny, "name": "a", "role": "train", "overrides": {"privacy": privacy_a}},
            {"profile": tiny, "name": "b", "role": "train", "overrides": {"privacy": privacy_b}},
            {"profile": tiny, "name": "c", "role": "test"},
        ],
        "strategy": str(ROOT / "strategies" / "mtl_finetune.yaml"),
        "strategy_overrides": {
            "params.rounds": 2,
            "params.finetune_rounds": 1,
            "params.finetune_centres": ["b"],
            "params.arms": ARMS,
            "params.model.widths": [4, 4, 8, 8, 8],
            "params.model.stem_stride": 1,
            # a mapping merges into the recipe's: not its keep_optimizer_state
            "params.train": {**TRAIN, "batch_size": 8, "keep_optimizer_state": False},
            "params.finetune_train": {**TRAIN_FT, "keep_optimizer_state": False},
            "params.bootstrap": 10,
        },
        "image_size": list(SIZE),
        "data_dir": str(tmp / "data"),
    }
    path = tmp / "mtl_dp_tiny.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def run_runner(
    tmp: Path, privacy_a: dict, privacy_b: dict, *, run_dir: Path | None = None
) -> tuple[Path, InProcessGrid]:
    """The mtl_finetune runner on a fresh in-process grid; ``run_dir`` given: resume it."""
    scenario_file = _scenario(tmp, privacy_a, privacy_b)
    resume = run_dir is not None
    run_dir = run_dir or tmp / "run"
    spec = RunSpec(scenario_file=str(scenario_file), run_dir=str(run_dir))
    scenario = load_scenario(spec.scenario_file)
    _, grid = run_strategy_in_process(spec, scenario, run_mtl_finetune, resume=resume)
    return run_dir, grid


def _records(run_dir: Path) -> dict[tuple[str, str, str], dict]:
    privacy = json.loads((run_dir / "privacy.json").read_text())
    return {(r["centre"], r["arm"], r["phase"]): r for r in privacy["records"]}


def _test_auc_centres(results: dict, arm: str) -> set[str]:
    return {
        m["centre"]
        for m in results["metrics"]
        if m["arm"] == arm
        and m["split"] == "test"
        and m["metric"] == "auc"
        and m["segment"] is None
        and m["round"] is None
    }


@pytest.fixture(scope="module")
def dp_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mtl_dp_run")
    return run_runner(tmp, {"target_epsilon": 8.0}, {"target_epsilon": 8.0})


def test_runner_records_one_budget_per_ledger_across_phases(dp_run):
    # Prepare / Execute (the fixture ran the strategy)
    run_dir, grid = dp_run
    records = _records(run_dir)
    results = json.loads((run_dir / "results.json").read_text())
    # Assert: every record recomputes with dp-accounting and stays within the target
    assert not results["failures"]
    for r in records.values():
        assert r["accountant"] == "rdp" and r["target_epsilon"] == 8.0
        assert r["epsilon"] == pytest.approx(independent_epsilon(r["history"], r["delta"]), 0.02)
        assert r["ledger_epsilon"] == pytest.approx(
            independent_epsilon(r["ledger_history"], r["delta"]), rel=0.02
        )
        assert r["ledger_epsilon"] <= 8.0 * 1.01
    # a pre-trains alone (whole target); b keeps a share for fine-tuning
    a_mtl, b_mtl = records[("a", "mtl", "mtl")], records[("b", "mtl", "mtl")]
    assert a_mtl["rounds"] == b_mtl["rounds"] == [1, 2]
    assert a_mtl["ledger_epsilon"] == pytest.approx(8.0, rel=0.02)
    assert b_mtl["ledger_epsilon"] < 0.9 * 8.0
    # b's fine-tuning composes on b's pre-training ledger, up to the target, same noise
    tuned = records[("b", "finetune_u1_0.5", "finetune")]
    assert tuned["rounds"] == [3] and tuned["ledger"] == "finetune_u1_0.5|0"
    assert tuned["ledger_history"][: len(b_mtl["ledger_history"])] == b_mtl["ledger_history"]
    assert tuned["noise_multiplier"] == b_mtl["noise_multiplier"]
    assert tuned["ledger_epsilon"] == pytest.approx(8.0, rel=0.02)
    # the fine-tuned model also carries the pre-training cost at a (inherited records)
    inherited = records[("a", "finetune_u1_0.5", "mtl")]
    assert inherited["inherited_from"] == "mtl|0"
    assert inherited["ledger_epsilon"] == a_mtl["ledger_epsilon"]
    # the messages: the mtl arm announced fine-tuning at b; fine-tuning named its parent
    train = [c for _, kind, c in grid.log if kind == "train.mtl"]
    assert all(LATER_PHASES_KEY in c for c in train if c["arm"] == "mtl")
    assert all(
        c[PARENT_LEDGER_KEY] == "mtl|0" and c[PLANNED_ROUNDS_KEY] == 1
        for c in train
        if c["arm"] == "finetune_u1_0.5"
    )
    for arm in ARMS:
        assert _test_auc_centres(results, arm) == {"a", "b", "c"}


def test_runner_stops_a_refused_arm_and_keeps_its_earlier_rounds(dp_run, tmp_path):
    # Prepare: a with fixed noise 0.8 and a cap between one and two rounds' epsilon.
    first_run, _ = dp_run
    a = _records(first_run)[("a", "mtl", "mtl")]
    q, k = a["sample_rate"], a["round_steps"]
    one, two = (epsilon_of([[0.8, q, r * k]], a["delta"]) for r in (1, 2))
    cap = round((one + two) / 2, 2)
    # Execute
    run_dir, _ = run_runner(
        tmp_path, {"noise_multiplier": 0.8, "target_epsilon": cap}, {"target_epsilon": 8.0}
    )
    privacy = json.loads((run_dir / "privacy.json").read_text())
    results = json.loads((run_dir / "results.json").read_text())
    # Assert: a refused round 2 of mtl; the arm stopped with round 1's model, evaluated
    [refusal] = privacy["refusals"]
    assert (refusal["centre"], refusal["arm"], refusal["round"]) == ("a", "mtl", 2)
    assert REFUSAL_MARK in refusal["reason"]
    assert results["progress"]["mtl|0"] == {
        "round": 1,
        "done": True,
        "stopped": "arm mtl seed 0: stopped before round 2: centre a refused it (privacy "
        "budget); the model of the last completed round is final",
    }
    assert _test_auc_centres(results, "mtl") == {"a", "b", "c"}
    records = _records(run_dir)
    assert records[("a", "mtl", "mtl")]["rounds"] == [1]
    assert records[("a", "mtl", "mtl")]["ledger_epsilon"] == pytest.approx(one)
    # fine-tuning continued round 1's model at b, on b's one-round ledger
    tuned = records[("b", "finetune_u1_0.5", "finetune")]
    assert tuned["ledger_history"][0] == records[("b", "mtl", "mtl")]["ledger_history"][0]
    assert results["progress"]["finetune_u1_0.5|0"]["done"] is True


def test_resumed_finetuning_continues_the_pretraining_ledger_of_the_centres_file(dp_run, tmp_path):
    # Prepare: a copy of the run, as if it had stopped before the fine-tuning arm (its ledger
    # never written at the centres); the new grid's centres have lost their node state
    first_run, _ = dp_run
    run_dir = tmp_path / "run"
    shutil.copytree(first_run, run_dir)
    saved = json.loads((run_dir / "results.json").read_text())
    saved["progress"].pop("finetune_u1_0.5|0")
    (run_dir / "results.json").write_text(json.dumps(saved))
    privacy = json.loads((run_dir / "privacy.json").read_text())
    privacy["records"] = [r for r in privacy["records"] if r["phase"] != "finetune"]
    (run_dir / "privacy.json").write_text(json.dumps(privacy))
    for path in (run_dir / "centres").glob("*/privacy-ledger-*.json"):
        own = json.loads(path.read_text())
        own["ledgers"] = {k: v for k, v in own["ledgers"].items() if not k.startswith("finetune")}
        path.write_text(json.dumps(own))
    before = _records(first_run)
    # Execute
    _, grid = run_runner(
        tmp_path, {"target_epsilon": 8.0}, {"target_epsilon": 8.0}, run_dir=run_dir
    )
    # Assert: only the fine-tuning arm trained, on b's restored pre-training ledger
    trained = {(c["arm"], n) for n, kind, c in grid.log if kind == "train.mtl"}
    node_of = {name: node for node, name in grid.names.items()}
    assert trained == {("finetune_u1_0.5", node_of["b"])}
    tuned = _records(run_dir)[("b", "finetune_u1_0.5", "finetune")]
    b_mtl = before[("b", "mtl", "mtl")]
    assert tuned["ledger_history"][: len(b_mtl["ledger_history"])] == b_mtl["ledger_history"]
    assert tuned["ledger_epsilon"] == pytest.approx(8.0, rel=0.02)
    assert not json.loads((run_dir / "results.json").read_text())["failures"]
