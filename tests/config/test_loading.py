"""Overrides are named in errors, an inline recipe takes the scenario's overrides, and the
run folder's resolved scenario loads alone to the same scenario."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from fedmammo.config import load_scenario
from fedmammo.config.loading import resolved_mapping
from fedmammo.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
INLINE = """
centres:
  - {profile: tiny, name: a}
  - {profile: tiny, name: t, role: test}
strategy:
  kind: fedavg
  params: {rounds: 3}
strategy_overrides: {params.rounds: 5}
"""


def test_an_inline_recipe_takes_the_scenarios_overrides(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(INLINE)
    assert load_scenario(path).recipe.typed_params().rounds == 5
    assert load_scenario(path, sets={"strategy.params.rounds": 9}).recipe.typed_params().rounds == 9
    with pytest.raises(ConfigError, match=r"--set strategy.params.rounds=0: key 'strategy.params"):
        load_scenario(path, sets={"strategy.params.rounds": 0})


def test_a_misspelt_required_key_is_one_line_with_the_fix(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(INLINE.replace("centres:", "centers:"))
    with pytest.raises(ConfigError) as err:
        load_scenario(path)
    assert (
        str(err.value) == f"{path}: key 'centers': unknown key; did you mean 'centres' (required)?"
    )


def test_a_centre_override_error_names_the_override(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(
        INLINE.replace(
            "{profile: tiny, name: a}",
            "{profile: tiny, name: a, overrides: {labels.missing.malignancy: 2}}",
        )
    )
    with pytest.raises(ConfigError) as err:
        load_scenario(path)
    assert str(err.value).startswith(
        f"{path} centres.0.overrides 'labels.missing.malignancy': key 'labels.missing'"
    )


@pytest.mark.parametrize("quick", [False, True])
@pytest.mark.parametrize("scenario", sorted(p.name for p in (ROOT / "scenarios").glob("*.yaml")))
def test_the_resolved_copy_loads_alone_to_the_same_scenario(tmp_path, scenario, quick):
    original = load_scenario(ROOT / "scenarios" / scenario, quick=quick)
    copy = tmp_path / "scenario.resolved.yaml"
    copy.write_text(yaml.safe_dump(resolved_mapping(original, quick=quick)))
    again = load_scenario(copy, quick=quick)
    assert again.resolved_profiles == original.resolved_profiles
    assert again.recipe.typed_params(quick=quick) == original.recipe.typed_params(quick=quick)
    assert (again.seeds, again.image_size, again.sweep) == (
        original.seeds,
        original.image_size,
        original.sweep,
    )
    with pytest.raises(ConfigError, match="takes no overrides"):
        load_scenario(copy, sets={"seeds": [1]})
