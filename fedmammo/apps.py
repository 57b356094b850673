"""The Flower apps of fedmammo: every registered method's ClientApp and ServerApp.

``pyproject.toml``'s ``[tool.flwr.app.components]`` points here, so ``flwr run .`` and
``python -m fedmammo.simulate`` run the same apps.
"""

from __future__ import annotations

from fedmammo.federation.client_app import build_client_app, collect_handlers
from fedmammo.federation.run_log import quiet_libraries
from fedmammo.federation.server_app import build_server_app
from fedmammo.federation.telemetry import quiet_flower
from fedmammo.methods import METHODS, get_method
from fedmammo.plugins import load_plugins

load_plugins()  # FEDMAMMO_PLUGINS: a plugin's methods answer in HANDLERS below, its models build
quiet_flower()  # deployment: nothing calls home unless FEDMAMMO_TELEMETRY=1
quiet_libraries()  # in every process that runs the apps (Ray actors included)

__all__ = ["DP_CAPABLE", "HANDLERS", "client_app", "server_app"]


def _method_parts(kind: str):
    method = get_method(kind)
    return method.run, method.report


#: message type -> handler: every method's handlers and federation's own.
HANDLERS = collect_handlers(h for m in METHODS.values() for h in m.handlers)
#: message types whose handlers train with DP at a centre that asks for it.
DP_CAPABLE = frozenset(t for t, h in HANDLERS.items() if h.dp)

client_app = build_client_app(HANDLERS.values())
server_app = build_server_app(_method_parts)
