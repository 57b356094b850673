"""Scenario, profile and recipe validation: errors name the file, the key and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedmammo.config import apply_dotted, load_profile, load_scenario
from fedmammo.errors import ConfigError

PROFILE = """
name: {name}
source: S1
data:
  synthetic:
    image_height: 64
    segments:
      - {{manufacturer: Ma, patients: 10, prevalence: 0.3}}
"""

STRATEGY = """
kind: fedavg
params:
  rounds: 3
  train: {epochs: 1, batch_size: 8}
quick:
  rounds: 1
"""


@pytest.fixture()
def tree(tmp_path: Path) -> Path:
    (tmp_path / "centres").mkdir()
    (tmp_path / "strategies").mkdir()
    for name in ("a", "b"):
        (tmp_path / "centres" / f"{name}.yaml").write_text(PROFILE.format(name=name))
    (tmp_path / "strategies" / "fa.yaml").write_text(STRATEGY)
    return tmp_path


def _scenario(tree: Path, body: str) -> Path:
    path = tree / "scen.yaml"
    path.write_text(body)
    return path


def test_scenario_resolves_profiles_recipe_and_quick(tree):
    path = _scenario(
        tree,
        """
centres:
  - {profile: centres/a.yaml, role: train}
  - {profile: centres/b.yaml, role: test, overrides: {data.synthetic.segments.0.patients: 4}}
strategy: strategies/fa.yaml
quick: {image_size: [32, 24]}
""",
    )
    sc = load_scenario(path, quick=True, sets={"strategy.params.rounds": 7})
    assert sc.name == "scen"
    assert sc.centre_names() == ["a", "b"]
    assert sc.resolved_profiles["b"].data.synthetic.segments[0].patients == 4
    assert sc.image_size == (32, 24)
    # an explicit --set (or a scenario's strategy override) wins over the recipe's quick block
    assert sc.recipe.typed_params(quick=False).rounds == 7
    assert sc.recipe.typed_params(quick=True).rounds == 7
    plain = load_scenario(path, quick=True)
    assert plain.recipe.typed_params(quick=True).rounds == 1
    assert plain.recipe.typed_params(quick=False).rounds == 3


def test_unknown_scenario_key_names_file_and_key(tree):
    path = _scenario(
        tree, "centres: [{profile: centres/a.yaml}]\nstrategy: strategies/fa.yaml\nroundz: 3\n"
    )
    with pytest.raises(ConfigError) as err:
        load_scenario(path)
    msg = str(err.value)
    assert str(path) in msg and "'roundz'" in msg and "unknown key" in msg


def test_missing_profile_names_key_and_fix(tree):
    path = _scenario(tree, "centres: [{profile: nowhere}]\nstrategy: strategies/fa.yaml\n")
    with pytest.raises(ConfigError, match=r"centres\.0\.profile.*'nowhere' not found.*fix"):
        load_scenario(path)


def test_unknown_strategy_kind_lists_valid_kinds(tree):
    (tree / "strategies" / "bad.yaml").write_text("kind: fedsgd\n")
    path = _scenario(tree, "centres: [{profile: centres/a.yaml}]\nstrategy: strategies/bad.yaml\n")
    with pytest.raises(ConfigError, match=r"unknown strategy kind 'fedsgd'; valid kinds: .*fedavg"):
        load_scenario(path)


def test_unknown_recipe_param_is_an_error(tree):
    path = _scenario(tree, "centres: [{profile: centres/a.yaml}]\nstrategy: strategies/fa.yaml\n")
    with pytest.raises(ConfigError, match=r"params|rounds_per_epoch"):
        load_scenario(path, sets={"strategy.params.rounds_per_epoch": 2})


def test_broken_yaml_names_line(tree):
    path = _scenario(tree, "centres: [\n  - {profile: a\n")
    with pytest.raises(ConfigError, match=r"scen.yaml:\d+:\d+: broken YAML"):
        load_scenario(path)


def test_out_of_range_profile_value(tree):
    bad = tree / "centres" / "bad.yaml"
    bad.write_text(PROFILE.format(name="bad").replace("prevalence: 0.3", "prevalence: 1.7"))
    with pytest.raises(ConfigError) as err:
        load_profile(bad)
    assert "data.synthetic.segments.0.prevalence" in str(err.value)
    assert "less than or equal to 1" in str(err.value)


def test_duplicate_centre_names_are_refused(tree):
    path = _scenario(
        tree,
        "centres: [{profile: centres/a.yaml}, {profile: centres/a.yaml}]\n"
        "strategy: strategies/fa.yaml\n",
    )
    with pytest.raises(ConfigError, match="used twice"):
        load_scenario(path)


@pytest.mark.parametrize("name", ["pooled", "all", "__pooled__"])
def test_a_reserved_centre_name_is_refused(tree, name):
    # "pooled" would take the pooled arm's node; "all" is the centre of no-one-centre records
    path = _scenario(
        tree,
        f"centres: [{{profile: centres/a.yaml, name: {name}}}]\nstrategy: strategies/fa.yaml\n",
    )
    with pytest.raises(ConfigError, match=f"centre name '{name}' is reserved .* fix: give"):
        load_scenario(path)


def test_apply_dotted_creates_and_indexes():
    data = {"a": {"b": [{"c": 1}]}}
    apply_dotted(data, "a.b.0.c", 5)
    apply_dotted(data, "x.y", 2)
    assert data == {"a": {"b": [{"c": 5}]}, "x": {"y": 2}}
