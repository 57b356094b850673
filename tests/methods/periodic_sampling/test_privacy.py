"""train.periodic under DP (honest periodic sampling: Poisson within one segment per step,
accounted per segment, the maximum reported), its privacy records, and PeriodicFedAvg arms
that send the DP plan, record privacy.json and stop cleanly on a refusal (no Ray)."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, Context, Error, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity
from helpers.centre_nodes import current_state_dir, ledger_file, node_context, use_privacy
from helpers.dp_reference import independent_epsilon
from helpers.flower_messages import make_incoming

from fedmammo.apps import DP_CAPABLE  # noqa: E402
from fedmammo.config import CentreProfile
from fedmammo.data.prepare import materialise_centre
from fedmammo.data.sampling import QuotaBatchSampler
from fedmammo.evaluation.privacy_report import recompute_epsilon
from fedmammo.evaluation.results import RunRecorder
from fedmammo.federation.codec import get_json, put_json, state_to_arrays
from fedmammo.federation.egress import egress_mod
from fedmammo.federation.messages import EvaluateAudit
from fedmammo.federation.privacy.codec import decode_privacy, encode_privacy
from fedmammo.federation.privacy.ledger import (
    LEDGER_KEY,
    PLANNED_ROUNDS_KEY,
    PRIOR_KEY,
    REFUSAL_MARK,
    BudgetRefusal,
    dp_guard_mod,
)
from fedmammo.methods.periodic_sampling import client as handlers
from fedmammo.methods.periodic_sampling import server as runner
from fedmammo.methods.periodic_sampling.arms import ArmPlan
from fedmammo.methods.periodic_sampling.privacy import PLANNED_QUOTA_KEY, dp_plan
from fedmammo.models import build_model
from fedmammo.privacy.accounting import (
    CentreAccountant,
    PrivacyBudget,
    PrivacyUsageError,
    epsilon_of,
)
from fedmammo.privacy.engine import DPSession
from fedmammo.privacy.periodic import step_pattern
from fedmammo.training.classifier import train_classifier

DP_GUARD = dp_guard_mod(DP_CAPABLE)
SIZE = (32, 24)
MODEL = {"name": "mammo_cnn", "options": {"width": 4, "depth": 2, "norm": "group", "dropout": 0.0}}
TRAIN = {"batch_size": 4, "lr": 0.01, "augment": False}
LEDGER = "exp-federated-periodic|0"


def _profile(name: str, source: str, manufacturers: list[str]) -> CentreProfile:
    segments = [{"manufacturer": m, "patients": 6, "prevalence": 0.5} for m in manufacturers]
    return CentreProfile.model_validate(
        {
            "name": name,
            "source": source,
            "data": {"synthetic": {"image_height": 64, "segments": segments}},
            "split": {"train": 0.6, "val": 0.2, "test": 0.2},
        }
    )


@pytest.fixture(scope="module")
def centres(tmp_path_factory):
    root = tmp_path_factory.mktemp("dpperiodic")
    out = {}
    for name, source, manufacturers in (("ca", "A", ["Ma", "Mb"]), ("cb", "B", ["Mc"])):
        data = materialise_centre(
            _profile(name, source, manufacturers), root, image_size=SIZE, data_dir=root / name
        )
        out[name] = (data, root / name)
    return out


def _config(seed: int, **config) -> ConfigRecord:
    cfg = ConfigRecord(
        {"image-size": list(SIZE), "data-seed": 0, "arm": "exp", "seed": seed, "stream-seed": 5}
    )
    put_json(cfg, "model", MODEL)
    put_json(cfg, "train", TRAIN)
    for key, value in config.items():
        if isinstance(value, dict):
            put_json(cfg, key, value)
        else:
            cfg[key] = value
    return cfg


def send(context: Context, *, seed: int = 0, **config) -> RecordDict:
    """One train.periodic message through the DP guard and the egress guard."""
    torch.manual_seed(0)
    model = build_model(MODEL["name"], **MODEL["options"])
    content = RecordDict(
        {"config": _config(seed, **config), "arrays": state_to_arrays(model.state_dict())}
    )
    msg = make_incoming(content, "train.periodic")
    out = DP_GUARD(msg, context, lambda m, c: egress_mod(m, c, handlers.train))
    assert not out.has_error()
    assert all(len(v) <= 16 for v in out.content.get("privacy", {}).values() if isinstance(v, list))
    return out.content


def sampler_round(context: Context, rnd: int, planned: int = 3, **config) -> dict:
    content = send(
        context,
        seed=rnd,
        sampler="periodic",
        steps=4,
        **{"stream-epoch": rnd - 1, LEDGER_KEY: LEDGER, PLANNED_ROUNDS_KEY: planned, **config},
    )
    return decode_privacy(content["privacy"])


def max_over_segments(report: dict) -> float:
    shared, delta = report["ledger_history"], report["delta"]
    return max(
        epsilon_of(shared + h, delta, "rdp") for h in report["ledger_segment_history"].values()
    )


# --------------------------------------------------------------------------- centre side
def test_dp_periodic_rounds_compose_per_segment_on_one_ledger(centres):
    # Prepare: 3 planned rounds of 4 steps, target epsilon 6.
    data, data_dir = centres["ca"]
    use_privacy(data_dir, target_epsilon=6.0)
    context = node_context("ca", data_dir)
    # Execute
    reports = [sampler_round(context, r) for r in (1, 2, 3)]
    # Assert: per-segment histories, reported epsilon = max over segments, one ledger.
    rows = data.rows("train")
    labels, segs = data.labels(rows), data.segments(rows)
    rarest = {s: int(min(np.sum((segs == s) & (labels == y)) for y in (0, 1))) for s in set(segs)}
    cycle = step_pattern(rarest)
    expected_steps = Counter(cycle[t % len(cycle)] for t in range(12))
    last = reports[-1]
    assert last["sampling"] == "poisson-periodic" and last["ledger_history"] == []
    got = {s: sum(e[2] for e in h) for s, h in last["ledger_segment_history"].items()}
    assert got == dict(expected_steps)
    sigma = reports[0]["noise_multiplier"]
    assert {r["noise_multiplier"] for r in reports} == {sigma}  # planned once for the run
    for r in reports:
        assert r["ledger_epsilon"] == pytest.approx(max_over_segments(r), rel=0.02)
        assert r["ledger_epsilon"] == pytest.approx(recompute_epsilon(r, ledger=True), rel=1e-9)
        assert r["epsilon"] == pytest.approx(recompute_epsilon(r), rel=1e-9)
        for s, h in r["ledger_segment_history"].items():
            n = int(np.sum(segs == s))
            assert all(e[1] == pytest.approx(min(1.0, 4 / n)) for e in h)
            assert r["segment_epsilons"][s] == pytest.approx(
                independent_epsilon(h, r["delta"]), rel=0.02
            )
    eps = [r["ledger_epsilon"] for r in reports]
    assert eps[0] < eps[1] < eps[2] <= 6.0 * 1.01
    assert eps[2] == pytest.approx(6.0, rel=0.02)  # the plan spends the whole target
    q_max = max(e[1] for h in last["ledger_segment_history"].values() for e in h)
    # each example is at risk only on its own segment's steps, not on all 12
    assert eps[2] < epsilon_of([[sigma, q_max, 12]], last["delta"])


@pytest.mark.parametrize("method", ["balanced_labels", "random"])
def test_dp_baseline_samplers_keep_or_drop_the_label_balance(method):
    # Prepare: a round of the baseline arm at a centre with 6 malignant images of 60.
    labels = np.r_[np.ones(6, int), np.zeros(54, int)]
    segments = np.array(["s1", "s2"] * 30)
    m = SimpleNamespace(
        seed=0, quota=None, sampler=method, steps=3000, stream_epoch=0, planned_rounds=2
    )
    # Execute
    sampler, remaining = dp_plan(m, segments, labels, batch_size=6)
    drawn = np.zeros(60, int)
    for batch in sampler:
        drawn[batch] += 1
    # Assert: one segment "all" with the expected batch of 6; balanced_labels expects 3
    # malignant images a step (rate 0.5, the accounted one), random 0.6 (rate 0.1).
    rate = 0.5 if method == "balanced_labels" else 0.1
    assert sampler.sample_rates_ == {"all": pytest.approx(rate)}
    assert sampler.expected_batch_size == pytest.approx(6.0)
    assert remaining == {"all": [(pytest.approx(rate), 6000)]}
    per_step = drawn[:6].sum() / 3000
    assert per_step == pytest.approx(3.0 if method == "balanced_labels" else 0.6, rel=0.05)


def ledger_text(data_dir) -> str:
    """The centre's ledger file (its own state folder; one per test)."""
    return ledger_file(current_state_dir(data_dir)).read_text()


