"""``downstream: federated``: the task model (pre-trained encoder + head) trained by FedAvg
rounds at the labelled centres, through the real ClientApp in process (no Ray)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from flwr.app import ArrayRecord
from helpers.flower_messages import InProcessGrid, run_strategy_in_process, run_tiny_in_process

from fedmammo.config import load_scenario
from fedmammo.data.prepare import materialise_centre
from fedmammo.errors import ConfigError
from fedmammo.federation.codec import arrays_to_state
from fedmammo.federation.rounds import initial_arrays
from fedmammo.federation.runspec import RunSpec
from fedmammo.methods.contrastive_dg import server
from fedmammo.methods.contrastive_dg.params import round_epochs
from fedmammo.methods.contrastive_dg.tasks import (
    evaluate_task,
    finetune_task,
    task_inputs,
    task_model,
)
from fedmammo.models import build_model
from fedmammo.seeds import derive_seed

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROOT = Path(__file__).resolve().parents[3]
TINY = Path(__file__).with_name("tiny.yaml")
SIZE = (64, 48)
SPEC = {"name": "contrastive_resnet_slim", "options": {"width": 4, "projection_dim": 8}}
SEED = 5
FEDERATED = {
    "strategy.params.downstream": "federated",
    "strategy.params.downstream_rounds": 2,
    "strategy.params.arms": ["random", "msvcl"],
    "strategy.params.tasks": ["density", "matching"],
    "strategy.params.finetune.density.epochs": 2,  # one local epoch in each of the 2 rounds
    "strategy.params.finetune.matching.epochs": 3,  # 2 in round 1, 1 in round 2
}


def _scenario(tmp: Path, centres: dict[str, int], **params):
    """Seen centres (name -> patients, each its own vendor) and one unseen vendor D."""
    entries = [
        {
            "profile": str(ROOT / "centres" / "dg_vendor.yaml"),
            "name": name,
            "overrides": {
                "data.synthetic.image_height": 64,
                "data.synthetic.segments.0": {
                    "manufacturer": f"M{name.lower()}",
                    "patients": n,
                    "prevalence": 0.5,
                    "lesion_prevalence": 1.0,
                },
            },
        }
        for name, n in centres.items()
    ]
    entries.append({**entries[0], "name": "D", "role": "test"})
    path = tmp / "scenario.yaml"
    one_epoch = {"epochs": 1, "batch_size": 4, "optimizer": "adam"}
    overrides = {
        "params.arms": ["random"],
        "params.embedding_arms": [],
        "params.encoder": {"arch": "resnet_slim", "width": 4, "projection_dim": 8},
        "params.tasks": ["density"],
        "params.downstream": "federated",
        "params.finetune.density": one_epoch,
        "params.bootstrap": 0,
        **{f"params.{k}": v for k, v in params.items()},
    }
    data = {
        "name": "dg_downstream",
        "centres": entries,
        "strategy": str(ROOT / "strategies" / "contrastive_dg.yaml"),
        "strategy_overrides": overrides,
        "image_size": list(SIZE),
        "data_dir": str(tmp / "data"),
    }
    path.write_text(yaml.safe_dump(data))
    return path, load_scenario(path)


def _final(results: dict) -> list[dict]:
    return [r for r in results["metrics"] if r["split"] == "test" and r["segment"] is None]


def test_a_federated_downstream_run_of_the_tiny_scenario_records_every_arm(tmp_path, monkeypatch):
    # Prepare / Execute: the tiny scenario with downstream: federated, 2 rounds, two tasks
    results, _ = run_tiny_in_process(
        TINY, tmp_path, monkeypatch, "contrastive_dg", FEDERATED, with_pooled=True
    )
    # Assert: every arm has a test value for each task at the seen vendors A, B and unseen D
    final = _final(results)
    for arm in ("random", "msvcl"):
        for metric in ("density_accuracy", "matching_accuracy"):
            got = {
                r["centre"]: r["value"] for r in final if (r["arm"], r["metric"]) == (arm, metric)
            }
            assert set(got) == {"A", "B", "D"}, (arm, metric, got)
            assert all(0.0 <= v <= 1.0 for v in got.values()), got
    # two rounds per job, each checkpointed under the job's key, train loss per round
    key = server.downstream_key("msvcl", "density", 1.0)
    assert key == "msvcl.density_accuracy"
    assert results["progress"][f"{key}|0"]["round"] == 2
    losses = [
        r
        for r in results["metrics"]
        if (r["arm"], r["metric"], r["split"]) == (key, "train_loss", "train")
    ]
    assert [r["round"] for r in losses] == [1, 2]
    assert (tmp_path / "run" / "checkpoints" / key / "seed0_round002.pt").is_file()
    assert not [f for f in results["failures"] if f["arm"] != "styles"], results["failures"]


class ServerKilled(Exception):
    """The server process died."""


def _grid(kill_at: int | None = None) -> type:
    """An in-process grid counting the federated downstream rounds (killed at ``kill_at``)."""

    class Grid(InProcessGrid):
        rounds = 0

        def send_and_receive(self, messages, timeout=None):
            messages = list(messages)
            if any(m.metadata.message_type == "train.downstream_round" for m in messages):
                type(self).rounds += 1
                if type(self).rounds == kill_at:
                    raise ServerKilled(f"killed at downstream round batch {kill_at}")
            return super().send_and_receive(messages, timeout)

    return Grid


def _records(results: dict) -> list[tuple]:
    keys = ("arm", "seed", "centre", "split", "segment", "round", "metric", "value")
    rows = [
        r
        for r in results["metrics"]
        if r["split"] != "timing" and not str(r["metric"]).endswith("compute_seconds")
    ]
    return sorted((tuple(str(r.get(k)) for k in keys) for r in rows), key=str)


def test_a_run_killed_in_a_downstream_round_resumes_from_its_last_round(tmp_path, monkeypatch):
    # Prepare: the unbroken run: 2 arms x 2 tasks x 2 rounds = 8 downstream round batches
    def run(run_dir, grid, resume=False):
        return run_tiny_in_process(
            TINY, tmp_path, monkeypatch, "contrastive_dg", FEDERATED, run_dir=run_dir,
            grid_cls=grid, resume=resume, with_pooled=True,
        )[0]  # fmt: skip

    unbroken_grid = _grid()
    unbroken = run(tmp_path / "unbroken", unbroken_grid)
    assert unbroken_grid.rounds == 8
    # Execute: killed in round 2 of msvcl's density job (batch 6), then resumed
    with pytest.raises(ServerKilled):
        run(tmp_path / "broken", _grid(kill_at=6))
    resumed_grid = _grid()
    again = run(tmp_path / "broken", resumed_grid, resume=True)
    # Assert: only msvcl density round 2 and its matching rounds were trained again, and the
    # records equal the unbroken run's
    assert resumed_grid.rounds == 3
    assert _records(again) == _records(unbroken)
    assert again["failures"] == unbroken["failures"]


def test_one_centre_one_round_equals_fine_tuning_there_directly(tmp_path):
    """With one centre and one round, FedAvg is that centre's fine-tuning of the averaged
    start. It is not ``downstream: local``'s model at that centre: a local head is drawn per
    centre (a federated one must be common to all) and the round's training seed is derived
    per round; the patients chosen are the same."""
    # Prepare: one labelled centre A, density, one round
    path, scenario = _scenario(tmp_path, {"A": 6}, downstream_rounds=1)
    p = scenario.recipe.typed_params()
    encoder = initial_arrays(SPEC, SEED)
    out = {}

    def runner(orc):
        plan = server.make_plan(orc, p)
        server._federated_downstream_job(orc, p, plan, "random", SEED, encoder, "density", 1.0)
        out["final"] = orc.load_checkpoint(server.downstream_key("random", "density", 1.0), SEED, 1)

    spec = RunSpec(scenario_file=str(path), run_dir=str(tmp_path / "run"))
    orc, _ = run_strategy_in_process(spec, scenario, runner, strict=True)
    # Execute: the central fine-tuning of the same start, data and seed the round used (the
    # round's seed is derive_seed(seed, centre, round), as for every train_rounds method)
    start = server.initial_task_arrays(
        SPEC, encoder, "density", 1.0, p.finetune, image_size=SIZE, seed=SEED
    )
    skeleton = build_model(SPEC["name"], **SPEC["options"])
    net = task_model("density", skeleton, p.finetune, SIZE)
    net.load_state_dict(arrays_to_state(start, like=net.state_dict()))
    data = {
        c: materialise_centre(
            scenario.resolved_profiles[c], scenario.data_dir, image_size=SIZE, test_only=c == "D"
        )
        for c in ("A", "D")
    }
    choice = derive_seed(SEED, "density", 1.0, "A")
    inputs = task_inputs(data["A"], "density", "train", p.finetune, seed=choice)
    finetune_task(
        "density",
        None,
        inputs,
        p.finetune,
        image_size=SIZE,
        seed=derive_seed(SEED, "A", 1),
        model=net,
    )
    # Assert: the averaged model of the one centre is the centrally fine-tuned one
    federated = arrays_to_state(out["final"], like=net.state_dict())
    before = arrays_to_state(start, like=net.state_dict())
    assert not torch.equal(before["head.weight"], net.state_dict()["head.weight"])
    for k, v in net.state_dict().items():
        torch.testing.assert_close(federated[k], v, rtol=1e-5, atol=1e-6, msg=k)
    # ... and so are its test records (seen A and unseen D)
    recorded = {
        r["centre"]: r["value"]
        for r in orc.recorder.metrics
        if r["split"] == "test" and r["metric"] == "density_accuracy" and r["segment"] is None
    }
    for c in ("A", "D"):
        test = task_inputs(data[c], "density", "test", p.finetune)
        # each test image names its patient, for the CI's patient bootstrap
        assert len(test.patients) == len(test) and len(set(test.patients)) == test.n_patients
        (direct,) = evaluate_task("density", [net], test, p.finetune)
        assert recorded[c] == pytest.approx(direct["value"]), c


@pytest.mark.parametrize("weighting", ["images", "uniform"])
def test_the_aggregate_is_the_weighted_mean_of_unequal_centres(tmp_path, weighting):
    # Prepare: two labelled centres of unequal size, one round, the recipe's weighting
    path, scenario = _scenario(tmp_path, {"A": 8, "B": 3}, downstream_rounds=1, weighting=weighting)
    p = scenario.recipe.typed_params()
    encoder = initial_arrays(SPEC, SEED)
    out = {}

    def runner(orc):
        plan = server.make_plan(orc, p)
        server._federated_downstream_job(orc, p, plan, "random", SEED, encoder, "density", 1.0)
        out["final"] = orc.load_checkpoint(server.downstream_key("random", "density", 1.0), SEED, 1)

    spec = RunSpec(scenario_file=str(path), run_dir=str(tmp_path / "run"))
    run_strategy_in_process(spec, scenario, runner, strict=True)
    # Execute: each centre's round by hand, from the same start with its round seed
    start = server.initial_task_arrays(
        SPEC, encoder, "density", 1.0, p.finetune, image_size=SIZE, seed=SEED
    )
    states, counts = {}, {}
    for c in ("A", "B"):
        data = materialise_centre(
            scenario.resolved_profiles[c], scenario.data_dir, image_size=SIZE, data_seed=0
        )
        net = task_model("density", build_model(SPEC["name"], **SPEC["options"]), p.finetune, SIZE)
        net.load_state_dict(arrays_to_state(start, like=net.state_dict()))
        inputs = task_inputs(
            data, "density", "train", p.finetune, seed=derive_seed(SEED, "density", 1.0, c)
        )
        finetune_task(
            "density",
            None,
            inputs,
            p.finetune,
            image_size=SIZE,
            seed=derive_seed(SEED, c, 1),
            model=net,
        )
        states[c], counts[c] = net.state_dict(), len(inputs)
    # Assert: unequal counts, and the aggregate is the count-weighted (or plain) mean of every
    # tensor, BatchNorm's running statistics included
    assert counts["A"] != counts["B"], counts
    if weighting == "uniform":
        counts = {"A": 1, "B": 1}
    wa, wb = counts["A"] / sum(counts.values()), counts["B"] / sum(counts.values())
    federated = arrays_to_state(out["final"], like=states["A"])
    for k, a in states["A"].items():
        if not a.is_floating_point():
            continue
        expected = wa * a.double() + wb * states["B"][k].double()
        np.testing.assert_allclose(federated[k].double(), expected, rtol=1e-5, atol=1e-6, err_msg=k)
    assert not torch.allclose(states["A"]["head.weight"], states["B"]["head.weight"])


def test_rounds_share_out_the_task_epochs():
    # Execute / Assert: every epoch is trained once, the first rounds take the remainder
    assert [round_epochs(50, 10, r) for r in range(1, 11)] == [5] * 10
    assert [round_epochs(6, 4, r) for r in range(1, 5)] == [2, 2, 1, 1]
    assert [round_epochs(3, 3, r) for r in range(1, 4)] == [1, 1, 1]


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("downstream", "federatd", "downstream"),
        ("downstream_rounds", 0, "downstream_rounds"),
        ("downstream_rounds", 2, "downstream_rounds 2 > finetune.<task>.epochs of ['density']"),
    ],
)
def test_a_bad_downstream_value_fails_in_one_line(tmp_path, key, value, expected):
    with pytest.raises(ConfigError) as err:
        _scenario(tmp_path, {"A": 4}, **{key: value})[1].recipe.typed_params()
    text = str(err.value)
    assert expected in text and "\n" not in text.strip(), text


def test_federated_downstream_rounds_run_under_secure_aggregation(tmp_path, monkeypatch):
    # Prepare / Execute: one federated density round of the random arm, plain and SecAgg+
    from fedmammo.federation.secagg import MASKED_RECORD

    def run(name, secure):
        sets = {
            "strategy.params.arms": ["random"],
            "strategy.params.embedding_arms": [],
            "strategy.params.tasks": ["density"],
            "strategy.params.downstream": "federated",
            "strategy.params.downstream_rounds": 1,
            "strategy.params.secure_aggregation": secure,
        }
        results, grid = run_tiny_in_process(
            TINY, tmp_path, monkeypatch, "contrastive_dg", sets, run_dir=tmp_path / name
        )
        assert results["failures"] == []
        path = tmp_path / name / "checkpoints" / "random.density_accuracy" / "seed0_round001.pt"
        state = torch.load(path)
        return grid, {k: v.numpy() for k, v in state.items() if v.is_floating_point()}

    _, plain = run("plain", False)
    grid, secure = run("secure", True)
    # Assert: the server received masked vectors only, and the same average within the
    # quantisation bound (SecAggParams defaults: clipping range 8, quantisation range 2^22)
    replies = [c for _, kind, c in grid.replies if kind == "train.downstream_round"]
    assert replies and all(
        {k for k, v in c.items() if isinstance(v, ArrayRecord)} <= {MASKED_RECORD} for c in replies
    )
    weights = [k for k in plain if not k.endswith("num_batches_tracked")]
    assert "head.weight" in weights and set(weights) <= set(secure)
    step = 2 * 8.0 / (1 << 22)
    for key in weights:
        assert np.abs(secure[key] - plain[key]).max() <= 4 * step, key
