"""How often the ServerApp pulls replies from Flower's in-memory grid (a simulation's)."""

from __future__ import annotations

import pytest
from flwr.clientapp import ClientApp
from flwr.server.superlink.linkstate import LinkStateFactory
from flwr.supercore.constant import FLWR_IN_MEMORY_DB_NAME
from flwr.supercore.object_store import ObjectStoreFactory
from flwr.superlink.federation import NoOpFederationManager
from flwr.superlink.grid import InMemoryGrid

from fedmammo.federation.inprocess import InProcessGrid
from fedmammo.federation.server_app import FEW_NODES, PULL_INTERVAL, poll_often, pull_interval


def _in_memory_grid() -> InMemoryGrid:
    """Flower's in-memory grid as ``flwr.simulation.run_simulation`` makes it."""
    factory = LinkStateFactory(
        FLWR_IN_MEMORY_DB_NAME, NoOpFederationManager(), ObjectStoreFactory()
    )
    return InMemoryGrid(state_factory=factory)


def test_the_interval_is_short_for_few_nodes_and_grows_back_to_flowers_for_a_thousand():
    assert [pull_interval(n) for n in (1, 5, FEW_NODES)] == [PULL_INTERVAL] * 3
    assert PULL_INTERVAL == 0.01 and FEW_NODES == 100
    assert pull_interval(500) == pytest.approx(0.05)
    assert pull_interval(1000) == pytest.approx(0.1)  # Flower's own default
    many = [pull_interval(n) for n in range(100, 2001, 50)]
    assert many == sorted(many)


def test_the_in_memory_grid_pulls_at_the_interval_of_its_nodes():
    grid = _in_memory_grid()
    assert grid.pull_interval == 0.1  # Flower's default, before
    poll_often(grid, 5)
    assert grid.pull_interval == PULL_INTERVAL
    poll_often(grid, 1000)
    assert grid.pull_interval == pytest.approx(0.1)


def test_other_grids_are_left_as_they_are():
    grid = InProcessGrid(ClientApp(), 3)
    poll_often(grid, 3)
    assert not hasattr(grid, "pull_interval")