def test_round_beyond_the_plan_or_the_cap_is_refused_before_any_step(centres, tmp_path):
    # Prepare: a plan of 2 rounds.
    _, data_dir = centres["ca"]
    use_privacy(data_dir, target_epsilon=6.0)
    context = node_context("ca", data_dir)
    for r in (1, 2):
        sampler_round(context, r, planned=2)
    before = ledger_text(data_dir)
    # Execute / Assert: round 3 is refused; the ledger is untouched.
    with pytest.raises(BudgetRefusal, match="planned steps") as info:
        sampler_round(context, 3, planned=2)
    assert str(info.value).startswith(REFUSAL_MARK)
    assert ledger_text(data_dir) == before
    # fixed noise with a cap just above one round's epsilon: round 2 would overrun it
    # (new ledgers: other state folders)
    use_privacy(data_dir, noise_multiplier=0.8)
    one = sampler_round(node_context("ca", data_dir, state_dir=tmp_path / "a"), 1)
    one = one["ledger_epsilon"]
    use_privacy(data_dir, noise_multiplier=0.8, target_epsilon=round(one * 1.05, 3))
    context = node_context("ca", data_dir, state_dir=tmp_path / "b")
    assert sampler_round(context, 1)["ledger_epsilon"] == pytest.approx(one)
    before = ledger_file(tmp_path / "b").read_text()
    with pytest.raises(BudgetRefusal, match="> target"):
        sampler_round(context, 2)
    assert ledger_file(tmp_path / "b").read_text() == before


