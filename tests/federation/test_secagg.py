"""Secure aggregation: the server learns the weighted average, not a centre's update."""

from __future__ import annotations

import math

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage
from flwr.supercore.task_identity import TaskIdentity
from helpers.flower_messages import make_incoming

from fedmammo.federation.egress import declare_egress, egress_error_mod, egress_mod
from fedmammo.federation.secagg import (
    MASKED_RECORD,
    SecAggError,
    SecAggParams,
    secagg_mod,
    secure_sum,
)

SHAPES = {"fc.weight": (64, 128), "fc.bias": (64,), "conv.weight": (8, 1, 3, 3)}
C, Q = 8.0, 1 << 22


@pytest.fixture(autouse=True)
def _server_identity(monkeypatch):
    for attr in ("_run_id", "_node_id", "_task_id"):  # what a server-side Message() reads
        monkeypatch.setattr(TaskIdentity, attr, 1)


def _record(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({k: Array(v) for k, v in arrays.items()})


def _global_model(seed=0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    model = {k: rng.normal(0, 0.5, s).astype(np.float32) for k, s in SHAPES.items()}
    model["bn.num_batches_tracked"] = np.array(7, dtype=np.int64)
    return model


class Centres:
    """Nodes 100, 101, ... each running the ClientApp reply path
    egress_error_mod -> egress_mod -> secagg_mod -> a train handler with a known update."""

    def __init__(
        self,
        weights: list[int],
        *,
        drop: tuple[int, ...] = (),
        absent: tuple[int, ...] = (),
        seed: int = 1,
    ):
        rng = np.random.default_rng(seed)
        self.weights = dict(zip(range(100, 100 + len(weights)), weights, strict=True))
        self.updates = {  # each centre's own update: a centre-specific shift plus noise
            n: {k: (rng.normal(0.05 * i, 0.1, s)).astype(np.float32) for k, s in SHAPES.items()}
            for i, n in enumerate(self.weights)
        }
        self.drop = {100 + i for i in drop}  # fail in the collect stage (after sharing keys)
        self.absent = {100 + i for i in absent}  # never answer (e.g. lost before setup)
        self.contexts = {
            n: Context(run_id=1, node_id=n, node_config={}, state=RecordDict(), run_config={})
            for n in self.weights
        }
        self.log: list[tuple[int, str, Message]] = []

    def train(self, msg: Message, context: Context) -> Message:
        node = context.node_id
        if node in self.drop:
            raise RuntimeError("site went offline after sharing its keys")
        sent = msg.content["arrays"]
        local = {k: a.numpy() + self.updates[node].get(k, 0) for k, a in sent.items()}
        local = {k: np.asarray(v, dtype=sent[k].numpy().dtype) for k, v in local.items()}
        declare_egress(context, local, copies=1)
        w = self.weights[node]
        metrics = MetricRecord({"num-examples": w, "num-images": w, "train-loss": 0.5})
        return Message(RecordDict({"arrays": _record(local), "metrics": metrics}), reply_to=msg)

    def get_node_ids(self) -> list[int]:
        return list(self.weights)

    def send_and_receive(self, messages, timeout=None):
        out = []
        for msg in messages:
            node, kind = msg.metadata.dst_node_id, msg.metadata.message_type
            if node in self.absent:
                continue
            incoming = make_incoming(msg.content, kind, dst=node)
            reply = egress_error_mod(
                incoming,
                self.contexts[node],
                lambda m, c: egress_mod(m, c, lambda m2, c2: secagg_mod(m2, c2, self.train)),
            )
            stage = msg.content[RECORD_KEY_CONFIGS][Key.STAGE]
            self.log.append((node, stage, reply))
            out.append(reply)
        return out

    def plain_average(self, nodes) -> dict[str, np.ndarray]:
        total = sum(self.weights[n] for n in nodes)
        return {
            k: sum(self.weights[n] * self.updates[n][k].astype(np.float64) for n in nodes) / total
            for k in SHAPES
        }


def _train_messages(centres: Centres, model) -> list[Message]:
    config = ConfigRecord({"arm": "federated", "server-round": 1, "seed": 3})
    return [
        Message(
            RecordDict({"arrays": _record(model), "config": config}),
            dst_node_id=n,
            message_type="train.classifier",
        )
        for n in centres.weights
    ]


def _tolerance(centres: Centres, nodes, max_weight: float) -> float:
    """Stochastic rounding: at most one quantisation step per centre, over the total ratio."""
    total_ratio = sum(centres.weights[n] for n in nodes) / max_weight
    return len(nodes) * (2 * C / Q) / total_ratio + 1e-6


def test_flowers_own_mod_would_let_a_train_action_through_unmasked():
    # Prepare: Flower 1.41's secaggplus_mod and a fedmammo message type
    from flwr.client.mod import secaggplus_mod

    called = []
    content = RecordDict({RECORD_KEY_CONFIGS: ConfigRecord({Key.STAGE: Stage.SETUP})})
    msg = make_incoming(content, "train.classifier")
    ctx = Context(run_id=1, node_id=7, node_config={}, state=RecordDict(), run_config={})
    # Execute
    secaggplus_mod(msg, ctx, lambda m, c: called.append(m) or Message(RecordDict(), reply_to=m))
    # Assert: the stage never ran, the handler did (this is why secagg.py exists)
    assert called and "secaggplus_state" not in ctx.state


def test_aggregate_equals_the_plain_weighted_average_within_quantisation_error():
    # Prepare
    centres, model = Centres([10, 30, 60]), _global_model()
    # Execute
    result = secure_sum(
        centres, _train_messages(centres, model), params=SecAggParams(max_weight=100.0, seed=0)
    )
    # Assert
    assert result.arrays is not None, result.reason
    expected = centres.plain_average(centres.weights)
    tol = _tolerance(centres, centres.weights, 100.0)
    for k in SHAPES:
        got = result.arrays[k].numpy().astype(np.float64) - model[k]
        np.testing.assert_allclose(got, expected[k], atol=tol, rtol=0)
        assert np.abs(got - expected[k]).max() > 0  # quantised, not a plaintext path
    assert int(result.arrays["bn.num_batches_tracked"].numpy()) == 7  # integer buffers as sent
    assert result.total_weight == pytest.approx(100.0, rel=1e-6)
    assert sorted(result.replies) == [100, 101, 102] and not result.failures
    for content in result.replies.values():  # what the server keeps: metrics, no arrays
        assert not content.array_records and content["metrics"]["num-examples"] > 0


def test_the_server_side_masked_vector_of_a_centre_is_uncorrelated_with_its_update():
    # Prepare
    centres, model = Centres([10, 30, 60]), _global_model()
    # Execute
    secure_sum(centres, _train_messages(centres, model), params=SecAggParams(max_weight=100.0))
    # Assert: every value the server received from centre 100 in the collect stage
    reply = next(r for n, s, r in centres.log if n == 100 and s == Stage.COLLECT_MASKED_VECTORS)
    assert [k for k, v in reply.content.items() if isinstance(v, ArrayRecord)] == [MASKED_RECORD]
    masked = reply.content[MASKED_RECORD]
    keys = sorted(SHAPES)
    seen = np.concatenate([masked[k].numpy().astype(np.float64).ravel() for k in keys])
    update = np.concatenate([centres.updates[100][k].astype(np.float64).ravel() for k in keys])
    assert abs(np.corrcoef(seen, update)[0, 1]) < 0.1
    # uniform over the modulus: the mean within 6 s.d. of a uniform mean (rel. s.d.
    # 1/sqrt(3n); the former 2% was 3.2 s.d., about one run in 700)
    assert seen.mean() == pytest.approx(2**31, rel=6 / math.sqrt(3 * seen.size))


@pytest.mark.parametrize(
    ("weights", "drop"),
    [([10, 20, 30, 40], (3,)), ([10, 20, 30, 40, 50], (1, 3))],
    ids=["4-centres-1-drops", "5-centres-2-drop"],
)
def test_centres_dropping_after_sharing_keys_are_tolerated_up_to_the_threshold(weights, drop):
    # Prepare: threshold 3 (more than half the shares); the dropped centres shared their keys
    centres, model = Centres(weights, drop=drop), _global_model()
    stayed = [n for n in centres.weights if n not in centres.drop]
    max_weight = float(sum(centres.weights[n] for n in stayed))
    # Execute
    result = secure_sum(
        centres, _train_messages(centres, model), params=SecAggParams(max_weight=max_weight)
    )
    # Assert: the average of those that stayed, the dropped ones' pairwise masks removed
    assert result.arrays is not None, result.reason
    assert result.dropped == sorted(centres.drop)
    assert all("offline" in result.failures[n] for n in centres.drop)
    expected = centres.plain_average(stayed)
    for k in SHAPES:
        got = result.arrays[k].numpy().astype(np.float64) - model[k]
        np.testing.assert_allclose(got, expected[k], atol=_tolerance(centres, stayed, max_weight))
    assert result.total_weight == pytest.approx(max_weight, rel=1e-6)


def test_a_centre_lost_before_sharing_keys_is_left_out():
    # Flower's workflow would stop at unmask (no shares of that centre); here it is left out
    centres, model = Centres([10, 20, 30, 40], absent=(0,)), _global_model()
    result = secure_sum(
        centres, _train_messages(centres, model), params=SecAggParams(max_weight=90.0)
    )
    assert result.arrays is not None, result.reason
    assert result.failures == {100: "no reply"} and result.dropped == []
    expected = centres.plain_average([101, 102, 103])
    tol = _tolerance(centres, [101, 102, 103], 90.0)
    for k in SHAPES:
        got = result.arrays[k].numpy().astype(np.float64) - model[k]
        np.testing.assert_allclose(got, expected[k], atol=tol)


def test_more_dropouts_than_the_threshold_allows_give_no_aggregate():
    centres, model = Centres([10, 20, 30, 40], drop=(2, 3)), _global_model()
    result = secure_sum(centres, _train_messages(centres, model), params=SecAggParams(seed=1))
    assert result.arrays is None and "threshold 3" in result.reason
    assert result.dropped == [102, 103]
    unmasks = [s for _, s, _ in centres.log if s == Stage.UNMASK]
    assert unmasks == []  # no centre was asked for shares


def test_a_centre_refuses_a_threshold_that_would_let_the_server_unmask_it():
    # Prepare: a setup asking for threshold 2 of 4 shares (both secrets of one centre could
    # then be rebuilt from two disjoint pairs of neighbours)
    centres = Centres([10, 20])
    cfg = {
        Key.STAGE: Stage.SETUP,
        Key.SAMPLE_NUMBER: 4,
        Key.SHARE_NUMBER: 4,
        Key.THRESHOLD: 2,
        Key.CLIPPING_RANGE: C,
        Key.TARGET_RANGE: Q,
        Key.MOD_RANGE: 1 << 32,
        Key.MAX_WEIGHT: 1.0,
    }
    msg = Message(
        RecordDict({RECORD_KEY_CONFIGS: ConfigRecord(cfg)}),
        dst_node_id=100,
        message_type="train.classifier",
    )
    # Execute
    (reply,) = centres.send_and_receive([msg])
    # Assert
    assert reply.has_error() and reply.error.reason.startswith("error: SecAggError:")
    assert "must exceed half" in reply.error.reason


class _UnmaskLie(Centres):
    """A server that edits the unmask stage's lists before sending them."""

    def __init__(self, weights, lie):
        super().__init__(weights)
        self.lie = lie

    def send_and_receive(self, messages, timeout=None):
        for msg in messages:
            cfg = msg.content[RECORD_KEY_CONFIGS]
            if cfg[Key.STAGE] == Stage.UNMASK:
                self.lie(cfg, msg.metadata.dst_node_id)
        return super().send_and_receive(messages, timeout)


def _both(cfg, node):  # every node active and dropped: both secrets of each (audit 9)
    cfg[Key.DEAD_NODE_ID_LIST] = list(cfg[Key.ACTIVE_NODE_ID_LIST])


def _self_dropped(cfg, node):
    cfg[Key.DEAD_NODE_ID_LIST] = [node]
    cfg[Key.ACTIVE_NODE_ID_LIST] = [n for n in cfg[Key.ACTIVE_NODE_ID_LIST] if n != node]


def _stranger(cfg, node):
    cfg[Key.DEAD_NODE_ID_LIST] = [999]


def _active_twice(cfg, node):  # the docstring's "each once"
    cfg[Key.ACTIVE_NODE_ID_LIST] = list(cfg[Key.ACTIVE_NODE_ID_LIST]) * 2


def _dropped_twice(cfg, node):
    others = [n for n in cfg[Key.ACTIVE_NODE_ID_LIST] if n != node]
    cfg[Key.ACTIVE_NODE_ID_LIST] = [node]
    cfg[Key.DEAD_NODE_ID_LIST] = others * 2


@pytest.mark.parametrize(
    ("lie", "said"),
    [
        (_both, "listed both active and dropped"),
        (_self_dropped, "this centre listed as dropped"),
        (_stranger, "[999] are not among its neighbours"),
        (_active_twice, "a node listed twice"),
        (_dropped_twice, "a node listed twice"),
    ],
)
def test_a_centre_refuses_unmask_lists_that_would_give_both_secrets_of_a_node(lie, said):
    # Prepare: two honest centres; the server lies only in the unmask stage
    centres = _UnmaskLie([10, 20], lie)
    # Execute
    result = secure_sum(centres, _train_messages(centres, _global_model()))
    # Assert: no aggregate, and every unmask reply is a refusal carrying no share
    assert result.arrays is None
    unmasks = [reply for _, stage, reply in centres.log if stage == Stage.UNMASK]
    assert len(unmasks) == 2
    for reply in unmasks:
        assert reply.has_error() and "unmask refused" in reply.error.reason
        assert said in reply.error.reason


def test_unknown_weightings_and_a_single_centre_are_refused():
    with pytest.raises(SecAggError, match="valid are images, labelled, quota, uniform"):
        SecAggParams(weighting="per-centre")
    centres = Centres([10])
    with pytest.raises(SecAggError, match="at least 2"):
        secure_sum(centres, _train_messages(centres, _global_model()))
