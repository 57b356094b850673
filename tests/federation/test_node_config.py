"""deployment.node_config survives any data dir: parsed back by Flower's own --node-config
parser (``flwr.common.config.parse_config_args``), value for value."""

from __future__ import annotations

import pytest
from flwr.common.config import parse_config_args

from fedmammo.federation.deployment import node_config


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
