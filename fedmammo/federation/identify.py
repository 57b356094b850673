"""``query.identify``: a centre's name, role and label counts (the first message of a run)."""

from __future__ import annotations

from flwr.app import ConfigRecord, Context, Message, MetricRecord

from fedmammo.federation.centre_runtime import centre_data, identity_of
from fedmammo.federation.handlers import handler, reply

__all__ = ["identify"]


@handler("query.identify")
def identify(msg: Message, context: Context) -> Message:
    """Name, role and label counts per split and segment (counts only)."""
    ident = identity_of(context)
    data = centre_data(ident, msg.content["config"])
    counts = data.counts() if hasattr(data, "counts") else {}
    info = ConfigRecord({"centre": ident.name, "role": ident.role})
    return reply(msg, context, {"info": info, "counts": MetricRecord(counts)})
