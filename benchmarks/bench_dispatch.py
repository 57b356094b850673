"""Flower's simulation dispatch: one pass over the nodes with all messages out, or a window.

    python benchmarks/bench_dispatch.py [--nodes 10 100 300 1000] [--window 8]

Flower 1.41's simulation engine, every 0.1 s, asks its link state for each node's next
message (``vce_api.add_messages_to_queue`` calls ``InMemoryLinkState.get_message_ins(node,
limit=1)`` for every node), and each call scans every stored message. This times one such
pass, with the engine's own objects (link state, nodes registered as the engine registers
them, messages pushed through Flower's in-memory grid): once with every node's message
stored (a round sent at once), once with only ``--window`` stored (fedmammo's windowed
exchange, :mod:`fedmammo.federation.window`); each pass run twice, right after the push
(messages waiting) and again (delivered, still stored until their replies are pulled).
Prints a markdown table for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import time

from flwr.app import Message, RecordDict
from flwr.common.constant import RUN_ID_NUM_BYTES, SUPERLINK_NODE_ID, TASK_ID_NUM_BYTES
from flwr.proto.task_pb2 import Task  # pylint: disable=no-name-in-module
from flwr.server.superlink.fleet.vce.vce_api import _register_nodes
from flwr.server.superlink.linkstate import LinkStateFactory
from flwr.server.superlink.linkstate.in_memory_linkstate import RunRecord
from flwr.server.superlink.linkstate.utils import generate_rand_int_from_bytes
from flwr.supercore.constant import FLWR_IN_MEMORY_DB_NAME, NOOP_FEDERATION_ID
from flwr.supercore.object_store import ObjectStoreFactory
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity
from flwr.superlink.federation import NoOpFederationManager
from flwr.superlink.grid import InMemoryGrid


def _engine(nodes: int):
    """A link state, its nodes and an in-memory grid, as ``flwr.simulation`` makes them."""
    factory = LinkStateFactory(
        FLWR_IN_MEMORY_DB_NAME, NoOpFederationManager(), ObjectStoreFactory()
    )
    run = Run.create_empty(run_id=generate_rand_int_from_bytes(RUN_ID_NUM_BYTES))
    run.primary_task_id = generate_rand_int_from_bytes(TASK_ID_NUM_BYTES)
    run.federation_id = NOOP_FEDERATION_ID
    TaskIdentity.task_id, TaskIdentity.run_id = 1, run.run_id
    TaskIdentity.node_id = SUPERLINK_NODE_ID
    state = factory.state()
    state.run_ids[run.run_id] = RunRecord(run=run)
    state.task_store[run.primary_task_id] = Task(task_id=run.primary_task_id, run_id=run.run_id)
    mapping = _register_nodes(nodes, factory)
    grid = InMemoryGrid(factory)
    grid.set_run(run)
    return state, list(mapping), grid


def passes(nodes: int, stored: int) -> tuple[float, float]:
    """Seconds of one dispatch pass with ``stored`` messages waiting, then delivered."""
    state, node_ids, grid = _engine(nodes)
    sent = grid.push_messages(
        [Message(RecordDict(), dst_node_id=n, message_type="query") for n in node_ids[:stored]]
    )
    assert len(list(sent)) == stored
    times = []
    for _ in range(2):
        start = time.perf_counter()
        for node in node_ids:
            state.get_message_ins(node_id=node, limit=1)
        times.append(time.perf_counter() - start)
    return times[0], times[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, nargs="+", default=[10, 100, 300, 1000])
    parser.add_argument("--window", type=int, default=8)
    args = parser.parse_args()
    print("## Flower's simulation dispatch (`benchmarks/bench_dispatch.py`)\n")
    print(
        "| nodes | one pass, every message out: waiting / delivered | one pass, "
        f"{args.window} out | ratio (delivered) |\n|---:|---:|---:|---:|"
    )
    for n in args.nodes:
        all_waiting, all_delivered = passes(n, n)
        w_waiting, w_delivered = passes(n, min(n, args.window))
        print(
            f"| {n} | {all_waiting * 1e3:.1f} / {all_delivered * 1e3:.1f} ms | "
            f"{w_waiting * 1e3:.1f} / {w_delivered * 1e3:.1f} ms | "
            f"{w_delivered / all_delivered:.3f}x |"
        )


if __name__ == "__main__":
    main()
