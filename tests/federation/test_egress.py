"""The egress guard refuses everything but declared weights, scalars and short strings."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from helpers.flower_messages import make_incoming

from fedmammo.federation.egress import (
    EgressError,
    check_outgoing,
    declare_egress,
    egress_error_mod,
    egress_mod,
)


@pytest.fixture()
def model_state():
    return torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.Linear(4, 2)).state_dict()


def test_matching_weights_and_scalars_pass(model_state):
    content = RecordDict(
        {
            "arrays": ArrayRecord(model_state),
            "metrics": MetricRecord({"num-examples": 10, "auroc|S1-Ma": 0.8}),
            "info": ConfigRecord({"centre": "A", "role": "train"}),
        }
    )
    check_outgoing(content, model_state)  # no exception


def test_image_shaped_array_is_refused(model_state):
    content = RecordDict({"arrays": ArrayRecord({"image": torch.zeros(1, 64, 48)})})
    with pytest.raises(EgressError, match="'image' is not a parameter"):
        check_outgoing(content, model_state)


def test_arrays_without_declared_model_are_refused():
    content = RecordDict({"arrays": ArrayRecord({"w": torch.zeros(3)})})
    with pytest.raises(EgressError, match="no declared model"):
        check_outgoing(content, None)


def test_wrong_shape_for_a_known_key_is_refused(model_state):
    state = dict(model_state)
    state["0.weight"] = torch.zeros(4, 1, 64, 64)  # an image hidden under a parameter name
    with pytest.raises(EgressError, match=r"0.weight.*shape"):
        check_outgoing(RecordDict({"arrays": ArrayRecord(state)}), model_state)


def test_per_image_metric_lists_are_refused():
    content = RecordDict({"metrics": MetricRecord({"scores": list(np.linspace(0, 1, 100))})})
    with pytest.raises(EgressError, match="per-image"):
        check_outgoing(content, None)


@pytest.mark.parametrize(
    "value",
    [
        "/data/site_a/img001.dcm",
        "~/secret/manifest.csv",
        "C:\\images\\a.dcm",
        "case_001.png",
        "x/y/z",
    ],
)
def test_paths_are_refused(value):
    with pytest.raises(EgressError, match="path"):
        check_outgoing(RecordDict({"info": ConfigRecord({"where": value})}), None)


def test_long_strings_are_refused():
    with pytest.raises(EgressError, match="characters"):
        check_outgoing(RecordDict({"info": ConfigRecord({"blob": "a" * 2000})}), None)


def _message_with(arrays: dict | None) -> Message:
    content = RecordDict({"config": ConfigRecord({"arm": "x"})})
    if arrays is not None:
        content["arrays"] = ArrayRecord(arrays)
    return make_incoming(content, "train.classifier")


def _context() -> Context:
    return Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})


def test_mod_checks_replies_against_declared_model(model_state):
    ctx = _context()

    def handler(msg, context):
        declare_egress(context, model_state)
        bad = dict(model_state)
        bad["leak"] = torch.zeros(1, 32, 32)
        return Message(RecordDict({"arrays": ArrayRecord(bad)}), reply_to=msg)

    with pytest.raises(EgressError, match="'leak'"):
        egress_mod(_message_with(None), ctx, handler)


def test_mod_defaults_to_incoming_arrays_as_reference(model_state):
    ctx = _context()

    def echo(msg, context):
        return Message(RecordDict({"arrays": ArrayRecord(model_state)}), reply_to=msg)

    reply = egress_mod(_message_with(model_state), ctx, echo)
    assert set(reply.content["arrays"].keys()) == set(model_state)
    with pytest.raises(EgressError, match="no declared model"):
        egress_mod(_message_with(None), _context(), echo)


def test_client_app_runs_the_consent_dp_and_egress_guards_on_every_message():
    from fedmammo.apps import client_app as app
    from fedmammo.federation.client_app import torch_threads_mod
    from fedmammo.federation.secagg import secagg_mod

    # secagg_mod innermost: its masked update is what the egress guard checks; outside the
    # error guard only the torch threads' setting, which raises nothing
    threads, errors, consent, dp_guard, egress, secagg = app._mods
    assert threads is torch_threads_mod
    assert egress is egress_mod and errors is egress_error_mod and secagg is secagg_mod
    assert consent.__qualname__ == "consent_mod.<locals>.mod"
    assert dp_guard.__qualname__ == "dp_guard_mod.<locals>.mod"
