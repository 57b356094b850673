"""Flower's ``send_and_receive`` with a bounded number of messages out at once.

Flower's simulation engine (1.41) hands messages to its workers in a loop that, every 0.1 s,
asks the link state for each node's next message, and each of those asks scans every stored
message (``vce_api.add_messages_to_queue`` -> ``InMemoryLinkState.get_message_ins``). A
message stays stored until its reply is pulled, so with all of a round's messages sent at
once one pass costs nodes x messages: 15-31 ms at 100 nodes and 1.4-3.4 s at 1000
(``benchmarks/bench_dispatch.py``; BENCHMARKS.md, "Flower's dispatch scan"), Python time that
holds the simulation process's GIL and the link state's lock. Sending at most ``window``
messages at a time keeps a pass at nodes x window. The engine runs only as many messages at
once as it has workers, so a window of a few per worker keeps every worker fed.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Iterable

from flwr.app import Message
from flwr.serverapp import Grid

from fedmammo.federation.replies import in_sent_order

__all__ = ["pull_interval_of", "send_and_receive", "window_for"]

#: Messages out at once per engine worker (at least 8 in all): one running, the others queued.
PER_WORKER, SMALLEST = 4, 8
#: Seconds between two pulls when the grid does not say (Flower's grids poll every 0.1 s).
POLL_SECONDS = 0.1
#: Seconds between two pulls of a windowed exchange: a pull walks only the messages out (at
#: most the window: 0.035 ms for 8, measured), so it can be frequent whatever the nodes.
WINDOW_PULL_SECONDS = 0.01


def pull_interval_of(grid: Grid) -> float:
    """Seconds between two pulls of replies from ``grid``: its own ``pull_interval`` (Flower's
    in-memory grid; :func:`fedmammo.federation.server_app.poll_often` sets it), else 0.1 s."""
    return float(getattr(grid, "pull_interval", POLL_SECONDS))


def window_for(workers: int) -> int:
    """Messages out at once for an engine running ``workers`` messages at a time."""
    return max(SMALLEST, PER_WORKER * max(1, workers))


def send_and_receive(
    grid: Grid, messages: Iterable[Message], *, timeout: float | None, window: int | None
) -> list[Message]:
    """The replies to ``messages``, as ``grid.send_and_receive`` returns them, but in the
    order of the messages they answer, not of their arrival (``replies.in_sent_order``).

    With ``window`` (None: Flower's own call, every message at once), at most that many are
    out at a time: the next is sent as a reply comes in, and each message has ``timeout``
    seconds from when it is sent (a message that never gets a reply is left out, as in
    Flower's call).
    """
    messages = list(messages)
    if window is None or len(messages) <= window:
        return in_sent_order(grid.send_and_receive(messages, timeout=timeout), messages)
    interval = min(pull_interval_of(grid), WINDOW_PULL_SECONDS)
    waiting, out, replies = deque(messages), {}, []  # out: message id -> deadline
    while waiting or out:
        while waiting and len(out) < window:
            deadline = math.inf if timeout is None else time.monotonic() + timeout
            out.update(dict.fromkeys(grid.push_messages([waiting.popleft()]), deadline))
        got = list(grid.pull_messages(list(out)))
        for reply in got:
            if out.pop(reply.metadata.reply_to_message_id, None) is not None:
                replies.append(reply)
        now = time.monotonic()
        for message_id in [m for m, deadline in out.items() if now > deadline]:
            del out[message_id]
        if not got and out:
            time.sleep(interval)
    return in_sent_order(replies, messages)
