"""The model a message carries, loaded at a centre (``federation/centre_models.py``): the
received weights, and under FedBN the centre's own BatchNorm state on top of them."""

from __future__ import annotations

import pytest
import torch

from fedmammo.federation import centre_models
from fedmammo.federation.centre_models import FEDBN, bn_keys, load_model, model_with_weights
from fedmammo.federation.codec import state_to_arrays
from fedmammo.models import build_model

SPEC = {"name": "mammo_cnn", "options": {"width": 4, "depth": 2, "norm": "batch"}}


def _model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = build_model(SPEC["name"], **SPEC["options"])
    with torch.no_grad():  # BatchNorm statistics that differ between the two models
        for key in bn_keys(model):
            value = model.state_dict()[key]
            if value.is_floating_point():
                value.uniform_(0.5, 1.5)
    return model


def _same(a: dict, b: dict, keys) -> bool:
    return all(torch.equal(a[k], b[k]) for k in keys)


def test_the_received_weights_are_loaded_to_the_bit():
    received = _model(0).state_dict()
    model = model_with_weights(SPEC, state_to_arrays(received))
    assert _same(model.state_dict(), received, received)


@pytest.mark.parametrize("own_saved", [True, False])
def test_fedbn_puts_the_centres_own_batchnorm_state_over_the_received_model(own_saved, monkeypatch):
    received, own = _model(0), _model(1)
    asked = []

    def fake_load_round_state(context, kind, arm, seed, until):
        asked.append((context, kind, arm, seed, until))
        return {k: own.state_dict()[k] for k in bn_keys(own)} if own_saved else None

    monkeypatch.setattr(centre_models, "load_round_state", fake_load_round_state)
    arrays = state_to_arrays(received.state_dict())
    model = load_model(SPEC, arrays, "ctx", local_bn=("arm a", 7), after_round=2)
    assert asked == [("ctx", FEDBN, "arm a", 7, 3)]  # the state of seed 7 kept after round 2
    state, bn = model.state_dict(), bn_keys(model)
    other = [k for k in state if k not in bn]
    assert bn and other
    assert _same(state, received.state_dict(), other)  # weights: the received model's
    expected_bn = own if own_saved else received  # none kept yet: the received state stays
    assert _same(state, expected_bn.state_dict(), bn)
    assert not _same(own.state_dict(), received.state_dict(), bn)  # the two really differ
