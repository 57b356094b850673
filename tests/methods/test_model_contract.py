"""The classifier contract ``--check`` enforces (fedmammo/methods/planning.py): every image
classifier a recipe trains takes N x 1 x H x W floats and returns N x 2 logits."""

from __future__ import annotations

import pytest
import torch
from helpers.run_helpers import REPO
from torch import nn

from fedmammo.config import load_scenario
from fedmammo.errors import ConfigError
from fedmammo.methods.planning import plan_scenario
from fedmammo.models import list_models, registry

FEDAVG = REPO / "tests" / "methods" / "fedavg" / "tiny.yaml"
PERIODIC = REPO / "tests" / "methods" / "periodic_sampling" / "tiny.yaml"
UDA = REPO / "tests" / "methods" / "cyclegan_uda" / "tiny.yaml"
CONTRACT = "a classifier takes N x 1 x H x W floats (H x W: the scenario's image_size) and returns"


class _Net(nn.Module):
    """A tiny CNN: ``channels`` in, ``outputs`` logits out."""

    def __init__(self, channels: int = 1, outputs: int = 2):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(channels, 2, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten()
        )
        self.head = nn.Linear(2, outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class _FixedSize(nn.Module):
    """A head sized for 64 x 48 images only."""

    def __init__(self):
        super().__init__()
        self.head = nn.Linear(64 * 48, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x.flatten(1))


class _Pair(_Net):
    """Logits and features: a tuple, not a tensor."""

    def forward(self, x: torch.Tensor):  # type: ignore[override]
        return self.head(self.features(x)), x


class _Scaled(_Net):
    """State no state dict carries (a plain tensor attribute): built as the centres build it."""

    def __init__(self):
        super().__init__()
        self.scale = torch.tensor(2.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * self.scale


@pytest.fixture
def own_models(monkeypatch):
    """Test models registered in a copy of the registry, gone after the test."""
    list_models()  # the lazy families registered in the real one first
    monkeypatch.setattr(registry, "_BUILDERS", dict(registry._BUILDERS))
    builders = {
        "contract_1000": lambda: _Net(outputs=1000),
        "contract_one": lambda: _Net(outputs=1),
        "contract_rgb": lambda: _Net(channels=3),
        "contract_fixed": _FixedSize,
        "contract_pair": _Pair,
        "contract_scaled": _Scaled,
        "contract_good": _Net,
    }
    for name, builder in builders.items():
        registry.register_model(name)(builder)


def _model(name: str) -> dict:
    """--set-like keys giving the recipe's ``model`` the registered ``name``, no options."""
    return {"strategy.params.model.name": name, "strategy.params.model.options": {}}


def _plan(path, **sets):
    scenario = load_scenario(path, sets=sets)
    return plan_scenario(scenario, quick=False)


def _refusal(path, **sets) -> str:
    with pytest.raises(ConfigError) as exc:
        _plan(path, **sets)
    (line,) = str(exc.value).splitlines()
    return line


@pytest.mark.usefixtures("own_models")
@pytest.mark.parametrize(
    ("name", "got"),
    [
        ("contract_1000", "returned shape (2, 1000) for a batch of 2 x 1 x 32 x 24; "),
        ("contract_one", "returned shape (2, 1) for a batch of 2 x 1 x 32 x 24; "),
        ("contract_pair", "returned a tuple (not a tensor) for a batch of 2 x 1 x 32 x 24; "),
    ],
)
def test_a_classifier_without_two_logits_is_refused_in_one_line(name, got):
    # Act: the fedavg tiny scenario (32 x 24 images) with the model in its recipe
    line = _refusal(FEDAVG, **_model(name))
    # Assert: the key, the model, what it returned and the contract
    assert f"key 'params.model': model '{name}' {got}{CONTRACT}" in line
    assert line.endswith("N x 2 logits, index 1 malignant (docs/architecture.md, 'Your own model')")


@pytest.mark.usefixtures("own_models")
@pytest.mark.parametrize(
    ("name", "error"),
    [
        ("contract_rgb", "RuntimeError: Given groups=1, weight of size [2, 3, 3, 3], expected"),
        ("contract_fixed", "RuntimeError: mat1 and mat2 shapes cannot be multiplied (2x768"),
    ],
)
def test_a_classifier_that_cannot_take_the_images_is_refused_naming_the_input(name, error):
    # Act
    line = _refusal(FEDAVG, **_model(name))
    # Assert: the input it was given and the one expected, then the model's own error
    assert (
        f"key 'params.model': model '{name}' cannot take a batch of 2 x 1 x 32 x 24 "
        f"(expected input N x 1 x H x W, H x W the scenario's image_size): {error}"
    ) in line


@pytest.mark.usefixtures("own_models")
def test_the_scenarios_image_size_is_the_one_given():
    # Prepare: a head sized for 64 x 48 images
    sets = _model("contract_fixed")
    # Act / Assert: refused at 32 x 24, planned at 64 x 48
    assert "cannot take a batch of 2 x 1 x 32 x 24" in _refusal(FEDAVG, **sets)
    assert _plan(FEDAVG, **sets, image_size=[64, 48])


@pytest.mark.usefixtures("own_models")
def test_cyclegan_uda_names_the_model_key_and_periodic_sampling_its_model():
    # Act
    uda = _refusal(UDA, **{"strategy.params.models": {"mine": {"name": "contract_1000"}}})
    periodic = _refusal(PERIODIC, **_model("contract_one"))
    # Assert
    assert "key 'params.models.mine': model 'contract_1000' returned shape (2, 1000)" in uda
    assert "key 'params.model': model 'contract_one' returned shape (2, 1)" in periodic


@pytest.mark.usefixtures("own_models")
@pytest.mark.parametrize("name", ["contract_good", "contract_scaled"])
def test_a_classifier_that_keeps_the_contract_is_planned_and_no_draw_is_taken(name):
    # Prepare
    torch.manual_seed(3)
    before = torch.get_rng_state()
    # Act
    rows = _plan(FEDAVG, **_model(name))
    # Assert: planned, and the global random state is the one the run will start from
    assert {r.arm for r in rows} == {"federated", "local-a", "local-b", "pooled"}
    assert torch.equal(torch.get_rng_state(), before)


def test_the_shipped_classifiers_keep_the_contract():
    # Act / Assert: the three recipes' default models at their tiny scenarios' sizes
    for path in (FEDAVG, PERIODIC, UDA):
        assert _plan(path)
