"""``train_classifier`` continues an optimiser from its state: two calls of one epoch each,
the second given the first's ``optimizer_state``, equal one call of two epochs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from fedmammo.config.recipe import LocalTrainingParams
from fedmammo.models import build_model
from fedmammo.training.classifier import train_classifier

MODEL = {"width": 4, "depth": 2, "norm": "group", "dropout": 0.0}
BATCHES = [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]


def _data():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(12, 1, 32, 24, generator=gen)
    y = torch.tensor([0, 1] * 6)
    return TensorDataset(x, y), y.numpy(), np.array(["s"] * 12)


def _train(model, epochs, state=None):
    data, labels, segments = _data()
    params = LocalTrainingParams(epochs=epochs, optimizer="adam", lr=0.01, augment=False)
    return train_classifier(
        model, data, labels, segments, params=params, seed=0, batch_sampler=BATCHES,
        optimizer_state=state,
    )  # fmt: skip


@pytest.mark.usefixtures("one_torch_thread")
def test_a_continued_optimiser_equals_one_longer_run():
    # Prepare: three copies of one model
    torch.manual_seed(0)
    start = build_model("mammo_cnn", **MODEL).state_dict()
    nets = [build_model("mammo_cnn", **MODEL) for _ in range(3)]
    for net in nets:
        net.load_state_dict(start)
    # Execute: 2 epochs at once; 1 + 1 with the state carried; 1 + 1 with a fresh optimiser
    once = _train(nets[0], 2)
    first = _train(nets[1], 1)
    carried = _train(nets[1], 1, first.optimizer_state)
    _train(nets[2], 1)
    _train(nets[2], 1)
    # Assert: carried equals the single run to float precision; a fresh Adam does not
    for key, value in nets[0].state_dict().items():
        torch.testing.assert_close(nets[1].state_dict()[key], value, rtol=0, atol=1e-6)
    assert carried.optimizer_state["state"][0]["step"] == once.optimizer_state["state"][0]["step"]
    assert int(once.optimizer_state["state"][0]["step"]) == 6
    drift = max(
        float((nets[2].state_dict()[k] - v).abs().max()) for k, v in nets[0].state_dict().items()
    )
    assert drift > 1e-4


def test_a_centre_without_labelled_training_images_is_one_line_with_the_fix():
    from fedmammo.errors import DataError

    model = build_model("mammo_cnn", **MODEL)
    data, _, _ = _data()
    params = LocalTrainingParams(epochs=1)
    with pytest.raises(DataError) as error:
        train_classifier(model, data, np.array([], dtype=int), np.array([]), params=params, seed=0)
    assert str(error.value).startswith("no training examples: the training split holds no image")
    assert "fix: give the centre labels (docs/datasets.md)" in str(error.value)
