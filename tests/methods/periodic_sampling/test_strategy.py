"""PeriodicFedAvg: per-centre quota payloads and quota-weighted aggregation (no Ray)."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, Message, Metadata, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity
from helpers.flower_messages import make_incoming

from fedmammo.errors import ConfigError
from fedmammo.federation.codec import get_json
from fedmammo.federation.handlers import InjectedFault
from fedmammo.methods.periodic_sampling import client
from fedmammo.methods.periodic_sampling.messages import TrainPeriodic
from fedmammo.methods.periodic_sampling.quota import (
    global_pattern,
    round_offsets,
    round_quotas,
)
from fedmammo.methods.periodic_sampling.strategy import PeriodicFedAvg

COUNTS = {"A": {"S1-Ma": 20, "S1-Mb": 2}, "B": {"S2-Ma": 5, "S2-Mb": 10}}
NODES = {"A": 101, "B": 202}


@pytest.fixture(autouse=True)
def _server_identity(monkeypatch):
    for attr in ("_run_id", "_node_id", "_task_id"):  # what a server-side Message() reads
        monkeypatch.setattr(TaskIdentity, attr, 1)


def _strategy(**kwargs) -> PeriodicFedAvg:
    options = {"counts": COUNTS, "batches_per_round": 2, "batch_size": 7} | kwargs
    return PeriodicFedAvg(dict(NODES), **options)


def _arrays(value: float) -> ArrayRecord:
    return ArrayRecord({"w": torch.full((2, 3), value), "b": torch.full((3,), value)})


def _reply(node: int, value: float, num_examples: int, quota: int = 1, images: int = 1) -> Message:
    meta = Metadata(
        run_id=1,
        message_id=f"r{node}",
        src_node_id=node,
        dst_node_id=0,
        reply_to_message_id="m",
        group_id="",
        created_at=time.time(),
        ttl=60.0,
        message_type="train.periodic",
    )
    content = RecordDict(
        {
            "arrays": _arrays(value),
            "metrics": MetricRecord(
                {
                    "num-examples": num_examples,
                    "train-loss": value,
                    "quota": quota,
                    "num-images": images,
                    "num-labelled": images,
                }
            ),
        }
    )
    return Message(content=content, metadata=meta)


def _configure(strategy: PeriodicFedAvg, rnd: int) -> dict[str, Message]:
    base = TrainPeriodic(
        image_size=(8, 8),
        arm="x",
        seed=5,
        model={},
        train={},
        sampler="periodic",
        steps=2,
        stream_seed=1,
    )
    msgs = strategy.configure_train(rnd, _arrays(0.0), base.to_config(), None)
    by_node = {v: k for k, v in NODES.items()}
    return {by_node[m.metadata.dst_node_id]: m for m in msgs}


@pytest.mark.parametrize("rnd", [1, 2, 4, 9])
def test_configure_train_sends_each_centre_its_window_quota_and_offsets(rnd):
    # Prepare
    strategy = _strategy()
    pattern = global_pattern(COUNTS)
    # Execute
    msgs = _configure(strategy, rnd)
    # Assert: round rnd covers window rnd-1; the quotas of all centres fill the 14 slots
    expected = round_quotas(pattern, rnd - 1, 2, 7)
    offsets = round_offsets(pattern, rnd - 1, 2, 7)
    assert set(msgs) == set(expected)
    quotas = {c: get_json(m.content["config"], "quota") for c, m in msgs.items()}
    assert quotas == expected
    assert sum(sum(q.values()) for q in quotas.values()) == 14
    for c, m in msgs.items():
        cfg = m.content["config"]
        assert get_json(cfg, "offsets") == {s: offsets[c][s] for s in expected[c]}
        assert m.metadata.message_type == "train.periodic"
        assert cfg["server-round"] == rnd and cfg["arm"] == "x"
    seeds = {int(m.content["config"]["seed"]) for m in msgs.values()}
    assert len(seeds) == len(msgs)  # augmentation seeds differ per centre


def test_a_scenario_fault_marks_that_centres_message_of_that_round_only():
    # Prepare: faults: [{centre: B, round: 2, arm: ...}] as the runner passes them
    strategy = _strategy(faults=[("B", 2)])
    # Execute / Assert: B's round-2 message asks its handler to fail, no other does
    for rnd in (1, 2, 3):
        marked = {
            c: TrainPeriodic.from_config(m.content["config"]).inject_fault
            for c, m in _configure(strategy, rnd).items()
        }
        assert marked == {c: (c, rnd) == ("B", 2) for c in marked}
    # and the centre's handler fails at once on such a message (before any training)
    (b,) = [m for c, m in _configure(strategy, 2).items() if c == "B"]
    incoming = make_incoming(b.content, message_type="train.periodic")
    with pytest.raises(InjectedFault, match="round 2"):
        client.train.__wrapped__(incoming, None)


def test_offsets_continue_where_the_previous_round_stopped():
    # Prepare
    strategy = _strategy()
    # Execute
    rounds = [_configure(strategy, rnd) for rnd in (1, 2, 3, 4)]
    # Assert: offset(r + 1) = offset(r) + quota(r) for every segment a centre trains on
    drawn = {c: dict.fromkeys(COUNTS[c], 0) for c in COUNTS}
    for msgs in rounds:
        for c, m in msgs.items():
            quota = get_json(m.content["config"], "quota")
            offsets = get_json(m.content["config"], "offsets")
            assert offsets == {s: drawn[c][s] for s in quota}
            for s, q in quota.items():
                drawn[c][s] += q
    assert sum(n for c in drawn for n in drawn[c].values()) == 4 * 14


def test_aggregate_train_weights_replies_by_quota():
    # Prepare: num-examples and images deliberately disagree with the quotas
    strategy = _strategy()
    msgs = _configure(strategy, 2)
    q = {c: sum(get_json(m.content["config"], "quota").values()) for c, m in msgs.items()}
    assert set(q) == {"A", "B"}
    replies = [_reply(NODES["A"], 1.0, 1000, q["A"], 1), _reply(NODES["B"], 3.0, 1, q["B"], 900)]
    # Execute
    arrays, metrics = strategy.aggregate_train(2, replies)
    # Assert
    expected = (q["A"] * 1.0 + q["B"] * 3.0) / (q["A"] + q["B"])
    state = arrays.to_torch_state_dict()
    np.testing.assert_allclose(state["w"].numpy(), expected, rtol=1e-6)
    np.testing.assert_allclose(state["b"].numpy(), expected, rtol=1e-6)
    assert strategy.weights == pytest.approx({c: q[c] / 14 for c in q})
    assert metrics["train-loss"] == pytest.approx(expected)
    assert strategy.failures == {}


@pytest.mark.parametrize(
    ("scheme", "weights"),
    [("images", (300.0, 100.0)), ("num_images", (300.0, 100.0)), ("uniform", (1.0, 1.0))],
)
def test_aggregate_train_comparison_weightings(scheme, weights):
    # Prepare: the image counts are the centres' own, in their replies
    strategy = _strategy(scheme=scheme)
    _configure(strategy, 2)
    # Execute
    arrays, _ = strategy.aggregate_train(
        2, [_reply(NODES["A"], 1.0, 5, 3, 300), _reply(NODES["B"], 3.0, 5, 11, 100)]
    )
    # Assert
    expected = (weights[0] * 1.0 + weights[1] * 3.0) / sum(weights)
    np.testing.assert_allclose(arrays.to_torch_state_dict()["w"].numpy(), expected, rtol=1e-6)


@pytest.mark.parametrize("rule", ["median", "trimmed_mean"])
def test_a_robust_rule_counts_each_centre_once_whatever_its_quota(rule):
    # Prepare: quotas 3 and 11 (the quota weighting would give 2.57)
    strategy = _strategy(aggregation=rule)
    _configure(strategy, 2)
    # Execute
    arrays, _ = strategy.aggregate_train(
        2, [_reply(NODES["A"], 1.0, 5, 3, 300), _reply(NODES["B"], 3.0, 5, 11, 100)]
    )
    # Assert: two centres' median, or a trimmed mean dropping none, is their plain mean
    assert strategy.weighting == "uniform"
    np.testing.assert_allclose(arrays.to_torch_state_dict()["w"].numpy(), 2.0, rtol=1e-6)


def test_a_centre_without_quota_is_not_messaged_nor_a_failure():
    # Prepare: one batch of 2 slots in a pattern dominated by A's S1-Ma
    strategy = PeriodicFedAvg(
        dict(NODES),
        counts={"A": {"S1-Ma": 30}, "B": {"S2-Ma": 1}},
        batches_per_round=1,
        batch_size=2,
        min_centres=2,
    )
    # Execute
    msgs = _configure(strategy, 3)
    arrays, _ = strategy.aggregate_train(3, [_reply(NODES["A"], 2.0, 2)])
    # Assert
    assert set(msgs) == {"A"}
    assert strategy.min_train_nodes == 1
    assert arrays is not None and strategy.failures == {}
    np.testing.assert_allclose(arrays.to_torch_state_dict()["w"].numpy(), 2.0)


def test_a_missing_reply_is_a_failure_and_the_rest_is_renormalised():
    # Prepare
    strategy = _strategy()
    _configure(strategy, 2)
    # Execute
    arrays, _ = strategy.aggregate_train(2, [_reply(NODES["B"], 3.0, 1)])
    # Assert
    assert strategy.failures == {"A": "no reply"}
    np.testing.assert_allclose(arrays.to_torch_state_dict()["w"].numpy(), 3.0)


def test_counts_for_centres_without_nodes_are_rejected():
    with pytest.raises(ConfigError, match=r"centres \['C'\] that have no node"):
        PeriodicFedAvg(
            {"A": 1}, counts={"A": {"s": 1}, "C": {"t": 2}}, batches_per_round=1, batch_size=2
        )
