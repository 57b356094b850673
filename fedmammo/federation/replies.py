"""Which node a reply answers for.

A reply normally comes from the node the message went to (``src_node_id``). But once the
SuperLink has marked a node offline (no heartbeat) it answers for it itself, with a "Node
Unavailable" error whose ``src_node_id`` is the SuperLink's own (1). So a reply is matched to
the message it answers (``reply_to_message_id``; the grid sets each message's id when it pushes
it) and only then, for a reply to no message of ours, to its sender.
"""

from __future__ import annotations

from collections.abc import Iterable

from flwr.app import Message

__all__ = ["reply_node"]


def reply_node(reply: Message, sent: Iterable[Message]) -> int:
    """The node ``reply`` answers for, among the messages ``sent``."""
    answered = reply.metadata.reply_to_message_id
    for m in sent:
        if answered and m.metadata.message_id == answered:
            return m.metadata.dst_node_id
    return reply.metadata.src_node_id
