"""The centre: a Flower ClientApp whose handlers come from :mod:`fedmammo.federation.handlers`.

Every reply passes the egress guard (:func:`fedmammo.federation.egress.egress_mod`), and a
centre whose profile asks for DP refuses training messages that have no DP path
(:func:`fedmammo.federation.privacy_state.dp_guard_mod`).
"""

from __future__ import annotations

from flwr.clientapp import ClientApp

from fedmammo.federation.egress import egress_mod
from fedmammo.federation.handlers import HANDLERS, load_builtin_handlers
from fedmammo.federation.privacy_state import dp_guard_mod

__all__ = ["app"]

app = ClientApp(mods=[dp_guard_mod, egress_mod])

load_builtin_handlers()
for (_category, _action), _fn in sorted(HANDLERS.items()):
    getattr(app, _category)(_action)(_fn)
