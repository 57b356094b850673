"""deployment.node_config survives any data dir: parsed back by Flower's own --node-config
parser (``flwr.common.config.parse_config_args``), value for value; the ``node-config``
command refuses a folder that ``prepare`` did not make."""

from __future__ import annotations

import pytest
from flwr.common.config import parse_config_args
from helpers.run_helpers import REPO

from fedmammo.federation.deployment import main, node_config


@pytest.mark.parametrize(
    "folder",
    [
        "plain",
        "with space",
        "it's",
        'say "hi"',
        "back\\slash",
        "both ' and \"",
        "eq=sign",
        "tab\tx",
    ],
)
def test_node_config_round_trips_through_flowers_parser(tmp_path, folder):
    data_dir = tmp_path / folder
    parsed = parse_config_args([node_config('site "A"', data_dir, role="test")])
    assert parsed == {"centre": 'site "A"', "data-dir": str(data_dir.resolve()), "role": "test"}


def test_node_config_cli_serves_only_a_prepared_centre_folder(tmp_path, capsys):
    # Prepare: one folder prepared by the deployment CLI, a typo of it, one never prepared
    site = tmp_path / "fedmammo" / "s1"
    assert main(["prepare", str(REPO / "centres" / "tiny.yaml"), "--data-dir", str(site),
                 "--name", "s1", "--image-size", "32", "24"]) == 0  # fmt: skip
    (tmp_path / "empty").mkdir()
    capsys.readouterr()
    # Execute / Assert: the prepared folder gives the config Flower parses
    assert main(["node-config", "--centre", "s1", "--data-dir", str(site)]) == 0
    out = capsys.readouterr().out
    assert parse_config_args([out.strip()])["data-dir"] == str(site.resolve())
    for folder, why in [
        (tmp_path / "fedmamo" / "s1", "does not exist"),
        (tmp_path / "empty", "has no centre.yaml or prepared.yaml"),
    ]:
        assert main(["node-config", "--centre", "s1", "--data-dir", str(folder)]) == 2
        captured = capsys.readouterr()
        assert captured.out == ""  # nothing for `--node-config "$(...)"` to pick up
        (line,) = captured.err.strip().splitlines()
        assert f"--data-dir {folder} {why}: not a prepared centre folder" in line
        assert "deployment prepare --scenario SCENARIO.yaml --centre" in line
        assert "correct the path" in line
    # another centre's name for the prepared folder
    assert main(["node-config", "--centre", "s2", "--data-dir", str(site)]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert f"--data-dir {site.resolve()} was prepared for centre 's1', not 's2'" in line
    assert "fix: --centre s1" in line


def test_a_site_serves_the_role_it_was_prepared_for(tmp_path, capsys):
    # Prepare: a test-only site, prepared as such (every image a test image)
    from types import SimpleNamespace

    from fedmammo.federation.centre_runtime import identity_of
    from fedmammo.federation.deployment import prepared_settings

    site = tmp_path / "fedmammo" / "s4"
    assert main(["prepare", str(REPO / "centres" / "tiny.yaml"), "--data-dir", str(site),
                 "--name", "s4", "--role", "test", "--image-size", "32", "24"]) == 0  # fmt: skip
    capsys.readouterr()
    # Execute: node-config without --role, with the same role, with a training role
    assert main(["node-config", "--centre", "s4", "--data-dir", str(site)]) == 0
    default = parse_config_args([capsys.readouterr().out.strip()])
    assert main(["node-config", "--centre", "s4", "--data-dir", str(site), "--role", "test"]) == 0
    capsys.readouterr()
    refused = main(["node-config", "--centre", "s4", "--data-dir", str(site), "--role", "train"])
    (line,) = capsys.readouterr().err.strip().splitlines()
    # Assert: the role travels from prepare to the node config, and to a node started
    # without one; a role that would split the images otherwise is refused, naming the fix
    assert prepared_settings(site)["role"] == "test" and default["role"] == "test"
    assert refused == 2
    assert f"--data-dir {site.resolve()} was prepared as role 'test', not 'train'" in line
    assert "fix: --role test, or prepare the folder again with --role train" in line
    node = SimpleNamespace(node_config={"centre": "s4", "data-dir": str(site)})
    assert identity_of(node).role == "test"
