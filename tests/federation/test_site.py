"""Where a centre runs: only a SuperNode that names its centre is a real site."""

from __future__ import annotations

from flwr.app import Context, RecordDict

from fedmammo.federation.site import deployed


def _context(node_config: dict, run_config: dict) -> Context:
    return Context(
        run_id=1, node_id=1, node_config=node_config, state=RecordDict(), run_config=run_config
    )


def test_a_supernode_that_names_its_centre_is_a_real_site():
    assert deployed(_context({"centre": "s1", "data-dir": "/data/s1"}, {"scenario": "/x.yaml"}))


def test_a_simulated_node_is_not_deployed_whichever_command_started_it():
    simulated = {"partition-id": 0, "num-partitions": 3}
    assert not deployed(_context(simulated, {}))  # python -m fedmammo.simulate
    assert not deployed(_context(simulated, {"scenario": "/x.yaml", "run-dir": "/r"}))  # flwr run
