"""A site prepares its centre from the scenario it takes part in (``prepare --scenario S
--centre NAME``): the scenario's profile overrides, the centre's role, the image size and the
data seed, with nothing to copy by hand; options that contradict the scenario are refused."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml
from helpers.run_helpers import REPO

from fedmammo.config import load_profile, load_scenario
from fedmammo.errors import ConfigError
from fedmammo.federation.deployment import PREPARED_FILE, main, scenario_site

SCENARIO = {
    "centres": [
        {
            "profile": str(REPO / "centres" / "tiny.yaml"),
            "name": "site_a",
            "overrides": {"data.synthetic.segments.0.patients": 5},
        },
        {"profile": str(REPO / "centres" / "tiny.yaml"), "name": "site_t", "role": "test"},
    ],
    "strategy": "fedavg",
    "image_size": [32, 24],
    "data_seed": 3,
    "quick": {"image_size": [16, 16]},
}


@pytest.fixture(scope="module")
def scenario(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("project") / "two_sites.yaml"
    path.write_text(yaml.safe_dump(SCENARIO))
    return path


@pytest.fixture(scope="module")
def test_site(scenario, tmp_path_factory) -> Path:
    data_dir = tmp_path_factory.mktemp("sites") / "t"
    args = ["prepare", "--scenario", str(scenario), "--centre", "site_t", "--data-dir"]
    assert main([*args, str(data_dir)]) == 0
    return data_dir


def test_the_site_gets_the_scenarios_profile_role_image_size_and_data_seed(scenario, tmp_path):
    data_dir = tmp_path / "a"
    args = ["prepare", "--scenario", str(scenario), "--centre", "site_a", "--data-dir"]
    assert main([*args, str(data_dir)]) == 0
    assert yaml.safe_load((data_dir / PREPARED_FILE).read_text()) == {
        "centre": "site_a",
        "role": "train",
        "image_size": [32, 24],
        "data_seed": 3,
    }
    written = load_profile(data_dir / "centre.yaml")
    resolved = load_scenario(scenario).resolved_profiles["site_a"]
    assert written == resolved
    assert [s.patients for s in written.data.synthetic.segments] == [5, 6]  # the override
    manifest = pd.read_csv(data_dir / "cache_32x24" / "manifest.csv")
    assert manifest["patient_id"].nunique() == 11
    assert set(manifest["split"]) == {"train", "val", "test"}


def test_a_test_centre_is_prepared_as_test_only(test_site):
    assert yaml.safe_load((test_site / PREPARED_FILE).read_text())["role"] == "test"
    manifest = pd.read_csv(test_site / "cache_32x24" / "manifest.csv")
    assert len(manifest) == 48 and set(manifest["split"]) == {"test"}


def test_node_config_takes_the_role_the_scenario_gave(test_site, capsys):
    assert main(["node-config", "--centre", "site_t", "--data-dir", str(test_site)]) == 0
    assert 'role="test"' in capsys.readouterr().out


def test_quick_takes_the_quick_runs_settings(scenario):
    assert scenario_site(scenario, "site_a").image_size == (32, 24)
    assert scenario_site(scenario, "site_a", quick=True).image_size == (16, 16)


def test_the_recipe_is_not_read_when_only_the_centres_are_needed(scenario, tmp_path):
    # a site needs no method: its preparation must not depend on the strategy recipe
    broken = tmp_path / "no_recipe.yaml"
    broken.write_text(yaml.safe_dump({**SCENARIO, "strategy": "no_such_recipe"}))
    assert scenario_site(broken, "site_t").role == "test"
    with pytest.raises(ConfigError, match="no_such_recipe"):
        load_scenario(broken)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--scenario", "{s}", "--centre", "site_b"],
            "{s}: no centre named 'site_b'; valid: site_a, site_t",
        ),
        (
            ["--scenario", "{s}", "--centre", "site_a", "--image-size", "64", "48"],
            "prepare: --image-size 64 48 differs from the scenario's 32 24 for centre site_a "
            "({s}); fix: drop --image-size, the scenario sets it",
        ),
        (
            ["--scenario", "{s}", "--centre", "site_t", "--role", "train"],
            "prepare: --role train differs from the scenario's test for centre site_t",
        ),
        (
            ["--scenario", "{s}", "--centre", "site_a", "--data-seed", "0"],
            "prepare: --data-seed 0 differs from the scenario's 3",
        ),
        (
            [str(REPO / "centres" / "tiny.yaml"), "--scenario", "{s}", "--centre", "site_a"],
            "or --scenario, not both: with --scenario the centre's profile is the scenario's",
        ),
        (["--scenario", "{s}"], "prepare: --scenario needs --centre, the centre's name in {s}"),
        ([], "prepare: give the centre's PROFILE, or --scenario S --centre NAME"),
        ([str(REPO / "centres" / "tiny.yaml"), "--quick"], "prepare: --quick needs --scenario"),
    ],
    ids=["unknown-centre", "image-size", "role", "data-seed", "both", "no-centre", "none", "quick"],
)
def test_contradictions_are_refused_before_anything_is_written(
    scenario, tmp_path, capsys, argv, message
):
    data_dir = tmp_path / "site"
    argv = [a.replace("{s}", str(scenario)) for a in argv]
    assert main(["prepare", *argv, "--data-dir", str(data_dir)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert message.replace("{s}", str(scenario)) in err
    assert not data_dir.exists()