def test_quota_rounds_take_the_quota_in_expectation_and_plan_once(centres):
    # Prepare: the same quota in both planned rounds.
    data, data_dir = centres["ca"]
    use_privacy(data_dir, target_epsilon=5.0)
    context = node_context("ca", data_dir)
    rows = data.rows("train")
    n = {s: int(np.sum(data.segments(rows) == s)) for s in ("A-Ma", "A-Mb")}
    quota = {"A-Ma": 7, "A-Mb": 2}

    def quota_round(seed: int) -> dict:
        left = max(0, 3 - seed)  # the server sends the quotas of this and later planned rounds
        plan = {"A-Ma": {"7": left}, "A-Mb": {"2": left}} if left else {}
        content = send(
            context,
            seed=seed,
            quota=quota,
            offsets={"A-Ma": 0, "A-Mb": 0},
            **{LEDGER_KEY: LEDGER, PLANNED_ROUNDS_KEY: 2, PLANNED_QUOTA_KEY: plan},
        )
        return decode_privacy(content["privacy"])

    # Execute
    reports = [quota_round(s) for s in (1, 2)]
    # Assert: k = ceil(q / 4) steps at rate q / (k n) per segment; the plan ends at the target.
    hist = reports[-1]["ledger_segment_history"]
    sigma = reports[0]["noise_multiplier"]
    assert hist == {
        "A-Ma": [[sigma, pytest.approx(7 / (2 * n["A-Ma"])), 4]],
        "A-Mb": [[sigma, pytest.approx(2 / (1 * n["A-Mb"])), 2]],
    }
    assert reports[1]["ledger_epsilon"] == pytest.approx(5.0, rel=0.02)
    assert reports[1]["ledger_epsilon"] == pytest.approx(max_over_segments(reports[1]), rel=0.02)
    with pytest.raises(BudgetRefusal):
        quota_round(3)  # the server's plan had two rounds


def test_fixed_batches_are_never_used_or_reported_under_dp(centres, monkeypatch):
    # Prepare: the fixed-batch samplers fail if the DP path ever builds them.
    _, data_dir = centres["ca"]
    use_privacy(data_dir, target_epsilon=6.0)

    def forbidden(*args, **kwargs):
        raise AssertionError("fixed periodic batches used under DP")

    monkeypatch.setattr(handlers, "QuotaBatchSampler", forbidden)
    monkeypatch.setattr(handlers, "build_sampler", forbidden)
    # Execute: both batch sources of train.periodic at a DP centre.
    report = sampler_round(node_context("ca", data_dir), 1)
    content = send(
        node_context("ca", data_dir),
        quota={"A-Ma": 3},
        **{LEDGER_KEY: LEDGER, PLANNED_QUOTA_KEY: {"A-Ma": {"3": 1}}},
    )
    # Assert: Poisson-periodic records only; a session fed fixed batches is never encoded.
    assert report["sampling"] == decode_privacy(content["privacy"])["sampling"]
    assert report["sampling"] == "poisson-periodic"
    session = DPSession(
        PrivacyBudget(target_epsilon=None, noise_multiplier=1.0, delta=1e-5),
        CentreAccountant(),
        planned_steps=3,
        phase="periodic",
        centre="ca",
        seed=0,
    )
    session._sampler = QuotaBatchSampler(["s"] * 4, [0, 1, 0, 1], {"s": 4}, 2)
    with pytest.raises(PrivacyUsageError, match="not Poisson"):
        encode_privacy(session, ledger=LEDGER, round_steps=2)


