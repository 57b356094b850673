"""A bounded number of messages out at once (fedmammo.federation.window).

The grid is fedmammo's in-process one, whose centres answer with a real ClientApp; this
subclass holds each reply back for a few pulls (as a simulation engine's queue would) and
counts the messages out, so the window can be seen from the grid's side.
"""

from __future__ import annotations

import pytest
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common import Context

from fedmammo.federation.inprocess import InProcessGrid, server_identity
from fedmammo.federation.window import send_and_receive, window_for


def _echo() -> ClientApp:
    app = ClientApp()

    @app.query()
    def query(msg: Message, context: Context) -> Message:
        node = msg.metadata.dst_node_id
        return Message(RecordDict({"echo": ConfigRecord({"node": node})}), reply_to=msg)

    return app


class QueueingGrid(InProcessGrid):
    """Replies come out ``delay`` pulls after their message went in (``delays``: node ->
    pulls, for some nodes); messages to ``silent`` nodes are never answered. ``peak``: the
    most messages out at once; ``calls``: how the caller used the grid; ``arrived``: the
    replying nodes in the order their replies came out."""

    def __init__(self, nodes: int, *, delay: int = 2, silent: frozenset[int] = frozenset()):
        super().__init__(_echo(), nodes)
        self.delay, self.silent, self.delays = delay, silent, {}
        self.out: dict[str, int] = {}  # message id -> pulls still to wait
        self.peak, self.calls, self.pull_interval, self.arrived = 0, [], 0.001, []

    def push_messages(self, messages):
        messages = list(messages)
        self.calls.append(("push", len(messages)))
        ids = super().push_messages(messages)
        for message, message_id in zip(messages, ids, strict=True):
            if message.metadata.dst_node_id in self.silent:
                self._replies.pop(message_id)
            self.out[message_id] = self.delays.get(message.metadata.dst_node_id, self.delay)
        self.peak = max(self.peak, len(self.out))
        return ids

    def pull_messages(self, message_ids):
        ready = []
        for message_id in message_ids:
            if message_id in self.out:
                self.out[message_id] -= 1
                if self.out[message_id] < 0 and message_id in self._replies:
                    ready.append(message_id)
        for message_id in ready:
            del self.out[message_id]
        replies = list(super().pull_messages(ready))
        self.arrived += [r.metadata.src_node_id for r in replies]
        return replies

    def send_and_receive(self, messages, *, timeout=None):
        """Flower's loop: push everything, pull until every reply is in."""
        messages = list(messages)
        self.calls.append(("send_and_receive", len(messages)))
        ids, replies = set(self.push_messages(messages)), []
        while ids:
            got = self.pull_messages(list(ids))
            ids -= {r.metadata.reply_to_message_id for r in got}
            replies += got
        return replies


def _messages(grid: InProcessGrid) -> list[Message]:
    return [
        Message(RecordDict({"q": ConfigRecord({"i": i})}), dst_node_id=n, message_type="query")
        for i, n in enumerate(grid.get_node_ids())
    ]


def test_at_most_the_window_is_out_and_every_message_gets_its_own_reply():
    grid = QueueingGrid(30)
    with server_identity():
        replies = send_and_receive(grid, _messages(grid), timeout=60, window=8)
    assert grid.peak == 8  # never more out than the window, and the window was used
    assert all(call == ("push", 1) for call in grid.calls if call[0] == "push")
    assert len(replies) == 30 and not any(r.has_error() for r in replies)
    # each reply is from the node its message went to
    nodes = sorted(int(r.content["echo"]["node"]) for r in replies)
    assert nodes == sorted(grid.get_node_ids())
    assert all(r.metadata.src_node_id == int(r.content["echo"]["node"]) for r in replies)
    assert grid.out == {}


def test_a_message_that_never_gets_a_reply_is_left_out_after_its_timeout():
    grid = QueueingGrid(12, silent=frozenset({1003, 1009}))
    silent = grid.silent & set(grid.get_node_ids())
    assert len(silent) == 2, grid.get_node_ids()  # the node ids this test assumes
    with server_identity():
        replies = send_and_receive(grid, _messages(grid), timeout=0.2, window=4)
    answered = {r.metadata.src_node_id for r in replies}
    assert answered == set(grid.get_node_ids()) - silent
    assert grid.peak == 4


@pytest.mark.parametrize("window", [None, 30, 31])
def test_without_a_window_or_within_it_flowers_own_call_sends_everything_at_once(window):
    grid = QueueingGrid(30, delay=0)
    with server_identity():
        replies = send_and_receive(grid, _messages(grid), timeout=60, window=window)
    assert grid.calls[0] == ("send_and_receive", 30)
    assert grid.peak == 30 and len(replies) == 30


@pytest.mark.parametrize("window", [None, 4])
def test_replies_come_back_in_the_order_of_their_messages_whatever_order_they_arrive_in(window):
    # A FedAvg sum taken in arrival order changes in its last bits with that order.
    grid = QueueingGrid(12)
    nodes = grid.get_node_ids()
    grid.delays = {n: 3 * (len(nodes) - i) for i, n in enumerate(nodes)}  # the last node first
    with server_identity():
        messages = _messages(grid)
        replies = send_and_receive(grid, messages, timeout=60, window=window)
        ids = [m.metadata.message_id for m in messages]
    assert grid.arrived != list(nodes)  # they did arrive out of order
    assert [r.metadata.src_node_id for r in replies] == list(nodes)
    assert [r.metadata.reply_to_message_id for r in replies] == ids


def test_the_window_is_a_few_messages_per_engine_worker():
    assert [window_for(w) for w in (0, 1, 2, 3, 8)] == [8, 8, 8, 12, 32]


@pytest.mark.parametrize(("deployment", "peak"), [(False, 8), (True, 20)])
def test_the_orchestrator_windows_a_simulation_and_sends_real_sites_everything(deployment, peak):
    from types import SimpleNamespace

    from fedmammo.federation.orchestrator import Orchestrator
    from fedmammo.federation.runspec import RunSpec

    grid = QueueingGrid(20)
    orc = Orchestrator(
        grid=grid,
        spec=RunSpec("s.yaml", "run", deployment=deployment, workers=2),
        scenario=SimpleNamespace(),
        recorder=None,
    )
    with server_identity():
        replies = orc.exchange(_messages(grid), timeout=60)
    assert grid.peak == peak and len(replies) == 20


def test_a_windowed_exchange_pulls_every_10_ms_even_where_the_grid_pulls_less_often(monkeypatch):
    # a pull walks only the messages out (at most the window), so it may be frequent at 1000
    # nodes too, where the grid's own interval (poll_often) is Flower's 0.1 s
    from fedmammo.federation import window

    naps = []
    monkeypatch.setattr(window.time, "sleep", naps.append)
    grid = QueueingGrid(12)
    grid.pull_interval = 0.1
    with server_identity():
        replies = send_and_receive(grid, _messages(grid), timeout=60, window=4)
    assert len(replies) == 12
    assert naps and set(naps) == {window.WINDOW_PULL_SECONDS} and window.WINDOW_PULL_SECONDS == 0.01
