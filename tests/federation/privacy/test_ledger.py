"""DP in the federation without Ray: train.classifier / evaluate.audit handlers with their
ledgers on the centre's disk, refusals, the reply codec, the guard mod, and the FedAvg runner on
an in-process grid (privacy.json against dp-accounting, a budget overrun that stops cleanly).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, Context, Message, Metadata, MetricRecord, RecordDict
from helpers.centre_nodes import (
    current_state_dir,
    ledger_file,
    node_context,
    prepared_centre,
    use_privacy,
)
from helpers.dp_reference import independent_epsilon

from fedmammo.errors import DataError
from fedmammo.federation.centre_runtime import identity_of
from fedmammo.federation.codec import put_json, state_to_arrays
from fedmammo.federation.egress import check_outgoing, egress_mod
from fedmammo.federation.messages import MessageError
from fedmammo.federation.privacy import audits as audit_handlers
from fedmammo.federation.privacy.codec import decode_privacy, pack_history, unpack_history
from fedmammo.federation.privacy.ledger import (
    LEDGER_KEY,
    PLANNED_ROUNDS_KEY,
    PRIOR_KEY,
    REFUSAL_MARK,
    BudgetRefusal,
    DPUnsupportedError,
    dp_guard_mod,
    is_refusal,
)
from fedmammo.federation.privacy.ledger_store import data_fingerprint
from fedmammo.methods.fedavg import client as handlers
from fedmammo.models import build_model
from fedmammo.privacy.accounting import epsilon_of
from fedmammo.privacy.engine import DPSession

ROOT = Path(__file__).resolve().parents[3]
SIZE = (32, 24)
MODEL = {"name": "mammo_cnn", "options": {"width": 4, "depth": 2, "norm": "group", "dropout": 0.0}}
TRAIN = {"epochs": 1, "batch_size": 8, "lr": 0.002, "sampler": "balanced_labels", "augment": False}


def incoming(content: RecordDict, kind: str, dst: int = 7) -> Message:
    meta = Metadata(
        run_id=1,
        message_id="m1",
        src_node_id=0,
        dst_node_id=dst,
        reply_to_message_id="",
        group_id="",
        created_at=time.time(),
        ttl=3600.0,
        message_type=kind,
    )
    return Message(content=content, metadata=meta)


# --------------------------------------------------------------------------- one centre
@pytest.fixture(scope="module")
def centre(tmp_path_factory):
    return prepared_centre(tmp_path_factory.mktemp("dpcentre"), "dpc", SIZE)


def steps_per_epoch(data) -> int:
    return math.ceil(len(data.rows("train")) / TRAIN["batch_size"])


def balanced_rate(data) -> float:
    """The accounted rate of sampler balanced_labels: B / (2 n_minority), B = n / steps."""
    labels = data.labels(data.rows("train"))
    return len(labels) / steps_per_epoch(data) / (2 * np.bincount(labels).min())


def new_context(data_dir: Path, state_dir: Path | None = None) -> Context:
    return node_context("dpc", data_dir, state_dir=state_dir)


def send(fn, kind: str, context: Context, *, train=TRAIN, seed: int = 0, arrays=None, **config):
    torch.manual_seed(0)
    model = build_model(MODEL["name"], **MODEL["options"])
    cfg = ConfigRecord(
        {
            "image-size": list(SIZE),
            "data-seed": 0,
            "arm": "federated",
            "seed": seed,
            "batchnorm": "average",
        }
    )
    put_json(cfg, "model", MODEL)
    if kind.startswith("train."):  # an audit message carries no training recipe
        put_json(cfg, "train", train)
    for key, value in config.items():
        if isinstance(value, dict):
            put_json(cfg, key, value)
        else:
            cfg[key] = value
    weights = arrays if arrays is not None else state_to_arrays(model.state_dict())
    content = RecordDict({"config": cfg, "arrays": weights})
    out = egress_mod(incoming(content, kind), context, fn)  # the real path: the egress guard
    assert not out.has_error()
    return out.content


def dp_round(context: Context, *, seed: int, train=TRAIN, planned: int = 3, **config) -> dict:
    content = send(
        handlers.train,
        "train.classifier",
        context,
        train=train,
        seed=seed,
        **{LEDGER_KEY: "federated|0", PLANNED_ROUNDS_KEY: planned, **config},
    )
    return decode_privacy(content["privacy"])


def test_rounds_compose_one_budget_through_the_centres_ledger(centre, tmp_path):
    # Prepare: 3 planned rounds of one epoch, a target epsilon of 6.
    data, data_dir = centre
    use_privacy(data_dir, target_epsilon=6.0)
    context = new_context(data_dir)
    k = steps_per_epoch(data)
    # Execute: three rounds through the same ledger, and round 1 with a new state folder.
    reports = [dp_round(context, seed=r) for r in range(3)]
    fresh = dp_round(new_context(data_dir, tmp_path / "other-state"), seed=0)
    # Assert: noise chosen once for all 3k steps; epsilon grows as one composed budget.
    sigma, q = reports[0]["noise_multiplier"], reports[0]["sample_rate"]
    assert q == pytest.approx(balanced_rate(data)) and reports[0]["planned_steps"] == 3 * k
    assert q > 1 / k  # balanced labels: the minority label's rate, above the uniform 1 / k
    assert {r["noise_multiplier"] for r in reports} == {sigma}
    eps = [r["epsilon"] for r in reports]
    assert eps[0] < eps[1] < eps[2] <= 6.0 * 1.01
    assert eps[2] == pytest.approx(6.0, rel=0.02)  # the plan spends the whole target
    assert reports[2]["history"] == [[sigma, q, 3 * k]]
    assert eps[2] == pytest.approx(
        independent_epsilon([[sigma, q, 3 * k]], reports[2]["delta"]), rel=0.02
    )
    # a fresh accountant per round would report round 1's epsilon at every round
    assert fresh["epsilon"] == pytest.approx(eps[0]) and fresh["epsilon"] < 0.8 * eps[2]


def test_two_rounds_through_the_ledger_equal_one_run_of_the_same_steps(centre, tmp_path):
    # Prepare
    _, data_dir = centre
    use_privacy(data_dir, target_epsilon=6.0)
    context = new_context(data_dir)
    # Execute: 2 rounds of 1 epoch through the ledger vs 1 round of 2 epochs (another ledger).
    split = [dp_round(context, seed=s, planned=2) for s in (0, 1)][-1]
    single = dp_round(
        new_context(data_dir, tmp_path / "single"), seed=0, planned=1, train={**TRAIN, "epochs": 2}
    )
    # Assert: same planned noise, same composed history, same epsilon.
    assert split["noise_multiplier"] == pytest.approx(single["noise_multiplier"])
    assert split["history"] == single["history"]
    assert split["epsilon"] == pytest.approx(single["epsilon"], rel=1e-9)


def test_round_beyond_the_plan_is_refused_before_any_step(centre):
    # Prepare: the server planned 2 rounds.
    _, data_dir = centre
    use_privacy(data_dir, target_epsilon=6.0)
    context = new_context(data_dir)
    last = [dp_round(context, seed=s, planned=2) for s in (0, 1)][-1]
    own = ledger_file(current_state_dir(data_dir))
    state_before = own.read_text()
    # Execute / Assert: a third round is refused with the refusal mark; nothing was spent.
    with pytest.raises(BudgetRefusal) as info:
        dp_round(context, seed=2, planned=2)
    assert str(info.value).startswith(REFUSAL_MARK) and is_refusal(str(info.value))
    assert "'dpc'" in str(info.value) and "planned steps" in str(info.value)
    assert own.read_text() == state_before
    assert last["epsilon"] <= 6.0 * 1.01


def test_fixed_noise_with_a_cap_is_refused_when_the_next_round_overruns(centre):
    # Prepare: fixed sigma 0.8 and a cap between the epsilons of one and two rounds.
    data, data_dir = centre
    k = steps_per_epoch(data)
    q = balanced_rate(data)  # the rate balanced_labels is accounted at
    delta = 1e-5
    one, two = (epsilon_of([[0.8, q, r * k]], delta) for r in (1, 2))
    use_privacy(data_dir, target_epsilon=round((one + two) / 2, 2), noise_multiplier=0.8)
    context = new_context(data_dir)
    first = dp_round(context, seed=0)
    # Execute / Assert: round 2 is refused, naming what was spent and what it would reach.
    with pytest.raises(BudgetRefusal, match=rf"spent so far {one:.4g}; .* {two:.4g} > target"):
        dp_round(context, seed=1)
    assert first["epsilon"] == pytest.approx(one) and first["delta"] == delta


def test_restarted_node_continues_its_own_ledger_and_ignores_a_forged_prior(centre, caplog):
    # Prepare: one round, then a restarted node (empty context.state, same state folder)
    # that the server sends a forged record of the ledger (1000 steps: trusted, it would
    # exhaust the budget; an empty record is the audit test's).
    data, data_dir = centre
    k = steps_per_epoch(data)
    use_privacy(data_dir, target_epsilon=6.0)
    first = dp_round(new_context(data_dir), seed=0)
    forged = {"accountant": "rdp", "history": [[1.0, 0.5, 1000]], "phases": {}, "plans": {}}
    # Execute
    second = dp_round(new_context(data_dir), seed=1, **{PRIOR_KEY: json.dumps(forged)})
    # Assert: the second round composes with the first (the centre's own file), with the same
    # planned noise; the disagreeing server record is reported, not used.
    q = pytest.approx(balanced_rate(data))
    assert second["history"] == [[first["noise_multiplier"], q, 2 * k]]
    assert second["epsilon"] > first["epsilon"]
    assert f"the server's record (1000 DP steps) disagrees with the centre's own ({k} steps" in (
        caplog.text
    )


def test_non_dp_centre_replies_without_a_privacy_record(centre):
    _, data_dir = centre
    use_privacy(data_dir)  # no target, no noise: DP off
    content = send(handlers.train, "train.classifier", new_context(data_dir))
    assert "privacy" not in content and content["metrics"]["steps"] > 0


def test_fixed_periodic_batches_under_dp_are_refused(centre):
    # Prepare
    _, data_dir = centre
    use_privacy(data_dir, target_epsilon=6.0)
    train = {**TRAIN, "sampler": "periodic"}
    # Execute / Assert: never a Poisson epsilon for fixed batches.
    with pytest.raises(DPUnsupportedError, match="fixed periodic batches"):
        dp_round(new_context(data_dir), seed=0, train=train)


def test_quota_rounds_are_not_a_train_classifier_message(centre):
    # Prepare: quota rounds (fixed batches) are train.periodic's; its message kind has no quota
    _, data_dir = centre
    use_privacy(data_dir, target_epsilon=6.0)
    # Execute / Assert: refused before any step, naming the kind and the key
    with pytest.raises(MessageError, match=r"'train.classifier': unknown key\(s\) \['quota'\]"):
        dp_round(new_context(data_dir), seed=0, quota='{"T-Ma": 4}')


def test_guard_mod_refuses_train_handlers_without_a_dp_path(centre):
    # Prepare
    _, data_dir = centre
    content = RecordDict({"config": ConfigRecord({"arm": "x"})})
    called = []

    def call_next(msg, ctx):
        called.append(msg.metadata.message_type)
        return Message(RecordDict(), reply_to=msg)

    # Execute / Assert: DP centre: a train handler without a DP path is refused; evaluate,
    # train.classifier and train.periodic (Poisson within one segment per step) pass.
    from fedmammo.apps import DP_CAPABLE

    guard = dp_guard_mod(DP_CAPABLE)  # every handler declares whether it has a DP path
    nodp = "train.without_dp_path"
    use_privacy(data_dir, target_epsilon=6.0)
    with pytest.raises(DPUnsupportedError, match=f"'{nodp}' has no DP path"):
        guard(incoming(content, nodp), new_context(data_dir), call_next)
    for kind in ("evaluate.periodic", "train.classifier", "train.periodic"):
        guard(incoming(content, kind), new_context(data_dir), call_next)
    use_privacy(data_dir)  # a non-DP centre may run anything
    guard(incoming(content, nodp), new_context(data_dir), call_next)
    assert called == ["evaluate.periodic", "train.classifier", "train.periodic", nodp]


def test_a_dp_centre_withholds_its_training_statistics_unless_its_profile_releases_them(
    centre, caplog
):
    # Prepare: the guard mod around the real train.classifier handler at a DP centre
    from fedmammo.apps import DP_CAPABLE
    from fedmammo.federation.messages import METRICS, TrainMetrics

    _, data_dir = centre
    guard = dp_guard_mod(DP_CAPABLE)

    def guarded(msg, ctx):
        return guard(msg, ctx, handlers.train)

    def train_loss(**privacy) -> float:
        use_privacy(data_dir, noise_multiplier=1.0, **privacy)
        content = send(
            guarded,
            "train.classifier",
            new_context(data_dir),
            **{LEDGER_KEY: "federated|0", PLANNED_ROUNDS_KEY: 3},
        )
        assert "privacy" in content  # trained with DP either way
        return TrainMetrics.from_metrics(content[METRICS]).train_loss

    # Execute / Assert: withheld by default (NaN on the wire, the value in the centre's log)
    with caplog.at_level("INFO", logger="fedmammo.federation.privacy.ledger"):
        withheld = train_loss()
    assert math.isnan(withheld)
    logged = [r.getMessage() for r in caplog.records if "withheld train-loss" in r.getMessage()]
    assert len(logged) == 1 and "release_training_statistics: false" in logged[0]
    # and in a file of the centre's own state folder (a site's log may not keep INFO records)
    import csv

    from fedmammo.federation.privacy.ledger import WITHHELD_FILE

    with (current_state_dir(data_dir) / WITHHELD_FILE).open() as f:
        (row,) = list(csv.DictReader(f))
    assert (row["message"], row["arm"], row["seed"], row["key"]) == (
        "train.classifier",
        "federated",
        "0",
        "train-loss",
    )
    assert 0 < float(row["value"]) < 10
    # released by the centre's own profile
    released = train_loss(release_training_statistics=True)
    assert math.isfinite(released) and released > 0
    use_privacy(data_dir)


def test_a_dp_centre_withholds_every_loss_part_of_a_multi_task_reply(centre):
    # Prepare: the guard mod at a DP centre around a train.mtl handler whose reply carries
    # the total loss, one loss per part (loss-<part>) and counts
    import csv

    from fedmammo.apps import DP_CAPABLE
    from fedmammo.federation.messages import METRICS
    from fedmammo.federation.privacy.ledger import WITHHELD_FILE

    _, data_dir = centre
    use_privacy(data_dir, noise_multiplier=1.0)
    sent = {
        "train-loss": 1.25,
        "loss-malignancy": 0.75,
        "loss-recon": 0.5,
        "num-images": 12,
        "labelled-malignancy": 9,
    }

    def handler(msg, ctx):
        return Message(RecordDict({METRICS: MetricRecord(dict(sent))}), reply_to=msg)

    cfg = ConfigRecord({"arm": "mtl", "seed": 3, "server-round": 2})
    msg = incoming(RecordDict({"config": cfg}), "train.mtl")
    # Execute
    try:
        reply = dp_guard_mod(DP_CAPABLE)(msg, new_context(data_dir), handler)
    finally:
        use_privacy(data_dir)
    # Assert: every loss is NaN on the wire, the counts are unchanged, and the centre keeps
    # the losses in its own file
    out = dict(reply.content[METRICS])
    assert {k for k, v in out.items() if math.isnan(v)} == {
        "train-loss",
        "loss-malignancy",
        "loss-recon",
    }
    assert (out["num-images"], out["labelled-malignancy"]) == (12, 9)
    with (current_state_dir(data_dir) / WITHHELD_FILE).open() as f:
        rows = list(csv.DictReader(f))
    assert [(r["message"], r["arm"], r["seed"], r["round"]) for r in rows] == [
        ("train.mtl", "mtl", "3", "2")
    ] * 3
    assert {r["key"]: float(r["value"]) for r in rows} == {
        "loss-malignancy": 0.75,
        "loss-recon": 0.5,
        "train-loss": 1.25,
    }


def test_a_dp_centre_refuses_metrics_on_its_training_split(centre):
    # Prepare: a DP centre; the server asks for evaluation on the training images
    from fedmammo.apps import DP_CAPABLE

    _, data_dir = centre
    guard = dp_guard_mod(DP_CAPABLE)
    called = []

    def call_next(msg, ctx):
        called.append(msg.content.config_records["config"]["split"])
        return Message(RecordDict(), reply_to=msg)

    def ask(split):
        content = RecordDict({"config": ConfigRecord({"arm": "x", "split": split})})
        return guard(incoming(content, "evaluate.classifier"), new_context(data_dir), call_next)

    use_privacy(data_dir, noise_multiplier=1.0)
    # Execute / Assert: refused before the handler runs; val and test pass
    with pytest.raises(DPUnsupportedError, match="on split 'train' is refused"):
        ask("train")
    ask("test")
    # released by the profile, or no DP: the handler runs
    use_privacy(data_dir, noise_multiplier=1.0, release_training_statistics=True)
    ask("train")
    use_privacy(data_dir)
    ask("train")
    assert called == ["test", "train", "train"]


def test_long_histories_are_sent_in_chunks_the_egress_guard_accepts():
    # Prepare: 7 entries = 21 values, above the guard's 16-item lists.
    history = [[1.0 + i / 10, 0.1, 10 + i] for i in range(7)]
    packed = pack_history("history", history)
    # Execute
    check_outgoing(RecordDict({"privacy": ConfigRecord(packed)}), None)
    # Assert
    assert all(len(v) <= 16 for v in packed.values())
    assert unpack_history(packed, "history") == history


def test_audit_handler_replies_scores_only_with_the_epsilon_bound(centre):
    # Prepare: one DP round on the ledger the audit names.
    data, data_dir = centre
    use_privacy(data_dir, target_epsilon=6.0)
    context = new_context(data_dir)
    report = dp_round(context, seed=0)
    # Execute
    out = send(audit_handlers.audit, "evaluate.audit", context, **{LEDGER_KEY: "federated|0"})
    m = out["metrics"]
    # Assert: counts of members and non-members, an AUC, and the bound epsilon implies.
    assert set(out) == {"metrics"}
    assert m["n-members"] == len(data.rows("train"))
    assert m["n-nonmembers"] == len(data.rows("val")) + len(data.rows("test"))
    assert 0.0 <= m["auc"] <= 1.0 and 0.0 <= m["tpr-at-1pct-fpr"] <= 1.0
    assert m["epsilon"] == pytest.approx(report["ledger_epsilon"])
    bound = min(1.0, math.exp(m["epsilon"]) * 0.01 + m["delta"])
    assert m["tpr-bound-at-1pct-fpr"] == pytest.approx(bound)


def test_audit_at_a_restarted_node_reports_its_own_ledgers_epsilon(centre, tmp_path):
    # Prepare: one DP round, then the node restarts (empty context.state); the server sends
    # a forged record of the ledger (nothing spent), as run_audits does on --resume
    _, data_dir = centre
    use_privacy(data_dir, target_epsilon=6.0)
    report = dp_round(new_context(data_dir), seed=0)
    forged = {"accountant": "rdp", "history": [], "phases": {}}
    fields = {LEDGER_KEY: "federated|0", PRIOR_KEY: json.dumps(forged)}
    # Execute
    restarted = send(audit_handlers.audit, "evaluate.audit", new_context(data_dir), **fields)
    elsewhere = new_context(data_dir, tmp_path / "no-ledger")
    stranger = send(audit_handlers.audit, "evaluate.audit", elsewhere, **fields)
    # Assert: the restarted node reports its own ledger's epsilon; a node without a ledger
    # file claims no epsilon, whatever the server's record says
    assert restarted["metrics"]["epsilon"] == pytest.approx(report["ledger_epsilon"], rel=1e-6)
    assert "epsilon" not in stranger["metrics"]


# --------------------------------------------------------------------------- centre's file
def test_a_site_keeps_one_ledger_whatever_name_the_server_sends(centre):
    # Prepare: fixed noise 0.8 and a cap between one and two rounds' epsilon, at a real site
    data, data_dir = centre
    k = steps_per_epoch(data)
    q = balanced_rate(data)  # the rate balanced_labels is accounted at
    one, two = (epsilon_of([[0.8, q, r * k]], 1e-5) for r in (1, 2))
    use_privacy(data_dir, target_epsilon=round((one + two) / 2, 2), noise_multiplier=0.8)
    first = dp_round(new_context(data_dir), seed=0)
    # Execute / Assert: a new ledger name, an empty prior, a restarted node: refused all the
    # same (the spent epsilon is the site's, never reset)
    for name in ("renamed|0", "", "federated|0"):
        fields = {LEDGER_KEY: name} if name else {PRIOR_KEY: ""}
        with pytest.raises(BudgetRefusal, match=rf"spent so far {one:.4g}"):
            dp_round(new_context(data_dir), seed=1, **fields)
    assert first["ledger_epsilon"] == pytest.approx(one)


def test_a_study_at_the_centre_may_keep_one_ledger_per_arm(centre):
    # Prepare: the same cap; the profile chooses one ledger per what-if arm (as simulation)
    data, data_dir = centre
    k = steps_per_epoch(data)
    q = balanced_rate(data)  # the rate balanced_labels is accounted at
    one, two = (epsilon_of([[0.8, q, r * k]], 1e-5) for r in (1, 2))
    target = round((one + two) / 2, 2)
    use_privacy(data_dir, target_epsilon=target, noise_multiplier=0.8, ledger_scope="arm")
    context = new_context(data_dir)
    dp_round(context, seed=0)
    # Execute: another arm's first round, then the first arm's second round
    other = dp_round(context, seed=0, **{LEDGER_KEY: "local|0"})
    # Assert: the other arm has its own budget; the first arm's is still spent
    assert other["ledger_epsilon"] == pytest.approx(one)
    with pytest.raises(BudgetRefusal, match=rf"spent so far {one:.4g}"):
        dp_round(new_context(data_dir), seed=1)


def test_a_crash_between_training_and_the_reply_counts_the_round_as_spent(
    centre, monkeypatch, caplog
):
    # Prepare: a round that trains and then dies before its ledger is committed
    data, data_dir = centre
    k = steps_per_epoch(data)
    use_privacy(data_dir, noise_multiplier=0.8)

    def power_cut(*args, **kwargs):
        raise RuntimeError("power cut")

    with monkeypatch.context() as patch:
        patch.setattr(DPSession, "after_training", power_cut)
        with pytest.raises(RuntimeError, match="power cut"):
            dp_round(new_context(data_dir), seed=0)
    # Execute: the restarted node trains the next round
    after = dp_round(new_context(data_dir), seed=1)
    # Assert: the interrupted round's k planned steps were written ahead and count
    assert after["ledger_history"] == [[0.8, pytest.approx(balanced_rate(data)), 2 * k]]
    assert f"its {k} planned steps are counted as spent" in caplog.text
    pending = json.loads(ledger_file(current_state_dir(data_dir)).read_text())["pending"]
    assert pending == {}  # committed with the round that followed


def test_an_unreadable_ledger_refuses_dp_work_in_one_line(centre):
    # Prepare: one round, then the ledger file is damaged
    _, data_dir = centre
    use_privacy(data_dir, noise_multiplier=0.8)
    dp_round(new_context(data_dir), seed=0)
    path = ledger_file(current_state_dir(data_dir))
    path.write_text("{not json")
    # Execute / Assert: never a fresh budget; one line naming the file
    with pytest.raises(DataError, match=rf"privacy ledger {path} is unreadable .*backup"):
        dp_round(new_context(data_dir), seed=1)


def test_the_ledger_file_is_keyed_by_the_centres_own_data_settings(centre, tmp_path):
    # Prepare
    _, data_dir = centre
    ident = identity_of(new_context(data_dir))
    # Execute
    same = data_fingerprint(replace(ident, role="test"))
    other_seed = data_fingerprint(replace(ident, data_seed=(ident.data_seed or 0) + 1))
    other_size = data_fingerprint(replace(ident, image_size=(64, 48)))
    other_name = data_fingerprint(replace(ident, name="someone-else"))
    # Assert: what defines the data changes the fingerprint; nothing else does
    assert same == data_fingerprint(ident)
    assert len({same, other_seed, other_size, other_name}) == 4


def test_audit_separates_an_overfit_model_and_not_a_strongly_private_one(centre):
    # Prepare: 20 epochs at lr 0.01 without DP (memorises 28 images) and with sigma 3.
    _, data_dir = centre
    train = {**TRAIN, "epochs": 20, "lr": 0.01}
    audits = {}
    for name, privacy in (("plain", {}), ("dp", {"noise_multiplier": 3.0})):
        use_privacy(data_dir, **privacy)
        context = new_context(data_dir)
        trained = send(
            handlers.train,
            "train.classifier",
            context,
            train=train,
            **{LEDGER_KEY: "federated|0", PLANNED_ROUNDS_KEY: 1},
        )
        # Execute: audit the returned weights at the same centre (the plain model also with
        # offline LiRA: 4 shadow models trained there with the same recipe)
        lira = {"lira-shadows": 4, "lira-train": train} if name == "plain" else {}
        audits[name] = send(
            audit_handlers.audit,
            "evaluate.audit",
            context,
            arrays=trained["arrays"],
            **{LEDGER_KEY: "federated|0"},
            **lira,
        )["metrics"]
    # Assert: members stand out of the overfit model; DP pulls the attack towards chance.
    assert audits["plain"]["auc"] > 0.9 and "epsilon" not in audits["plain"]
    assert audits["plain"]["lira-auc"] > 0.7 and "lira-auc" not in audits["dp"]
    assert audits["dp"]["auc"] < 0.7 and audits["dp"]["auc"] < audits["plain"]["auc"] - 0.25
    assert audits["dp"]["tpr-at-1pct-fpr"] <= audits["dp"]["tpr-bound-at-1pct-fpr"]


def test_example_losses_are_the_cross_entropy_of_the_true_class():
    losses = audit_handlers.example_losses(np.array([0.9, 0.9, 0.2]), np.array([1, 0, 0]))
    np.testing.assert_allclose(losses, -np.log([0.9, 0.1, 0.8]))