def test_restarted_centre_continues_its_own_per_segment_ledger(centres, tmp_path):
    # Prepare: round 1; the node restarts (context.state lost); the server's privacy.json
    # copy is forged to an empty record.
    _, data_dir = centres["ca"]
    use_privacy(data_dir, target_epsilon=6.0)
    sampler_round(node_context("ca", data_dir), 1)
    forged = json.dumps({"accountant": "rdp", "history": [], "segment_history": {}})
    # Execute: round 2 at a restarted node, vs two rounds in one node (another state folder).
    resumed = sampler_round(node_context("ca", data_dir), 2, **{PRIOR_KEY: forged})
    context = node_context("ca", data_dir, state_dir=tmp_path / "straight")
    straight = [sampler_round(context, r) for r in (1, 2)][-1]
    # Assert: the same composed per-segment ledger, from the centre's own file.
    assert resumed["ledger_segment_history"] == straight["ledger_segment_history"]
    assert resumed["ledger_epsilon"] == pytest.approx(straight["ledger_epsilon"], rel=1e-9)


def test_non_dp_centre_trains_the_fixed_quota_batches_as_before(centres):
    # Prepare
    data, data_dir = centres["ca"]
    use_privacy(data_dir)  # DP off
    quota, offsets = {"A-Ma": 7, "A-Mb": 2}, {"A-Ma": 5, "A-Mb": 1}
    # Execute
    content = send(
        node_context("ca", data_dir), seed=3, quota=quota, offsets=offsets, **{LEDGER_KEY: LEDGER}
    )
    # Assert: no privacy record; the very weights of train_classifier on the quota batches.
    rows = data.rows("train")
    torch.manual_seed(0)
    model = build_model(MODEL["name"], **MODEL["options"])
    sampler = QuotaBatchSampler(
        data.segments(rows), data.labels(rows), quota, 4, seed=5, offsets=offsets
    )
    from fedmammo.config.recipe import LocalTrainingParams

    params = LocalTrainingParams(**TRAIN).model_copy(update={"epochs": 1})
    train_classifier(
        model,
        data.dataset(rows),
        data.labels(rows),
        data.segments(rows),
        params=params,
        seed=3,
        batch_sampler=sampler,
    )
    assert "privacy" not in content and content["metrics"]["steps"] == 3
    got = content["arrays"].to_torch_state_dict()
    assert all(torch.equal(v, got[k]) for k, v in model.state_dict().items())


# --------------------------------------------------------------------------- server side
class Grid:
    """In-process grid: each node's handler through the guard mods; exceptions -> errors."""

    def __init__(self, centres: dict[str, Path]) -> None:
        self.ids = {name: 100 + i for i, name in enumerate(centres)}
        self.contexts = {self.ids[n]: node_context(n, d, self.ids[n]) for n, d in centres.items()}
        self.log: list[dict] = []

    def send_and_receive(self, messages, timeout=None):
        out = []
        for msg in messages:
            node = msg.metadata.dst_node_id
            self.log.append(dict(msg.content["config"]))
            incoming = make_incoming(msg.content, msg.metadata.message_type, dst=node)
            try:
                rep = DP_GUARD(
                    incoming, self.contexts[node], lambda m, c: egress_mod(m, c, handlers.train)
                )
            except Exception as exc:  # what Flower does: an error reply
                rep = Message(
                    Error(code=1, reason=f"{type(exc).__name__}: {exc}"), reply_to=incoming
                )
            out.append(rep)
        return out


