"""Which node a reply answers for.

A reply normally comes from the node the message went to (``src_node_id``). But once the
SuperLink has marked a node offline (no heartbeat) it answers for it itself, with a "Node
Unavailable" error whose ``src_node_id`` is the SuperLink's own (1). So a reply is matched to
the message it answers (``reply_to_message_id``; the grid sets each message's id when it pushes
it) and only then, for a reply to no message of ours, to its sender. Replies are put in the
order of those messages too, not of their arrival.
"""

from __future__ import annotations

from collections.abc import Iterable

from flwr.app import Message

__all__ = ["in_sent_order", "reply_node"]


def reply_node(reply: Message, sent: Iterable[Message]) -> int:
    """The node ``reply`` answers for, among the messages ``sent``."""
    answered = reply.metadata.reply_to_message_id
    for m in sent:
        if answered and m.metadata.message_id == answered:
            return m.metadata.dst_node_id
    return reply.metadata.src_node_id


def in_sent_order(replies: Iterable[Message], sent: Iterable[Message]) -> list[Message]:
    """``replies`` in the order of the ``sent`` messages they answer (a reply to none of them
    last). Replies arrive in whatever order the centres finish, and a FedAvg sum of three or
    more models taken in that order changes in its last bits with it: enough, over rounds of
    training, to change a run's test metrics from one run of the same scenario and seed to
    the next."""
    position = {m.metadata.message_id: i for i, m in enumerate(sent)}
    last = len(position)
    return sorted(replies, key=lambda r: position.get(r.metadata.reply_to_message_id, last))
