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


def test_state_is_kept_per_seed_and_an_older_folder_without_seeds_is_still_read(tmp_path):
    # Prepare: a centre whose state folder holds FedBN state the way fedmammo kept it before
    # per-seed folders (fedbn/<arm>-<hash>/round2.pt: the seed it was running when killed)
    from helpers.centre_nodes import node_context, prepared_centre

    from fedmammo.federation.centre_models import load_round_state, save_round_state
    from fedmammo.federation.site import state_dir, state_name
    from fedmammo.methods.fedavg.messages import TrainClassifier

    _, data_dir = prepared_centre(tmp_path, "c1", (32, 24))
    context = node_context("c1", data_dir)
    old = state_dir(context, centre_models.identity_of(context)) / FEDBN / state_name("fed")
    old.mkdir(parents=True)
    torch.save({"bn": torch.tensor([2.0])}, old / "round2.pt")

    def message(seed: int, rnd: int) -> TrainClassifier:
        return TrainClassifier(
            image_size=(32, 24),
            arm="fed",
            seed=99,
            run_seed=seed,
            model={},
            train={},
            server_round=rnd,
        )

    # Execute: the resumed seed 0 reads the old state, then trains round 3 (its round 2 moves
    # under it); seed 1 starts
    resumed = load_round_state(context, FEDBN, "fed", 0, 3)
    save_round_state(context, FEDBN, message(0, 3), {"bn": torch.tensor([3.0])})
    save_round_state(context, FEDBN, message(1, 1), {"bn": torch.tensor([10.0])})
    # Assert: each seed's own state, the other seed's untouched
    assert resumed["bn"].item() == 2.0
    assert load_round_state(context, FEDBN, "fed", 0, None)["bn"].item() == 3.0
    assert load_round_state(context, FEDBN, "fed", 0, 3)["bn"].item() == 2.0  # still there
    assert load_round_state(context, FEDBN, "fed", 1, None)["bn"].item() == 10.0
    assert load_round_state(context, FEDBN, "fed", 1, 1) is None  # round 1 starts afresh
    assert sorted(p.relative_to(old).as_posix() for p in old.rglob("*.pt")) == [
        "seed0/round2.pt",  # moved under the seed that continued it
        "seed0/round3.pt",
        "seed1/round1.pt",
    ]


def test_a_damaged_state_file_is_one_line_naming_the_arm_seed_and_round(tmp_path, caplog):
    # Prepare: the centre's FedBN state of round 2, cut to 200 bytes
    from helpers.centre_nodes import node_context, prepared_centre

    from fedmammo.errors import DataError
    from fedmammo.federation.centre_models import load_round_state, round_state_file
    from fedmammo.federation.site import state_dir, state_name

    _, data_dir = prepared_centre(tmp_path, "c1", (32, 24))
    context = node_context("c1", data_dir)
    folder = state_dir(context, centre_models.identity_of(context)) / FEDBN / state_name("fed")
    (folder / "seed0").mkdir(parents=True)
    torch.save({"bn": torch.arange(1000.0)}, folder / "seed0" / "round2.pt")
    path = round_state_file(context, FEDBN, "fed", 0, 3)
    path.write_bytes(path.read_bytes()[:200])
    # Execute / Assert: the server's line names what (no path); the centre's log the file
    with caplog.at_level("ERROR"), pytest.raises(DataError) as err:
        load_round_state(context, FEDBN, "fed", 0, 3)
    assert str(err.value).startswith(
        "the centre's fedbn state of arm fed seed 0 that round 3 continues is damaged, PyTorch "
        "cannot read it (the centre's log names the file)"
    )
    assert f"centre state file {path}: damaged" in caplog.text
