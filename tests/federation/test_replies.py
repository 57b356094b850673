"""A reply is matched to the node it answers for, also when the SuperLink answers for a node it
has marked offline ("Node Unavailable" from its own node id)."""

from __future__ import annotations

import time

from flwr.app import Message, Metadata, RecordDict

from fedmammo.federation.replies import reply_node

SUPERLINK = 1


def _msg(message_id: str, src: int, dst: int, reply_to: str = "") -> Message:
    meta = Metadata(
        run_id=1,
        message_id=message_id,
        src_node_id=src,
        dst_node_id=dst,
        reply_to_message_id=reply_to,
        group_id="",
        created_at=time.time(),
        ttl=60.0,
        message_type="train.classifier",
    )
    return Message(content=RecordDict(), metadata=meta)


def test_a_superlink_answer_for_an_offline_node_is_that_nodes():
    # Prepare: two messages sent to nodes 7 and 8
    sent = [_msg("m7", 0, 7), _msg("m8", 0, 8)]
    # Execute / Assert: node 8's own reply, the SuperLink's answer for node 7, and a reply to
    # no message of ours (its sender); an empty reply id never matches an unsent message
    assert reply_node(_msg("r1", 8, 0, reply_to="m8"), sent) == 8
    assert reply_node(_msg("r2", SUPERLINK, 0, reply_to="m7"), sent) == 7
    assert reply_node(_msg("r3", 9, 0, reply_to="other"), sent) == 9
    assert reply_node(_msg("r4", 8, 0), [_msg("", 0, 7)]) == 8
