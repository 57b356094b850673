"""share_gans' recipe parameters: an extra model's arms must be arms of the run."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedmammo.config import load_scenario
from fedmammo.errors import ConfigError

ROOT = Path(__file__).resolve().parents[3]


def test_an_extra_models_arm_the_run_does_not_have_is_refused_naming_it():
    # Execute: a well-formed Swin arm that is not among the scenario's arms
    with pytest.raises(ConfigError) as err:
        load_scenario(
            ROOT / "scenarios" / "share_gans.yaml",
            sets={"strategy.params.classifier.extra_models.swin.arms": ["A", "A+synth_C_wgan_gp"]},
        )
    # Assert: one line naming the arm, the run's arms and the fix
    text = str(err.value)
    assert "classifier.extra_models.swin.arms: ['A+synth_C_wgan_gp'] not among params.arms" in text
    assert "fix: list some of those, or [] for no swin rows" in text and "\n" not in text
    ok = load_scenario(
        ROOT / "scenarios" / "share_gans.yaml",
        sets={"strategy.params.classifier.extra_models.swin.arms": ["A", "A+real_B"]},
    )
    assert ok.recipe.typed_params().classifier.extra_models["swin"].arms == ["A", "A+real_B"]
