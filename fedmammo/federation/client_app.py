"""The centre: a Flower ClientApp built from the methods' handlers plus federation's own.

Every message passes the consent guard (:func:`fedmammo.federation.consent.consent_mod`:
the centre's own ``sharing`` block against the consent the handler declares), a centre whose
profile asks for DP refuses training messages whose handler declares no DP path
(:func:`fedmammo.federation.privacy.ledger.dp_guard_mod`), and every reply passes the egress
guard (:func:`fedmammo.federation.egress.egress_mod`); an exception anywhere becomes a coded,
scrubbed error reply (:func:`fedmammo.federation.egress.egress_error_mod`). Innermost,
:func:`fedmammo.federation.secagg.secagg_mod` answers the SecAgg+ stages of a train message
under secure aggregation (consent and the DP guard apply to every stage; the masked update is
what the egress guard checks) and passes every other message through. Outermost,
:func:`torch_threads_mod` keeps torch's threads to the simulation's (or ``OMP_NUM_THREADS``).
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Iterable
from pathlib import Path

import torch
from flwr.app import Context, Message
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import ClientAppCallable

from fedmammo.federation.consent import consent_mod
from fedmammo.federation.egress import egress_error_mod, egress_mod
from fedmammo.federation.handlers import Handler
from fedmammo.federation.identify import identify
from fedmammo.federation.privacy.audits import audit
from fedmammo.federation.privacy.ledger import dp_guard_mod
from fedmammo.federation.runspec import ENV_VAR
from fedmammo.federation.secagg import secagg_mod
from fedmammo.plugins import load_plugins

__all__ = ["CORE_HANDLERS", "build_client_app", "collect_handlers", "torch_threads_mod"]

#: Handlers every centre answers whatever the method: identity, classifier audits.
CORE_HANDLERS: tuple[Handler, ...] = (identify, audit)


def collect_handlers(handlers: Iterable[Handler]) -> dict[str, Handler]:
    """message type -> handler, core handlers included; a type claimed twice is an error."""
    table: dict[str, Handler] = {}
    for h in (*CORE_HANDLERS, *handlers):
        if h.message_type in table and table[h.message_type] is not h:
            raise ValueError(f"two handlers for message type {h.message_type!r}")
        table[h.message_type] = h
    return table


def torch_threads_mod(msg: Message, ctx: Context, call_next: ClientAppCallable) -> Message:
    """torch's intra-op threads set to the simulation's (:func:`simulation_threads`: from the
    scenario's ``client_resources``), at a real site to ``OMP_NUM_THREADS`` when it names a
    count torch is not using. OpenMP reads the variable once, when torch is imported, and a
    Ray worker started ahead of its actor (:func:`fedmammo.federation.ray_cluster.private_ray`)
    imports torch before Ray sets it to the actor's ``num_cpus``; and a shell's own value
    would change a simulation's numbers (float sums in another order)."""
    wanted = simulation_threads(os.environ.get(ENV_VAR, ""))
    if wanted is None:
        env = os.environ.get("OMP_NUM_THREADS", "")
        wanted = int(env) if env.isdigit() and int(env) > 0 else None
    if wanted is not None and torch.get_num_threads() != wanted:
        torch.set_num_threads(wanted)
    return call_next(msg, ctx)


@functools.lru_cache(maxsize=8)
def simulation_threads(spec_file: str) -> int | None:
    """The torch threads the simulation's run spec (``spec_file``) gives every centre, or None
    (a real site, or a run folder from before they were recorded)."""
    path = Path(spec_file) if spec_file else None
    if path is None or not path.is_file():
        return None
    return json.loads(path.read_text()).get("torch_threads")


def build_client_app(handlers: Iterable[Handler]) -> ClientApp:
    """A ClientApp answering ``handlers`` (and the core ones) through the DP and egress mods."""
    table = collect_handlers(handlers)
    dp_capable = [t for t, h in table.items() if h.dp]
    consents = {t: h.consent for t, h in table.items()}
    # egress_error_mod outermost: every exception (refusals included) becomes a short,
    # scrubbed error reply; egress_mod checks every reply's content before it leaves;
    # secagg_mod inside it, so the masked update (not the plain one) is what leaves.
    mods = [
        torch_threads_mod,
        egress_error_mod,
        consent_mod(consents),
        dp_guard_mod(dp_capable),
        egress_mod,
        secagg_mod,
    ]
    app = ClientApp(mods=mods)
    for _, h in sorted(table.items()):
        getattr(app, h.category)(h.action)(h.fn)
    return app


# FEDMAMMO_PLUGINS' models and methods, in every process that runs a centre: a Ray worker
# imports this module when it unpickles the ClientApp (its mods are defined here), a
# flwr-clientapp process through fedmammo.apps. Last, so a plugin may import fedmammo.
load_plugins()
