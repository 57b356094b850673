"""Independent jobs for the centres, several in flight at once, their results in order.

A study's arms are independent what-ifs: the receiver of generator sharing trains one patch
classifier per arm, subset, fraction and seed, and a sharing centre trains one generator per
GAN and subset. Sent one message at a time, a simulation whose work sits at one centre keeps
one worker busy however many the machine has. :func:`run_jobs` keeps up to ``in_flight``
messages out (in a Flower simulation: as many as the engine runs at once, so none waits in
its queue while its timeout runs), at most ``per_centre`` of them at any one centre, and
yields each job's result in the order the jobs were given, whatever order the replies come
in: what a caller records is the same as with one message at a time.

A Flower simulation hands two messages for one node to two workers, each with a copy of the
node's context, and keeps the context of whichever answers last. What a job needs from its
centre is not in that context (the data caches are per process, the privacy ledgers on disk
under a lock); the one thing kept there across messages, the egress guard's count of refused
replies, may miss one of two refusals made at once. SecAgg+ rounds, whose state is in the
context, are never sent as jobs. Jobs that may charge a privacy ledger go to a centre one at
a time (``per_centre=1`` for that centre), so two rounds never charge one ledger at once.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from flwr.app import Message, RecordDict
from flwr.serverapp import Grid

from fedmammo.federation.window import pull_interval_of

__all__ = ["Job", "JobResult", "run_jobs"]


@dataclass(frozen=True)
class Job:
    """One message for one centre; ``content`` builds it when it is sent (big messages such
    as generator weights are not all held at once)."""

    centre: str
    content: Callable[[], RecordDict]


@dataclass(frozen=True)
class JobResult:
    """A job's reply content, or why there is none (``failure``)."""

    index: int
    centre: str
    content: RecordDict | None
    failure: str | None


def run_jobs(
    grid: Grid,
    nodes: Mapping[str, int],
    message_type: str,
    jobs: Sequence[Job],
    *,
    timeout: float,
    in_flight: int | None,
    per_centre: Callable[[str], int],
) -> Iterator[JobResult]:
    """Send ``jobs`` (centre name -> node id: ``nodes``) and yield their results in order.

    At most ``in_flight`` messages are out at once (None: no bound) and at most
    ``per_centre(centre)`` at one centre; the next job sent is the first waiting one whose
    centre has room. Each message has ``timeout`` seconds from when it is sent; a job whose
    centre is not connected fails at once.
    """
    phase = message_type.split(".")[0]
    waiting = list(range(len(jobs)))
    out: dict[str, tuple[int, float]] = {}  # message id -> (job index, deadline)
    busy: dict[str, int] = {}
    done: dict[int, JobResult] = {}
    following = 0

    def finish(index: int, content: RecordDict | None, failure: str | None) -> None:
        centre = jobs[index].centre
        done[index] = JobResult(index, centre, content, failure)

    while True:
        while following in done:
            yield done.pop(following)
            following += 1
        if following == len(jobs):
            return
        for index in list(waiting):
            if in_flight is not None and len(out) >= in_flight:
                break
            centre = jobs[index].centre
            if busy.get(centre, 0) >= max(1, per_centre(centre)):
                continue
            waiting.remove(index)
            if centre not in nodes:
                finish(index, None, f"centre {centre} is not connected")
                continue
            content = jobs[index].content()
            msg = Message(content, dst_node_id=nodes[centre], message_type=message_type)
            sent = list(grid.push_messages([msg]))
            if not sent:
                finish(index, None, f"the message to centre {centre} could not be queued")
                continue
            out[sent[0]] = (index, time.monotonic() + timeout)
            busy[centre] = busy.get(centre, 0) + 1
        if not out:
            continue
        replies = list(grid.pull_messages(list(out)))
        for reply in replies:
            if (entry := out.pop(reply.metadata.reply_to_message_id, None)) is None:
                continue  # a late reply to a job that already timed out
            index = entry[0]
            busy[jobs[index].centre] -= 1
            if reply.has_error():
                finish(index, None, reply.error.reason or "error")
            else:
                finish(index, reply.content, None)
        now = time.monotonic()
        for message_id, (index, deadline) in list(out.items()):
            if now > deadline:
                del out[message_id]
                busy[jobs[index].centre] -= 1
                finish(index, None, f"no reply within message_timeout.{phase}={timeout:g} s")
        if not replies and out:
            time.sleep(pull_interval_of(grid))
