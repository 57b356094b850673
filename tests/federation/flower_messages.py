"""Helpers to build Flower messages outside a running Flower app."""

from __future__ import annotations

import time

from flwr.app import Message, Metadata, RecordDict


def make_incoming(content: RecordDict, message_type: str, *, src: int = 0, dst: int = 7
                  ) -> Message:
    """A message as a ClientApp would receive it from the server."""
    meta = Metadata(run_id=1, message_id="m1", src_node_id=src, dst_node_id=dst,
                    reply_to_message_id="", group_id="", created_at=time.time(), ttl=3600.0,
                    message_type=message_type)
    return Message(content=content, metadata=meta)
