"""A scenario on an existing Ray cluster (issue 19, "beyond one machine").

A real two-node Ray cluster on this machine (``ray.cluster_utils.Cluster``: a head and a
worker node, each its own raylet and object store with one CPU), then ``python -m
fedmammo.simulate tests/methods/fedavg/tiny.yaml --ray-address ADDRESS`` with the scenario's
``simulation.client_resources`` at half a CPU, so two centre actors fit on each node. The
cluster's processes were started by this test, not by the CLI, so the run spec reaches the
centres only through the job's runtime environment, as it must on real machines. Checked:
four centre actors, two per node (the scenario's resources, not the profiles' one CPU), that
ran messages on both nodes (the cluster's own actor table and task events), and results
equal to the same scenario run in process through the real ClientApp (every metric record to
the bit). A wrong or dead address is tested in process in tests/test_simulate.py.
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from pathlib import Path

import pytest
from helpers.flower_messages import InProcessGrid, in_process_identity
from helpers.run_helpers import REPO, comparable_metrics, results, run_cli

pytestmark = pytest.mark.slow

TINY = REPO / "tests" / "methods" / "fedavg" / "tiny.yaml"
OBJECT_STORE = 80 * 2**20  # Ray's floor is 75 MB; the tiny run moves a few hundred kB


@pytest.fixture
def cluster(monkeypatch):
    from ray.cluster_utils import Cluster

    # the nodes' processes start from this environment; as on a machine where `ray start` ran
    # in a plain shell, each one-CPU actor then gets one torch thread (Ray sets
    # OMP_NUM_THREADS to the actor's num_cpus unless the raylet's environment has it)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)

    node = {"num_cpus": 1, "object_store_memory": OBJECT_STORE}
    c = Cluster(initialize_head=True, head_node_args={**node, "include_dashboard": False})
    try:
        worker = c.add_node(**node)
        c.wait_for_nodes()
        yield c, {c.head_node.node_id: "head", worker.node_id: "worker"}
    finally:
        c.shutdown()


def _actors_and_runs_per_node(address: str) -> tuple[Counter, Counter]:
    """Per node: the centre actors (``ClientAppActor``) placed there, and how many
    ``ClientAppActor.run`` calls (one message each) it executed, from the cluster's actor
    table and task events (no dashboard on this machine, so Ray's GCS directly)."""
    import ray
    from ray._private import state
    from ray.core.generated import gcs_pb2

    ray.init(address=address, logging_level="WARNING", log_to_driver=False)
    try:
        node_of = {
            a["ActorID"]: a["Address"]["NodeID"]
            for a in state.actors().values()
            if a["ActorClassName"] == "ClientAppActor"
        }
        tasks: dict[bytes, str] = {}
        for raw in state.state._connect_and_get_accessor().get_task_events():
            event = gcs_pb2.TaskEvents.FromString(raw)
            if event.task_info.name == "ClientAppActor.run":
                tasks[event.task_id] = event.task_info.actor_id.hex()
        runs = Counter(node_of[actor] for actor in tasks.values())
        return Counter(node_of.values()), runs
    finally:
        ray.shutdown()


def _in_process(tmp_path: Path, monkeypatch) -> dict:
    """The same scenario through the server's run_scenario and the real ClientApp, no Ray."""
    import torch

    from fedmammo.config import load_scenario
    from fedmammo.federation.runspec import ENV_VAR, POOLED, RunSpec
    from fedmammo.federation.server_app import run_scenario
    from fedmammo.methods import METHODS

    sets = {"data_dir": str(tmp_path / "data")}
    scenario = load_scenario(TINY, sets=sets)
    spec = RunSpec(
        scenario_file=str(TINY),
        run_dir=str(tmp_path / "in_process"),
        sets=sets,
        node_order=[*scenario.centre_names(), POOLED],  # tiny.yaml has a pooled arm
    )
    Path(spec.run_dir).mkdir()
    monkeypatch.setenv(ENV_VAR, str(spec.save()))
    method = METHODS["fedavg"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a one-CPU Ray actor
    try:
        with in_process_identity():
            grid = InProcessGrid(spec.node_order, strict=True)
            run_scenario(grid, dataclasses.replace(spec), method.run, method.report)
    finally:
        torch.set_num_threads(threads)
    return json.loads((Path(spec.run_dir) / "results.json").read_text())


def test_tiny_scenario_runs_on_a_two_node_ray_cluster(cluster, tmp_path, monkeypatch):
    # Prepare: a head and a worker node (one CPU each); half a CPU per centre
    c, names = cluster
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    half = "simulation.client_resources={num_cpus: 0.5}"
    data = f"data_dir={tmp_path / 'data'}"  # shared with the in-process reference

    # Execute: the normal CLI, attached to the cluster
    proc, run_dir = run_cli(
        [str(TINY), "--ray-address", c.address, "--set", half, "--set", data],
        out=tmp_path / "cluster",
        timeout=240,
    )

    # Assert: the run finished, its centres ran on both nodes, results as in process
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert run_dir is not None
    assert f"Ray cluster at {c.address}: 2 nodes" in proc.stdout
    on_cluster = results(run_dir)
    assert on_cluster["failures"] == []
    actors, runs = _actors_and_runs_per_node(c.address)
    assert {names[n]: k for n, k in actors.items()} == {"head": 2, "worker": 2}, actors
    assert {names[n] for n in runs} == {"head", "worker"}, runs
    # identify (4 nodes) + 2 arms x 2 rounds x (train + evaluate) at the very least
    assert sum(runs.values()) >= 12, runs
    reference = _in_process(tmp_path, monkeypatch)
    mine, theirs = comparable_metrics(on_cluster), comparable_metrics(reference)
    assert len(mine) > 100 and mine == theirs
