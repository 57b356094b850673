"""The model registry's builder for weights about to be loaded (``build_model_to_load``)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fedmammo.models import build_model, build_model_to_load, list_models, registry

#: Small options for every registered model (the defaults are full-size).
SMALL = {
    "alexnet": {"input_size": 64, "hidden": 8},
    "contrastive_resnet18": {},
    "contrastive_resnet50": {},
    "contrastive_resnet_slim": {},
    "fcos": {"image_size": (64, 48)},
    "mammo_cnn": {"width": 4, "depth": 2},
    "multitask": {},
    "patch_cnn": {"patch_size": 16, "width": 4, "hidden": 8},
    "resnet50": {"input_size": 32},
    "swin_t": {"input_size": 16, "embed_dim": 8, "depths": [1, 1], "num_heads": [1, 1]},
}


def _tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    return {**dict(model.named_parameters()), **dict(model.named_buffers())}


def test_every_registered_model_has_small_options_here():
    assert sorted(SMALL) == list_models()


@pytest.mark.parametrize("name", sorted(SMALL))
def test_a_model_built_to_load_takes_the_weights_and_keeps_the_random_state(name):
    torch.manual_seed(0)
    source = build_model(name, **SMALL[name])
    before = torch.get_rng_state()
    model = build_model_to_load(name, **SMALL[name])
    assert torch.equal(torch.get_rng_state(), before)  # no initialisation drew from it
    model.load_state_dict(source.state_dict())
    mine, theirs = _tensors(model), _tensors(source)
    assert mine.keys() == theirs.keys()
    for key, value in mine.items():
        assert value.device.type == "cpu", key
        assert value.dtype == theirs[key].dtype and torch.equal(value, theirs[key]), key
    assert type(model) is type(source) and model.training == source.training


def test_it_gives_the_outputs_of_the_model_it_was_loaded_from():
    torch.manual_seed(0)
    source = build_model("resnet50", input_size=32).eval()
    model = build_model_to_load("resnet50", input_size=32)
    model.load_state_dict(source.state_dict())
    x = torch.randn(2, 1, 32, 24)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), source(x))


class _WithNonPersistentBuffer(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(2, 2)
        self.register_buffer("scale", torch.full((2,), 3.0), persistent=False)


class _WithTensorAttribute(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(2, 2)
        self.mean = torch.tensor([0.5, 0.25])


@pytest.mark.parametrize(
    "cls, attribute, value",
    [(_WithNonPersistentBuffer, "scale", [3.0, 3.0]), (_WithTensorAttribute, "mean", [0.5, 0.25])],
)
def test_state_no_state_dict_carries_is_built_as_usual(cls, attribute, value, monkeypatch):
    monkeypatch.setitem(registry._BUILDERS, "test_model", cls)
    held = getattr(build_model_to_load("test_model"), attribute)
    assert held.device.type == "cpu"  # not an empty tensor left on the meta device
    assert held.tolist() == value
