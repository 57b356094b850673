"""``flower-supernode`` declaring a 10 s heartbeat, Flower's shortest, instead of its fixed
30 s, so a killed node is marked offline within 20 s, not 60 s (the SuperLink allows
``HEARTBEAT_PATIENCE`` x the declared interval).

Flower 1.41 has no option for it: the interval is a module constant read where the node
sends its heartbeats. Run as ``python tests/helpers/supernode_quick_heartbeat.py <flower-supernode
arguments>``; the drop-out test uses it to wait less."""

from __future__ import annotations

import sys

import flwr.supercore.heartbeat as heartbeat
import flwr.supernode.fleet_http_connection as connection
from flwr.common.constant import HEARTBEAT_MIN_INTERVAL
from flwr.supernode.cli import flower_supernode

if __name__ == "__main__":
    for module in (heartbeat, connection):
        if not hasattr(module, "HEARTBEAT_DEFAULT_INTERVAL"):  # Flower moved it: say so
            sys.exit(f"{module.__name__} has no HEARTBEAT_DEFAULT_INTERVAL; update {__file__}")
        module.HEARTBEAT_DEFAULT_INTERVAL = HEARTBEAT_MIN_INTERVAL
    sys.exit(flower_supernode())
