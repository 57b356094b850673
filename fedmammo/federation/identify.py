"""``query.identify``: a centre's name, role and label counts (the first message of a run)."""

from __future__ import annotations

import torch
from flwr.app import Context, Message, MetricRecord

from fedmammo.federation.centre_runtime import centre_data, identity_of
from fedmammo.federation.handlers import handler, reply
from fedmammo.federation.messages import COUNTS, INFO, CentreInfo, Identify

__all__ = ["identify"]


@handler(Identify.KIND)
def identify(msg: Message, context: Context) -> Message:
    """Name, role, the digest of its own profile, its torch threads, and label counts per
    split and segment (counts only)."""
    ident = identity_of(context)
    data = centre_data(ident, Identify.of(msg))
    counts = data.counts() if hasattr(data, "counts") else {}
    digest = ident.profile.digest() if ident.profile is not None else None
    info = CentreInfo(
        centre=ident.name, role=ident.role, profile=digest, torch_threads=torch.get_num_threads()
    ).to_config()
    return reply(msg, context, {INFO: info, COUNTS: MetricRecord(counts)})
