"""Simulation without Ray: every simulated centre's ClientApp runs in this process.

``python -m fedmammo.simulate ... --backend inprocess`` (or the scenario's
``simulation.backend: inprocess``) drives the same ServerApp and ClientApp as the Ray backend
through :class:`InProcessGrid`, a Flower :class:`~flwr.serverapp.Grid` that hands each
message to the destination centre's ClientApp at once, one message after another. Nothing
else changes: each centre keeps its own Flower ``Context`` (``partition-id``,
``num-partitions`` as Flower's simulation sets them), every message and reply is copied (no
object is shared between the server and a centre, as when Ray pickles them), and a centre
computes with the torch threads a Ray actor would have (:func:`centre_threads`), so a run's
numbers are those of the Ray backend (``tests/federation/test_inprocess.py`` compares them).

What it saves: Ray's start (GCS, raylet, workers) and each actor importing fedmammo and
PyTorch, seconds that dominate short and quick runs. What it gives up: centres never train
at the same time (the Ray backend runs one actor per ``num_cpus`` cores), and message
timeouts do not apply (a reply is there when the call returns).

Flower 1.41 has no public way to run a ServerApp outside its runtimes: like Flower's own
``run_simulation`` this sets the server's task identity (``flwr.supercore.task_identity``,
an internal module) for the length of the run.
"""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Iterable, Iterator
from uuid import uuid4

import torch
from flwr.app import Context, Error, Message, Metadata, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import SUPERLINK_NODE_ID, ErrorCode
from flwr.serverapp import Grid, ServerApp

from fedmammo.federation.ray_cluster import centre_threads

__all__ = ["InProcessGrid", "run_in_process", "server_identity", "torch_threads"]

_RUN_ID = 1  # one run per grid; Flower's simulation draws a random one
_FIRST_NODE_ID = 1001  # node ids are opaque to fedmammo (identify maps them to centres)


class InProcessGrid(Grid):
    """A Flower Grid whose nodes are ``num_nodes`` simulated centres answering with
    ``client_app`` in this process; ``num_threads``: torch threads while a centre computes."""

    def __init__(self, client_app: ClientApp, num_nodes: int, *, num_threads: int = 1) -> None:
        self.client_app = client_app
        self.num_threads = max(1, int(num_threads))
        self.contexts = {
            _FIRST_NODE_ID + i: Context(
                run_id=_RUN_ID,
                node_id=_FIRST_NODE_ID + i,
                node_config={"partition-id": i, "num-partitions": num_nodes},
                state=RecordDict(),
                run_config={},
            )
            for i in range(num_nodes)
        }
        self._replies: dict[str, Message] = {}

    # -- Grid ------------------------------------------------------------------------
    @property
    def run(self):  # the Flower Run record; nothing in fedmammo reads it
        raise NotImplementedError("InProcessGrid has no Flower Run record")

    def set_run(self, run_id: int) -> None:
        raise NotImplementedError("InProcessGrid runs one run, made with the grid")

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> list[int]:
        return list(self.contexts)

    def get_nodes(self) -> list:
        return []  # Flower's NodeInfo records (public keys, heartbeats): none in process

    def push_messages(self, messages: Iterable[Message]) -> list[str]:
        """Deliver each message to its centre now; the reply waits for :meth:`pull_messages`."""
        ids = []
        for message in messages:
            message_id = str(uuid4())
            message.metadata.__dict__["_message_id"] = message_id  # as Flower's grids do
            self._replies[message_id] = self._deliver(message, message_id)
            ids.append(message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> list[Message]:
        return [self._replies.pop(i) for i in message_ids if i in self._replies]

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> list[Message]:
        """Every message's reply (``timeout`` does not apply: centres answer in turn)."""
        return self.pull_messages(self.push_messages(messages))

    # -- one centre --------------------------------------------------------------------
    def _deliver(self, message: Message, message_id: str) -> Message:
        meta = message.metadata
        context = self.contexts.get(meta.dst_node_id)
        if context is None:
            raise ValueError(f"no simulated node {meta.dst_node_id} (nodes: {list(self.contexts)})")
        incoming = Message(
            content=copy.deepcopy(message.content),
            metadata=Metadata(
                run_id=_RUN_ID,
                message_id=message_id,
                src_node_id=SUPERLINK_NODE_ID,
                dst_node_id=meta.dst_node_id,
                reply_to_message_id="",
                group_id=meta.group_id,
                created_at=time.time(),
                ttl=meta.ttl,
                message_type=meta.message_type,
            ),
        )
        try:
            with torch_threads(self.num_threads):
                reply = self.client_app(incoming, context)
        except Exception as exc:  # what Flower's simulation replies when a ClientApp raises
            reason = f"{type(exc)}:<'{exc}'>"
            return Message(Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason), reply_to=incoming)
        if reply.has_content():  # the server gets its own copy, as from a Ray actor
            reply.content = copy.deepcopy(reply.content)
        return reply


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """torch's intra-op threads set to ``n`` inside the block (a Ray actor's ``num_cpus``)."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def server_identity() -> Iterator[None]:
    """The server task's identity, as Flower's ``run_simulation`` sets it: what a server-side
    ``Message(...)`` reads (run id, node id, task id), restored afterwards."""
    from flwr.supercore.task_identity import TaskIdentity

    before = (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id)
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, _RUN_ID, SUPERLINK_NODE_ID
    try:
        yield
    finally:
        TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = before


def run_in_process(
    server_app: ServerApp, client_app: ClientApp, num_nodes: int, *, num_cpus: float = 1
) -> InProcessGrid:
    """Run ``server_app`` against ``num_nodes`` centres answering with ``client_app`` in this
    process, each computing as a Ray actor of ``num_cpus`` would; returns the grid (its
    ``contexts`` hold each centre's Flower state)."""
    grid = InProcessGrid(client_app, num_nodes, num_threads=centre_threads(num_cpus))
    server_context = Context(
        run_id=_RUN_ID, node_id=0, node_config={}, state=RecordDict(), run_config={}
    )
    with server_identity():
        server_app(grid, server_context)
    return grid
