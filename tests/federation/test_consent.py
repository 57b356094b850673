"""Consent is enforced at the centre: every reply kind against the profile's ``sharing``
block, read from the centre's own disk, before any work is done."""

from __future__ import annotations

import pytest
import torch
import yaml
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from helpers.centre_nodes import node_context, prepared_centre
from helpers.flower_messages import make_incoming

from fedmammo.apps import HANDLERS
from fedmammo.federation.consent import REPLY_KINDS, ConsentRefusal, consent_mod


@pytest.fixture(scope="module")
def centre(tmp_path_factory):
    _, data_dir = prepared_centre(tmp_path_factory.mktemp("consent"), "ca", (32, 24))
    return data_dir


def _share(data_dir, **sharing) -> None:
    path = data_dir / "centre.yaml"
    profile = yaml.safe_load(path.read_text())
    profile["sharing"] = sharing
    path.write_text(yaml.safe_dump(profile))


def _weights_reply(msg, ctx):
    return Message(RecordDict({"arrays": ArrayRecord({"w": torch.zeros(3)})}), reply_to=msg)


def _metrics_reply(msg, ctx):
    return Message(RecordDict({"metrics": MetricRecord({"auc": 0.5})}), reply_to=msg)


def _incoming(kind: str):
    return make_incoming(RecordDict({"config": ConfigRecord({"arm": "x"})}), kind)


def test_every_registered_handler_declares_a_known_consent_or_none():
    # Prepare / Execute: the handlers of every method plus federation's own
    declared = {kind: h.consent for kind, h in HANDLERS.items()}
    # Assert: weights only from train handlers that declare models/generators
    assert set(declared.values()) <= {None, *REPLY_KINDS}
    assert declared["query.identify"] is None  # joining a run needs only counts
    assert declared["train.generator"] == "generators"
    assert {declared[k] for k in ("train.classifier", "train.periodic", "train.mtl")} == {"models"}
    assert {declared[k] for k in ("evaluate.audit", "evaluate.mtl_audit")} == {"audits"}


@pytest.mark.parametrize(
    ("kind", "consent", "reply"),
    [
        ("train.classifier", "models", _weights_reply),
        ("train.generator", "generators", _weights_reply),
        ("evaluate.classifier", "metrics", _metrics_reply),
        ("evaluate.audit", "audits", _metrics_reply),
    ],
)
def test_a_refused_reply_kind_is_refused_before_the_handler_runs(centre, kind, consent, reply):
    # Prepare: the centre's own profile forbids exactly this kind
    _share(centre, **{consent: False})
    called = []

    def handler(msg, ctx):
        called.append(kind)
        return reply(msg, ctx)

    mod = consent_mod({kind: consent})
    # Execute / Assert: refused with the rule named; the handler never ran
    with pytest.raises(ConsentRefusal, match=rf"sharing\.{consent}: false.*'{kind}' is refused"):
        mod(_incoming(kind), node_context("ca", centre), handler)
    assert called == []
    # Prepare: the same profile allowing it
    _share(centre, **{consent: True})
    # Execute / Assert: the reply passes unchanged
    out = mod(_incoming(kind), node_context("ca", centre), handler)
    assert called == [kind] and not out.has_error()


def test_the_server_cannot_lift_a_refusal_through_the_message(centre):
    # Prepare: models forbidden on disk; the server claims consent in its config
    _share(centre, models=False)
    msg = make_incoming(
        RecordDict({"config": ConfigRecord({"sharing.models": True, "consent": "models"})}),
        "train.classifier",
    )
    # Execute / Assert
    with pytest.raises(ConsentRefusal):
        consent_mod({"train.classifier": "models"})(msg, node_context("ca", centre), _weights_reply)


def test_a_centre_requiring_secure_aggregation_refuses_model_weights_in_the_clear(centre):
    # Prepare: the profile asks that model weights leave only masked
    from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS

    _share(centre, require_secure_aggregation=True)
    called = []

    def handler(msg, ctx):
        called.append(msg.metadata.message_type)
        return _metrics_reply(msg, ctx)

    mod = consent_mod({"train.classifier": "models", "evaluate.classifier": "metrics"})
    ctx = node_context("ca", centre)
    # Execute / Assert: a plain training message is refused before the handler runs
    with pytest.raises(ConsentRefusal, match=r"require_secure_aggregation: true.*in the clear"):
        mod(_incoming("train.classifier"), ctx, handler)
    assert called == []
    # a SecAgg+ stage of the same message type goes on (secagg_mod masks its reply); metrics
    # need no masking
    staged = make_incoming(
        RecordDict({RECORD_KEY_CONFIGS: ConfigRecord({"stage": "setup"})}), "train.classifier"
    )
    mod(staged, ctx, handler)
    mod(_incoming("evaluate.classifier"), ctx, handler)
    assert called == ["train.classifier", "evaluate.classifier"]
    # an unmask stage naming dropped nodes is refused (different dropouts told to different
    # centres unmask one update of five); without dropouts it goes on
    from flwr.common.secure_aggregation.secaggplus_constants import Key, Stage

    def unmask(dead):
        cfg = {
            Key.STAGE: Stage.UNMASK,
            Key.ACTIVE_NODE_ID_LIST: [1, 2],
            Key.DEAD_NODE_ID_LIST: dead,
        }
        return make_incoming(RecordDict({RECORD_KEY_CONFIGS: ConfigRecord(cfg)}), "train.mtl")

    mod = consent_mod({"train.mtl": "models"})
    with pytest.raises(ConsentRefusal, match="answers no unmask request that names dropped"):
        mod(unmask([3]), ctx, handler)
    mod(unmask([]), ctx, handler)
    assert called[-1] == "train.mtl"


def test_weights_in_a_reply_that_declares_no_weight_consent_are_refused(centre):
    _share(centre)  # everything allowed
    mod = consent_mod({"evaluate.classifier": "metrics"})
    with pytest.raises(ConsentRefusal, match="declares no weight sharing"):
        mod(_incoming("evaluate.classifier"), node_context("ca", centre), _weights_reply)


def test_the_threat_models_consent_table_lists_every_handler_under_its_key():
    # docs/threat_model.md's table is what a data-protection officer reads: it must match
    import re
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "threat_model.md").read_text()
    listed: dict[str | None, set[str]] = {}
    for line in doc.splitlines():
        row = re.match(r"\|[^|]+\| (`(\w+)`|none) \| (.+) \|$", line)
        if row and "`" in row.group(3):
            names = set(re.findall(r"`([\w.*]+)`", row.group(3)))
            listed.setdefault(row.group(2), set()).update(names)
    actual: dict[str | None, set[str]] = {}
    for name, handler in HANDLERS.items():
        actual.setdefault(handler.consent, set()).add(name)
    for consent, names in actual.items():
        shown = listed.get(consent, set())
        missing = {
            n
            for n in names
            if n not in shown and not any(s.endswith(".*") and n.startswith(s[:-1]) for s in shown)
        }
        assert not missing, f"docs/threat_model.md does not list {sorted(missing)} under {consent}"