def test_periodic_fedavg_arm_records_privacy_and_stops_cleanly_on_a_refusal(
    centres, tmp_path, monkeypatch
):
    # Prepare: ca plans a target over 3 rounds; cb's fixed noise and cap allow one round.
    for attr in ("_run_id", "_node_id", "_task_id"):
        monkeypatch.setattr(TaskIdentity, attr, 1)
    use_privacy(centres["ca"][1], target_epsilon=6.0)
    use_privacy(centres["cb"][1], noise_multiplier=0.8, target_epsilon=4.0)
    grid = Grid({c: centres[c][1] for c in ("ca", "cb")})
    profiles = {c: SimpleNamespace(privacy=SimpleNamespace(enabled=True)) for c in ("ca", "cb")}
    recorder = RunRecorder(tmp_path)
    evaluated: list[int] = []

    orc = SimpleNamespace(
        grid=grid,
        timeout=None,
        run_dir=tmp_path,
        recorder=recorder,
        nodes=grid.ids,
        scenario=SimpleNamespace(resolved_profiles=profiles, privacy=None, faults=[]),
        spec=SimpleNamespace(resume=False),
        console=SimpleNamespace(print=lambda *a, **k: None),
        message=lambda kind, **fields: kind(image_size=SIZE, data_seed=0, **fields),
        record_failures=lambda failures, arm, seed, rnd, phase: [
            recorder.failure(arm=arm, seed=seed, centre=c, reason=r, round=rnd, phase=phase)
            for c, r in failures.items()
        ],
        evaluate_everywhere=lambda kind, **kw: evaluated.append(kw["rnd"]),
        checkpoint=lambda *a, **k: None,
        exchange=lambda messages, timeout: grid.send_and_receive(messages, timeout=timeout),
    )
    params = SimpleNamespace(
        model=SimpleNamespace(model_dump=lambda: MODEL),
        train=SimpleNamespace(model_dump=lambda: TRAIN, batch_size=4),
        batchnorm="average",
        batches_per_round=2,
        rounds=3,
        min_centres=1,
        ema_decay=None,
    )
    counts = {"ca": {"A-Ma": 3, "A-Mb": 3}, "cb": {"B-Mc": 3}}
    arm = ArmPlan(
        "exp-federated-periodic",
        "federated",
        "periodic",
        ["A-Ma", "A-Mb", "B-Mc"],
        ["ca", "cb"],
        "exp",
        "quota",
        "P. sampling",
        counts,
    )
    init = state_to_arrays(build_model(MODEL["name"], **MODEL["options"]).state_dict())
    t0 = time.perf_counter()
    # Execute
    final = runner._train_arm(orc, params, arm, 0, init)
    # Assert: round 1 completed and kept; cb refused round 2; privacy.json has both records.
    assert final is not None and evaluated == [1]
    assert all(cfg[LEDGER_KEY] == "exp-federated-periodic|0" for cfg in grid.log)
    assert all(cfg[PLANNED_ROUNDS_KEY] == 3 for cfg in grid.log)
    first = [c for c in grid.log if c["server-round"] == 1]
    planned = {json.dumps(get_json(c, PLANNED_QUOTA_KEY), sort_keys=True) for c in first}
    assert all(planned)
    privacy = json.loads((tmp_path / "privacy.json").read_text())
    [refusal] = privacy["refusals"]
    assert (refusal["centre"], refusal["round"]) == ("cb", 2)
    by_centre = {r["centre"]: r for r in privacy["records"]}
    assert set(by_centre) == {"ca", "cb"}
    for r in by_centre.values():
        assert r["sampling"] == "poisson-periodic"
        assert r["ledger_epsilon"] == pytest.approx(recompute_epsilon(r, ledger=True), rel=1e-9)
        assert r["ledger_epsilon"] == pytest.approx(max_over_segments(r), rel=0.02)
    assert by_centre["cb"]["rounds"] == [1]
    results = json.loads((tmp_path / "results.json").read_text())
    [stopped] = [p["stopped"] for p in results["progress"].values() if "stopped" in p]
    assert "stopped before round 2: centre cb refused it (privacy budget)" in stopped
    assert stopped in results["notes"]
    assert [f["centre"] for f in results["failures"]] == ["cb"]
    assert time.perf_counter() - t0 < 60


def test_audit_of_a_periodic_arm_counts_only_the_segments_it_trained_on(centres):
    # Prepare: centre ca holds A-Ma and A-Mb; an arm that trained on A-Ma only
    from fedmammo.federation.privacy import audits as audit_handlers

    data, data_dir = centres["ca"]
    model = build_model(MODEL["name"], **MODEL["options"])

    def audit(segments=None):
        m = EvaluateAudit(
            image_size=SIZE,
            data_seed=0,
            arm="exp",
            seed=0,
            model=MODEL,
            batchnorm="average",
            segments=segments,
        )
        msg = make_incoming(m.content({"arrays": state_to_arrays(model.state_dict())}), m.KIND)
        out = egress_mod(msg, node_context("ca", data_dir), audit_handlers.audit)
        assert not out.has_error(), out.error.reason
        return out.content["metrics"]

    def labelled(split: str, segment: str | None = None) -> int:
        rows = data.rows(split)
        return int(len(rows) if segment is None else (data.segments(rows) == segment).sum())

    # Execute
    one = audit(segments=["A-Ma"])
    every = audit()
    # Assert: members are the train rows of the named segments, non-members their val + test
    assert one["n-members"] == labelled("train", "A-Ma") < every["n-members"] == labelled("train")
    assert one["n-nonmembers"] == labelled("val", "A-Ma") + labelled("test", "A-Ma")
