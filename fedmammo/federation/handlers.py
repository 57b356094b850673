"""ClientApp handlers: what each declares (message type, DP path, consent) and the reply.

A handler is ``fn(msg, context) -> Message``: it unpacks the message, calls ``training/``
and packs the reply with :func:`reply`. Methods declare theirs with :func:`handler` in
their ``client.py`` and list them in their :class:`~fedmammo.methods.registry.Method`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

from flwr.app import Context, Message, RecordDict
from torch import nn

from fedmammo.errors import FedmammoError
from fedmammo.federation.egress import declare_egress
from fedmammo.federation.messages import RoundFields
from fedmammo.federation.runspec import load_runspec
from fedmammo.progress import progress_label

__all__ = ["CATEGORIES", "Handler", "InjectedFault", "check_injected_fault", "handler", "reply"]

CATEGORIES = ("train", "evaluate", "query")


@dataclass(eq=False)
class Handler:
    """A ClientApp handler and what it declares.

    ``dp``: it trains with DP (through ``federation.privacy.ledger.open_dp_session``) at a
    centre whose profile sets ``privacy``; a DP centre refuses every other ``train.*``
    message. ``consent``: the ``sharing`` key of the centre's profile its reply needs.
    ``averaged``: its replies are averaged in rounds that the recipe switch
    ``secure_aggregation`` runs under SecAgg+ (when two or more centres train).
    """

    message_type: str
    fn: Callable[[Message, Context], Message]
    dp: bool = False
    consent: str | None = None
    averaged: bool = False

    def __call__(self, msg: Message, context: Context) -> Message:
        # names the centre in progress lines (resolved only when a line is written)
        with progress_label(functools.partial(centre_label, context)):
            return self.fn(msg, context)

    @property
    def category(self) -> str:
        return self.message_type.split(".", 1)[0]

    @property
    def action(self) -> str:
        return self.message_type.split(".", 1)[1]


def handler(
    message_type: str, *, dp: bool = False, consent: str | None = None, averaged: bool = False
) -> Callable[[Callable], Handler]:
    """Declare ``fn`` as the handler of ``<category>.<action>`` (e.g. ``train.classifier``)."""
    category, _, action = message_type.partition(".")
    if category not in CATEGORIES or not action:
        raise ValueError(
            f"message type {message_type!r}: expected <{'|'.join(CATEGORIES)}>.<action>"
        )

    def deco(fn: Callable) -> Handler:
        h = Handler(message_type, fn, dp=dp, consent=consent, averaged=averaged)
        functools.update_wrapper(h, fn)  # keeps name and docstring for readers and tests
        return h

    return deco


def centre_label(context: Context) -> str:
    """``centre <name>`` of this node, from node config (deployment) or the run's node order;
    empty when neither names one."""
    node = context.node_config
    if "centre" in node:
        return f"centre {node['centre']}"
    try:
        return f"centre {load_runspec(context.run_config).node_order[int(node['partition-id'])]}"
    except (FedmammoError, KeyError, IndexError, ValueError):
        return ""


class InjectedFault(FedmammoError, RuntimeError):
    """A failure the scenario asked for (``faults:``), to study and test centre dropouts
    (logged in one line, like a refusal: no traceback to read)."""


def check_injected_fault(m: RoundFields) -> None:
    """Raise InjectedFault when the server marked this message as one that must fail."""
    if m.inject_fault:
        raise InjectedFault(f"injected fault (scenario key faults), round {m.server_round}")


def reply(msg: Message, context: Context, records: dict, model: nn.Module | None = None) -> Message:
    """The reply message; ``model`` declares which weights the egress guard may let out."""
    if model is not None:
        declare_egress(context, model.state_dict())
    return Message(content=RecordDict(records), reply_to=msg)
